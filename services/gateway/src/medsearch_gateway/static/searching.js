// A search as the page sends it, and as its address keeps it.
//
// A list's query is {file, imageId, region, name}: an uploaded File, or a stored image's ID
// (never both), a region of it in the original's pixels, and a name for headings. With the
// list's marks it becomes one POST /api/v1/search. The address of a search holds only IDs and
// options (query_id for a stored query, region, positive, negative, k, filter, one_per_patient):
// never an uploaded file, never metadata.

import { UserError, fetchJson } from "./http.js";
import { byId } from "./dom.js";
import { MAX_MARKED, markedIds } from "./refine.js";

const DEFAULT_K = 10;
const form = {
  k: byId("k"),
  onePerPatient: byId("one-per-patient"),
  dataset: byId("filter-dataset"),
  sex: byId("filter-sex"),
  ageMin: byId("filter-age-min"),
  ageMax: byId("filter-age-max"),
  view: byId("filter-view"),
  findingsAny: byId("filter-findings-any"),
  findingsNone: byId("filter-findings-none"),
};

/** Searches `list` (its query, options and marks); fills in its results. */
export async function searchList(list) {
  const { file, imageId, region } = list.query;
  const { positive, negative } = markedIds(list.marks);
  const body = new FormData();
  if (file) body.append("image", file, file.name);
  if (imageId !== null && imageId !== undefined) body.append("query_id", String(imageId));
  if (region) body.append("region", region.join(","));
  if (positive.length) body.append("positive", positive.join(","));
  if (negative.length) body.append("negative", negative.join(","));
  body.append("k", String(list.options.k));
  if (list.options.filter) body.append("filter", JSON.stringify(list.options.filter));
  body.append("one_per_patient", String(list.options.onePerPatient));
  const payload = await fetchJson("/search", { method: "POST", body });
  const query = payload.query || {};
  list.results = Array.isArray(payload.results) ? payload.results : [];
  list.model = payload.model || null;
  list.applied = {
    positive: Array.isArray(query.positive) ? query.positive : positive,
    negative: Array.isArray(query.negative) ? query.negative : negative,
  };
  return payload;
}

/** Runs `work(item, index)` over `items`, at most `limit` at a time. */
export async function inPool(items, limit, work) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const at = next;
      next += 1;
      await work(items[at], at);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * The address parameters of `list`, or null when they cannot say what was searched (an
 * upload without marks: its bytes never go into an address). In the image view the stored
 * query is the image in the path, so `withQueryId` is false there.
 */
export function searchParams(list, withQueryId) {
  const { imageId, region } = list.query;
  const stored = imageId !== null && imageId !== undefined;
  const { positive, negative } = list.applied;
  if (!stored && !positive.length) return null;
  const params = new URLSearchParams();
  if (stored && withQueryId) params.set("query_id", String(imageId));
  if (stored && region) params.set("region", region.join(","));
  if (positive.length) params.set("positive", positive.join(","));
  if (negative.length) params.set("negative", negative.join(","));
  params.set("k", String(list.options.k));
  if (list.options.filter) params.set("filter", JSON.stringify(list.options.filter));
  if (list.options.onePerPatient) params.set("one_per_patient", "true");
  return params;
}

/** A search from address parameters: {queryId, region, positive, negative, options}; throws a
 * UserError that names the malformed parameter. */
export function readSearchParams(params) {
  const ids = (name) => {
    const raw = params.get(name);
    if (raw === null || raw === "") return [];
    const values = raw.split(",").map((part) => part.trim());
    if (!values.every((value) => /^\d{1,18}$/.test(value))) {
      throw new UserError(`The address's ${name} must be image IDs separated by commas.`);
    }
    return [...new Set(values.map(Number))];
  };
  const [queryId] = ids("query_id");
  const positive = ids("positive");
  const negative = ids("negative");
  if (positive.length + negative.length > MAX_MARKED) {
    throw new UserError(`The address marks more than ${MAX_MARKED} images.`);
  }
  let region = null;
  if (params.get("region")) {
    region = params.get("region").split(",").map((part) => Number(part.trim()));
    if (region.length !== 4 || !region.every((value) => Number.isInteger(value) && value >= 0)) {
      throw new UserError("The address's region must be four whole numbers: left, top, right, bottom.");
    }
  }
  const k = params.has("k") ? Number(params.get("k")) : DEFAULT_K;
  if (!Number.isInteger(k) || k < 1 || k > 100) throw new UserError("The address's k must be a whole number from 1 to 100.");
  let filter = null;
  if (params.get("filter")) {
    try {
      filter = JSON.parse(params.get("filter"));
    } catch {
      filter = undefined;
    }
    if (!filter || typeof filter !== "object" || Array.isArray(filter)) {
      throw new UserError("The address's filter must be a JSON object.");
    }
  }
  const onePerPatient = params.get("one_per_patient") === "true";
  return { queryId: queryId ?? null, region, positive, negative, options: { k, filter, onePerPatient } };
}

/** k, filter and one_per_patient from the search form; used by every search of the page. */
export function readSearchOptions() {
  const k = readNumber(form.k, "Number of results (k)", 1, 100, true) ?? DEFAULT_K;
  const filter = {};
  addList(filter, "dataset", form.dataset.value);
  if (form.sex.value) filter.sex = [form.sex.value];
  addList(filter, "view_position", form.view.value);

  const min = readNumber(form.ageMin, "Age from", 0, 130);
  const max = readNumber(form.ageMax, "Age to", 0, 130);
  if (min !== null && max !== null && min > max) throw new UserError("Age from is above age to.");
  const age = {};
  if (min !== null) age.min = min;
  if (max !== null) age.max = max;
  if (Object.keys(age).length) filter.age = age;

  const findings = {};
  addList(findings, "any", form.findingsAny.value);
  addList(findings, "none", form.findingsNone.value);
  if (Object.keys(findings).length) filter.findings = findings;

  return { k, filter: Object.keys(filter).length ? filter : null, onePerPatient: form.onePerPatient.checked };
}

/** Puts options read from an address into the form, so that what shows is what was searched. */
export function fillSearchForm({ k, filter, onePerPatient }) {
  const f = filter || {};
  const joined = (values) => (Array.isArray(values) ? values.join(", ") : "");
  form.k.value = String(k);
  form.onePerPatient.checked = onePerPatient;
  form.dataset.value = joined(f.dataset);
  form.sex.value = Array.isArray(f.sex) && f.sex.length === 1 ? f.sex[0] : "";
  form.view.value = joined(f.view_position);
  form.ageMin.value = f.age && f.age.min !== undefined ? String(f.age.min) : "";
  form.ageMax.value = f.age && f.age.max !== undefined ? String(f.age.max) : "";
  form.findingsAny.value = joined(f.findings && f.findings.any);
  form.findingsNone.value = joined(f.findings && f.findings.none);
}

export function splitList(text) {
  return [...new Set(text.split(",").map((part) => part.trim()).filter(Boolean))];
}

function addList(target, key, text) {
  const values = splitList(text);
  if (values.length) target[key] = values;
}

/** The number in `input`, or null when empty; throws a UserError naming the field when invalid. */
export function readNumber(input, label, min, max = Infinity, integer = false) {
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
