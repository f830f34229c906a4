// MedSearch browser UI: search by example image, browse an image, add and delete images, read
// the audit trail (no framework).
//
// Security: every string from the API or from a file name is untrusted. The DOM is built with
// createElement, textContent and append() (which turns strings into text nodes), never with
// innerHTML or its relatives, so metadata such as `<img src=x onerror=...>` shows as text.
// The session lives in an HttpOnly cookie; every change sends the CSRF token of the readable
// `medsearch_csrf` cookie (apiFetch), which a page of another site cannot read.
"use strict";

const API = "/api/v1";
const SIGN_IN_PAGE = "/signin";
const CSRF_COOKIE = "medsearch_csrf";
const CSRF_HEADER = "X-CSRF-Token";
const SAFE_METHODS = ["GET", "HEAD", "OPTIONS"];
const DEFAULT_K = 10;
const AUDIT_EVENTS = 100;
const INDEX_STATES = ["indexed", "pending", "failed"];
const AUDIT_OUTCOMES = ["ok", "refused", "failed"];
const SEX_NAMES = { M: "male", F: "female", O: "other" };
const ROLES = ["reader", "editor", "admin"]; // weakest first, as the gateway orders them
// Views that need more than reading; the gateway refuses their requests anyway.
const VIEW_ROLES = { add: "editor", audit: "admin" };
const VIEW_NAMES = { add: "Adding images", audit: "The audit trail" };

const ui = {
  account: byId("account"),
  identity: byId("identity"),
  signOut: byId("sign-out"),
  signIn: byId("sign-in"),
  roleGated: document.querySelectorAll("[data-role]"),
  notice: byId("notice"),
  stats: byId("stats"),
  modelWarning: byId("model-warning"),
  modelWarningText: byId("model-warning-text"),
  error: byId("error"),
  status: byId("status"),
  navLinks: document.querySelectorAll(".site-nav a[data-view]"),
  views: { search: byId("view-search"), image: byId("view-image"), add: byId("view-add"), audit: byId("view-audit") },
  viewTitles: {
    search: byId("search-title"),
    image: byId("image-title"),
    add: byId("add-title"),
    audit: byId("audit-title"),
  },
  searchForm: byId("search-form"),
  queryFile: byId("query-file"),
  dropZone: byId("drop-zone"),
  queryPreview: byId("query-preview"),
  queryPreviewImage: byId("query-preview-image"),
  queryName: byId("query-name"),
  k: byId("k"),
  onePerPatient: byId("one-per-patient"),
  filterDataset: byId("filter-dataset"),
  filterSex: byId("filter-sex"),
  filterAgeMin: byId("filter-age-min"),
  filterAgeMax: byId("filter-age-max"),
  filterView: byId("filter-view"),
  filterFindingsAny: byId("filter-findings-any"),
  filterFindingsNone: byId("filter-findings-none"),
  searchButton: byId("search-button"),
  imageTitle: byId("image-title"),
  imageDetail: byId("image-detail"),
  fullImage: byId("full-image"),
  metadata: byId("metadata"),
  moreLikeThis: byId("more-like-this"),
  indexHint: byId("index-hint"),
  reindexImage: byId("reindex-image"),
  deleteImage: byId("delete-image"),
  deleteConfirm: byId("delete-confirm"),
  deleteQuestion: byId("delete-question"),
  deleteConfirmButton: byId("delete-confirm-button"),
  deleteCancel: byId("delete-cancel"),
  addForm: byId("add-form"),
  addFile: byId("add-file"),
  addDataset: byId("add-dataset"),
  addExternalId: byId("add-external-id"),
  addPatientId: byId("add-patient-id"),
  addStudy: byId("add-study"),
  addAge: byId("add-age"),
  addSex: byId("add-sex"),
  addViewPosition: byId("add-view-position"),
  addFindings: byId("add-findings"),
  addButton: byId("add-button"),
  addResult: byId("add-result"),
  auditRefresh: byId("audit-refresh"),
  auditRows: byId("audit-rows"),
  auditSummary: byId("audit-summary"),
  resultsSection: byId("results-section"),
  resultsTitle: byId("results-title"),
  resultsSummary: byId("results-summary"),
  results: byId("results"),
};

const state = {
  caller: null, // GET /session: {subject, role, via, token_id}; decides which controls show
  notice: null, // a message for the next view (e.g. after a delete), shown once
  stats: null, // last GET /stats answer; decides the empty-results message
  queryFile: null, // the chosen query image (picker or drop)
  previewUrl: null, // blob URL of the query preview, revoked when replaced
  fullImageUrl: null, // blob URL of a stored DICOM's rendering, revoked when replaced
  search: null, // {title, results} of the last search, shown again when returning to #/
  similar: null, // {imageId, title, results} of the last "More like this"
  tasks: [], // status messages of requests in flight, newest last
  routed: false, // the first route keeps the focus where the browser put it
};

/** A failure the user can act on; `message` is already readable. */
class UserError extends Error {
  constructor(message, status = 0, problem = null) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

function byId(id) {
  return document.getElementById(id);
}

/** A new element; strings among `children` become text nodes, never markup. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// ---- talking to the gateway ----

/** fetch() for every call of this page: sends the CSRF token with each change, goes to the
 * sign-in page when the session has ended (401), and turns network failures and error statuses
 * into readable UserErrors (a 403 says what the role may not do). */
async function apiFetch(path, init = {}) {
  const method = (init.method || "GET").toUpperCase();
  const headers = new Headers(init.headers);
  if (!SAFE_METHODS.includes(method)) {
    const csrfToken = readCookie(CSRF_COOKIE);
    if (csrfToken) headers.set(CSRF_HEADER, csrfToken);
  }
  let response;
  try {
    response = await fetch(API + path, { ...init, headers, credentials: "same-origin" });
  } catch {
    throw new UserError("The gateway cannot be reached. Check your connection and that MedSearch is running.");
  }
  if (response.status === 401) {
    location.assign(SIGN_IN_PAGE);
    throw new UserError("You are signed out. Opening the sign-in page…", 401);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

function readCookie(name) {
  for (const pair of document.cookie.split(";")) {
    const at = pair.indexOf("=");
    if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim();
  }
  return null;
}

async function fetchJson(path, init = {}) {
  return readJson(await apiFetch(path, init));
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    throw new UserError(`The gateway sent an unreadable answer (HTTP ${response.status}).`, response.status);
  }
}

/** The readable error for a failed response: its problem+json `detail`, else the HTTP status. */
async function errorFrom(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      const problem = await response.json();
      if (problem && typeof problem === "object") {
        return new UserError(problemMessage(problem, response.status), response.status, problem);
      }
    } catch {
      // Not JSON after all: fall through to the status line.
    }
  }
  const reason = response.statusText ? ` ${response.statusText}` : "";
  return new UserError(`The gateway answered HTTP ${response.status}${reason}.`, response.status);
}

function problemMessage(problem, status) {
  const detail = typeof problem.detail === "string" && problem.detail ? problem.detail : problem.title || `HTTP ${status}`;
  if (!problem.dependency) return String(detail);
  const service = `The ${problem.dependency} service`;
  if (status === 503) return `${service} is unavailable: ${detail}`;
  if (status === 504) return `${service} did not answer in time: ${detail}`;
  return `${service} failed: ${detail}`;
}

/** Runs `request` with `button` disabled and `message` in the status line; null on failure. */
async function runRequest(button, message, request, onError = showError) {
  if (button) button.disabled = true;
  const finish = startTask(message);
  try {
    const payload = await request();
    clearError();
    return payload;
  } catch (error) {
    onError(error);
    return null;
  } finally {
    finish();
    if (button) button.disabled = false;
  }
}

// ---- who is signed in ----

/** Asks who this browser is signed in as: null when known, else the UserError that says why
 * not (the page then offers only reading; a 401 has already sent the browser to sign in). */
async function loadSession() {
  let failure = null;
  try {
    state.caller = await fetchJson("/session", { cache: "no-store" });
  } catch (error) {
    state.caller = null;
    failure = error;
  }
  renderAccount();
  return failure;
}

/** Whether the signed-in identity has `role` or a stronger one. */
function may(role) {
  const have = state.caller ? ROLES.indexOf(state.caller.role) : -1;
  return have >= 0 && have >= ROLES.indexOf(role);
}

function renderAccount() {
  const caller = state.caller;
  ui.account.hidden = !caller;
  if (caller) {
    ui.identity.textContent = `${text(caller.subject)} · ${text(caller.role)}`;
    const anonymous = caller.via === "anonymous";
    ui.signOut.hidden = anonymous;
    ui.signIn.hidden = !anonymous;
  }
  // Controls the role may not use are not shown; the gateway would refuse them anyway.
  for (const node of ui.roleGated) node.hidden = !may(node.dataset.role);
}

async function signOut() {
  const done = await runRequest(ui.signOut, "Signing out…", () => apiFetch("/session", { method: "DELETE" }));
  if (done) location.replace(SIGN_IN_PAGE);
}

// ---- status, errors, stats and the model banner ----

function startTask(message) {
  const task = { message };
  state.tasks.push(task);
  renderStatus();
  return () => {
    state.tasks = state.tasks.filter((t) => t !== task);
    renderStatus();
  };
}

function renderStatus() {
  const latest = state.tasks[state.tasks.length - 1];
  ui.status.textContent = latest ? latest.message : "";
}

function showError(error) {
  // Anything but a UserError is a bug in this page; still say something readable.
  ui.error.textContent = error instanceof UserError ? error.message : `The page failed: ${error.message || error}`;
}

function clearError() {
  ui.error.textContent = "";
}

async function loadStats() {
  try {
    state.stats = await fetchJson("/stats");
    renderStats(state.stats);
    showModel(state.stats.model);
  } catch (error) {
    ui.stats.textContent = "Catalog statistics are unavailable.";
    showError(error);
  }
}

function renderStats(stats) {
  const index = stats.index || {};
  const parts = [
    plural(stats.images, "image"),
    `${index.indexed ?? 0} indexed, ${index.pending ?? 0} pending` + (index.failed ? `, ${index.failed} failed` : ""),
    stats.model ? `model ${stats.model.model_id}` : "model unavailable (embedder down)",
  ];
  if (stats.model && stats.model.card) parts.push(describeCard(stats.model.card));
  ui.stats.textContent = parts.join(" · ");
}

/** The model card's headline: how the serving weights were trained and how well they validated. */
function describeCard(card) {
  const auc = card.validation_mean_auc == null ? "no validation AUC" : `validation AUC ${card.validation_mean_auc.toFixed(3)}`;
  return `fine-tuned from ${card.starting_weights} on ${plural(card.training_images, "image")}, ` +
    `${auc} (epoch ${card.best_epoch} of ${card.epochs_run})`;
}

/** Shows the banner when the active model's results mean nothing (random weights). */
function showModel(model) {
  if (!model) return; // Embedder down: nothing new is known about the model.
  ui.modelWarning.hidden = model.meaningful !== false;
  ui.modelWarningText.textContent = model.warning || "This model's results are not medically meaningful.";
}

function plural(count, word) {
  return `${count ?? 0} ${word}${count === 1 ? "" : "s"}`;
}

// ---- routing: #/ search, #/image/<id>, #/add, #/audit ----

function parseHash(hash) {
  const image = /^#\/image\/(\d+)$/.exec(hash);
  if (image) return { view: "image", id: Number(image[1]) };
  if (hash === "#/add") return { view: "add" };
  if (hash === "#/audit") return { view: "audit" };
  return { view: "search" };
}

function isCurrent(view, id) {
  const here = parseHash(location.hash);
  return here.view === view && (id === undefined || here.id === id);
}

function route() {
  let target = parseHash(location.hash);
  clearError();
  ui.notice.textContent = state.notice || "";
  state.notice = null;
  const needed = VIEW_ROLES[target.view];
  if (needed && !may(needed)) {
    const who = state.caller ? `this identity's role is ${state.caller.role}` : "who you are is unknown";
    showError(new UserError(`${VIEW_NAMES[target.view]} needs the ${needed} role; ${who}.`));
    target = { view: "search" };
  }
  for (const [name, section] of Object.entries(ui.views)) section.hidden = name !== target.view;
  for (const link of ui.navLinks) {
    if (link.dataset.view === target.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Move keyboard and screen-reader focus to the new view, except on the first load.
  if (state.routed) ui.viewTitles[target.view].focus();
  state.routed = true;

  if (target.view === "image") {
    openImage(target.id);
  } else if (target.view === "audit") {
    ui.resultsSection.hidden = true;
    loadAudit();
  } else if (target.view === "search" && state.search) {
    renderResults(state.search);
  } else {
    ui.resultsSection.hidden = true;
  }
}

// ---- search view ----

function isPngOrJpeg(file) {
  return ["image/png", "image/jpeg"].includes(file.type) || /\.(png|jpe?g)$/i.test(file.name);
}

/** DICOM by name, or by the "DICM" magic at bytes 128..131 (files without an extension). */
async function isDicom(file) {
  if (/\.dcm$/i.test(file.name) || file.type === "application/dicom") return true;
  const magic = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...magic) === "DICM";
}

async function chooseQueryFile(file) {
  const dicom = await isDicom(file);
  if (!dicom && !isPngOrJpeg(file)) {
    showError(new UserError(`"${file.name}" is not a PNG, JPEG or DICOM file.`));
    return;
  }
  state.queryFile = file;
  ui.queryPreview.hidden = false;
  ui.queryName.textContent = file.name;
  if (!dicom) {
    setPreview(URL.createObjectURL(file), file.name);
    clearError();
    return;
  }
  // Browsers cannot draw DICOM, so the gateway renders a PNG of it.
  setPreview(null);
  const body = new FormData();
  body.append("image", file, file.name);
  const blob = await runRequest(null, "Rendering the DICOM preview…", async () => {
    const response = await apiFetch("/previews", { method: "POST", body });
    return response.blob();
  });
  if (state.queryFile !== file) return; // A newer choice replaced this one meanwhile.
  if (blob) setPreview(URL.createObjectURL(blob), file.name);
  else ui.queryName.textContent = `${file.name} (no preview; it can still be searched)`;
}

function setPreview(url, name = "") {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = url;
  ui.queryPreviewImage.hidden = !url;
  if (url) {
    ui.queryPreviewImage.src = url;
    ui.queryPreviewImage.alt = `Preview of the query image ${name}`;
  } else {
    ui.queryPreviewImage.removeAttribute("src");
  }
}

function wireDropZone() {
  const zone = ui.dropZone;
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("drag-over");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("drag-over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("drag-over");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    ui.queryFile.value = ""; // So that picking a file afterwards always fires "change".
    chooseQueryFile(file);
  });
  // A drop that misses the zone would otherwise open the file and lose the page's state.
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (!zone.contains(event.target)) event.dataTransfer.dropEffect = "none";
  });
  window.addEventListener("drop", (event) => event.preventDefault());
}

/** k, filter and one_per_patient from the search form; used by Search and "More like this". */
function readSearchOptions() {
  const k = readNumber(ui.k, "Number of results (k)", 1, 100, true) ?? DEFAULT_K;
  const filter = {};
  addList(filter, "dataset", ui.filterDataset.value);
  if (ui.filterSex.value) filter.sex = [ui.filterSex.value];
  addList(filter, "view_position", ui.filterView.value);

  const min = readNumber(ui.filterAgeMin, "Age from", 0, 130);
  const max = readNumber(ui.filterAgeMax, "Age to", 0, 130);
  if (min !== null && max !== null && min > max) throw new UserError("Age from is above age to.");
  const age = {};
  if (min !== null) age.min = min;
  if (max !== null) age.max = max;
  if (Object.keys(age).length) filter.age = age;

  const findings = {};
  addList(findings, "any", ui.filterFindingsAny.value);
  addList(findings, "none", ui.filterFindingsNone.value);
  if (Object.keys(findings).length) filter.findings = findings;

  return { k, filter: Object.keys(filter).length ? filter : null, onePerPatient: ui.onePerPatient.checked };
}

function splitList(text) {
  return [...new Set(text.split(",").map((part) => part.trim()).filter(Boolean))];
}

function addList(target, key, text) {
  const values = splitList(text);
  if (values.length) target[key] = values;
}

/** The number in `input`, or null when empty; throws a UserError naming the field when invalid. */
function readNumber(input, label, min, max = Infinity, integer = false) {
  const raw = input.value.trim();
  if (raw === "" && !input.validity.badInput) return null;
  const value = Number(raw);
  const valid = raw !== "" && Number.isFinite(value) && value >= min && value <= max;
  if (!valid || (integer && !Number.isInteger(value))) {
    const range = max === Infinity ? `${min} or more` : `from ${min} to ${max}`;
    throw new UserError(`${label} must be ${integer ? "a whole number" : "a number"} ${range}.`);
  }
  return value;
}

async function submitSearch(event) {
  event.preventDefault();
  if (!state.queryFile) {
    showError(new UserError("Choose a query image first: drop it on the box or use the file picker."));
    return;
  }
  let options;
  try {
    options = readSearchOptions();
  } catch (error) {
    showError(error);
    return;
  }
  const file = state.queryFile;
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("k", String(options.k));
  if (options.filter) body.append("filter", JSON.stringify(options.filter));
  body.append("one_per_patient", String(options.onePerPatient));

  const payload = await runRequest(ui.searchButton, "Searching…", () =>
    fetchJson("/search", { method: "POST", body }),
  );
  if (!payload) return;
  showModel(payload.model);
  state.search = { title: `Results for ${file.name}`, results: resultsOf(payload) };
  // Refresh the counts so an empty list can tell "nothing indexed" from "nothing matches".
  if (!state.search.results.length) await loadStats();
  if (isCurrent("search")) {
    renderResults(state.search);
    ui.resultsTitle.focus();
  }
}

function resultsOf(payload) {
  return Array.isArray(payload.results) ? payload.results : [];
}

// ---- results grid (search and "More like this") ----

function renderResults({ title, results }) {
  ui.resultsTitle.textContent = title;
  ui.resultsSummary.textContent = results.length ? plural(results.length, "result") : "";
  ui.results.replaceChildren(...(results.length ? results.map(resultCard) : [emptyResults()]));
  ui.resultsSection.hidden = false;
}

function emptyResults() {
  const nothingIndexed = state.stats && state.stats.index && state.stats.index.indexed === 0;
  return el("p", { className: "results-empty" }, nothingIndexed ? "Nothing indexed yet" : "No image matches these filters");
}

function resultCard({ rank, score, image }) {
  const meta = image.metadata || {};
  const card = el("a", { className: "result", href: imageHash(image.id) });
  card.dataset.imageId = String(image.id);
  card.dataset.rank = String(rank);
  card.append(
    el("img", {
      className: "result-thumb",
      src: image.thumbnail_url,
      alt: `Thumbnail of image ${image.id}`,
      loading: "lazy",
      decoding: "async",
    }),
    el(
      "div",
      { className: "result-body" },
      el(
        "p",
        { className: "result-heading" },
        el("span", { className: "result-rank" }, `#${rank}`),
        el("span", { className: "result-score" }, `score ${formatScore(score)}`),
      ),
      definitionList(el("dl", { className: "result-meta" }), [
        ["Image", String(image.id)],
        ["External ID", text(meta.external_id)],
        ["Dataset", text(meta.dataset)],
        ["Patient", text(meta.patient_id)],
        ["Age/sex/view", [ageText(meta.age), text(meta.sex), text(meta.view_position)].join(" · ")],
        ["Findings", findingsText(meta.findings)],
      ]),
    ),
  );
  return card;
}

function imageHash(id) {
  return `#/image/${encodeURIComponent(String(id))}`;
}

/** Fills `list` with <dt>/<dd> pairs; a value is text or a DOM node. */
function definitionList(list, rows) {
  list.replaceChildren(...rows.flatMap(([label, value]) => [el("dt", {}, label), el("dd", {}, value)]));
  return list;
}

function text(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

function ageText(age) {
  return age === null || age === undefined ? "—" : `${age} y`;
}

function findingsText(findings) {
  if (!Array.isArray(findings)) return text(findings);
  return findings.length ? findings.join(", ") : "No finding";
}

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(3) : "—";
}

// ---- image view ----

async function openImage(id) {
  ui.imageTitle.textContent = `Image ${id}`;
  ui.imageDetail.hidden = true;
  closeDeleteConfirm(false);
  ui.fullImage.removeAttribute("src");
  if (state.similar && state.similar.imageId === id) renderResults(state.similar);
  else ui.resultsSection.hidden = true;

  const image = await runRequest(null, `Loading image ${id}…`, () => fetchJson(`/images/${id}`));
  if (image && isCurrent("image", id)) renderImage(image);
}

function renderImage(image) {
  const meta = image.metadata || {};
  ui.imageTitle.textContent = meta.external_id ? `Image ${image.id}: ${meta.external_id}` : `Image ${image.id}`;
  if (image.mime_type === "application/dicom") showStoredDicom(image);
  else ui.fullImage.src = image.file_url;
  ui.fullImage.alt = `Chest X-ray, image ${image.id}`;
  definitionList(ui.metadata, imageRows(image));
  const indexed = image.index_state === "indexed";
  ui.indexHint.hidden = indexed;
  ui.indexHint.textContent = indexed ? "" : "This image is not indexed for the active model yet; \"More like this\" needs it indexed.";
  ui.reindexImage.hidden = indexed;
  ui.imageDetail.hidden = false;
}

/**
 * Browsers cannot draw DICOM: the stored (de-identified) file is rendered to a PNG by the gateway,
 * as a DICOM query is. Its thumbnail shows meanwhile, and stays if the rendering fails.
 */
async function showStoredDicom(image) {
  ui.fullImage.src = image.thumbnail_url;
  try {
    const stored = await (await apiFetch(`/images/${image.id}/file`)).blob();
    const body = new FormData();
    body.append("image", stored, `image-${image.id}.dcm`);
    const rendered = await (await apiFetch("/previews", { method: "POST", body })).blob();
    if (!isCurrent("image", image.id)) return;
    if (state.fullImageUrl) URL.revokeObjectURL(state.fullImageUrl);
    state.fullImageUrl = URL.createObjectURL(rendered);
    ui.fullImage.src = state.fullImageUrl;
  } catch {
    // The thumbnail stays: a smaller view of the same image.
  }
}

const METADATA_ROWS = [
  ["dataset", "Dataset"],
  ["external_id", "External ID"],
  ["patient_id", "Patient"],
  ["study", "Study"],
  ["age", "Age"],
  ["sex", "Sex"],
  ["view_position", "View position"],
  ["findings", "Findings"],
  ["extra", "Extra"],
];

function imageRows(image) {
  const meta = image.metadata || {};
  const known = new Set(METADATA_ROWS.map(([key]) => key));
  const rows = [["Image ID", String(image.id)]];
  for (const [key, label] of METADATA_ROWS) rows.push([label, metadataValue(key, meta[key])]);
  // Show keys this page does not know yet too: "all metadata" means all.
  for (const [key, value] of Object.entries(meta)) if (!known.has(key)) rows.push([key, metadataValue(key, value)]);
  rows.push(
    ["Index state", indexStateBadge(image.index_state)],
    ["Size", image.width && image.height ? `${image.width} × ${image.height} px` : "—"],
    ["Type", text(image.mime_type)],
    ["Bytes", text(image.byte_size)],
    ["SHA-256", text(image.sha256)],
    ["Added", formatDate(image.created_at)],
  );
  return rows;
}

function metadataValue(key, value) {
  if (key === "findings") return findingsText(value);
  if (key === "sex" && SEX_NAMES[value]) return `${value} (${SEX_NAMES[value]})`;
  if (value !== null && typeof value === "object") {
    return el("pre", { className: "json" }, JSON.stringify(value, null, 2));
  }
  return text(value);
}

function indexStateBadge(indexState) {
  const known = INDEX_STATES.includes(indexState) ? indexState : "unknown";
  return el("span", { className: `state state-${known}` }, text(indexState));
}

function formatDate(value) {
  const date = new Date(value);
  return value && !Number.isNaN(date.getTime()) ? date.toLocaleString() : text(value);
}

async function findSimilar() {
  const here = parseHash(location.hash);
  if (here.view !== "image") return;
  let options;
  try {
    options = readSearchOptions();
  } catch (error) {
    showError(error);
    return;
  }
  const params = new URLSearchParams({ k: String(options.k), one_per_patient: String(options.onePerPatient) });
  if (options.filter) params.set("filter", JSON.stringify(options.filter));

  const payload = await runRequest(ui.moreLikeThis, "Searching…", () =>
    fetchJson(`/images/${here.id}/similar?${params}`),
  );
  if (!payload) return;
  showModel(payload.model);
  state.similar = { imageId: here.id, title: `Similar to image ${here.id}`, results: resultsOf(payload) };
  if (isCurrent("image", here.id)) {
    renderResults(state.similar);
    ui.resultsTitle.focus();
  }
}

/** Indexes the open image for the active model (editor): what `medsearch reindex` does. */
async function reindexImage() {
  const here = parseHash(location.hash);
  if (here.view !== "image") return;
  const payload = await runRequest(ui.reindexImage, `Indexing image ${here.id}…`, () =>
    fetchJson(`/images/${here.id}/index`, { method: "POST" }),
  );
  if (payload && isCurrent("image", here.id)) openImage(here.id);
}

// Deleting asks once more in the page itself (no confirm() dialog: it blocks and cannot be styled).
function openDeleteConfirm() {
  const here = parseHash(location.hash);
  if (here.view !== "image") return;
  ui.deleteQuestion.textContent = `Delete image ${here.id} from the catalog and the search index? This cannot be undone.`;
  ui.deleteConfirm.hidden = false;
  ui.deleteImage.setAttribute("aria-expanded", "true");
  ui.deleteCancel.focus();
}

function closeDeleteConfirm(refocus = true) {
  ui.deleteConfirm.hidden = true;
  ui.deleteImage.setAttribute("aria-expanded", "false");
  if (refocus) ui.deleteImage.focus();
}

async function deleteImage() {
  const here = parseHash(location.hash);
  if (here.view !== "image") return;
  const id = here.id;
  const done = await runRequest(ui.deleteConfirmButton, `Deleting image ${id}…`, () =>
    apiFetch(`/images/${id}`, { method: "DELETE" }),
  );
  if (!done) return;
  // Results shown earlier must not offer the deleted image any more.
  for (const kept of [state.search, state.similar]) {
    if (kept) kept.results = kept.results.filter((result) => result.image.id !== id);
  }
  if (state.similar && state.similar.imageId === id) state.similar = null;
  state.notice = `Deleted image ${id}.`;
  loadStats();
  if (isCurrent("image", id)) location.hash = "#/";
}

// ---- audit view (admin) ----

async function loadAudit() {
  const params = new URLSearchParams({ limit: String(AUDIT_EVENTS) });
  const page = await runRequest(ui.auditRefresh, "Loading the audit trail…", () =>
    fetchJson(`/audit?${params}`, { cache: "no-store" }),
  );
  if (!page || !isCurrent("audit")) return;
  const events = Array.isArray(page.items) ? page.items : [];
  ui.auditRows.replaceChildren(...events.map(auditRow));
  ui.auditSummary.textContent = events.length
    ? `The latest ${plural(events.length, "event")}` + (page.next_cursor ? "; the CSV has them all." : ".")
    : "No events recorded yet.";
}

function auditRow(event) {
  const outcome = AUDIT_OUTCOMES.includes(event.outcome) ? event.outcome : "unknown";
  const results = Array.isArray(event.result_ids) ? String(event.result_ids.length) : "—";
  const cells = [
    formatDate(event.at),
    text(event.actor),
    text(event.role),
    text(event.action),
    el("span", { className: `state state-${outcome}` }, text(event.outcome)),
    text(event.image_id),
    results,
    text(event.detail),
  ];
  const row = el("tr", {}, ...cells.map((cell) => el("td", {}, cell)));
  row.dataset.action = text(event.action);
  return row;
}

// ---- add view ----

/** The metadata JSON of the add form; empty fields are left out. */
function readAddMetadata() {
  const dataset = ui.addDataset.value.trim();
  if (!dataset) throw new UserError("Dataset is required.");
  const metadata = { dataset };
  const texts = { external_id: ui.addExternalId, patient_id: ui.addPatientId, view_position: ui.addViewPosition };
  for (const [key, input] of Object.entries(texts)) {
    const value = input.value.trim();
    if (value) metadata[key] = value;
  }
  const study = readNumber(ui.addStudy, "Study number", 0, Infinity, true);
  if (study !== null) metadata.study = study;
  const age = readNumber(ui.addAge, "Age", 0, 130);
  if (age !== null) metadata.age = age;
  if (ui.addSex.value) metadata.sex = ui.addSex.value;
  const findings = splitList(ui.addFindings.value);
  if (findings.length) metadata.findings = findings;
  return metadata;
}

async function submitAdd(event) {
  event.preventDefault();
  const file = ui.addFile.files[0];
  let metadata;
  try {
    if (!file) throw new UserError("Choose a PNG, JPEG or DICOM file to add.");
    metadata = readAddMetadata();
  } catch (error) {
    showError(error);
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("metadata", JSON.stringify(metadata));
  showOutcome(null);

  let status = 0;
  const payload = await runRequest(
    ui.addButton,
    "Adding the image…",
    async () => {
      const response = await apiFetch("/images", { method: "POST", body });
      status = response.status;
      return readJson(response);
    },
    showAddFailure,
  );
  if (!payload) return;
  const id = payload.image.id;
  const indexing = payload.indexed ? "indexed" : "not indexed yet";
  const message = status === 200 ? `Image ${id} is already in the catalog, ${indexing}` : `Added image ${id}, ${indexing}`;
  showOutcome("success", message, id);
  loadStats();
}

/** A stored-but-not-indexed upload (503 with image_id) is half done: say how to finish it. */
function showAddFailure(error) {
  showError(error);
  const problem = error.problem || {};
  if (error.status === 503 && problem.image_id !== null && problem.image_id !== undefined) {
    const detail = String(problem.detail || "indexing failed").replace(/[.\s]+$/, "");
    showOutcome("warning", `Stored as image ${problem.image_id} but not indexed yet: ${detail}. Submit again to finish.`, problem.image_id);
  }
}

/** Writes the add outcome (kind "success" or "warning") with a link to the image; null clears it. */
function showOutcome(kind, message = "", imageId = null) {
  ui.addResult.className = kind ? `outcome outcome-${kind}` : "outcome";
  ui.addResult.replaceChildren();
  if (!kind) return;
  ui.addResult.append(el("span", {}, message), " ", el("a", { href: imageHash(imageId) }, `Open image ${imageId}`));
}

// ---- start ----

async function start() {
  ui.signOut.addEventListener("click", signOut);
  ui.searchForm.addEventListener("submit", submitSearch);
  ui.queryFile.addEventListener("change", () => {
    const file = ui.queryFile.files[0];
    if (file) chooseQueryFile(file);
  });
  wireDropZone();
  ui.moreLikeThis.addEventListener("click", findSimilar);
  ui.reindexImage.addEventListener("click", reindexImage);
  ui.deleteImage.addEventListener("click", openDeleteConfirm);
  ui.deleteCancel.addEventListener("click", () => closeDeleteConfirm());
  ui.deleteConfirmButton.addEventListener("click", deleteImage);
  ui.auditRefresh.addEventListener("click", loadAudit);
  ui.addForm.addEventListener("submit", submitAdd);
  // A page kept by the back/forward cache may outlive its session: ask again.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) loadSession();
  });
  // Which views and controls show depends on the role: know it before the first route.
  const failure = await loadSession();
  if (failure && failure.status === 401) return;
  window.addEventListener("hashchange", route);
  route();
  if (failure) showError(failure);
  loadStats();
}

start();
