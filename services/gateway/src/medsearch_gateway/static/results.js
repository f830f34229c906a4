// Result lists: one section per query (several after a batch upload), each a grid of result
// cards with their marks ("More like this" / "Not like this"), similarity maps and "Compare",
// and the list's refine bar and export buttons.

import { ageText, button, definitionList, el, findingsText, formatScore, plural, text } from "./dom.js";
import { showError } from "./messages.js";
import { MapLayer, emptyMaps, fetchMaps, listHasMaps, mapsOn, onMapsToggled } from "./maps.js";
import { markButtons, renderRefineBar, syncMarkButtons, toggleMark } from "./refine.js";
import { openCompare } from "./compare.js";
import { exportList } from "./export.js";

// How long the visible cards settle (scrolling) before their maps are asked for, in ms.
const MAPS_SETTLE_MS = 150;

let shown = { lists: [] }; // the lists on the page now
let hooks = null;

/**
 * Wires the lists to the page. `pageHooks`:
 *  - refine(list, button): searches the list again with its marks;
 *  - queryUrl(list): the address of the list's query picture, or null (marked images only);
 *  - queryTargets(list): [{layer, caption}] of the page's query picture when it shows this
 *    list's query (the preview of the upload, or the open image);
 *  - emptyMessage(): what an empty list says.
 */
export function initResults(pageHooks) {
  hooks = pageHooks;
  onMapsToggled((on) => {
    if (!on) return;
    for (const list of shown.lists) askForVisibleMaps(list);
  });
}

/** A new list for `query` (see app.js) searched with `options`; `marks` carry over on refine. */
export function newList(query, options, title, marks = new Map()) {
  return {
    query,
    options,
    title,
    marks,
    applied: { positive: [], negative: [] },
    results: [],
    model: null,
    maps: emptyMaps(),
    shownMap: null, // the result whose map against the query is drawn on the query picture
    view: null, // the DOM of the list while it is shown
  };
}

export function imageHash(id) {
  return `#/image/${encodeURIComponent(String(id))}`;
}

/** Shows `lists` in `container`, one section each; with several, each gets its own heading. */
export function renderLists(container, lists) {
  for (const list of shown.lists) forget(list);
  shown = { lists: [...lists] };
  container.replaceChildren(...lists.map((list, i) => listSection(list, lists.length > 1 ? i + 1 : 0)));
  for (const list of lists) {
    if (mapsOn()) askForVisibleMaps(list);
    drawMaps(list);
  }
}

/** Re-renders one list in place (after a refine), keeping the others. */
export function replaceList(old, list) {
  const at = shown.lists.indexOf(old);
  const before = old.view;
  if (at < 0 || !before) return false;
  forget(old);
  const section = listSection(list, shown.lists.length > 1 ? at + 1 : 0);
  before.section.replaceWith(section);
  shown.lists[at] = list;
  if (mapsOn()) askForVisibleMaps(list);
  drawMaps(list);
  return true;
}

/** Stops watching a list that leaves the page. */
function forget(list) {
  if (!list.view) return;
  list.view.observer.disconnect();
  clearTimeout(list.view.timer);
  list.view = null;
}

function listSection(list, number) {
  const section = el("section", { className: "result-list" });
  const headingId = `result-list-${number || "only"}`;
  const summary = el("p", { className: "hint list-summary" }, listSummary(list));
  const head = el("div", { className: "list-head" });
  let queryTarget = null;
  if (number) {
    const heading = el("h3", { id: headingId, className: "list-title", tabIndex: -1 }, list.title);
    section.setAttribute("aria-labelledby", headingId);
    const url = hooks.queryUrl(list);
    if (url) {
      const picture = el("img", { className: "list-query-image", src: url, alt: `Query image ${list.title}` });
      const stage = el("div", { className: "stage" }, picture);
      const caption = el("p", { className: "hint map-caption" });
      head.append(el("figure", { className: "list-query" }, stage, caption));
      queryTarget = { layer: new MapLayer(picture), caption };
    }
    head.prepend(el("div", { className: "list-heading" }, heading, summary));
  } else {
    head.append(el("div", { className: "list-heading" }, summary));
  }
  const csv = button("Export CSV", "button button-secondary button-small export-csv");
  const json = button("Export JSON", "button button-secondary button-small export-json");
  csv.addEventListener("click", () => exportList(list, "csv"));
  json.addEventListener("click", () => exportList(list, "json"));
  csv.disabled = json.disabled = !list.results.length;
  const mapsNote = el("p", { className: "hint maps-note" },
    listHasMaps(list) ? "" : "Similarity maps need a query image; this search has only marked images.");
  mapsNote.hidden = listHasMaps(list);
  const bar = el("div", { className: "refine-bar", role: "group" });
  bar.setAttribute("aria-label", "Relevance feedback");
  const grid = el("div", { className: "results-grid" });
  head.append(el("div", { className: "list-tools" }, csv, json));
  section.append(head, mapsNote, bar, grid);

  const observer = new IntersectionObserver((entries) => visibilityChanged(list, entries));
  list.view = { section, grid, bar, summary, observer, visible: new Set(), cards: new Map(), queryTarget, timer: 0 };
  const cards = list.results.map((result) => resultCard(list, result));
  grid.replaceChildren(...(cards.length ? cards : [el("p", { className: "results-empty" }, hooks.emptyMessage(list))]));
  renderBar(list);
  return section;
}

function listSummary(list) {
  const parts = [list.results.length ? plural(list.results.length, "result") : "No results"];
  const region = list.query.region;
  if (region) parts.push(`region ${region[0]}, ${region[1]} to ${region[2]}, ${region[3]} px`);
  const { positive, negative } = list.applied;
  if (positive.length || negative.length) {
    parts.push(`refined with ${positive.length} more like this, ${negative.length} not like this (left out of the results)`);
  }
  return parts.join(" · ");
}

function resultCard(list, result) {
  const { rank, score, image } = result;
  const meta = image.metadata || {};
  const thumb = el("img", {
    className: "result-thumb",
    src: image.thumbnail_url,
    alt: `Thumbnail of image ${image.id}`,
    loading: "lazy",
    decoding: "async",
  });
  const link = el(
    "a",
    { className: "result", href: imageHash(image.id) },
    el("div", { className: "stage thumb-stage" }, thumb),
    el(
      "div",
      { className: "result-body" },
      el(
        "p",
        { className: "result-heading" },
        el("span", { className: "result-rank" }, `#${rank}`),
        el("span", { className: "result-score" }, `score ${formatScore(score)}`),
      ),
      definitionList(el("dl", { className: "result-meta" }), [
        ["Image", String(image.id)],
        ["External ID", text(meta.external_id)],
        ["Dataset", text(meta.dataset)],
        ["Patient", text(meta.patient_id)],
        ["Age/sex/view", [ageText(meta.age), text(meta.sex), text(meta.view_position)].join(" · ")],
        ["Findings", findingsText(meta.findings)],
      ]),
    ),
  );
  link.dataset.imageId = String(image.id);
  link.dataset.rank = String(rank);
  const compare = button("Compare", "button button-secondary button-small compare-button");
  compare.setAttribute("aria-label", `Compare with the query (image ${image.id})`);
  compare.hidden = !hooks.queryUrl(list);
  compare.addEventListener("click", () =>
    openCompare({
      list,
      result,
      queryUrl: hooks.queryUrl(list),
      opener: compare,
      loadMaps: () => fetchMaps(list, [image.id], drawMaps),
    }),
  );
  const marks = markButtons(list, image.id, (id, kind) => mark(list, id, kind));
  const card = el("article", { className: "result-card" }, link, el("div", { className: "result-actions" }, ...marks, compare));
  card.dataset.imageId = String(image.id);
  // The query picture shows the map against the result the user points at or tabs to.
  card.addEventListener("mouseenter", () => pointAt(list, image.id));
  card.addEventListener("focusin", () => pointAt(list, image.id));
  list.view.cards.set(image.id, { card, layer: new MapLayer(thumb) });
  list.view.observer.observe(card);
  return card;
}

function mark(list, id, kind) {
  try {
    toggleMark(list, id, kind);
  } catch (error) {
    showError(error);
    return;
  }
  syncMarkButtons(list, list.view.section);
  renderBar(list);
}

function renderBar(list) {
  renderRefineBar(list.view.bar, list, {
    onRefine: (refineButton) => hooks.refine(list, refineButton),
    onUnmark: (id) => {
      list.marks.delete(id);
      syncMarkButtons(list, list.view.section);
      renderBar(list);
      // The chip is gone: keep the focus in the bar.
      const next = list.view.bar.querySelector(".chip") || list.view.bar.querySelector(".refine-button:not(:disabled)");
      (next || list.view.bar.querySelector(".refine-summary")).focus();
    },
    onClear: () => {
      list.marks.clear();
      syncMarkButtons(list, list.view.section);
      renderBar(list);
      list.view.bar.querySelector(".refine-button").focus();
    },
  });
}

function visibilityChanged(list, entries) {
  if (!list.view) return;
  for (const entry of entries) {
    const id = Number(entry.target.dataset.imageId);
    if (entry.isIntersecting) list.view.visible.add(id);
    else list.view.visible.delete(id);
  }
  if (mapsOn()) askForVisibleMaps(list);
}

/**
 * Asks, once the scrolling settles, for the maps of the list's visible results (one request
 * for up to 16), and of the result whose map the query picture shows, visible or not.
 */
function askForVisibleMaps(list) {
  if (!list.view || !listHasMaps(list)) return;
  clearTimeout(list.view.timer);
  list.view.timer = setTimeout(() => {
    if (!list.view || !mapsOn() || !list.results.length) return;
    const ids = list.results.map((result) => result.image.id);
    const pointed = ids.includes(list.shownMap) ? list.shownMap : ids[0];
    const wanted = ids.filter((id) => id === pointed || list.view.visible.has(id));
    fetchMaps(list, wanted, drawMaps);
  }, MAPS_SETTLE_MS);
}

function pointAt(list, id) {
  list.shownMap = id;
  drawQueryMaps(list);
}

/** Draws the maps the list has: each result's on its thumbnail, one on the query picture. */
export function drawMaps(list) {
  if (!list.view) return;
  for (const [id, { card, layer }] of list.view.cards) {
    const map = list.maps.byId.get(id);
    if (map && !map.error && !layer.shown) layer.show(map.result_map, map.result_extent);
    card.classList.toggle("map-failed", Boolean(map && map.error));
    if (map && map.error) card.title = `No similarity map: ${map.error}`;
  }
  drawQueryMaps(list);
}

function drawQueryMaps(list) {
  if (!list.view) return;
  const firstWithMap = list.results.map((r) => r.image.id).find((id) => {
    const map = list.maps.byId.get(id);
    return map && !map.error;
  });
  const id = list.maps.byId.has(list.shownMap) ? list.shownMap : firstWithMap;
  const map = id === undefined ? null : list.maps.byId.get(id);
  for (const [cardId, { card }] of list.view.cards) card.classList.toggle("is-shown", cardId === id && Boolean(map));
  const targets = [...hooks.queryTargets(list), ...(list.view.queryTarget ? [list.view.queryTarget] : [])];
  const result = list.results.find((r) => r.image.id === id);
  for (const { layer, caption } of targets) {
    if (!map || map.error) {
      layer.clear();
      if (caption) caption.textContent = "";
      continue;
    }
    layer.show(map.query_map, list.maps.queryExtent);
    if (caption) caption.textContent = `Map of the query against result #${result.rank} (image ${id})`;
  }
}

/** Forgets the query picture's map (the query changed, or another list is shown). */
export function clearQueryTarget(target) {
  target.layer.clear();
  if (target.caption) target.caption.textContent = "";
}
