// Building the page from untrusted strings, and formatting values for it.
//
// Every string from the API or from a file name is untrusted. The DOM is built with
// createElement, textContent and append() (which turns strings into text nodes), never with
// innerHTML or its relatives, so metadata such as `<img src=x onerror=...>` shows as text.

export function byId(id) {
  return document.getElementById(id);
}

/** A new element; strings among `children` become text nodes, never markup. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

/** A <button type="button">, the page's usual kind. */
export function button(label, className = "button button-secondary button-small", props = {}) {
  return el("button", { type: "button", className, ...props }, label);
}

/** Fills `list` with <dt>/<dd> pairs; a value is text or a DOM node. */
export function definitionList(list, rows) {
  list.replaceChildren(...rows.flatMap(([label, value]) => [el("dt", {}, label), el("dd", {}, value)]));
  return list;
}

export function text(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

export function ageText(age) {
  return age === null || age === undefined ? "—" : `${age} y`;
}

export function findingsText(findings) {
  if (!Array.isArray(findings)) return text(findings);
  return findings.length ? findings.join(", ") : "No finding";
}

export function formatScore(score) {
  return typeof score === "number" ? score.toFixed(3) : "—";
}

export function plural(count, word) {
  return `${count ?? 0} ${word}${count === 1 ? "" : "s"}`;
}

export function formatDate(value) {
  const date = new Date(value);
  return value && !Number.isNaN(date.getTime()) ? date.toLocaleString() : text(value);
}

/** Where an <img> with object-fit: contain draws its picture inside its own box, in CSS px. */
export function contentBox(img) {
  const width = img.clientWidth;
  const height = img.clientHeight;
  if (!img.naturalWidth || !img.naturalHeight || !width || !height) return { x: 0, y: 0, width, height };
  const scale = Math.min(width / img.naturalWidth, height / img.naturalHeight);
  const drawnWidth = img.naturalWidth * scale;
  const drawnHeight = img.naturalHeight * scale;
  return { x: (width - drawnWidth) / 2, y: (height - drawnHeight) / 2, width: drawnWidth, height: drawnHeight };
}
