// The add view (editors): one PNG, JPEG or DICOM with its metadata, stored and indexed.

import { UserError, apiFetch, readJson } from "./http.js";
import { byId, el } from "./dom.js";
import { runRequest, showError } from "./messages.js";
import { readNumber, splitList } from "./searching.js";

const ui = {
  addForm: byId("add-form"),
  addFile: byId("add-file"),
  addDataset: byId("add-dataset"),
  addExternalId: byId("add-external-id"),
  addPatientId: byId("add-patient-id"),
  addStudy: byId("add-study"),
  addAge: byId("add-age"),
  addSex: byId("add-sex"),
  addViewPosition: byId("add-view-position"),
  addFindings: byId("add-findings"),
  addButton: byId("add-button"),
  addResult: byId("add-result"),
};
let hooks = null;

/** Wires the form. `pageHooks`: imageHash(id), the address of an image; added(), after each add. */
export function initAdd(pageHooks) {
  hooks = pageHooks;
  ui.addForm.addEventListener("submit", submitAdd);
}

/** The metadata JSON of the add form; empty fields are left out. */
function readAddMetadata() {
  const dataset = ui.addDataset.value.trim();
  if (!dataset) throw new UserError("Dataset is required.");
  const metadata = { dataset };
  const texts = { external_id: ui.addExternalId, patient_id: ui.addPatientId, view_position: ui.addViewPosition };
  for (const [key, input] of Object.entries(texts)) {
    const value = input.value.trim();
    if (value) metadata[key] = value;
  }
  const study = readNumber(ui.addStudy, "Study number", 0, Infinity, true);
  if (study !== null) metadata.study = study;
  const age = readNumber(ui.addAge, "Age", 0, 130);
  if (age !== null) metadata.age = age;
  if (ui.addSex.value) metadata.sex = ui.addSex.value;
  const findings = splitList(ui.addFindings.value);
  if (findings.length) metadata.findings = findings;
  return metadata;
}

async function submitAdd(event) {
  event.preventDefault();
  const file = ui.addFile.files[0];
  let metadata;
  try {
    if (!file) throw new UserError("Choose a PNG, JPEG or DICOM file to add.");
    metadata = readAddMetadata();
  } catch (error) {
    showError(error);
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("metadata", JSON.stringify(metadata));
  showOutcome(null);

  let status = 0;
  const payload = await runRequest(
    ui.addButton,
    "Adding the image…",
    async () => {
      const response = await apiFetch("/images", { method: "POST", body });
      status = response.status;
      return readJson(response);
    },
    showAddFailure,
  );
  if (!payload) return;
  const id = payload.image.id;
  const indexing = payload.indexed ? "indexed" : "not indexed yet";
  const message = status === 200 ? `Image ${id} is already in the catalog, ${indexing}` : `Added image ${id}, ${indexing}`;
  showOutcome("success", message, id);
  hooks.added();
}

/** A stored-but-not-indexed upload (503 with image_id) is half done: say how to finish it. */
function showAddFailure(error) {
  showError(error);
  const problem = error.problem || {};
  if (error.status === 503 && problem.image_id !== null && problem.image_id !== undefined) {
    const detail = String(problem.detail || "indexing failed").replace(/[.\s]+$/, "");
    showOutcome("warning", `Stored as image ${problem.image_id} but not indexed yet: ${detail}. Submit again to finish.`, problem.image_id);
  }
}

/** Writes the add outcome (kind "success" or "warning") with a link to the image; null clears it. */
function showOutcome(kind, message = "", imageId = null) {
  ui.addResult.className = kind ? `outcome outcome-${kind}` : "outcome";
  ui.addResult.replaceChildren();
  if (!kind) return;
  ui.addResult.append(el("span", {}, message), " ", el("a", { href: hooks.imageHash(imageId) }, `Open image ${imageId}`));
}
