// The duplicates view (every role): a scan of the whole collection for near-duplicate images,
// range of image IDs after range with POST /duplicates (what `medsearch duplicates` walks),
// the pairs grouped into clusters, each shown with its images side by side and flagged by
// whose images they are; exported as CSV or JSON. Nothing is changed anywhere.

import { UserError, fetchJson } from "./http.js";
import { byId, definitionList, el, plural, text } from "./dom.js";
import { clearError, showError, startTask } from "./messages.js";
import { csvText, download, metadataCell } from "./export.js";
import { formatCount } from "./charts.js";
import { imageHash } from "./results.js";

// Image IDs per request; each indexed image of a range is one nearest-neighbour search.
const RANGE = 5000;
const CLUSTERS_AT_ONCE = 100;
const THRESHOLD_RANGE = "A cosine similarity greater than 0 and at most 1 (1: the same direction).";
const OPEN_PAIRS = 6; // a cluster with more pairs lists them folded
const DIFFERENT = "different_patients";
const KIND_NAMES = { same_patient: "same patient", different_patients: "different patients", unknown_patient: "patient unknown" };
const CSV_HEADER = [
  "cluster", "cluster_kinds", "a", "b", "score", "kind",
  "a_dataset", "a_external_id", "a_patient_id", "b_dataset", "b_external_id", "b_patient_id",
];

const ui = {
  form: byId("duplicates-form"),
  threshold: byId("dup-threshold"),
  k: byId("dup-k"),
  defaults: byId("dup-defaults"),
  scan: byId("dup-scan"),
  stop: byId("dup-stop"),
  progressBox: byId("dup-progress-box"),
  progress: byId("dup-progress"),
  progressText: byId("dup-progress-text"),
  results: byId("dup-results"),
  resultsTitle: byId("dup-results-title"),
  summary: byId("dup-summary"),
  onlyDifferent: byId("dup-only-different"),
  exportCsv: byId("dup-export-csv"),
  exportJson: byId("dup-export-json"),
  clusters: byId("dup-clusters"),
  more: byId("dup-more"),
};
const state = {
  probed: false, // the API's defaults asked for once
  scan: null, // {controller} while a scan runs
  found: null, // the last scan's gathered pairs (see newScan)
  clusters: [],
  shown: 0, // clusters listed so far (of those the filter keeps)
};
let shownNow = () => false;

/** Wires the view; `shown()` says whether it is the view on screen. */
export function initDuplicates(shown) {
  shownNow = shown;
  ui.form.addEventListener("submit", scan);
  ui.stop.addEventListener("click", () => state.scan && state.scan.controller.abort());
  ui.onlyDifferent.addEventListener("change", () => renderClusters(true));
  ui.more.addEventListener("click", () => renderClusters(false));
  ui.exportCsv.addEventListener("click", () => download("medsearch-duplicates", "csv", toCsv()));
  ui.exportJson.addEventListener("click", () => download("medsearch-duplicates", "json", toJson()));
}

/** On each visit: the first one asks the API for its default threshold and k. */
export async function openDuplicates() {
  if (state.probed) return;
  state.probed = true;
  try {
    // An empty range: the answer holds the defaults, and scans nothing.
    const answer = await postRange(0, 1, {});
    if (!ui.threshold.value) ui.threshold.value = String(answer.threshold);
    if (!ui.k.value) ui.k.value = String(answer.k);
    ui.defaults.textContent = `${THRESHOLD_RANGE} The API's default, for model ${answer.model_id}, is ` +
      `${answer.threshold}; its default k is ${answer.k}.`;
  } catch (error) {
    state.probed = false;
    ui.defaults.textContent = `${THRESHOLD_RANGE} The API's defaults are unknown (${error.message}); an empty field uses them.`;
  }
}

function postRange(first, end, params, signal) {
  return fetchJson("/duplicates", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ from: first, to: end, ...params }),
    signal,
  });
}

/** The threshold and k of the form; an empty field is left to the API's default. The API
 * judges the values (a threshold outside (0, 1] is its 400). */
function readParams() {
  const params = {};
  for (const [name, input, example] of [["threshold", ui.threshold, "0.999"], ["k", ui.k, "10"]]) {
    if (input.validity.badInput) throw new UserError(`The ${name} must be a number, e.g. ${example}.`);
    if (input.value.trim() !== "") params[name] = Number(input.value);
  }
  return params;
}

function newScan() {
  return {
    modelId: null,
    threshold: null,
    k: null,
    vectors: 0,
    pairs: new Map(), // "a-b" → pair; a pair across two ranges comes back from both
    images: new Map(), // image ID → the Image record
    scannedTo: 0, // the image IDs [0, scannedTo) are scanned
    end: null, // one past the highest image ID the catalog has given
    complete: false,
  };
}

function gather(found, answer, scannedTo) {
  found.modelId = answer.model_id;
  found.threshold = answer.threshold;
  found.k = answer.k;
  found.vectors += answer.vectors || 0;
  for (const pair of answer.pairs || []) {
    const key = `${pair.a}-${pair.b}`;
    const before = found.pairs.get(key);
    if (!before || pair.score > before.score) found.pairs.set(key, pair);
  }
  for (const image of answer.images || []) found.images.set(image.id, image);
  found.scannedTo = scannedTo;
  found.end = (answer.max_image_id ?? 0) + 1;
}

async function scan(event) {
  event.preventDefault();
  if (state.scan) return;
  let params;
  try {
    params = readParams();
  } catch (error) {
    showError(error);
    return;
  }
  clearError();
  const controller = new AbortController();
  const found = newScan();
  state.scan = { controller };
  setScanning(true);
  showProgress(found);
  const finish = startTask("Scanning the collection for near-duplicates…");
  let outcome = "complete";
  try {
    for (let first = 0; found.end === null || first < found.end; first += RANGE) {
      const answer = await postRange(first, first + RANGE, params, controller.signal);
      gather(found, answer, first + RANGE);
      showProgress(found);
    }
    found.complete = true;
  } catch (error) {
    outcome = controller.signal.aborted ? "stopped" : "failed";
    if (outcome === "failed") showError(error);
  } finally {
    finish();
    state.scan = null;
    setScanning(false);
  }
  showProgress(found, outcome);
  if (!found.scannedTo) return; // Nothing scanned: the last results, if any, stay.
  state.found = found;
  state.clusters = clustersOf([...found.pairs.values()]);
  renderClusters(true);
  ui.results.hidden = false;
  if (shownNow()) ui.resultsTitle.focus();
}

function setScanning(on) {
  ui.scan.disabled = on;
  ui.stop.disabled = !on;
  ui.threshold.disabled = on;
  ui.k.disabled = on;
  // A disabled control loses the focus: it moves to the button that works now.
  const lost = [document.body, ui.scan, ui.threshold, ui.k, ui.stop].includes(document.activeElement);
  if (lost && shownNow()) (on ? ui.stop : ui.scan).focus();
}

function showProgress(found, outcome = "running") {
  ui.progressBox.hidden = false;
  if (found.end === null) {
    ui.progress.removeAttribute("value"); // not known yet how far it goes
    ui.progressText.textContent = outcome === "running"
      ? `Scanning image IDs 0–${formatCount(RANGE - 1)}…`
      : `${outcome === "stopped" ? "Stopped" : "Failed"} before the first range was scanned.`;
    return;
  }
  const done = Math.min(found.scannedTo, found.end);
  ui.progress.max = found.end;
  ui.progress.value = done;
  const where = `image IDs 0–${formatCount(done - 1)} of 0–${formatCount(found.end - 1)}`;
  const pairs = plural(found.pairs.size, "pair");
  const said = {
    running: `Scanned ${where}: ${pairs} so far…`,
    complete: `Scanned ${where}: ${pairs}.`,
    stopped: `Stopped after ${where}: ${pairs}; the clusters below are of those IDs only.`,
    failed: `Failed after ${where}: ${pairs}; the clusters below are of those IDs only.`,
  };
  ui.progressText.textContent = said[outcome];
}

/** The pairs grouped into connected sets of images (union-find), numbered from 1 in the
 * order of their lowest image ID, as `medsearch duplicates` numbers them. */
export function clustersOf(pairs) {
  const parent = new Map();
  const root = (id) => {
    if (!parent.has(id)) parent.set(id, id);
    while (parent.get(id) !== id) {
      parent.set(id, parent.get(parent.get(id))); // halve the path as it is walked
      id = parent.get(id);
    }
    return id;
  };
  const ordered = [...pairs].sort((p, q) => p.a - q.a || p.b - q.b);
  for (const pair of ordered) {
    const first = root(pair.a);
    const second = root(pair.b);
    if (first !== second) parent.set(Math.max(first, second), Math.min(first, second));
  }
  const groups = new Map();
  for (const pair of ordered) {
    const at = root(pair.a);
    if (!groups.has(at)) groups.set(at, []);
    groups.get(at).push(pair);
  }
  return [...groups.keys()].sort((x, y) => x - y).map((at, i) => {
    const group = groups.get(at);
    const members = [...new Set(group.flatMap((pair) => [pair.a, pair.b]))].sort((x, y) => x - y);
    const kinds = [...new Set(group.map((pair) => pair.kind))].sort();
    return { number: i + 1, members, pairs: group, kinds };
  });
}

function kept() {
  return ui.onlyDifferent.checked ? state.clusters.filter((c) => c.kinds.includes(DIFFERENT)) : state.clusters;
}

/** Lists the clusters the filter keeps: afresh, or the next ones after those listed. */
function renderClusters(afresh) {
  const found = state.found;
  if (!found) return;
  const clusters = kept();
  const different = state.clusters.filter((cluster) => cluster.kinds.includes(DIFFERENT)).length;
  ui.summary.textContent = state.clusters.length
    ? `${plural(state.clusters.length, "cluster")} of ${plural(found.pairs.size, "pair")}, ` +
      `${different} with images of different patients · threshold ${found.threshold}, k ${found.k}, ` +
      `model ${found.modelId} · ${formatCount(found.vectors)} indexed images scanned` +
      (found.complete ? "" : ` (image IDs 0–${formatCount(Math.min(found.scannedTo, found.end) - 1)} only)`)
    : `No near-duplicates at threshold ${found.threshold} among ${formatCount(found.vectors)} indexed images.`;
  ui.exportCsv.disabled = ui.exportJson.disabled = !state.clusters.length;
  if (afresh) {
    state.shown = 0;
    ui.clusters.replaceChildren();
  }
  const next = clusters.slice(state.shown, state.shown + CLUSTERS_AT_ONCE);
  ui.clusters.append(...next.map((cluster) => clusterItem(cluster, found.images)));
  state.shown += next.length;
  const left = clusters.length - state.shown;
  ui.more.hidden = left <= 0;
  ui.more.textContent = `Show ${Math.min(left, CLUSTERS_AT_ONCE)} more of ${left} clusters`;
  if (!afresh && next.length) ui.clusters.children[state.shown - next.length].querySelector("h3").focus();
}

function kindBadge(kind) {
  const badge = el("span", { className: `kind kind-${kind in KIND_NAMES ? kind : "other"}` }, KIND_NAMES[kind] || text(kind));
  badge.dataset.kind = kind;
  return badge;
}

function clusterItem(cluster, images) {
  const titleId = `dup-cluster-${cluster.number}`;
  const alert = cluster.kinds.includes(DIFFERENT);
  const heading = el("h3", { id: titleId, className: "cluster-title", tabIndex: -1 },
    `Cluster ${cluster.number}: ${plural(cluster.members.length, "image")}`);
  const head = el("div", { className: "cluster-head" }, heading, el("span", { className: "cluster-kinds" }, ...cluster.kinds.map(kindBadge)));
  const item = el("li", { className: alert ? "cluster cluster-alert" : "cluster" }, head);
  item.setAttribute("aria-labelledby", titleId);
  item.dataset.members = cluster.members.join(",");
  item.dataset.kinds = cluster.kinds.join(" ");
  const pairList = el("ul", { className: "cluster-pairs" }, ...cluster.pairs.map(pairItem));
  pairList.setAttribute("aria-label", `Pairs of cluster ${cluster.number}`);
  const scores = cluster.pairs.map((pair) => pair.score);
  const range = scores.length > 1
    ? `scores ${formatPairScore(Math.min(...scores))} to ${formatPairScore(Math.max(...scores))}`
    : `score ${formatPairScore(scores[0])}`;
  // A large cluster's pairs are folded away until asked for; its images come first.
  const pairs = el("details", { className: "cluster-pair-list", open: cluster.pairs.length <= OPEN_PAIRS },
    el("summary", {}, `${plural(cluster.pairs.length, "pair")}, ${range}`), pairList);
  if (alert) {
    item.append(el("p", { className: "cluster-warning" },
      "Images of different patients: likely a filing or labelling error. Check their patient IDs."));
  }
  item.append(
    el("ul", { className: "cluster-members" }, ...cluster.members.map((id) => memberCard(id, images.get(id)))),
    pairs,
  );
  return item;
}

function memberCard(id, image) {
  const meta = (image && image.metadata) || {};
  const picture = image
    ? el("img", { className: "result-thumb", src: image.thumbnail_url, alt: `Thumbnail of image ${id}`, loading: "lazy", decoding: "async" })
    : el("span", { className: "result-thumb cluster-missing" }, "Not in the catalog");
  const link = el("a", { className: "cluster-link", href: imageHash(id) },
    picture, el("span", { className: "cluster-image-id" }, `Image ${id}`));
  link.dataset.imageId = String(id);
  const rows = [["Patient", text(meta.patient_id)], ["External ID", text(meta.external_id)], ["Dataset", text(meta.dataset)]];
  const card = el("li", { className: "cluster-member" }, link, definitionList(el("dl", { className: "result-meta" }), rows));
  card.dataset.imageId = String(id);
  return card;
}

function pairItem(pair) {
  const item = el("li", { className: "cluster-pair" },
    el("span", {}, `Images ${pair.a} and ${pair.b}`),
    el("span", { className: "result-score" }, `score ${formatPairScore(pair.score)}`),
    kindBadge(pair.kind));
  item.dataset.pair = `${pair.a}-${pair.b}`;
  return item;
}

// Near-duplicates score 0.999 and up: three decimals would call them all 1.000 (six, as the
// command's CSV writes them).
function formatPairScore(score) {
  return typeof score === "number" ? score.toFixed(6) : "—";
}

/** One row per pair, with its cluster and both images' dataset, external ID and patient. */
function toCsv() {
  const images = state.found.images;
  const side = (id) => {
    const meta = (images.get(id) || {}).metadata || {};
    return ["dataset", "external_id", "patient_id"].map((key) => metadataCell(meta[key]));
  };
  const rows = state.clusters.flatMap((cluster) =>
    cluster.pairs.map((pair) => [
      cluster.number, cluster.kinds.join(" "), pair.a, pair.b, pair.score, pair.kind, ...side(pair.a), ...side(pair.b),
    ]),
  );
  return csvText([CSV_HEADER, ...rows]);
}

function toJson() {
  const found = state.found;
  return {
    exported_at: new Date().toISOString(),
    model_id: found.modelId,
    threshold: found.threshold,
    k: found.k,
    vectors: found.vectors,
    scanned: { from: 0, to: Math.min(found.scannedTo, found.end), complete: found.complete },
    clusters: state.clusters.map((cluster) => ({
      cluster: cluster.number,
      kinds: cluster.kinds,
      members: cluster.members.map((id) => ({ image_id: id, metadata: (found.images.get(id) || {}).metadata || {} })),
      pairs: cluster.pairs.map(({ a, b, score, kind }) => ({ a, b, score, kind })),
    })),
  };
}
