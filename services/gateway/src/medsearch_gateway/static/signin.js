// MedSearch sign-in page: trades an API token (or the identity provider's JWT) for a browser
// session, then opens the search page.
//
// A sign-in link carries the token in the URL fragment (`/signin#token=mst_…`): a fragment never
// reaches a server, a proxy or a log. This script runs before the page is parsed and takes it
// out of the address bar and the history at once, so it is neither bookmarked nor shared. A link
// opened in a tab that already shows this page changes only the fragment: that is caught too.
"use strict";

const SESSION_URL = "/api/v1/session";
const CSRF_COOKIE = "medsearch_csrf";
const HOME = "/";

const linkToken = takeTokenFromFragment();

/** The token of `#token=…`, removed from the address bar; null when there is none. */
function takeTokenFromFragment() {
  if (!location.hash) return null;
  const match = /^#token=([^&]*)/.exec(location.hash);
  history.replaceState(null, "", location.pathname + location.search);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]).trim() || null;
  } catch {
    return null; // Malformed escapes: the form asks for the token instead.
  }
}

const ui = {};

function byId(id) {
  return document.getElementById(id);
}

function showError(message) {
  ui.error.textContent = message;
}

function setBusy(message) {
  ui.status.textContent = message;
  ui.button.disabled = Boolean(message);
}

/** The readable reason of a failed answer: its problem+json `detail`, else the HTTP status. */
async function reasonOf(response) {
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try {
      const problem = await response.json();
      if (problem && typeof problem.detail === "string" && problem.detail) return problem.detail;
      if (problem && typeof problem.title === "string" && problem.title) return problem.title;
    } catch {
      // Not JSON after all: fall through to the status.
    }
  }
  return `the gateway answered HTTP ${response.status}`;
}

async function signIn(token) {
  showError("");
  setBusy("Signing in…");
  let response;
  try {
    response = await fetch(SESSION_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      credentials: "same-origin",
    });
  } catch {
    setBusy("");
    showError("Sign-in failed: the gateway cannot be reached. Check your connection and that MedSearch is running.");
    return;
  }
  if (response.status === 201) {
    location.replace(HOME);
    return;
  }
  const reason = (await reasonOf(response)).replace(/[.\s]+$/, "");
  setBusy("");
  showError(`Sign-in failed: ${reason}.`);
  ui.token.focus();
  ui.token.select();
}

/** A browser that is already signed in (not merely an anonymous reader) goes to the search. */
async function alreadySignedIn() {
  // Both cookies come and go together; without them there is nothing to ask (and no refusal
  // to write into the audit trail for every signed-out visit).
  if (!document.cookie.split(";").some((pair) => pair.trim().startsWith(`${CSRF_COOKIE}=`))) return false;
  try {
    const response = await fetch(SESSION_URL, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return false;
    const caller = await response.json();
    return Boolean(caller && caller.role && caller.via !== "anonymous");
  } catch {
    return false;
  }
}

async function start() {
  ui.form = byId("signin-form");
  ui.token = byId("token");
  ui.button = byId("signin-button");
  ui.error = byId("signin-error");
  ui.status = byId("signin-status");
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.token.value.trim();
    if (!token) {
      showError("Enter an API token first.");
      ui.token.focus();
      return;
    }
    signIn(token);
  });
  window.addEventListener("hashchange", () => {
    const token = takeTokenFromFragment();
    if (token) signIn(token);
  });
  if (linkToken) {
    await signIn(linkToken);
    return;
  }
  if (await alreadySignedIn()) {
    location.replace(HOME);
    return;
  }
  ui.token.focus();
}

document.addEventListener("DOMContentLoaded", start);
