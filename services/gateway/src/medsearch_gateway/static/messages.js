// The status line (what is running) and the error banner (what failed), shared by every view.

import { UserError } from "./http.js";
import { byId } from "./dom.js";

const statusLine = byId("status");
const errorBanner = byId("error");
const tasks = []; // status messages of requests in flight, newest last

export function startTask(message) {
  const task = { message };
  tasks.push(task);
  renderStatus();
  return () => {
    tasks.splice(tasks.indexOf(task), 1);
    renderStatus();
  };
}

function renderStatus() {
  const latest = tasks[tasks.length - 1];
  statusLine.textContent = latest ? latest.message : "";
}

export function showError(error) {
  // Anything but a UserError is a bug in this page; still say something readable.
  errorBanner.textContent = error instanceof UserError ? error.message : `The page failed: ${error.message || error}`;
}

export function clearError() {
  errorBanner.textContent = "";
}

/** Runs `request` with `button` disabled and `message` in the status line; null on failure. */
export async function runRequest(button, message, request, onError = showError) {
  if (button) button.disabled = true;
  const finish = startTask(message);
  try {
    const payload = await request();
    clearError();
    return payload;
  } catch (error) {
    onError(error);
    return null;
  } finally {
    finish();
    if (button) button.disabled = false;
  }
}
