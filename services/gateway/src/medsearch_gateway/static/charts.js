// Horizontal bar charts in SVG, built with DOM APIs: labels and values are text nodes, never
// markup. Each chart also holds its numbers as a table (visually hidden until "Show the
// numbers" is pressed), so a screen reader and a keyboard user get them as well.
//
// A chart is drawn at its box's width in CSS pixels and drawn again when that width changes:
// label left of the bar where there is room, label above the bar on a phone.

import { button, el } from "./dom.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const NUMBER = new Intl.NumberFormat();
// Geometry in CSS px; the text sizes are set to match in style.css (.chart-svg text).
const LABEL_FONT_PX = 13;
const VALUE_FONT = "600 13px"; // the counts after the bars are bold
const BAR_PX = 16;
const ROW_GAP_PX = 10;
const LABEL_LINE_PX = 18;
const GAP_PX = 8;
const WIDE_PX = 360; // from this width on, labels sit left of their bars
const MAX_LABEL_PX = 200;

/** A count with the reader's thousands separators: 112120 → "112,120". */
export function formatCount(value) {
  return NUMBER.format(value ?? 0);
}

let charts = 0; // for unique element IDs

/**
 * A bar chart. `options`:
 *  - title: the chart's heading;
 *  - labelHeader, valueHeader: the table's column headings;
 *  - segments: for stacked bars, [{key, label}] in drawing order; rows then carry
 *    `values: {key: n}` instead of `value`;
 *  - labelsAbove: always put labels above their bars (long labels, stacked bars);
 *  - controls: a node shown under the heading (e.g. a toggle that changes the rows).
 * Returns {element, show(rows, title?)}; a row is {key, label, value} or {key, label, values}.
 */
export function barChart(options) {
  charts += 1;
  const id = `chart-${charts}`;
  const segments = options.segments || [{ key: "value", label: options.valueHeader }];
  const stacked = Boolean(options.segments);
  const heading = el("h3", { id: `${id}-title`, className: "chart-title" }, options.title);
  const plot = el("div", { className: "chart-plot" });
  const empty = el("p", { className: "hint chart-empty" }, "No images yet.");
  const table = el("table", { className: "chart-table" });
  // A table keeps its content's width whatever its own: the box around it is what hides it.
  const numbers = el("div", { id: `${id}-numbers`, className: "chart-numbers visually-hidden" }, table);
  const toggle = button("Show the numbers", "button button-secondary button-small chart-toggle");
  toggle.setAttribute("aria-controls", numbers.id);
  toggle.setAttribute("aria-expanded", "false");
  toggle.addEventListener("click", () => {
    const open = numbers.classList.toggle("visually-hidden") === false;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Hide the numbers" : "Show the numbers";
  });
  const head = el("div", { className: "chart-head" }, heading);
  const figure = el("figure", { className: "chart" });
  figure.setAttribute("aria-labelledby", heading.id);
  figure.dataset.chart = options.name || id;
  const legend = stacked ? legendOf(segments) : null;
  figure.append(head, ...(options.controls ? [options.controls] : []), ...(legend ? [legend] : []), plot, empty, toggle, numbers);

  const state = { rows: [], title: options.title, width: 0 };
  const draw = () => {
    const width = Math.floor(plot.clientWidth);
    if (!width || width === state.width) return;
    state.width = width;
    const labelsAbove = options.labelsAbove || width < WIDE_PX;
    const measure = textMeasure(getComputedStyle(plot).fontFamily);
    plot.replaceChildren(...(state.rows.length ? [chartSvg(state, segments, stacked, labelsAbove, measure)] : []));
  };
  // Drawn when the chart gets a width: when it comes on screen, and when that width changes.
  new ResizeObserver(draw).observe(plot);

  function show(rows, title = state.title) {
    state.rows = rows;
    state.title = title;
    state.width = 0;
    heading.textContent = title;
    empty.hidden = rows.length > 0;
    fillTable(table, title, rows, segments, stacked, options.labelHeader);
    draw();
  }
  return { element: figure, show };
}

function legendOf(segments) {
  const items = segments.map((segment) =>
    el("li", {}, el("span", { className: `chart-swatch chart-bar-${segment.key}` }), segment.label),
  );
  const legend = el("ul", { className: "chart-legend" }, ...items);
  legend.setAttribute("aria-hidden", "true"); // the table names each column
  return legend;
}

function rowTotal(row, segments, stacked) {
  return stacked ? segments.reduce((sum, segment) => sum + (row.values[segment.key] || 0), 0) : row.value || 0;
}

let canvas = null; // measures text as the SVG will draw it

/** {label(text), value(text)}: the width in px of a label and of a count, in `fontFamily`. */
function textMeasure(fontFamily) {
  canvas = canvas || document.createElement("canvas");
  const context = canvas.getContext("2d");
  const width = (font) => (text) => {
    context.font = `${font} ${fontFamily}`;
    return context.measureText(text).width;
  };
  return { label: width(`${LABEL_FONT_PX}px`), value: width(VALUE_FONT) };
}

/** The chart as an SVG `width` px wide: one bar per row, its value after it. */
function chartSvg(state, segments, stacked, labelsAbove, measure) {
  const { rows, width } = state;
  const totals = rows.map((row) => rowTotal(row, segments, stacked));
  const max = Math.max(1, ...totals);
  const valueTexts = totals.map(formatCount);
  const valuePx = Math.ceil(Math.max(...valueTexts.map(measure.value))) + GAP_PX;
  const longest = Math.ceil(Math.max(...rows.map((row) => measure.label(row.label))));
  const labelPx = labelsAbove ? 0 : Math.min(longest + GAP_PX, MAX_LABEL_PX, Math.floor(width * 0.4));
  const barSpace = Math.max(20, width - labelPx - valuePx);
  // A stacked bar's parts are spelled out on a line under it.
  const rowPx = (labelsAbove ? LABEL_LINE_PX : 0) + BAR_PX + (stacked ? LABEL_LINE_PX : 0) + ROW_GAP_PX;
  const height = rows.length * rowPx;

  const svg = svgNode("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart-svg" });
  svg.setAttribute("aria-label", `Bar chart: ${state.title}. "Show the numbers" gives them as a table.`);
  rows.forEach((row, i) => {
    const top = i * rowPx;
    const barTop = top + (labelsAbove ? LABEL_LINE_PX : 0);
    const group = svgNode("g", { class: "chart-row" });
    group.dataset.key = row.key;
    const shown = fitted(row.label, labelsAbove ? width : labelPx - GAP_PX, measure.label);
    const label = svgNode("text", {
      x: labelsAbove ? 0 : labelPx - GAP_PX,
      y: labelsAbove ? top + 13 : barTop + 12.5,
      "text-anchor": labelsAbove ? "start" : "end",
      class: "chart-label",
    }, shown);
    if (shown !== row.label) label.append(svgNode("title", {}, row.label)); // the whole label on hover
    group.append(label);
    let x = labelPx;
    for (const segment of segments) {
      const value = stacked ? row.values[segment.key] || 0 : row.value || 0;
      const length = (value / max) * barSpace;
      if (length > 0) {
        group.append(svgNode("rect", {
          x,
          y: barTop,
          width: Math.max(1, length),
          height: BAR_PX,
          rx: 2,
          class: stacked ? `chart-bar chart-bar-${segment.key}` : "chart-bar",
        }));
      }
      x += length;
    }
    group.append(svgNode("text", { x: x + 4, y: barTop + 12.5, class: "chart-value" }, valueTexts[i]));
    if (stacked) {
      const parts = segments.map((segment) => `${formatCount(row.values[segment.key] || 0)} ${segment.label.toLowerCase()}`);
      group.append(svgNode("text", { x: labelPx, y: barTop + BAR_PX + 14, class: "chart-detail" }, parts.join(" · ")));
    }
    svg.append(group);
  });
  return svg;
}

/** `label`, cut short with "…" where it is wider than `room` px. */
function fitted(label, room, measure) {
  if (measure(label) <= room) return label;
  let length = label.length - 1;
  while (length > 1 && measure(`${label.slice(0, length)}…`) > room) length -= 1;
  return `${label.slice(0, length)}…`;
}

function svgNode(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function fillTable(table, title, rows, segments, stacked, labelHeader) {
  const headers = [labelHeader, ...segments.map((segment) => segment.label), ...(stacked ? ["Total"] : [])];
  const body = rows.map((row) => {
    const values = stacked ? [...segments.map((segment) => row.values[segment.key] || 0), rowTotal(row, segments, true)] : [row.value || 0];
    const cells = values.map((value) => {
      const cell = el("td", {}, formatCount(value));
      cell.dataset.value = String(value);
      return cell;
    });
    const tr = el("tr", {}, el("th", { scope: "row" }, row.label), ...cells);
    tr.dataset.key = row.key;
    return tr;
  });
  table.replaceChildren(
    el("caption", {}, title),
    el("thead", {}, el("tr", {}, ...headers.map((header) => el("th", { scope: "col" }, header)))),
    el("tbody", {}, ...body),
  );
}
