// Search by region: a box dragged (or placed with the keyboard) on the query image, turned into
// the original image's pixels for the `region` field of a search.

import { button, contentBox, el } from "./dom.js";

// A press that moves less than this (CSS px) is a click, not a box.
const CLICK_SLOP_PX = 4;
const KEY_STEP = 0.02; // of the image's width or height, per arrow key press
const FIRST_BOX = [0.3, 0.3, 0.7, 0.7];

/**
 * A box over the <img> of `stage` (a positioned element that wraps it), kept as fractions of
 * the picture so it stays put when the image is shown at another size. `size()` gives the
 * original's width and height in pixels (the region's coordinate space); `onChange(selector)`
 * runs after each change.
 */
export class RegionSelector {
  constructor(stage, img, { size, onChange }) {
    this.stage = stage;
    this.img = img;
    this.size = size;
    this.onChange = onChange;
    this.box = null; // [x0, y0, x1, y1], fractions of the picture
    this.frame = el("div", { className: "region-box", hidden: true });
    this.frame.setAttribute("aria-hidden", "true");
    stage.append(this.frame);
    img.draggable = false;
    stage.tabIndex = 0;
    stage.classList.add("region-stage");
    stage.addEventListener("pointerdown", (event) => this.press(event));
    stage.addEventListener("keydown", (event) => this.key(event));
    img.addEventListener("load", () => this.clear());
    new ResizeObserver(() => this.draw()).observe(img);
  }

  /** The box in the original's pixels, [left, top, right, bottom]; null when there is none. */
  region() {
    const size = this.size();
    if (!this.box || !size) return null;
    const [x0, y0, x1, y1] = this.box;
    return [
      Math.max(0, Math.round(x0 * size.width)),
      Math.max(0, Math.round(y0 * size.height)),
      Math.min(size.width, Math.round(x1 * size.width)),
      Math.min(size.height, Math.round(y1 * size.height)),
    ];
  }

  clear() {
    if (this.box === null && this.frame.hidden) return;
    this.set(null);
  }

  set(box) {
    this.box = box;
    this.draw();
    this.onChange(this);
  }

  /** A pointer position as fractions of the picture, held inside it. */
  fraction(event) {
    const rect = this.img.getBoundingClientRect();
    const box = contentBox(this.img);
    const x = (event.clientX - rect.left - box.x) / box.width;
    const y = (event.clientY - rect.top - box.y) / box.height;
    return [Math.min(1, Math.max(0, x)), Math.min(1, Math.max(0, y))];
  }

  press(event) {
    if (event.button !== 0 || !this.img.naturalWidth) return;
    event.preventDefault();
    this.stage.focus({ preventScroll: true });
    const start = this.fraction(event);
    const startX = event.clientX;
    const startY = event.clientY;
    let moved = false;
    this.stage.setPointerCapture(event.pointerId);
    const move = (next) => {
      moved = moved || Math.hypot(next.clientX - startX, next.clientY - startY) >= CLICK_SLOP_PX;
      if (!moved) return;
      const end = this.fraction(next);
      this.box = [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
      this.draw();
    };
    const release = (last) => {
      move(last);
      this.stage.removeEventListener("pointermove", move);
      this.stage.removeEventListener("pointerup", release);
      this.stage.removeEventListener("pointercancel", release);
      if (moved) this.onChange(this);
    };
    this.stage.addEventListener("pointermove", move);
    this.stage.addEventListener("pointerup", release);
    this.stage.addEventListener("pointercancel", release);
  }

  /** Enter places a box; arrows move it, Shift+arrows resize it; Escape or Delete removes it. */
  key(event) {
    if (event.target !== this.stage || !this.img.naturalWidth) return;
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (event.key === "Enter" || event.key === " ") {
      if (!this.box) this.set([...FIRST_BOX]);
    } else if (["Escape", "Delete", "Backspace"].includes(event.key) && this.box) {
      this.set(null);
    } else if (arrows[event.key] && this.box) {
      const [dx, dy] = arrows[event.key].map((step) => step * KEY_STEP);
      let [x0, y0, x1, y1] = this.box;
      if (event.shiftKey) {
        x1 = Math.min(1, Math.max(x0 + KEY_STEP, x1 + dx));
        y1 = Math.min(1, Math.max(y0 + KEY_STEP, y1 + dy));
      } else {
        const mx = Math.min(1 - x1, Math.max(-x0, dx));
        const my = Math.min(1 - y1, Math.max(-y0, dy));
        [x0, x1, y0, y1] = [x0 + mx, x1 + mx, y0 + my, y1 + my];
      }
      this.set([x0, y0, x1, y1]);
    } else {
      return;
    }
    event.preventDefault();
  }

  draw() {
    const frame = this.frame;
    frame.hidden = !this.box;
    if (!this.box) return;
    const box = contentBox(this.img);
    const [x0, y0, x1, y1] = this.box;
    // Positions set through the CSSOM: the page's style-src allows no inline style attribute.
    frame.style.left = `${this.img.offsetLeft + box.x + x0 * box.width}px`;
    frame.style.top = `${this.img.offsetTop + box.y + y0 * box.height}px`;
    frame.style.width = `${(x1 - x0) * box.width}px`;
    frame.style.height = `${(y1 - y0) * box.height}px`;
  }
}

/**
 * The bar under a query image: what the box is in pixels, "Search this region" and "Clear
 * region". `onSearch(region)` runs the search.
 */
export function regionBar(container, selector, onSearch) {
  const hint = el("p", { className: "hint region-hint" },
    "Drag on the image to search a region of it (or focus it, press Enter, then arrows; Shift+arrows resize).");
  const described = el("p", { className: "region-text" });
  described.setAttribute("aria-live", "polite");
  const search = button("Search this region", "button button-primary button-small region-search");
  const clear = button("Clear region", "button button-secondary button-small region-clear");
  const actions = el("div", { className: "region-actions", hidden: true }, search, clear);
  container.replaceChildren(hint, described, actions);
  search.addEventListener("click", () => {
    const region = selector.region();
    if (region) onSearch(region, search);
  });
  clear.addEventListener("click", () => {
    selector.set(null);
    selector.stage.focus();
  });
  return (current) => {
    const region = current.region();
    actions.hidden = !region;
    described.textContent = region
      ? `Region ${region[0]}, ${region[1]} to ${region[2]}, ${region[3]} ` +
        `(${region[2] - region[0]} × ${region[3] - region[1]} px of the image)`
      : "";
  };
}
