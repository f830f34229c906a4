// The collection view (every role): what the catalog holds, as bar charts of
// GET /stats?breakdown=true: images by dataset, finding, age band, sex and view position, and
// each model's index states.

import { fetchJson } from "./http.js";
import { byId, el, plural } from "./dom.js";
import { runRequest } from "./messages.js";
import { barChart, formatCount } from "./charts.js";

// The gateway's age bands, youngest first; a chart of them keeps this order, not the counts'.
const AGE_BANDS = ["0-17", "18-39", "40-59", "60-79", "80+", "unknown"];
const SEXES = ["M", "F", "O", "unknown"];
const SEX_NAMES = { M: "Male (M)", F: "Female (F)", O: "Other (O)" };
const FINDING_NAMES = { "(none)": "No finding", "(several)": "Several findings" };
const INDEX_STATES = [
  { key: "indexed", label: "Indexed" },
  { key: "pending", label: "Pending" },
  { key: "failed", label: "Failed" },
];
const FINDINGS_TITLES = { any: "Images with each finding", only: "Images with only this finding" };

const ui = {
  refresh: byId("collection-refresh"),
  summary: byId("collection-summary"),
  charts: byId("collection-charts"),
};
let built = null; // the charts, made on the first visit
let stats = null; // the last answer
let findingsShown = "any";

export function initCollection(shown) {
  ui.refresh.addEventListener("click", () => loadCollection(shown));
}

/** Loads the breakdown and draws it; `shown()` says whether the view is still on screen. */
export async function loadCollection(shown) {
  if (!built) built = buildCharts();
  const answer = await runRequest(ui.refresh, "Loading the collection's statistics…", () =>
    fetchJson("/stats?breakdown=true", { cache: "no-store" }),
  );
  if (!answer || !shown()) return;
  stats = answer;
  render();
}

function buildCharts() {
  const findingsToggle = el("fieldset", { className: "chart-controls" },
    el("legend", {}, "Count each image under"),
    radio("findings-any", "any", "each of its findings (any)", true),
    radio("findings-only", "only", "its only finding, or “several” (only)", false),
  );
  findingsToggle.addEventListener("change", (event) => {
    findingsShown = event.target.value;
    if (stats) showFindings();
  });
  const charts = {
    datasets: barChart({ name: "datasets", title: "Images by dataset", labelHeader: "Dataset", valueHeader: "Images" }),
    findings: barChart({ name: "findings", title: FINDINGS_TITLES.any, labelHeader: "Finding", valueHeader: "Images", controls: findingsToggle }),
    ages: barChart({ name: "age_bands", title: "Images by age band (years)", labelHeader: "Age band", valueHeader: "Images" }),
    sexes: barChart({ name: "sexes", title: "Images by sex", labelHeader: "Sex", valueHeader: "Images" }),
    views: barChart({ name: "view_positions", title: "Images by view position", labelHeader: "View position", valueHeader: "Images" }),
    index: barChart({
      name: "index",
      title: "Index state per model",
      labelHeader: "Model",
      segments: INDEX_STATES,
      labelsAbove: true,
    }),
  };
  ui.charts.replaceChildren(...Object.values(charts).map((chart) => chart.element));
  return charts;
}

function radio(id, value, label, checked) {
  const input = el("input", { id, type: "radio", name: "findings-count", value, checked });
  return el("span", { className: "field-check" }, input, el("label", { htmlFor: id }, label));
}

function render() {
  const breakdown = stats.breakdown || {};
  const datasets = stats.datasets || {};
  const images = stats.images ?? 0;
  const parts = [`${formatCount(images)} image${images === 1 ? "" : "s"} in ${plural(Object.keys(datasets).length, "dataset")}`];
  if (stats.model && stats.index) {
    const index = stats.index;
    parts.push(`active model ${stats.model.model_id}: ${formatCount(index.indexed)} indexed, ` +
      `${formatCount(index.pending)} pending, ${formatCount(index.failed)} failed`);
  } else {
    parts.push("the active model is unknown (the embedder does not answer)");
  }
  ui.summary.textContent = parts.join(" · ");
  built.datasets.show(byCount(datasets));
  showFindings();
  built.ages.show(inOrder(breakdown.age_bands, AGE_BANDS, (key) => (key === "unknown" ? "Unknown" : key.replace("-", "–"))));
  built.sexes.show(inOrder(breakdown.sexes, SEXES, (key) => SEX_NAMES[key] || (key === "unknown" ? "Unknown" : key)));
  built.views.show(byCount(breakdown.view_positions, (key) => (key === "unknown" ? "Unknown" : key)));
  built.index.show(modelRows());
}

function showFindings() {
  const breakdown = stats.breakdown || {};
  const counts = findingsShown === "any" ? breakdown.findings_any : breakdown.findings_only;
  built.findings.show(byCount(counts, (key) => FINDING_NAMES[key] || key), FINDINGS_TITLES[findingsShown]);
}

/** Rows by count, largest first (then by name); "unknown" last whatever its count. */
function byCount(counts = {}, labelOf = (key) => key) {
  const rows = Object.entries(counts || {}).map(([key, value]) => ({ key, label: labelOf(key), value }));
  const rank = (row) => (row.key === "unknown" ? 1 : 0);
  return rows.sort((a, b) => rank(a) - rank(b) || b.value - a.value || a.label.localeCompare(b.label));
}

/** Rows in the given order of keys, any other key after them by name; absent keys left out. */
function inOrder(counts = {}, order, labelOf) {
  const keys = Object.keys(counts || {});
  const known = order.filter((key) => keys.includes(key));
  const others = keys.filter((key) => !order.includes(key)).sort();
  return [...known, ...others].map((key) => ({ key, label: labelOf(key), value: counts[key] }));
}

/** One stacked bar per model with a state for any image; the active model first. */
function modelRows() {
  const models = { ...(stats.models || {}) };
  const active = stats.model ? stats.model.model_id : null;
  if (active && stats.index && !models[active]) models[active] = stats.index;
  const ids = Object.keys(models).sort((a, b) => (b === active) - (a === active) || a.localeCompare(b));
  return ids.map((id) => ({ key: id, label: id === active ? `${id} (active)` : id, values: models[id] || {} }));
}
