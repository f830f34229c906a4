// Side by side: the query and one result in a dialog, zoomed and panned together, with the
// same brightness and contrast (a window/level for the eye, not for measuring) and the maps.
// Keyboard: + and − zoom, arrows pan, 0 resets, Escape closes (the <dialog>'s own cancel).

import { byId, formatScore } from "./dom.js";
import { MapLayer, mapsOn, onMapsToggled, setMapsOn } from "./maps.js";

const MIN_ZOOM = 1;
const MAX_ZOOM = 8;
const ZOOM_STEP = 1.25;
const PAN_STEP_PX = 40;

const ui = {
  dialog: byId("compare"),
  title: byId("compare-title"),
  close: byId("compare-close"),
  zoomIn: byId("compare-zoom-in"),
  zoomOut: byId("compare-zoom-out"),
  zoomLevel: byId("compare-zoom-level"),
  reset: byId("compare-reset"),
  brightness: byId("compare-brightness"),
  contrast: byId("compare-contrast"),
  maps: byId("compare-maps"),
  viewports: [byId("compare-query-viewport"), byId("compare-result-viewport")],
  stages: [byId("compare-query-stage"), byId("compare-result-stage")],
  images: [byId("compare-query-image"), byId("compare-result-image")],
  captions: [byId("compare-query-caption"), byId("compare-result-caption")],
  noQuery: byId("compare-no-query"),
};

const view = { zoom: 1, x: 0, y: 0 };
let layers = null;
let shown = null; // {list, result, opener, loadMaps} while the dialog is open

export function initCompare() {
  layers = ui.images.map((image) => new MapLayer(image));
  ui.close.addEventListener("click", () => ui.dialog.close());
  ui.dialog.addEventListener("close", closed);
  ui.zoomIn.addEventListener("click", () => zoomBy(ZOOM_STEP));
  ui.zoomOut.addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
  ui.reset.addEventListener("click", resetView);
  for (const slider of [ui.brightness, ui.contrast]) slider.addEventListener("input", applyFilter);
  ui.maps.addEventListener("change", () => setMapsOn(ui.maps.checked));
  onMapsToggled((on) => {
    ui.maps.checked = on;
    if (shown) drawMaps();
  });
  ui.dialog.addEventListener("keydown", key);
  for (const viewport of ui.viewports) {
    viewport.addEventListener("wheel", wheel, { passive: false });
    viewport.addEventListener("pointerdown", drag);
  }
}

/**
 * Opens the query of `list` (shown from `queryUrl`; null when the query is marked images only)
 * next to `result`. `loadMaps()` fetches the pair's maps when they are switched on; `opener`
 * gets the focus back on close.
 */
export function openCompare({ list, result, queryUrl, opener, loadMaps }) {
  shown = { list, result, opener, loadMaps };
  const image = result.image;
  ui.title.textContent = `Compare the query with result #${result.rank} (image ${image.id})`;
  const [queryImage, resultImage] = ui.images;
  ui.noQuery.hidden = Boolean(queryUrl);
  ui.stages[0].hidden = !queryUrl;
  if (queryUrl) {
    queryImage.src = queryUrl;
    queryImage.alt = "The query image";
  } else {
    queryImage.removeAttribute("src");
  }
  // Browsers cannot draw DICOM: its thumbnail stands in for it.
  resultImage.src = image.mime_type === "application/dicom" ? image.thumbnail_url : image.file_url;
  resultImage.alt = `Result #${result.rank}, image ${image.id}`;
  ui.captions[0].textContent = list.query.region
    ? `Query: region ${list.query.region.join(", ")} (px)`
    : "Query";
  ui.captions[1].textContent = `Result #${result.rank}: image ${image.id}, score ${formatScore(result.score)}`;
  ui.brightness.value = "100";
  ui.contrast.value = "100";
  ui.maps.checked = mapsOn();
  applyFilter();
  resetView();
  for (const layer of layers) layer.clear();
  ui.dialog.showModal();
  ui.zoomIn.focus();
  drawMaps();
}

function closed() {
  const opener = shown && shown.opener;
  shown = null;
  for (const layer of layers) layer.clear();
  if (opener && opener.isConnected) opener.focus();
}

/** The pair's maps when they are on: fetched first if the list has not got them yet. */
async function drawMaps() {
  const pair = shown;
  if (!pair) return;
  if (!mapsOn()) {
    for (const layer of layers) layer.clear();
    return;
  }
  const id = pair.result.image.id;
  if (!pair.list.maps.byId.has(id)) await pair.loadMaps();
  if (shown !== pair || !mapsOn()) return;
  const map = pair.list.maps.byId.get(id);
  if (!map || map.error) return;
  layers[0].show(map.query_map, pair.list.maps.queryExtent);
  layers[1].show(map.result_map, map.result_extent);
}

function applyFilter() {
  const filter = `brightness(${ui.brightness.value / 100}) contrast(${ui.contrast.value / 100})`;
  for (const image of ui.images) image.style.filter = filter;
}

function resetView() {
  Object.assign(view, { zoom: 1, x: 0, y: 0 });
  applyView();
}

function zoomBy(factor) {
  const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, view.zoom * factor));
  // Zooming keeps the point at the centre where it was.
  view.x *= zoom / view.zoom;
  view.y *= zoom / view.zoom;
  view.zoom = zoom;
  if (zoom === MIN_ZOOM) Object.assign(view, { x: 0, y: 0 });
  applyView();
}

function panBy(dx, dy) {
  if (view.zoom === MIN_ZOOM) return; // Nothing lies outside the view to pan to.
  view.x += dx;
  view.y += dy;
  applyView();
}

/** One transform for both images: they zoom and pan as one. */
function applyView() {
  const transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  for (const stage of ui.stages) stage.style.transform = transform;
  ui.zoomLevel.textContent = `${Math.round(view.zoom * 100)}%`;
  ui.zoomOut.disabled = view.zoom <= MIN_ZOOM;
  ui.zoomIn.disabled = view.zoom >= MAX_ZOOM;
}

function key(event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const inSlider = event.target instanceof HTMLInputElement && event.target.type === "range";
  const pans = { ArrowLeft: [PAN_STEP_PX, 0], ArrowRight: [-PAN_STEP_PX, 0], ArrowUp: [0, PAN_STEP_PX], ArrowDown: [0, -PAN_STEP_PX] };
  if (event.key === "+" || event.key === "=") zoomBy(ZOOM_STEP);
  else if (event.key === "-" || event.key === "_") zoomBy(1 / ZOOM_STEP);
  else if (event.key === "0") resetView();
  else if (pans[event.key] && !inSlider) panBy(...pans[event.key]);
  else return;
  event.preventDefault();
}

function wheel(event) {
  event.preventDefault();
  zoomBy(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
}

function drag(event) {
  if (event.button !== 0) return;
  const viewport = event.currentTarget;
  let last = [event.clientX, event.clientY];
  viewport.setPointerCapture(event.pointerId);
  const move = (next) => {
    panBy(next.clientX - last[0], next.clientY - last[1]);
    last = [next.clientX, next.clientY];
  };
  const release = () => {
    viewport.removeEventListener("pointermove", move);
    viewport.removeEventListener("pointerup", release);
    viewport.removeEventListener("pointercancel", release);
  };
  viewport.addEventListener("pointermove", move);
  viewport.addEventListener("pointerup", release);
  viewport.addEventListener("pointercancel", release);
}
