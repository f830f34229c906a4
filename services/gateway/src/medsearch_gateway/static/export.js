// Exporting a result list (or, through download() and csvText(), another view's table) as CSV
// or JSON, made in the browser: IDs, ranks, scores and the catalog's metadata; never image
// bytes, never the uploaded file.

import { el } from "./dom.js";

const METADATA_COLUMNS = ["dataset", "external_id", "patient_id", "study", "age", "sex", "view_position", "findings", "extra"];
// A cell a spreadsheet would run as a formula (OWASP's CSV injection list).
const FORMULA_START = /^[=+\-@\t\r]/;

/** Starts the download of `list` as "csv" or "json". */
export function exportList(list, format) {
  download("medsearch-results", format, format === "csv" ? toCsv(list) : toJson(list));
}

/** Starts the download of `content` (CSV text, or a value written as JSON) as
 * "<prefix>-<time>.<format>". */
export function download(prefix, format, content) {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const name = `${prefix}-${stamp}.${format}`;
  const blob = format === "csv"
    ? new Blob([content], { type: "text/csv;charset=utf-8" })
    : new Blob([JSON.stringify(content, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The list as JSON: what was searched (IDs and options, no file) and each result. */
export function toJson(list) {
  const query = list.query;
  return {
    exported_at: new Date().toISOString(),
    model_id: list.model ? list.model.model_id : null,
    query: {
      image_id: query.imageId ?? null,
      uploaded: Boolean(query.file),
      region: query.region ?? null,
      positive: list.applied.positive,
      negative: list.applied.negative,
      k: list.options.k,
      filter: list.options.filter,
      one_per_patient: list.options.onePerPatient,
    },
    results: list.results.map(({ rank, score, image }) => ({
      image_id: image.id,
      rank,
      score,
      metadata: image.metadata || {},
    })),
  };
}

export function toCsv(list) {
  const header = ["image_id", "rank", "score", ...METADATA_COLUMNS];
  const rows = list.results.map(({ rank, score, image }) => {
    const meta = image.metadata || {};
    return [image.id, rank, score, ...METADATA_COLUMNS.map((key) => metadataCell(meta[key]))];
  });
  return csvText([header, ...rows]);
}

/** Rows of cells as CSV, each cell guarded (see csvCell). */
export function csvText(rows) {
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

/** A metadata value as one cell's text: a list joined with "; ", an object as JSON. */
export function metadataCell(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.join("; ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** One CSV cell: numbers as they are; text quoted, a formula-like start defused with "'". */
function csvCell(value) {
  if (typeof value === "number") return String(value);
  let cell = String(value);
  if (FORMULA_START.test(cell)) cell = `'${cell}`;
  return /[",\r\n]/.test(cell) || cell !== cell.trim() ? `"${cell.replace(/"/g, '""')}"` : cell;
}
