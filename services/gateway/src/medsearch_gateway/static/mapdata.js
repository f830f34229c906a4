// The collection map's data, apart from the page that shows it: the map made from GET /map's
// answer (typed columns, bounds, a grid index), its colouring by a metadata field, the lasso's
// polygon test and a point's attributes. Plain functions of their arguments, no DOM and no
// state of their own; a map keeps the colourings made for it, so each is made once per field.

import { ageText, findingsText, plural, text } from "./dom.js";

// Paul Tol's "muted" qualitative scheme: nine colours that stay apart for colour-blind eyes too,
// the darker first. The most frequent categories get them; the rest share the grey of "other".
const PALETTE = ["#332288", "#cc6677", "#117733", "#882255", "#44aa99", "#999933", "#aa4499", "#88ccee", "#ddcc77"];
const OTHER_COLOUR = "#bbbbbb";
export const BACKGROUND = "#ffffff";
const FADE = 0.7; // how far points outside a selection fade toward the background
const AGE_BANDS = [
  { key: "0-19", label: "0–19", below: 20 },
  { key: "20-39", label: "20–39", below: 40 },
  { key: "40-59", label: "40–59", below: 60 },
  { key: "60-79", label: "60–79", below: 80 },
  { key: "80+", label: "80+", below: Infinity },
];
const SEX_NAMES = { M: "Male (M)", F: "Female (F)", O: "Other (O)" };
export const FIELD_NAMES = { finding: "finding", dataset: "dataset", sex: "sex", view_position: "view position", age: "age band" };

// ---- the map ----

/** Typed columns of the map, its bounds and its grid index. */
export function prepareMap(meta, points, fields) {
  const ids = points.id || [];
  const x = Float64Array.from(points.x || []);
  const y = Float64Array.from(points.y || []);
  const n = Math.min(ids.length, x.length, y.length);
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  for (let i = 0; i < n; i++) {
    if (x[i] < minX) minX = x[i];
    if (x[i] > maxX) maxX = x[i];
    if (y[i] < minY) minY = y[i];
    if (y[i] > maxY) maxY = y[i];
  }
  const bounds = n ? { minX, minY, maxX, maxY } : { minX: 0, minY: 0, maxX: 1, maxY: 1 };
  const grid = gridIndex(x, y, n, bounds);
  return { meta, ids, n, x, y, fields: fields || {}, bounds, grid, positions: null, colourings: new Map() };
}

// ---- colours by a field ----

/** The category of each point by `field`: {codes: category per point, categories: [{key, label}], ordered}. */
function categoriesOf(map, field) {
  const fields = map.fields;
  const codes = new Uint32Array(map.n);
  if (field === "age") {
    const ages = fields.age || [];
    const unknown = AGE_BANDS.length;
    for (let i = 0; i < map.n; i++) {
      const age = ages[i];
      codes[i] = typeof age === "number" && age >= 0 ? AGE_BANDS.findIndex((band) => age < band.below) : unknown;
    }
    return { codes, categories: [...AGE_BANDS, { key: "unknown", label: "Unknown" }], ordered: true };
  }
  if (field === "finding") {
    const column = fields.findings || { values: [], codes: [] };
    const values = column.values || [];
    const none = values.length;
    for (let i = 0; i < map.n; i++) {
      const found = column.codes[i] || [];
      codes[i] = found.length === 0 ? none : found.length === 1 ? found[0] : none + 1;
    }
    const categories = values.map((value) => ({ key: value, label: text(value) }));
    categories.push({ key: "(none)", label: "No finding" }, { key: "(several)", label: "Several findings" });
    return { codes, categories, ordered: false };
  }
  const column = fields[field] || { values: [], codes: [] };
  codes.set((column.codes || []).slice(0, map.n));
  const categories = (column.values || []).map((value) => ({
    key: value ?? "unknown",
    label: value === null || value === undefined ? "Unknown" : field === "sex" ? SEX_NAMES[value] || value : String(value),
  }));
  return { codes, categories, ordered: false };
}

/**
 * The map coloured by `field`, made once per map and field: the legend's entries
 * ({key, label, count, colour}), each point's entry, the drawing order (the grey "other" first,
 * then the largest categories: the small ones stay visible on top) and the packed colours.
 */
export function colouring(map, field) {
  if (map.colourings.has(field)) return map.colourings.get(field);
  const { codes, categories, ordered } = categoriesOf(map, field);
  const counts = new Array(categories.length).fill(0);
  for (let i = 0; i < map.n; i++) counts[codes[i]] += 1;
  const present = categories.map((category, at) => ({ ...category, at, count: counts[at] })).filter((c) => c.count > 0);
  if (!ordered) present.sort((a, b) => b.count - a.count || a.label.localeCompare(b.label));
  const coloured = present.length <= PALETTE.length + 1 ? present.length : PALETTE.length;
  const entries = present.slice(0, coloured).map((category, rank) => ({
    key: category.key,
    label: category.label,
    count: category.count,
    colour: PALETTE[rank] || OTHER_COLOUR,
    categories: [category.at],
  }));
  const rest = present.slice(coloured);
  if (rest.length) {
    entries.push({
      key: "(other)",
      label: `Other (${plural(rest.length, "more value")})`,
      count: rest.reduce((sum, category) => sum + category.count, 0),
      colour: OTHER_COLOUR,
      categories: rest.map((category) => category.at),
    });
  }
  const entryOfCategory = new Uint8Array(categories.length);
  entries.forEach((entry, at) => entry.categories.forEach((category) => (entryOfCategory[category] = at)));
  const entryOf = new Uint8Array(map.n);
  for (let i = 0; i < map.n; i++) entryOf[i] = entryOfCategory[codes[i]];

  // Drawing order by counting sort: grey first, then the entries from most to fewest points.
  const layers = entries.map((entry, at) => at).sort((a, b) =>
    (entries[b].colour === OTHER_COLOUR) - (entries[a].colour === OTHER_COLOUR) || entries[b].count - entries[a].count);
  const layerOf = new Uint8Array(entries.length);
  layers.forEach((entry, layer) => (layerOf[entry] = layer));
  const starts = new Uint32Array(entries.length + 1);
  for (const entry of layers) starts[layerOf[entry] + 1] = entries[entry].count;
  for (let layer = 0; layer < entries.length; layer++) starts[layer + 1] += starts[layer];
  const order = new Uint32Array(map.n);
  for (let i = 0; i < map.n; i++) order[starts[layerOf[entryOf[i]]]++] = i;

  const full = Uint32Array.from(entries, (entry) => packed(entry.colour, 0));
  const faded = Uint32Array.from(entries, (entry) => packed(entry.colour, FADE));
  const made = { field, entries, entryOf, order, full, faded };
  map.colourings.set(field, made);
  return made;
}

/** A "#rrggbb" colour as one ImageData word (RGBA bytes, little-endian), faded toward the background. */
export function packed(colour, fade) {
  const [r, g, b] = rgb(colour);
  const [br, bg, bb] = rgb(BACKGROUND);
  const mix = (value, toward) => Math.round(value + (toward - value) * fade);
  return ((255 << 24) | (mix(b, bb) << 16) | (mix(g, bg) << 8) | mix(r, br)) >>> 0;
}

function rgb(colour) {
  return [1, 3, 5].map((at) => parseInt(colour.slice(at, at + 2), 16));
}

// ---- the grid index: which points lie in a box of the unit square ----

function gridIndex(x, y, n, bounds) {
  const cells = Math.max(16, Math.min(512, Math.ceil(Math.sqrt(n / 4))));
  const span = Math.max(bounds.maxX - bounds.minX, bounds.maxY - bounds.minY) || 1;
  const grid = { cells, minX: bounds.minX, minY: bounds.minY, span };
  grid.starts = new Uint32Array(cells * cells + 1); // cell c holds members[starts[c]..starts[c + 1])
  grid.members = new Uint32Array(n);
  const cellOf = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    cellOf[i] = cellRow(grid, y[i], grid.minY) * cells + cellRow(grid, x[i], grid.minX);
    grid.starts[cellOf[i] + 1] += 1;
  }
  for (let c = 0; c < cells * cells; c++) grid.starts[c + 1] += grid.starts[c];
  const next = grid.starts.slice(0, -1);
  for (let i = 0; i < n; i++) grid.members[next[cellOf[i]]++] = i;
  return grid;
}

function cellRow(grid, value, low) {
  return Math.min(grid.cells - 1, Math.max(0, Math.floor(((value - low) / grid.span) * grid.cells)));
}

/** Calls `visit(i)` for each point in the cells that cover the box [u0, u1] × [v0, v1]. */
export function visitBox(grid, u0, v0, u1, v1, visit) {
  const columns = [cellRow(grid, u0, grid.minX), cellRow(grid, u1, grid.minX)];
  const rows = [cellRow(grid, v0, grid.minY), cellRow(grid, v1, grid.minY)];
  for (let row = rows[0]; row <= rows[1]; row++) {
    for (let column = columns[0]; column <= columns[1]; column++) {
      const cell = row * grid.cells + column;
      for (let k = grid.starts[cell]; k < grid.starts[cell + 1]; k++) visit(grid.members[k]);
    }
  }
}

// ---- the lasso's outline ----

/** Whether (u, v) lies inside the polygon [u0, v0, u1, v1, ...] (even-odd crossings). */
export function inPolygon(flat, u, v) {
  let inside = false;
  for (let a = 0, b = flat.length - 2; a < flat.length; b = a, a += 2) {
    const ua = flat[a];
    const va = flat[a + 1];
    const ub = flat[b];
    const vb = flat[b + 1];
    if (va > v !== vb > v && u < ((ub - ua) * (v - va)) / (vb - va) + ua) inside = !inside;
  }
  return inside;
}

// ---- a point's attributes ----

/** Point `i`'s metadata as the map has it (values, not markup). */
export function attributesOf(map, i) {
  const fields = map.fields;
  const coded = (name) => {
    const column = fields[name];
    return column && column.values ? column.values[column.codes[i]] : null;
  };
  const findings = fields.findings ? (fields.findings.codes[i] || []).map((code) => fields.findings.values[code]) : null;
  return {
    dataset: coded("dataset"),
    sex: coded("sex"),
    age: fields.age ? fields.age[i] : null,
    view_position: coded("view_position"),
    findings,
  };
}

export function attributeRows(attributes) {
  return [
    ["Dataset", text(attributes.dataset)],
    ["Age/sex/view", [ageText(attributes.age), text(attributes.sex), text(attributes.view_position)].join(" · ")],
    ["Findings", findingsText(attributes.findings)],
  ];
}
