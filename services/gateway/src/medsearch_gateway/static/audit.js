// The audit view (admins): the latest events of the audit trail, as plain text cells.

import { fetchJson } from "./http.js";
import { byId, el, formatDate, plural, text } from "./dom.js";
import { runRequest } from "./messages.js";

const AUDIT_EVENTS = 100;
const AUDIT_OUTCOMES = ["ok", "refused", "failed"];

const ui = {
  refresh: byId("audit-refresh"),
  rows: byId("audit-rows"),
  summary: byId("audit-summary"),
};

/** Wires "Refresh"; `shown()` says whether the audit view is still the one on screen. */
export function initAudit(shown) {
  ui.refresh.addEventListener("click", () => loadAudit(shown));
}

export async function loadAudit(shown) {
  const params = new URLSearchParams({ limit: String(AUDIT_EVENTS) });
  const page = await runRequest(ui.refresh, "Loading the audit trail…", () =>
    fetchJson(`/audit?${params}`, { cache: "no-store" }),
  );
  if (!page || !shown()) return;
  const events = Array.isArray(page.items) ? page.items : [];
  ui.rows.replaceChildren(...events.map(auditRow));
  ui.summary.textContent = events.length
    ? `The latest ${plural(events.length, "event")}` + (page.next_cursor ? "; the CSV has them all." : ".")
    : "No events recorded yet.";
}

function auditRow(event) {
  const outcome = AUDIT_OUTCOMES.includes(event.outcome) ? event.outcome : "unknown";
  const results = Array.isArray(event.result_ids) ? String(event.result_ids.length) : "—";
  const cells = [
    formatDate(event.at),
    text(event.actor),
    text(event.role),
    text(event.action),
    el("span", { className: `state state-${outcome}` }, text(event.outcome)),
    text(event.image_id),
    results,
    text(event.detail),
  ];
  const row = el("tr", {}, ...cells.map((cell) => el("td", {}, cell)));
  row.dataset.action = text(event.action);
  return row;
}
