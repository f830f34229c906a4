// MedSearch browser UI: search by example image (an upload, several at once, a stored image, a
// region of one, steered by marked results), browse an image, add and delete images, the
// collection's statistics, its near-duplicates and its map, read the audit trail (no
// framework). This module holds the routing, the search and image views and their flows; the
// rest lives beside it: http.js (the gateway), dom.js (safe DOM), messages.js (status and
// errors), searching.js (a search and its address), results.js (result lists), maps.js,
// region.js, refine.js, compare.js, export.js, charts.js, and the add.js, audit.js, stats.js,
// duplicates.js and map.js views.
//
// Security: every string from the API or from a file name is untrusted and goes into the page
// as text, never as markup (see dom.js). The session lives in an HttpOnly cookie; every change
// sends the CSRF token (see http.js).

import { UserError, apiFetch, fetchJson, goToSignIn } from "./http.js";
import { byId, definitionList, el, findingsText, formatDate, plural, text } from "./dom.js";
import { clearError, runRequest, showError, startTask } from "./messages.js";
import { MapLayer, initMaps } from "./maps.js";
import { RegionSelector, regionBar } from "./region.js";
import { initCompare } from "./compare.js";
import { initAudit, loadAudit } from "./audit.js";
import { initAdd } from "./add.js";
import { initCollection, loadCollection } from "./stats.js";
import { initDuplicates, openDuplicates } from "./duplicates.js";
import { initMap, openMap } from "./map.js";
import { clearQueryTarget, imageHash, initResults, newList, renderLists, replaceList } from "./results.js";
import {
  fillSearchForm,
  inPool,
  readSearchOptions,
  readSearchParams,
  searchList,
  searchParams,
} from "./searching.js";

const INDEX_STATES = ["indexed", "pending", "failed"];
const SEX_NAMES = { M: "male", F: "female", O: "other" };
const ROLES = ["reader", "editor", "admin"]; // weakest first, as the gateway orders them
// Views that need a role (at least a signed-in reader); the gateway refuses their requests anyway.
const VIEW_ROLES = { add: "editor", audit: "admin", collection: "reader", duplicates: "reader", map: "reader" };
const VIEW_NAMES = {
  add: "Adding images",
  audit: "The audit trail",
  collection: "The collection's statistics",
  duplicates: "The near-duplicates review",
  map: "The collection map",
};
// A batch of query images: one search each, this many at once, at most this many images.
const BATCH_AT_ONCE = 4;
const MAX_BATCH = 20;

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
  navLinks: document.querySelectorAll(".site-nav a[data-view]"),
  views: {
    search: byId("view-search"),
    image: byId("view-image"),
    add: byId("view-add"),
    audit: byId("view-audit"),
    collection: byId("view-collection"),
    duplicates: byId("view-duplicates"),
    map: byId("view-map"),
  },
  viewTitles: {
    search: byId("search-title"),
    image: byId("image-title"),
    add: byId("add-title"),
    audit: byId("audit-title"),
    collection: byId("collection-title"),
    duplicates: byId("duplicates-title"),
    map: byId("map-title"),
  },
  searchForm: byId("search-form"),
  queryFile: byId("query-file"),
  dropZone: byId("drop-zone"),
  queryPreview: byId("query-preview"),
  queryStage: byId("query-stage"),
  queryPreviewImage: byId("query-preview-image"),
  queryName: byId("query-name"),
  queryMapCaption: byId("query-map-caption"),
  queryRegion: byId("query-region"),
  searchButton: byId("search-button"),
  imageTitle: byId("image-title"),
  imageDetail: byId("image-detail"),
  fullStage: byId("full-stage"),
  fullImage: byId("full-image"),
  fullMapCaption: byId("full-map-caption"),
  imageRegion: byId("image-region"),
  metadata: byId("metadata"),
  moreLikeThis: byId("more-like-this"),
  indexHint: byId("index-hint"),
  reindexImage: byId("reindex-image"),
  deleteImage: byId("delete-image"),
  deleteConfirm: byId("delete-confirm"),
  deleteQuestion: byId("delete-question"),
  deleteConfirmButton: byId("delete-confirm-button"),
  deleteCancel: byId("delete-cancel"),
  resultsSection: byId("results-section"),
  resultsTitle: byId("results-title"),
  resultsSummary: byId("results-summary"),
  results: byId("results"),
};

const state = {
  caller: null, // GET /session: {subject, role, via, token_id}; decides which controls show
  notice: null, // a message for the next view (e.g. after a delete), shown once
  stats: null, // last GET /stats answer; decides the empty-results message
  // What the search form searches: {kind: "upload", files: [File]} or {kind: "stored", image}.
  query: null,
  querySize: null, // an uploaded DICOM's width and height, from its preview's headers
  previewUrl: null, // blob URL of the query preview, revoked when replaced
  batchUrls: [], // blob URLs of a batch's query images, revoked with the batch
  fullImageUrl: null, // blob URL of a stored DICOM's rendering, revoked when replaced
  openImage: null, // the record of the image view's image
  // The result lists of the search view, and of the image view ("More like this"):
  // {title, lists, hash} and {imageId, title, lists, hash}; `hash` is the address that says
  // what was searched.
  search: null,
  similar: null,
  routed: false, // the first route keeps the focus where the browser put it
};

// Where the maps of a list's query are drawn: the search form's preview, the open image.
const previewTarget = { layer: new MapLayer(ui.queryPreviewImage), caption: ui.queryMapCaption };
const fullTarget = { layer: new MapLayer(ui.fullImage), caption: ui.fullMapCaption };

// The boxes for a search by region, on those same two pictures.
let showQueryRegion = () => {};
let showImageRegion = () => {};
const queryRegion = new RegionSelector(ui.queryStage, ui.queryPreviewImage, {
  size: () => formQuerySize(),
  onChange: (selector) => showQueryRegion(selector),
});
const imageRegion = new RegionSelector(ui.fullStage, ui.fullImage, {
  size: () => storedSize(state.openImage, ui.fullImage),
  onChange: (selector) => showImageRegion(selector),
});

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
  if (done) goToSignIn();
}

// ---- stats and the model banner ----

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

// ---- routing: #/ search, #/image/<id>, #/add, #/audit, #/collection, #/duplicates, #/map;
// a search's parameters after "?" ----

function parseHash(hash) {
  const at = hash.indexOf("?");
  const path = at < 0 ? hash : hash.slice(0, at);
  const params = new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
  const image = /^#\/image\/(\d+)$/.exec(path);
  if (image) return { view: "image", id: Number(image[1]), params };
  if (path === "#/add") return { view: "add", params };
  if (path === "#/audit") return { view: "audit", params };
  if (path === "#/collection") return { view: "collection", params };
  if (path === "#/duplicates") return { view: "duplicates", params };
  if (path === "#/map") return { view: "map", params };
  return { view: "search", params };
}

function isCurrent(view, id) {
  const here = parseHash(location.hash);
  return here.view === view && (id === undefined || here.id === id);
}

/** Puts `hash` in the address bar without a new history entry or a new route. */
function setAddress(hash) {
  const plain = (value) => (value === "" || value === "#/" ? "#/" : value);
  if (plain(location.hash) !== plain(hash)) history.replaceState(history.state, "", hash);
}

/** The address of `list`'s search in `view` ("search" or "image"). */
function hashOf(view, list) {
  const params = searchParams(list, view === "search");
  const base = view === "search" ? "#/" : imageHash(list.query.imageId);
  // Commas may stay as they are in a fragment: "positive=3,9" reads better than "3%2C9".
  return params ? `${base}?${params.toString().replace(/%2C/gi, ",")}` : base;
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
    target = { view: "search", params: new URLSearchParams() };
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
    openImage(target.id, target.params);
  } else if (target.view === "audit") {
    ui.resultsSection.hidden = true;
    loadAudit(() => isCurrent("audit"));
  } else if (target.view === "collection") {
    ui.resultsSection.hidden = true;
    loadCollection(() => isCurrent("collection"));
  } else if (target.view === "duplicates") {
    ui.resultsSection.hidden = true;
    openDuplicates();
  } else if (target.view === "map") {
    ui.resultsSection.hidden = true;
    openMap();
  } else if (target.view === "search") {
    openSearchView(target.params);
  } else {
    ui.resultsSection.hidden = true;
  }
}

// ---- result lists, wherever they show ----

function renderHolder(holder) {
  ui.resultsTitle.textContent = holder.title;
  ui.resultsSummary.textContent = holder.lists.length > 1 ? `${holder.lists.length} query images, one result list each.` : "";
  clearQueryTarget(previewTarget);
  clearQueryTarget(fullTarget);
  renderLists(ui.results, holder.lists);
  ui.resultsSection.hidden = false;
}

function holderOf(list) {
  return [state.search, state.similar].find((holder) => holder && holder.lists.includes(list)) || null;
}

function holderShown(holder) {
  return holder === state.search ? isCurrent("search") : isCurrent("image", holder.imageId);
}

/** Whether the search form's query is `query` (and shows as one picture). */
function formShows(query) {
  const current = state.query;
  if (!current) return false;
  if (current.kind === "stored") return !query.file && current.image.id === query.imageId;
  return current.files.length === 1 && current.files[0] === query.file;
}

/** The address of the picture of `list`'s query, or null when there is none to show. */
function queryUrlOf(list) {
  const holder = holderOf(list);
  if (holder && holder === state.similar && ui.fullImage.getAttribute("src")) return ui.fullImage.src;
  if (formShows(list.query) && ui.queryPreviewImage.getAttribute("src")) return ui.queryPreviewImage.src;
  return list.query.url || null;
}

/** The page's pictures that show `list`'s query, to draw its maps on. */
function queryTargetsOf(list) {
  const holder = holderOf(list);
  if (!holder || holder.lists.length !== 1 || !holderShown(holder)) return [];
  if (holder === state.similar) return [fullTarget];
  return formShows(list.query) && !ui.queryPreviewImage.hidden ? [previewTarget] : [];
}

function emptyMessage(list) {
  if (list.pending) return "Searching…";
  if (list.error) return `This search failed: ${list.error}`;
  const nothingIndexed = state.stats && state.stats.index && state.stats.index.indexed === 0;
  return nothingIndexed ? "Nothing indexed yet" : "No image matches these filters";
}

/** Runs `list` with `button` busy; shows its model. True when it succeeded. */
async function runList(list, button, message = "Searching…") {
  const payload = await runRequest(button, message, () => searchList(list));
  if (!payload) return false;
  showModel(list.model);
  // Refresh the counts so an empty list can tell "nothing indexed" from "nothing matches".
  if (!list.results.length) await loadStats();
  return true;
}

/** Searches `list` again with its marks, in place of the list it was refined from. */
async function refineList(list, button) {
  const holder = holderOf(list);
  if (!holder) return;
  const next = newList(list.query, list.options, list.title, new Map(list.marks));
  if (!(await runList(next, button, "Refining the search…"))) return;
  const at = holder.lists.indexOf(list);
  if (at < 0) return; // Another search replaced this one meanwhile.
  holder.lists[at] = next;
  const view = holder === state.search ? "search" : "image";
  if (holder.lists.length === 1) holder.hash = hashOf(view, next);
  if (!holderShown(holder)) return;
  if (holder.lists.length === 1) setAddress(holder.hash);
  replaceList(list, next);
  const heading = holder.lists.length > 1 ? next.view.section.querySelector(".list-title") : ui.resultsTitle;
  heading.focus();
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

async function chooseQueryFiles(chosen) {
  const files = [...chosen];
  if (!files.length) return;
  if (files.length > MAX_BATCH) {
    showError(new UserError(`Choose at most ${MAX_BATCH} images at once (${files.length} chosen).`));
    return;
  }
  for (const file of files) {
    if (!(await isDicom(file)) && !isPngOrJpeg(file)) {
      showError(new UserError(`"${file.name}" is not a PNG, JPEG or DICOM file.`));
      return;
    }
  }
  if (files.length === 1) {
    await chooseQueryFile(files[0]);
    return;
  }
  state.query = { kind: "upload", files };
  state.querySize = null;
  setPreview(null);
  ui.queryPreview.hidden = false;
  ui.queryName.textContent = `${files.length} images, each searched on its own: ${files.map((file) => file.name).join(", ")}`;
  clearError();
}

async function chooseQueryFile(file) {
  const dicom = await isDicom(file);
  state.query = { kind: "upload", files: [file] };
  state.querySize = null;
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
  const rendered = await runRequest(null, "Rendering the DICOM preview…", async () => {
    const response = await apiFetch("/previews", { method: "POST", body });
    return { blob: await response.blob(), size: decodedSize(response) };
  });
  if (!state.query || state.query.files[0] !== file) return; // A newer choice replaced this one meanwhile.
  // The preview is at most 1024 px; a region drawn on it is sent in the DICOM's own pixels.
  state.querySize = rendered ? rendered.size : null;
  if (rendered) setPreview(URL.createObjectURL(rendered.blob), file.name);
  else ui.queryName.textContent = `${file.name} (no preview; it can still be searched)`;
}

/** The width and height the gateway decoded an image at (its preview's headers); null if absent. */
function decodedSize(response) {
  const width = Number(response.headers.get("X-Image-Width"));
  const height = Number(response.headers.get("X-Image-Height"));
  return width > 0 && height > 0 ? { width, height } : null;
}

/** A stored image as the search form's query (an address with query_id). */
function chooseStoredQuery(image) {
  state.query = { kind: "stored", image };
  state.querySize = null;
  ui.queryFile.value = "";
  ui.queryPreview.hidden = false;
  ui.queryName.textContent = `Image ${image.id} (stored)`;
  showStoredPicture(image, (url, blob) => setPreview(url, `image ${image.id}`, blob), () => formShows({ imageId: image.id }));
}

function setPreview(url, name = "", isBlob = true) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = url && isBlob ? url : null;
  clearQueryTarget(previewTarget);
  queryRegion.clear();
  ui.queryPreviewImage.hidden = !url;
  ui.queryRegion.hidden = !url;
  if (url) {
    ui.queryPreviewImage.src = url;
    ui.queryPreviewImage.alt = `Preview of the query image ${name}`;
  } else {
    ui.queryPreviewImage.removeAttribute("src");
  }
}

/** The search form's query image in its original pixels (the space of a region). */
function formQuerySize() {
  if (state.query && state.query.kind === "stored") return storedSize(state.query.image, ui.queryPreviewImage);
  if (state.querySize) return state.querySize;
  // A PNG or JPEG preview is the upload itself; a DICOM's is its rendering, at most 1024 px.
  const img = ui.queryPreviewImage;
  return img.naturalWidth ? { width: img.naturalWidth, height: img.naturalHeight } : null;
}

/** A stored image's size from its record; else, from the picture that shows it. */
function storedSize(image, img) {
  if (image && image.width && image.height) return { width: image.width, height: image.height };
  return img.naturalWidth ? { width: img.naturalWidth, height: img.naturalHeight } : null;
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
    if (!event.dataTransfer.files.length) return;
    ui.queryFile.value = ""; // So that picking a file afterwards always fires "change".
    chooseQueryFiles(event.dataTransfer.files);
  });
  // A drop that misses the zone would otherwise open the file and lose the page's state.
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (!zone.contains(event.target)) event.dataTransfer.dropEffect = "none";
  });
  window.addEventListener("drop", (event) => event.preventDefault());
}

function formOptions() {
  try {
    return readSearchOptions();
  } catch (error) {
    showError(error);
    return null;
  }
}

async function submitSearch(event) {
  event.preventDefault();
  if (!state.query) {
    showError(new UserError("Choose a query image first: drop it on the box or use the file picker."));
    return;
  }
  const options = formOptions();
  if (!options) return;
  if (state.query.kind === "upload" && state.query.files.length > 1) await searchBatch(state.query.files, options);
  else await searchForm(null, options, ui.searchButton);
}

/** Searches the form's one query image (or `region` of it) and shows its list. */
async function searchForm(region, options, button) {
  const current = state.query;
  const query = current.kind === "stored"
    ? { file: null, imageId: current.image.id, region, name: `image ${current.image.id}`, url: null }
    : { file: current.files[0], imageId: null, region, name: current.files[0].name, url: null };
  const title = current.kind === "stored"
    ? (region ? `Similar to a region of image ${query.imageId}` : `Similar to image ${query.imageId}`)
    : (region ? `Results for a region of ${query.name}` : `Results for ${query.name}`);
  const list = newList(query, options, title);
  if (!(await runList(list, button))) return;
  state.search = { title, lists: [list], hash: hashOf("search", list) };
  if (isCurrent("search")) {
    setAddress(state.search.hash);
    renderHolder(state.search);
    ui.resultsTitle.focus();
  }
}

/** One search per image, at most BATCH_AT_ONCE at a time; each list shows when it is done. */
async function searchBatch(files, options) {
  for (const url of state.batchUrls) if (url) URL.revokeObjectURL(url);
  state.batchUrls = files.map((file) => (isPngOrJpeg(file) ? URL.createObjectURL(file) : null));
  const lists = files.map((file, i) => {
    const query = { file, imageId: null, region: null, name: file.name, url: state.batchUrls[i] };
    const list = newList(query, options, file.name);
    list.pending = true;
    return list;
  });
  const holder = { title: `Results for ${files.length} query images`, lists, hash: "#/" };
  state.search = holder;
  if (isCurrent("search")) {
    setAddress(holder.hash);
    renderHolder(holder);
    ui.resultsTitle.focus();
  }
  ui.searchButton.disabled = true;
  const finish = startTask(`Searching ${files.length} images…`);
  const failed = [];
  try {
    await inPool(lists, BATCH_AT_ONCE, async (list) => {
      try {
        await searchList(list);
        showModel(list.model);
      } catch (error) {
        list.error = error instanceof UserError ? error.message : String(error);
        failed.push(list.title);
      }
      list.pending = false;
      if (state.search === holder && isCurrent("search")) replaceList(list, list);
    });
  } finally {
    finish();
    ui.searchButton.disabled = false;
  }
  if (failed.length) showError(new UserError(`${failed.length} of ${files.length} searches failed (${failed.join(", ")}); each list says why.`));
  else clearError();
}

/** The search view: the lists kept from before, or the search the address describes. */
function openSearchView(params) {
  const described = params.has("query_id") || params.has("positive");
  if (described && (!state.search || state.search.hash !== location.hash)) {
    searchFromAddress(params);
    return;
  }
  if (state.search) {
    setAddress(state.search.hash);
    renderHolder(state.search);
  } else {
    ui.resultsSection.hidden = true;
  }
}

/** Runs the search an address describes: a stored query (query_id), or marked images alone. */
async function searchFromAddress(params) {
  ui.resultsSection.hidden = true;
  let wanted;
  try {
    wanted = readSearchParams(params);
  } catch (error) {
    showError(error);
    return;
  }
  const here = location.hash;
  fillSearchForm(wanted.options);
  const marks = new Map([...wanted.positive.map((id) => [id, "positive"]), ...wanted.negative.map((id) => [id, "negative"])]);
  let query;
  let title;
  if (wanted.queryId !== null) {
    const image = await runRequest(null, `Loading image ${wanted.queryId}…`, () => fetchJson(`/images/${wanted.queryId}`));
    if (!image || location.hash !== here) return;
    chooseStoredQuery(image);
    query = { file: null, imageId: image.id, region: wanted.region, name: `image ${image.id}`, url: null };
    title = wanted.region ? `Similar to a region of image ${image.id}` : `Similar to image ${image.id}`;
  } else {
    query = { file: null, imageId: null, region: null, name: "the marked images", url: null };
    title = `Like ${wanted.positive.length === 1 ? "image" : "images"} ${wanted.positive.join(", ")}`;
  }
  const list = newList(query, wanted.options, title, marks);
  if (!(await runList(list, ui.searchButton))) return;
  state.search = { title, lists: [list], hash: hashOf("search", list) };
  if (location.hash === here) {
    setAddress(state.search.hash);
    renderHolder(state.search);
  }
}

// ---- image view ----

async function openImage(id, params) {
  ui.imageTitle.textContent = `Image ${id}`;
  ui.imageDetail.hidden = true;
  closeDeleteConfirm(false);
  ui.fullImage.removeAttribute("src");
  imageRegion.clear();
  state.openImage = null;
  const described = [...params.keys()].length > 0;
  const kept = state.similar && state.similar.imageId === id && (!described || state.similar.hash === location.hash);
  if (kept) {
    setAddress(state.similar.hash);
    renderHolder(state.similar);
  } else {
    ui.resultsSection.hidden = true;
  }

  const here = location.hash;
  const image = await runRequest(null, `Loading image ${id}…`, () => fetchJson(`/images/${id}`));
  if (!image || !isCurrent("image", id)) return;
  renderImage(image);
  if (kept) renderHolder(state.similar); // The query picture is there now: draw its map.
  if (!kept && described && location.hash === here) {
    let wanted;
    try {
      wanted = readSearchParams(params);
    } catch (error) {
      showError(error);
      return;
    }
    fillSearchForm(wanted.options);
    const marks = new Map([...wanted.positive.map((m) => [m, "positive"]), ...wanted.negative.map((m) => [m, "negative"])]);
    await searchImage(id, wanted.region, wanted.options, marks, ui.moreLikeThis);
  }
}

function renderImage(image) {
  const meta = image.metadata || {};
  state.openImage = image;
  ui.imageTitle.textContent = meta.external_id ? `Image ${image.id}: ${meta.external_id}` : `Image ${image.id}`;
  showStoredPicture(image, (url, blob) => {
    if (state.fullImageUrl) URL.revokeObjectURL(state.fullImageUrl);
    state.fullImageUrl = blob ? url : null;
    ui.fullImage.src = url;
  }, () => isCurrent("image", image.id));
  ui.fullImage.alt = `Chest X-ray, image ${image.id}`;
  definitionList(ui.metadata, imageRows(image));
  const indexed = image.index_state === "indexed";
  ui.indexHint.hidden = indexed;
  ui.indexHint.textContent = indexed ? "" : "This image is not indexed for the active model yet; \"More like this\" needs it indexed.";
  ui.reindexImage.hidden = indexed;
  ui.imageDetail.hidden = false;
}

/**
 * Shows a stored image through `show(url, isBlob)`. Browsers cannot draw DICOM: the stored
 * (de-identified) file is rendered to a PNG by the gateway, as a DICOM query is. Its thumbnail
 * shows meanwhile, and stays if the rendering fails. `wanted()` says whether it is still wanted.
 */
async function showStoredPicture(image, show, wanted) {
  if (image.mime_type !== "application/dicom") {
    show(image.file_url, false);
    return;
  }
  show(image.thumbnail_url, false);
  try {
    const stored = await (await apiFetch(`/images/${image.id}/file`)).blob();
    const body = new FormData();
    body.append("image", stored, `image-${image.id}.dcm`);
    const rendered = await (await apiFetch("/previews", { method: "POST", body })).blob();
    if (wanted()) show(URL.createObjectURL(rendered), true);
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

/** "More like this": the open image (or `region` of it) as the query. */
async function searchImage(id, region, options, marks, button) {
  const query = { file: null, imageId: id, region, name: `image ${id}`, url: null };
  const title = region ? `Similar to a region of image ${id}` : `Similar to image ${id}`;
  const list = newList(query, options, title, marks);
  if (!(await runList(list, button))) return;
  state.similar = { imageId: id, title, lists: [list], hash: hashOf("image", list) };
  if (isCurrent("image", id)) {
    setAddress(state.similar.hash);
    renderHolder(state.similar);
    ui.resultsTitle.focus();
  }
}

function findSimilar() {
  const here = parseHash(location.hash);
  const options = here.view === "image" && formOptions();
  if (options) searchImage(here.id, null, options, new Map(), ui.moreLikeThis);
}

/** Indexes the open image for the active model (editor): what `medsearch reindex` does. */
async function reindexImage() {
  const here = parseHash(location.hash);
  if (here.view !== "image") return;
  const payload = await runRequest(ui.reindexImage, `Indexing image ${here.id}…`, () =>
    fetchJson(`/images/${here.id}/index`, { method: "POST" }),
  );
  if (payload && isCurrent("image", here.id)) openImage(here.id, here.params);
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
  // Results shown earlier must not offer the deleted image any more, nor keep it marked.
  for (const holder of [state.search, state.similar]) {
    for (const list of holder ? holder.lists : []) {
      list.results = list.results.filter((result) => result.image.id !== id);
      list.marks.delete(id);
    }
  }
  if (state.similar && state.similar.imageId === id) state.similar = null;
  state.notice = `Deleted image ${id}.`;
  loadStats();
  if (isCurrent("image", id)) location.hash = "#/";
}

// ---- start ----

async function start() {
  initMaps();
  initCompare();
  initResults({ refine: refineList, queryUrl: queryUrlOf, queryTargets: queryTargetsOf, emptyMessage });
  showQueryRegion = regionBar(ui.queryRegion, queryRegion, (region, button) => {
    const options = state.query && formOptions();
    if (options) searchForm(region, options, button);
  });
  showImageRegion = regionBar(ui.imageRegion, imageRegion, (region, button) => {
    const here = parseHash(location.hash);
    const options = here.view === "image" && formOptions();
    if (options) searchImage(here.id, region, options, new Map(), button);
  });
  ui.signOut.addEventListener("click", signOut);
  ui.searchForm.addEventListener("submit", submitSearch);
  ui.queryFile.addEventListener("change", () => chooseQueryFiles(ui.queryFile.files));
  wireDropZone();
  ui.moreLikeThis.addEventListener("click", findSimilar);
  ui.reindexImage.addEventListener("click", reindexImage);
  ui.deleteImage.addEventListener("click", openDeleteConfirm);
  ui.deleteCancel.addEventListener("click", () => closeDeleteConfirm());
  ui.deleteConfirmButton.addEventListener("click", deleteImage);
  initAudit(() => isCurrent("audit"));
  initAdd({ imageHash, added: loadStats });
  initCollection(() => isCurrent("collection"));
  initDuplicates(() => isCurrent("duplicates"));
  // The map places the latest result lists: the search form's, else the open image's.
  initMap({ shown: () => isCurrent("map"), lastSearch: () => state.search || state.similar });
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
