// Talking to the gateway: one fetch helper for every call of the page.
//
// The session lives in an HttpOnly cookie; every change sends the CSRF token of the readable
// `medsearch_csrf` cookie, which a page of another site cannot read.

const API = "/api/v1";
const SIGN_IN_PAGE = "/signin";
const CSRF_COOKIE = "medsearch_csrf";
const CSRF_HEADER = "X-CSRF-Token";
const SAFE_METHODS = ["GET", "HEAD", "OPTIONS"];

/** A failure the user can act on; `message` is already readable. */
export class UserError extends Error {
  constructor(message, status = 0, problem = null) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

/** fetch() for every call of this page: sends the CSRF token with each change, goes to the
 * sign-in page when the session has ended (401), and turns network failures and error statuses
 * into readable UserErrors (a 403 says what the role may not do). */
export async function apiFetch(path, init = {}) {
  const method = (init.method || "GET").toUpperCase();
  const headers = new Headers(init.headers);
  if (!SAFE_METHODS.includes(method)) {
    const csrfToken = readCookie(CSRF_COOKIE);
    if (csrfToken) headers.set(CSRF_HEADER, csrfToken);
  }
  let response;
  try {
    response = await fetch(API + path, { ...init, headers, credentials: "same-origin" });
  } catch {
    throw new UserError("The gateway cannot be reached. Check your connection and that MedSearch is running.");
  }
  if (response.status === 401) {
    location.assign(SIGN_IN_PAGE);
    throw new UserError("You are signed out. Opening the sign-in page…", 401);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function fetchJson(path, init = {}) {
  return readJson(await apiFetch(path, init));
}

export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    throw new UserError(`The gateway sent an unreadable answer (HTTP ${response.status}).`, response.status);
  }
}

export function goToSignIn() {
  location.replace(SIGN_IN_PAGE);
}

function readCookie(name) {
  for (const pair of document.cookie.split(";")) {
    const at = pair.indexOf("=");
    if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim();
  }
  return null;
}

/** The readable error for a failed response: its problem+json `detail`, else the HTTP status. */
async function errorFrom(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      const problem = await response.json();
      if (problem && typeof problem === "object") {
        return new UserError(problemMessage(problem, response.status), response.status, problem);
      }
    } catch {
      // Not JSON after all: fall through to the status line.
    }
  }
  const reason = response.statusText ? ` ${response.statusText}` : "";
  return new UserError(`The gateway answered HTTP ${response.status}${reason}.`, response.status);
}

function problemMessage(problem, status) {
  const detail = typeof problem.detail === "string" && problem.detail ? problem.detail : problem.title || `HTTP ${status}`;
  if (!problem.dependency) return String(detail);
  const service = `The ${problem.dependency} service`;
  if (status === 503) return `${service} is unavailable: ${detail}`;
  if (status === 504) return `${service} did not answer in time: ${detail}`;
  return `${service} failed: ${detail}`;
}
