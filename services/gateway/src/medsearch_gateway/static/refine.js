// Relevance feedback: results marked "More like this" (positive) or "Not like this" (negative),
// and "Refine", which searches again with the same query and the marks. Marks accumulate over
// refinements until removed; the server leaves marked images out of the results.

import { UserError } from "./http.js";
import { button, el, plural } from "./dom.js";

// Marked images one search may take, positive and negative together (the gateway's limit).
export const MAX_MARKED = 20;
const LABELS = { positive: "More like this", negative: "Not like this" };
const SIGNS = { positive: "+", negative: "−" };

/** The marked IDs of `marks` (a Map of image ID to "positive" or "negative"), in marking order. */
export function markedIds(marks) {
  const ids = { positive: [], negative: [] };
  for (const [id, kind] of marks) ids[kind].push(id);
  return ids;
}

/** Marks `id` as `kind`, or unmarks it when it is marked so already; refuses a 21st mark. */
export function toggleMark(list, id, kind) {
  if (list.marks.get(id) === kind) {
    list.marks.delete(id);
    return;
  }
  if (!list.marks.has(id) && list.marks.size >= MAX_MARKED) {
    throw new UserError(`At most ${MAX_MARKED} images can be marked in all; remove a mark first.`);
  }
  list.marks.set(id, kind);
}

/** Whether the marks differ from those the list's results were searched with. */
function marksChanged(list) {
  const now = markedIds(list.marks);
  const same = (a, b) => a.length === b.length && a.every((id) => b.includes(id));
  return !same(now.positive, list.applied.positive) || !same(now.negative, list.applied.negative);
}

/** The two toggle buttons of a result card. */
export function markButtons(list, imageId, onToggle) {
  return ["positive", "negative"].map((kind) => {
    const toggle = button(LABELS[kind], `button button-small mark mark-${kind}`);
    toggle.dataset.mark = kind;
    toggle.setAttribute("aria-pressed", String(list.marks.get(imageId) === kind));
    toggle.setAttribute("aria-label", `${LABELS[kind]} (image ${imageId})`);
    toggle.addEventListener("click", () => onToggle(imageId, kind));
    return toggle;
  });
}

/** Sets each card's toggles of `root` to the list's marks. */
export function syncMarkButtons(list, root) {
  for (const toggle of root.querySelectorAll("button.mark")) {
    const id = Number(toggle.closest("[data-image-id]").dataset.imageId);
    toggle.setAttribute("aria-pressed", String(list.marks.get(id) === toggle.dataset.mark));
  }
}

/**
 * The feedback bar of a list: how many are marked, one chip per mark (pressing it removes
 * the mark), "Refine" and "Clear marks". Hidden while nothing is or was marked.
 */
export function renderRefineBar(bar, list, { onRefine, onUnmark, onClear }) {
  const ids = markedIds(list.marks);
  const count = list.marks.size;
  const applied = list.applied.positive.length + list.applied.negative.length;
  bar.hidden = count === 0 && applied === 0;
  const summary = count
    ? `${plural(count, "image")} marked: ${ids.positive.length} more like this, ${ids.negative.length} not like this.`
    : "No image marked.";
  const pending = marksChanged(list) ? " Refine to search with these marks." : " These results use them.";
  const chips = [...list.marks].map(([id, kind]) => {
    const chip = button(`${SIGNS[kind]} ${id} ×`, `chip chip-${kind}`);
    chip.dataset.imageId = String(id);
    chip.setAttribute("aria-label", `Remove the mark "${LABELS[kind]}" on image ${id}`);
    chip.addEventListener("click", () => onUnmark(id));
    return chip;
  });
  const refine = button("Refine", "button button-primary button-small refine-button");
  refine.disabled = !marksChanged(list);
  refine.addEventListener("click", () => onRefine(refine));
  const clear = button("Clear marks", "button button-secondary button-small refine-clear");
  clear.disabled = count === 0;
  clear.addEventListener("click", onClear);
  const status = el("p", { className: "refine-summary" }, summary + (count || applied ? pending : ""));
  status.setAttribute("aria-live", "polite");
  bar.replaceChildren(
    status,
    el("div", { className: "chips" }, ...chips),
    el("div", { className: "refine-actions" }, refine, clear),
  );
}
