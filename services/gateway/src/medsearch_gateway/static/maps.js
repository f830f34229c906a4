// Similarity maps: where in the query and in each result their similarity comes from.
//
// The embedder splits each cosine score over the 7 x 7 cells of the model's last feature map,
// for either image (the cells of a map sum to the score). A map is drawn on a <canvas> over its
// image: the grid stretched (smoothed) over the map's extent, which is given as fractions of
// the image's width and height and may reach past them where the model's letterbox padded the
// image; the drawing is clipped to the picture. Each map is normalized by its largest absolute
// cell; cells below zero (slightly dissimilar) are left transparent.

import { apiFetch, readJson } from "./http.js";
import { byId, contentBox, el } from "./dom.js";
import { showError } from "./messages.js";

const GRID = 7;
// Results one maps request may pair with its query (the gateway's limit).
const MAPS_PER_REQUEST = 16;
// A sequential colour scale ("inferno"): dark and cool for little, bright and warm for much.
const STOPS = [
  [0.0, [0, 0, 4]],
  [0.125, [27, 12, 65]],
  [0.25, [74, 12, 107]],
  [0.375, [120, 28, 109]],
  [0.5, [165, 44, 96]],
  [0.625, [207, 68, 70]],
  [0.75, [237, 105, 37]],
  [0.875, [251, 155, 6]],
  [1.0, [252, 255, 164]],
];

const controls = {
  toggle: byId("maps-toggle"),
  opacity: byId("maps-opacity"),
  legend: byId("maps-legend"),
  scale: byId("maps-scale"),
};
const listeners = [];

/** Whether the maps are switched on (off until the user asks). */
export function mapsOn() {
  return controls.toggle.checked;
}

/** Calls `listener(on)` whenever the maps are switched on or off, from anywhere. */
export function onMapsToggled(listener) {
  listeners.push(listener);
}

export function setMapsOn(on) {
  if (controls.toggle.checked === on && document.body.classList.contains("maps-on") === on) return;
  controls.toggle.checked = on;
  applyToggle();
}

function applyToggle() {
  const on = controls.toggle.checked;
  document.body.classList.toggle("maps-on", on);
  controls.legend.hidden = !on;
  for (const listener of listeners) listener(on);
}

/** Wires the toggle, the opacity slider and the legend's colour bar. */
export function initMaps() {
  controls.toggle.addEventListener("change", applyToggle);
  const opacity = () => document.documentElement.style.setProperty("--map-opacity", String(controls.opacity.value / 100));
  controls.opacity.addEventListener("input", opacity);
  opacity();
  drawScale(controls.scale);
  applyToggle();
}

/** The colour of a normalized value in 0..1. */
function colourOf(value) {
  for (let i = 1; i < STOPS.length; i += 1) {
    const [at, rgb] = STOPS[i];
    if (value <= at) {
      const [before, from] = STOPS[i - 1];
      const t = (value - before) / (at - before);
      return from.map((channel, c) => Math.round(channel + t * (rgb[c] - channel)));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

/** How opaque a cell of normalized value 0..1 is: little shows faintly, much strongly. */
function alphaOf(value) {
  return Math.min(1, 0.15 + 0.85 * value);
}

/** The legend's colour bar: the maps' scale as it looks over a mid-grey X-ray. */
function drawScale(canvas) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.fillStyle = "rgb(128, 128, 128)";
  context.fillRect(0, 0, width, height);
  for (let x = 0; x < width; x += 1) {
    const value = x / (width - 1);
    const [r, g, b] = colourOf(value);
    context.fillStyle = `rgba(${r}, ${g}, ${b}, ${alphaOf(value)})`;
    context.fillRect(x, 0, 1, height);
  }
}

/** A GRID x GRID canvas of a map's cells: colour and opacity grow with the cell's share. */
function cellsCanvas(grid) {
  const cells = grid.flat();
  const largest = Math.max(...cells.map((cell) => Math.abs(cell)));
  const canvas = el("canvas", { width: GRID, height: GRID });
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(GRID, GRID);
  cells.forEach((cell, i) => {
    const value = largest > 0 ? cell / largest : 0;
    if (!(value > 0)) return; // Negative, zero or not a number: transparent.
    const [r, g, b] = colourOf(value);
    pixels.data.set([r, g, b, Math.round(255 * alphaOf(value))], i * 4);
  });
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function validGrid(grid) {
  return Array.isArray(grid) && grid.length === GRID && grid.every((row) => Array.isArray(row) && row.length === GRID);
}

/** A canvas over an <img> (whose parent is positioned and wraps it) that draws one map. */
export class MapLayer {
  constructor(img) {
    this.img = img;
    this.grid = null;
    this.extent = null;
    this.cells = null;
    this.canvas = el("canvas", { className: "map-canvas", hidden: true });
    this.canvas.setAttribute("aria-hidden", "true");
    img.after(this.canvas);
    img.addEventListener("load", () => this.draw());
    new ResizeObserver(() => this.draw()).observe(img);
  }

  /** Draws `grid` over `extent` ([x0, y0, x1, y1], fractions of the image); null clears. */
  show(grid, extent) {
    const valid = validGrid(grid) && Array.isArray(extent) && extent.length === 4;
    this.grid = valid ? grid : null;
    this.extent = valid ? extent.map(Number) : null;
    this.cells = valid ? cellsCanvas(grid) : null;
    this.draw();
  }

  clear() {
    this.show(null, null);
  }

  get shown() {
    return this.grid !== null;
  }

  draw() {
    const { canvas, img } = this;
    canvas.hidden = !this.cells;
    if (!this.cells || !img.clientWidth || !img.naturalWidth) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(img.clientWidth * ratio);
    canvas.height = Math.round(img.clientHeight * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, img.clientWidth, img.clientHeight);
    const box = contentBox(img);
    const [x0, y0, x1, y1] = this.extent;
    context.save();
    context.beginPath();
    context.rect(box.x, box.y, box.width, box.height);
    context.clip(); // The extent may reach past the picture where the letterbox padded it.
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(
      this.cells,
      box.x + x0 * box.width,
      box.y + y0 * box.height,
      (x1 - x0) * box.width,
      (y1 - y0) * box.height,
    );
    context.restore();
  }
}

/** What a list's query is sent as to the maps endpoint; null when it has no query image. */
function queryFields(query) {
  if (query.file) return [["image", query.file, query.file.name]];
  if (query.imageId !== null && query.imageId !== undefined) return [["query_id", String(query.imageId)]];
  return null;
}

export function listHasMaps(list) {
  return queryFields(list.query) !== null;
}

/**
 * Fetches the maps of `ids` (results of `list`) that it has not asked for yet, at most
 * MAPS_PER_REQUEST a request, into list.maps; calls `done(list)` after each answer.
 */
export async function fetchMaps(list, ids, done) {
  const fields = queryFields(list.query);
  if (!fields) return;
  const maps = list.maps;
  const wanted = ids.filter((id) => !maps.byId.has(id) && !maps.asked.has(id));
  for (let at = 0; at < wanted.length; at += MAPS_PER_REQUEST) {
    const chunk = wanted.slice(at, at + MAPS_PER_REQUEST);
    for (const id of chunk) maps.asked.add(id);
    const body = new FormData();
    for (const field of fields) body.append(...field);
    if (list.query.region) body.append("region", list.query.region.join(","));
    body.append("result_id", chunk.join(","));
    let answer;
    try {
      answer = await readJson(await apiFetch("/similarity-maps", { method: "POST", body }));
    } catch (error) {
      for (const id of chunk) maps.asked.delete(id); // Asked again when the maps are switched on again.
      if (list.maps === maps) showError(error);
      return;
    }
    if (list.maps !== maps) return; // The list was searched again meanwhile.
    if (answer.query && Array.isArray(answer.query.extent)) maps.queryExtent = answer.query.extent;
    for (const map of Array.isArray(answer.maps) ? answer.maps : []) maps.byId.set(map.image_id, map);
    for (const failure of Array.isArray(answer.errors) ? answer.errors : []) {
      maps.byId.set(failure.image_id, { error: failure.detail || `HTTP ${failure.status}` });
    }
    done(list);
  }
}

/** A fresh store of a list's maps: none fetched yet. */
export function emptyMaps() {
  return { byId: new Map(), asked: new Set(), queryExtent: null };
}
