// The map view (every role from reader): each indexed image of the active model as a point on a
// 2-D map of the collection (GET /map: the model's vectors reduced by PCA and laid out by UMAP
// in a background job of the search service), coloured by a metadata field. Pointing at a point
// shows its image, a click opens it, a lasso selects a group to list and download, and the last
// search can be placed on the map. An editor starts the job that makes (or remakes) the map.
//
// One <canvas>, never a DOM node per point: each redraw writes the points' pixels into one
// ImageData buffer (a few ms at 112,120 points), then draws the few overlays (rings, lasso,
// marker) with the 2-D API. A grid index built once per map finds the point under the pointer
// and the points inside a lasso without a scan of them all. The map (several MB at 112k) is
// fetched once per visit and again when a job finishes; never per interaction.
//
// For tests and measurements the canvas keeps what it drew: data-scale, data-offset-x and
// data-offset-y (CSS px: screen = offset + scale × the point's unit-square coordinate),
// data-points (the points drawn) and data-draw-ms (the last redraw's time).
//
// The map's data (the typed map, its colourings, the grid index, the lasso's polygon test, a
// point's attributes) comes from the pure functions of mapdata.js; this module is the page: its
// state, its requests, its drawing and its DOM.

import { fetchJson } from "./http.js";
import { byId, el, formatDate, plural, text } from "./dom.js";
import { runRequest, showError } from "./messages.js";
import { formatCount } from "./charts.js";
import { csvText, download } from "./export.js";
import { imageHash } from "./results.js";
import {
  BACKGROUND,
  FIELD_NAMES,
  attributeRows,
  attributesOf,
  colouring,
  inPolygon,
  packed,
  prepareMap,
  visitBox,
} from "./mapdata.js";

const POLL_MS = 2000; // a running job is asked for its progress this often
const HOVER_PX = 6; // how near the pointer a point must be to count as under it
const CLICK_PX = 4; // a press that moves less than this is a click, not a drag
const PAD_PX = 12; // room around the points when the whole map shows
const MIN_ZOOM = 0.5;
const MAX_ZOOM = 512;
const ZOOM_STEP = 1.5;
const PAN_STEP_PX = 60;
const WHEEL_RATE = 0.002; // the wheel zooms by e^(-rate × pixels scrolled)
const LISTED = 60; // selected images shown as thumbnails
const JOB_ENDS = { failed: "failed", interrupted: "was interrupted" };

const ui = {
  summary: byId("map-summary"),
  changes: byId("map-changes"),
  job: byId("map-job"),
  jobText: byId("map-job-text"),
  jobProgress: byId("map-job-progress"),
  make: byId("map-make"),
  body: byId("map-body"),
  empty: byId("map-empty"),
  colour: byId("map-colour"),
  zoomIn: byId("map-zoom-in"),
  zoomOut: byId("map-zoom-out"),
  reset: byId("map-reset"),
  lasso: byId("map-lasso"),
  showSearch: byId("map-show-search"),
  searchNote: byId("map-search-note"),
  stage: byId("map-stage"),
  canvas: byId("map-canvas"),
  tooltip: byId("map-tooltip"),
  legendTitle: byId("map-legend-title"),
  legend: byId("map-legend"),
  selection: byId("map-selection"),
  selectionTitle: byId("map-selection-title"),
  selectionSummary: byId("map-selection-summary"),
  selectionClear: byId("map-selection-clear"),
  selectionCsv: byId("map-selection-csv"),
  breakdown: byId("map-selection-breakdown"),
  images: byId("map-selection-images"),
};

const state = {
  map: null, // the map as drawn (see prepareMap)
  loading: false,
  job: null, // the last map job seen
  pollTimer: 0,
  colours: null, // the colouring by the chosen field (see colouring)
  view: { zoom: 1, cx: 0.5, cy: 0.5 }, // the unit-square point at the canvas's centre
  frame: 0, // a redraw asked for, not yet drawn
  image: null, // the ImageData the points are written into, kept while the canvas's size is
  pixels: null, // its pixels as 32-bit words
  hover: -1, // the point under the pointer
  press: null, // a drag in progress: {lasso, x, y, lastX, lastY, moved, path}
  lassoOn: false,
  selection: null, // {indices, inside, polygon}: the points a lasso took, and its outline
  search: null, // {holder, places}: the last search placed on the map
};
let hooks = { shown: () => false, lastSearch: () => null };

/**
 * Wires the view. `pageHooks`:
 *  - shown(): whether the map view is on screen (a job is followed only while it is);
 *  - lastSearch(): the page's latest result lists ({title, lists}, see app.js), or null.
 */
export function initMap(pageHooks) {
  hooks = pageHooks;
  ui.make.addEventListener("click", startJob);
  ui.colour.addEventListener("change", recolour);
  ui.zoomIn.addEventListener("click", () => zoomBy(ZOOM_STEP));
  ui.zoomOut.addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
  ui.reset.addEventListener("click", resetView);
  ui.lasso.addEventListener("click", () => setLasso(!state.lassoOn));
  ui.showSearch.addEventListener("click", toggleSearch);
  ui.selectionClear.addEventListener("click", clearSelection);
  ui.selectionCsv.addEventListener("click", downloadSelection);
  const canvas = ui.canvas;
  canvas.addEventListener("pointerdown", press);
  canvas.addEventListener("pointermove", movePointer);
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", cancelPress);
  canvas.addEventListener("pointerleave", () => state.press || pointTo(-1));
  canvas.addEventListener("wheel", wheel, { passive: false });
  canvas.addEventListener("keydown", key);
  // Drawn again at the canvas's new size: when the view shows, on a rotated phone.
  new ResizeObserver(() => {
    pointTo(-1);
    requestDraw();
  }).observe(canvas);
}

/** On each visit: the map as it is now (and the job that runs, if one does). */
export function openMap() {
  pointTo(-1);
  if (state.search && state.search.holder !== hooks.lastSearch()) hideSearch();
  updateSearchButton();
  loadMap();
}

// ---- the map and its jobs ----

async function loadMap() {
  if (state.loading) return;
  state.loading = true;
  let missing = false;
  const read = () => fetchJson("/map", { cache: "no-store" });
  const answer = await runRequest(null, "Loading the collection map…", read, (error) => {
    if (error.status === 404) missing = true;
    else showError(error);
  });
  state.loading = false;
  if (answer) {
    showMap(answer);
    followJob(answer.job);
  } else if (missing) {
    state.map = null;
    followJob(await lastJob());
  } else if (!state.map) {
    showEmpty("The map could not be loaded.");
  }
}

/** The model's last map job, or null when none was ever started (or it cannot be known). */
async function lastJob() {
  try {
    return await fetchJson("/map/jobs/current", { cache: "no-store" });
  } catch (error) {
    if (error.status !== 404) showError(error);
    return null;
  }
}

async function startJob() {
  const start = () => fetchJson("/map/jobs", { method: "POST" });
  const job = await runRequest(ui.make, "Starting a map job…", start, (error) => {
    showError(error); // the problem's own words: one runs already, too few images
    if (error.status === 409) schedulePoll(0);
  });
  if (job) followJob(job);
}

/** Shows `job` and, while it runs and the view shows, asks for its progress every POLL_MS. */
function followJob(job) {
  const was = state.job;
  state.job = job || null;
  renderJob();
  if (state.map) renderChanges();
  else if (running(job)) showEmpty("No map of the collection exists yet; the first one is being made.");
  else showEmpty("No map of the collection exists yet. An editor can make one with “Make the map”.");
  if (running(job)) schedulePoll(POLL_MS);
  // Finished since it was last seen: its map is the one to show.
  else if (running(was) && job && job.state === "done" && was.id === job.id) loadMap();
}

function schedulePoll(delay) {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(pollJob, delay);
}

async function pollJob() {
  state.pollTimer = 0;
  if (!hooks.shown()) return; // followed again on the next visit
  let job;
  try {
    job = await fetchJson("/map/jobs/current", { cache: "no-store" });
  } catch (error) {
    if (error.status !== 404) showError(error);
    return;
  }
  followJob(job);
}

function running(job) {
  return Boolean(job && job.state === "running");
}

function renderJob() {
  const job = state.job;
  ui.make.textContent = state.map ? "Recompute the map" : "Make the map";
  ui.make.disabled = running(job);
  ui.job.hidden = !job || job.state === "done";
  ui.job.classList.toggle("cmap-job-failed", Boolean(job && JOB_ENDS[job.state]));
  ui.jobProgress.hidden = !running(job);
  if (!job || job.state === "done") return;
  if (running(job)) {
    const progress = Math.min(1, Math.max(0, Number(job.progress) || 0));
    ui.jobProgress.value = progress;
    const who = job.automatic ? "Making a new map (started by itself: the map is out of date)" : "Making the map";
    ui.jobText.textContent = `${who}: ${text(job.stage)}, ${Math.round(progress * 100)}% · ` +
      `${images(job.vectors)} · started ${formatDate(job.started_at)}`;
    return;
  }
  const end = JOB_ENDS[job.state] || text(job.state);
  ui.jobText.textContent = `The last map job ${end} while ${text(job.stage)}: ${text(job.error)}.` +
    (state.map ? " The map shown is the one before it." : "");
}

function showEmpty(message) {
  ui.body.hidden = true;
  ui.summary.textContent = "";
  ui.changes.textContent = "";
  ui.empty.hidden = false;
  ui.empty.textContent = message;
  renderJob();
}

/** Shows a map answer; the same map as before (read again) keeps its view and selection. */
function showMap(answer) {
  const { points, fields, ...meta } = answer;
  const same = state.map && state.map.meta.made_by_job === meta.made_by_job && state.map.n === (points.id || []).length;
  if (same) {
    state.map.meta = meta;
  } else {
    state.map = prepareMap(meta, points, fields);
    state.selection = null;
    state.hover = -1;
    hideSearch();
    ui.selection.hidden = true;
    state.colours = null;
    resetView();
  }
  ui.empty.hidden = true;
  ui.body.hidden = false;
  renderSummary();
  renderChanges();
  renderJob();
  recolour();
}

function renderSummary() {
  const map = state.map;
  const meta = map.meta;
  const parameters = meta.parameters || {};
  const parts = [`Computed ${formatDate(meta.computed_at)}`, images(map.n)];
  if (typeof meta.explained_variance === "number") {
    const dimensions = parameters.pca_dimensions ? ` in ${parameters.pca_dimensions} dimensions` : "";
    parts.push(`PCA kept ${percent(meta.explained_variance)} of the variance${dimensions}`);
  }
  if (typeof meta.seconds === "number") parts.push(`made in ${Math.round(meta.seconds)} s`);
  parts.push(`model ${text(meta.model_id)}`);
  ui.summary.textContent = parts.join(" · ");
}

function renderChanges() {
  if (!state.map.meta.changes) {
    // Milvus did not answer the counts: the map itself is a file and still shows.
    ui.changes.textContent = "What changed since it was made cannot be counted now.";
    return;
  }
  const changes = state.map.meta.changes;
  const added = changes.added || 0;
  const deleted = changes.deleted || 0;
  if (!added && !deleted) {
    ui.changes.textContent = "No images were added or deleted since.";
    return;
  }
  let said = `Since it was made, ${images(added)} added (not on it yet) and ${formatCount(deleted)} deleted (still on it).`;
  if (changes.stale) {
    const share = percent(changes.stale_fraction ?? 0.1);
    said += running(state.job)
      ? ` That is ${share} of it or more: a new map is being made, and this one shows until it is done.`
      : ` That is ${share} of it or more: the map is out of date.`;
  }
  ui.changes.textContent = said;
}

/** "1 image", "112,120 images". */
function images(count) {
  return `${formatCount(count)} image${count === 1 ? "" : "s"}`;
}

function percent(fraction) {
  return `${Math.round(fraction * 1000) / 10}%`;
}

// ---- the colour field and its legend ----

function recolour() {
  const map = state.map;
  if (!map) return;
  const field = ui.colour.value in FIELD_NAMES ? ui.colour.value : "finding";
  state.colours = colouring(map, field);
  ui.legendTitle.textContent = `Images by ${FIELD_NAMES[field]}`;
  ui.legend.replaceChildren(...state.colours.entries.map((entry) => legendItem(entry, entry.count)));
  ui.canvas.setAttribute("aria-label", `Map of the collection: ${images(map.n)}, coloured by ` +
    `${FIELD_NAMES[field]}. The list beside it gives each colour's ${FIELD_NAMES[field]} and its images.`);
  if (state.selection) renderSelection();
  requestDraw();
}

function legendItem(entry, count) {
  const swatch = el("span", { className: "cmap-swatch" });
  swatch.style.background = entry.colour;
  const item = el("li", {}, swatch, el("span", { className: "cmap-legend-label" }, entry.label),
    el("span", { className: "cmap-legend-count" }, formatCount(count)));
  item.dataset.key = entry.key;
  item.dataset.count = String(count);
  return item;
}

// ---- the view: where the unit square lies on the canvas ----

/** Screen (CSS px) = offset + scale × unit coordinate. */
function transform() {
  const { bounds } = state.map;
  const width = ui.canvas.clientWidth;
  const height = ui.canvas.clientHeight;
  const fit = Math.max(1e-6, Math.min(
    (width - 2 * PAD_PX) / (bounds.maxX - bounds.minX || 1),
    (height - 2 * PAD_PX) / (bounds.maxY - bounds.minY || 1),
  ));
  const scale = fit * state.view.zoom;
  return { width, height, scale, offsetX: width / 2 - state.view.cx * scale, offsetY: height / 2 - state.view.cy * scale };
}

function resetView() {
  if (!state.map) return;
  const { bounds } = state.map;
  state.view = { zoom: 1, cx: (bounds.minX + bounds.maxX) / 2, cy: (bounds.minY + bounds.maxY) / 2 };
  viewChanged();
}

/** Zooms by `factor`, keeping the map's point at (sx, sy) (CSS px on the canvas) in place. */
function zoomAt(factor, sx, sy) {
  if (!state.map) return;
  const before = transform();
  const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, state.view.zoom * factor));
  const u = (sx - before.offsetX) / before.scale;
  const v = (sy - before.offsetY) / before.scale;
  const scale = (before.scale * zoom) / state.view.zoom;
  state.view = { zoom, cx: u - (sx - before.width / 2) / scale, cy: v - (sy - before.height / 2) / scale };
  viewChanged();
}

function zoomBy(factor) {
  zoomAt(factor, ui.canvas.clientWidth / 2, ui.canvas.clientHeight / 2);
}

function panBy(dx, dy) {
  if (!state.map) return;
  const { scale } = transform();
  state.view = { ...state.view, cx: state.view.cx - dx / scale, cy: state.view.cy - dy / scale };
  viewChanged();
}

function viewChanged() {
  ui.zoomIn.disabled = state.view.zoom >= MAX_ZOOM;
  ui.zoomOut.disabled = state.view.zoom <= MIN_ZOOM;
  if (ui.canvas.clientWidth) describeView(transform());
  pointTo(-1);
  requestDraw();
}

/** The view on the canvas element, at once: where the next drawing (and the pointer) puts points. */
function describeView(t) {
  Object.assign(ui.canvas.dataset, { scale: String(t.scale), offsetX: String(t.offsetX), offsetY: String(t.offsetY) });
}

// ---- drawing ----

function requestDraw() {
  if (!state.frame) state.frame = requestAnimationFrame(draw);
}

function draw() {
  state.frame = 0;
  const map = state.map;
  const canvas = ui.canvas;
  if (!map || !state.colours || !canvas.clientWidth) return;
  const began = performance.now();
  const dpr = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * dpr);
  const height = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  if (!state.image || state.image.width !== width || state.image.height !== height) {
    state.image = context.createImageData(width, height);
    state.pixels = new Uint32Array(state.image.data.buffer);
  }
  const t = transform();
  const pixels = state.pixels;
  pixels.fill(packed(BACKGROUND, 0));
  const points = { x: map.x, y: map.y, ox: t.offsetX * dpr, oy: t.offsetY * dpr, scale: t.scale * dpr, width, height };
  const size = Math.max(1, Math.round(pointSize(map.n) * dpr));
  const { order, entryOf, full, faded } = state.colours;
  let drawn;
  if (state.selection) {
    // Outside the selection faded beneath it; inside in full colour on top.
    const inside = state.selection.inside;
    drawn = plot(pixels, points, order, entryOf, faded, size, inside, 0);
    drawn += plot(pixels, points, order, entryOf, full, size, inside, 1);
  } else {
    drawn = plot(pixels, points, order, entryOf, full, size, null, 0);
  }
  context.putImageData(state.image, 0, 0);
  context.setTransform(dpr, 0, 0, dpr, 0, 0);
  drawOverlays(context, t, size / dpr);
  context.setTransform(1, 0, 0, 1, 0, 0);
  describeView(t);
  Object.assign(canvas.dataset, { points: String(drawn), drawMs: (performance.now() - began).toFixed(1) });
}

/** A point's side in CSS px: larger for a small map and as the view zooms in. */
function pointSize(count) {
  const base = count < 2000 ? 4 : count < 20000 ? 3 : 2;
  return Math.min(8, base + Math.max(0, Math.floor(Math.log2(state.view.zoom))));
}

/**
 * Writes the points of `order` (those whose `only` flag is `wanted`, when `only` is given) as
 * squares of `size` device px into `pixels`; the number written (those on the canvas).
 */
function plot(pixels, points, order, entryOf, colours, size, only, wanted) {
  const { x, y, ox, oy, scale, width, height } = points;
  const half = size >> 1;
  let drawn = 0;
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    if (only && only[i] !== wanted) continue;
    const left = Math.floor(ox + scale * x[i]) - half;
    const top = Math.floor(oy + scale * y[i]) - half;
    if (left >= width || top >= height || left + size <= 0 || top + size <= 0) continue;
    const colour = colours[entryOf[i]];
    const x0 = left < 0 ? 0 : left;
    const x1 = left + size > width ? width : left + size;
    const y1 = top + size > height ? height : top + size;
    for (let row = top < 0 ? 0 : top; row < y1; row++) {
      const base = row * width;
      for (let column = x0; column < x1; column++) pixels[base + column] = colour;
    }
    drawn += 1;
  }
  return drawn;
}

/** The lasso, the last search's marker and rings, and the point under the pointer (CSS px). */
function drawOverlays(context, t, size) {
  const map = state.map;
  const at = (i) => [t.offsetX + t.scale * map.x[i], t.offsetY + t.scale * map.y[i]];
  context.lineJoin = "round";
  if (state.selection && state.selection.polygon.length > 2) {
    const outline = state.selection.polygon.map(([u, v]) => [t.offsetX + t.scale * u, t.offsetY + t.scale * v]);
    strokePath(context, outline, true, [6, 4]);
  }
  if (state.press && state.press.lasso && state.press.path.length > 1) strokePath(context, state.press.path, false, []);
  if (state.search) {
    const ring = size / 2 + 4;
    for (const place of state.search.places) for (const i of place.rings) ringAt(context, ...at(i), ring, 1.5);
    const numbered = state.search.places.length > 1;
    state.search.places.forEach((place, number) => {
      if (place.u === null) return;
      markerAt(context, t.offsetX + t.scale * place.u, t.offsetY + t.scale * place.v, numbered ? number + 1 : 0);
    });
  }
  if (state.hover >= 0 && state.hover < map.n) ringAt(context, ...at(state.hover), size / 2 + 4, 2.5);
}

/** A line dark on light, seen over any colour. */
function strokePath(context, path, closed, dash) {
  context.beginPath();
  path.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  if (closed) context.closePath();
  context.setLineDash(dash);
  context.strokeStyle = "#ffffff";
  context.lineWidth = 4;
  context.stroke();
  context.strokeStyle = "#17232d";
  context.lineWidth = 2;
  context.stroke();
  context.setLineDash([]);
}

function ringAt(context, x, y, radius, width) {
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.strokeStyle = "#ffffff";
  context.lineWidth = width + 2;
  context.stroke();
  context.strokeStyle = "#17232d";
  context.lineWidth = width;
  context.stroke();
}

/** A query's place (its own, or estimated): a ringed cross, numbered when several are placed. */
function markerAt(context, x, y, number) {
  context.beginPath();
  context.arc(x, y, 10, 0, 2 * Math.PI);
  context.fillStyle = "rgba(255, 255, 255, 0.85)";
  context.fill();
  context.beginPath();
  context.moveTo(x - 7, y - 7);
  context.lineTo(x + 7, y + 7);
  context.moveTo(x + 7, y - 7);
  context.lineTo(x - 7, y + 7);
  context.strokeStyle = "#b3261e";
  context.lineWidth = 3;
  context.stroke();
  ringAt(context, x, y, 10, 2);
  if (number) {
    context.font = "bold 13px system-ui, sans-serif";
    context.lineWidth = 3;
    context.strokeStyle = "#ffffff";
    context.strokeText(String(number), x + 13, y - 9);
    context.fillStyle = "#17232d";
    context.fillText(String(number), x + 13, y - 9);
  }
}

// ---- pointer and keys ----

function local(event) {
  const box = ui.canvas.getBoundingClientRect();
  return [event.clientX - box.left, event.clientY - box.top];
}

/** The point nearest (sx, sy) (CSS px on the canvas) within HOVER_PX, or -1. */
function pointAt(sx, sy) {
  const map = state.map;
  if (!map) return -1;
  const t = transform();
  const u = (sx - t.offsetX) / t.scale;
  const v = (sy - t.offsetY) / t.scale;
  const reach = HOVER_PX / t.scale;
  let best = -1;
  let nearest = reach * reach;
  visitBox(map.grid, u - reach, v - reach, u + reach, v + reach, (i) => {
    const distance = (map.x[i] - u) ** 2 + (map.y[i] - v) ** 2;
    if (distance <= nearest) {
      best = i;
      nearest = distance;
    }
  });
  return best;
}

function press(event) {
  if (!state.map || event.button !== 0) return;
  event.preventDefault(); // no text selection while dragging; the canvas takes the focus itself
  ui.canvas.focus();
  const [x, y] = local(event);
  ui.canvas.setPointerCapture(event.pointerId);
  const lasso = state.lassoOn || event.shiftKey;
  state.press = { lasso, x, y, lastX: x, lastY: y, moved: false, path: [[x, y]] };
  ui.canvas.classList.toggle("is-dragging", !lasso);
}

function movePointer(event) {
  if (!state.map) return;
  const [x, y] = local(event);
  const held = state.press;
  if (!held) {
    pointTo(pointAt(x, y), x, y);
    return;
  }
  if (Math.hypot(x - held.x, y - held.y) >= CLICK_PX) held.moved = true;
  if (held.lasso) {
    held.path.push([x, y]);
    requestDraw();
  } else if (held.moved) {
    panBy(x - held.lastX, y - held.lastY);
    held.lastX = x;
    held.lastY = y;
  }
}

function release(event) {
  const held = state.press;
  if (!held) return;
  state.press = null;
  ui.canvas.classList.remove("is-dragging");
  const [x, y] = local(event);
  if (!held.moved) {
    const i = pointAt(x, y);
    if (i >= 0) location.hash = imageHash(state.map.ids[i]);
    requestDraw();
  } else if (held.lasso) {
    held.path.push([x, y]);
    select(held.path);
  }
}

function cancelPress() {
  state.press = null;
  ui.canvas.classList.remove("is-dragging");
  requestDraw();
}

function wheel(event) {
  if (!state.map) return;
  event.preventDefault();
  const pixels = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? ui.canvas.clientHeight : 1;
  zoomAt(Math.exp(-event.deltaY * pixels * WHEEL_RATE), ...local(event));
}

function key(event) {
  if (event.altKey || event.ctrlKey || event.metaKey || !state.map) return;
  const pans = {
    ArrowLeft: [PAN_STEP_PX, 0],
    ArrowRight: [-PAN_STEP_PX, 0],
    ArrowUp: [0, PAN_STEP_PX],
    ArrowDown: [0, -PAN_STEP_PX],
  };
  if (event.key === "+" || event.key === "=") zoomBy(ZOOM_STEP);
  else if (event.key === "-" || event.key === "_") zoomBy(1 / ZOOM_STEP);
  else if (event.key === "0") resetView();
  else if (pans[event.key]) panBy(...pans[event.key]);
  else if (event.key === "Escape" && state.press) cancelPress();
  else return;
  event.preventDefault();
}

function setLasso(on) {
  state.lassoOn = on;
  ui.lasso.setAttribute("aria-pressed", String(on));
  ui.canvas.classList.toggle("is-lasso", on);
}

// ---- the tooltip ----

/** Shows point `i` (or nothing, with -1) under the pointer at (x, y). */
function pointTo(i, x = 0, y = 0) {
  const changed = i !== state.hover;
  state.hover = i;
  ui.canvas.classList.toggle("is-pointing", i >= 0);
  ui.tooltip.hidden = i < 0;
  if (i < 0) {
    if (changed) requestDraw();
    return;
  }
  if (changed) {
    fillTooltip(i);
    requestDraw();
  }
  // Beside the pointer, on the side with room.
  const gap = 14;
  const width = ui.tooltip.offsetWidth;
  const height = ui.tooltip.offsetHeight;
  const left = x + gap + width <= ui.stage.clientWidth ? x + gap : Math.max(0, x - gap - width);
  const top = y + gap + height <= ui.stage.clientHeight ? y + gap : Math.max(0, y - gap - height);
  ui.tooltip.style.left = `${left}px`;
  ui.tooltip.style.top = `${top}px`;
}

function fillTooltip(i) {
  const id = state.map.ids[i];
  const thumb = el("img", {
    className: "cmap-tooltip-thumb",
    src: thumbnailUrl(id),
    alt: `Thumbnail of image ${id}`,
    decoding: "async",
  });
  // A line per attribute, its name muted before it: room for long findings in a small box.
  const rows = attributeRows(attributesOf(state.map, i)).map(([label, value]) =>
    el("p", { className: "cmap-tooltip-row" }, el("span", { className: "cmap-tooltip-label" }, `${label} `), value));
  const body = el("div", { className: "cmap-tooltip-body" }, el("p", { className: "cmap-tooltip-title" }, `Image ${id}`), ...rows);
  ui.tooltip.replaceChildren(thumb, body);
  ui.tooltip.dataset.imageId = String(id);
}

function thumbnailUrl(id) {
  return `/api/v1/images/${encodeURIComponent(String(id))}/thumbnail`;
}

// ---- the lasso's selection ----

/** Selects the points inside `path` (CSS px on the canvas), closed back to its start. */
function select(path) {
  const map = state.map;
  const t = transform();
  const polygon = path.map(([x, y]) => [(x - t.offsetX) / t.scale, (y - t.offsetY) / t.scale]);
  const inside = new Uint8Array(map.n);
  const indices = [];
  if (polygon.length > 2) {
    const box = [Infinity, Infinity, -Infinity, -Infinity];
    for (const [u, v] of polygon) {
      box[0] = Math.min(box[0], u);
      box[1] = Math.min(box[1], v);
      box[2] = Math.max(box[2], u);
      box[3] = Math.max(box[3], v);
    }
    const flat = Float64Array.from(polygon.flat());
    visitBox(map.grid, ...box, (i) => {
      if (inPolygon(flat, map.x[i], map.y[i])) {
        inside[i] = 1;
        indices.push(i);
      }
    });
  }
  indices.sort((a, b) => a - b);
  state.selection = { indices, inside, polygon };
  renderSelection();
  requestDraw();
}

function renderSelection() {
  const map = state.map;
  const { indices } = state.selection;
  const count = indices.length;
  ui.selection.hidden = false;
  ui.selectionTitle.textContent = `Selected: ${images(count)}`;
  ui.selectionSummary.textContent = count
    ? `${formatCount(count)} of the map's ${images(map.n)}, by ${FIELD_NAMES[state.colours.field]}` +
      (count > LISTED ? `; the first ${LISTED} are shown.` : ".")
    : "No image lies inside the drawn outline.";
  ui.selection.dataset.count = String(count);
  ui.selectionCsv.disabled = !count;
  const { entries, entryOf } = state.colours;
  const counts = new Array(entries.length).fill(0);
  for (const i of indices) counts[entryOf[i]] += 1;
  ui.breakdown.setAttribute("aria-label", `The selected images by ${FIELD_NAMES[state.colours.field]}`);
  ui.breakdown.replaceChildren(...entries.flatMap((entry, at) => (counts[at] ? [legendItem(entry, counts[at])] : [])));
  ui.images.replaceChildren(...indices.slice(0, LISTED).map((i) => selectedImage(map.ids[i])));
}

function selectedImage(id) {
  const thumb = el("img", {
    className: "result-thumb",
    src: thumbnailUrl(id),
    alt: `Thumbnail of image ${id}`,
    loading: "lazy",
    decoding: "async",
  });
  const link = el("a", { className: "cmap-image-link", href: imageHash(id) }, thumb, el("span", {}, `Image ${id}`));
  link.dataset.imageId = String(id);
  return el("li", {}, link);
}

function clearSelection() {
  state.selection = null;
  ui.selection.hidden = true;
  requestDraw();
  ui.canvas.focus();
}

function downloadSelection() {
  const ids = state.selection.indices.map((i) => state.map.ids[i]);
  download("medsearch-map-selection", "csv", csvText([["image_id"], ...ids.map((id) => [id])]));
}

// ---- the last search on the map ----

function updateSearchButton() {
  const holder = hooks.lastSearch();
  const has = Boolean(holder && holder.lists.some((list) => list.results.length));
  ui.showSearch.hidden = !has;
  ui.showSearch.disabled = !has;
}

function toggleSearch() {
  if (state.search) {
    hideSearch();
    requestDraw();
    return;
  }
  const holder = hooks.lastSearch();
  const map = state.map;
  if (!holder || !map) return;
  if (!map.positions) map.positions = new Map(map.ids.map((id, i) => [id, i]));
  const places = holder.lists.filter((list) => list.results.length).map((list) => placeOf(map, list));
  state.search = { holder, places };
  ui.showSearch.setAttribute("aria-pressed", "true");
  ui.showSearch.textContent = "Hide my last search";
  ui.searchNote.hidden = false;
  ui.searchNote.textContent = places.map((place, i) => (places.length > 1 ? `${i + 1}: ` : "") + placeNote(place)).join(" ");
  const first = places.find((place) => place.u !== null);
  const t = transform();
  const x = first ? t.offsetX + t.scale * first.u : 0;
  const y = first ? t.offsetY + t.scale * first.v : 0;
  if (first && (x < PAD_PX || y < PAD_PX || x > t.width - PAD_PX || y > t.height - PAD_PX)) {
    // Out of sight: brought to the middle of the view, at the zoom the user chose.
    state.view = { ...state.view, cx: first.u, cy: first.v };
    viewChanged();
  } else {
    requestDraw();
  }
}

function hideSearch() {
  state.search = null;
  ui.showSearch.setAttribute("aria-pressed", "false");
  ui.showSearch.textContent = "Show my last search";
  ui.searchNote.hidden = true;
  ui.searchNote.textContent = "";
}

/**
 * Where a list's query lies: a stored image searched whole is at its own place on the map; any
 * other query (an upload, a region, marked images only) is estimated as the score-weighted mean
 * place of its results on the map.
 */
function placeOf(map, list) {
  const found = list.results.map((result) => ({ score: result.score, i: map.positions.get(result.image.id) }))
    .filter((result) => result.i !== undefined);
  const rings = found.map((result) => result.i);
  const stored = list.query.imageId !== null && list.query.imageId !== undefined && !list.query.region;
  const own = stored ? map.positions.get(list.query.imageId) : undefined;
  const place = { title: list.title, total: list.results.length, rings, exact: own !== undefined, u: null, v: null };
  if (own !== undefined) return { ...place, u: map.x[own], v: map.y[own], ownId: list.query.imageId };
  if (!found.length) return place;
  let weights = found.map((result) => Math.max(0, Number(result.score) || 0));
  if (!weights.some((w) => w > 0)) weights = weights.map(() => 1);
  const total = weights.reduce((sum, w) => sum + w, 0);
  const u = found.reduce((sum, result, at) => sum + weights[at] * map.x[result.i], 0) / total;
  const v = found.reduce((sum, result, at) => sum + weights[at] * map.y[result.i], 0) / total;
  return { ...place, u, v };
}

function placeNote(place) {
  const results = `${place.rings.length} of its ${plural(place.total, "result")}`;
  if (place.exact) {
    return `${place.title}: the query is image ${place.ownId}, marked at its own place; ${results} are on the map, ringed.`;
  }
  if (place.u === null) {
    return `${place.title}: none of its ${plural(place.total, "result")} are on this map (it was made before they were indexed).`;
  }
  return `${place.title}: the query itself is not on the map; the marker is an estimate from its nearest results, ` +
    `the score-weighted mean place of ${results}, ringed.`;
}
