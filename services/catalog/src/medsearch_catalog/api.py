"""The catalog's HTTP API: parse the request, call the core, serialize the answer."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.datastructures import FileStorage

from medsearch_catalog.audit import DEFAULT_PAGE_SIZE as AUDIT_DEFAULT_PAGE_SIZE
from medsearch_catalog.audit import MAX_PAGE_SIZE as AUDIT_MAX_PAGE_SIZE
from medsearch_catalog.audit import AuditRecord, AuditTrail, event_from_json
from medsearch_catalog.deidentify import Deidentifier
from medsearch_catalog.errors import (
    BatchTooLarge,
    InvalidAuditEvent,
    InvalidCredentials,
    InvalidIdentityRequest,
    InvalidMetadata,
    MalformedRequest,
    status_of,
)
from medsearch_catalog.identity import DEFAULT_SESSION_TTL, Identity, IdentityStore, TokenRecord
from medsearch_catalog.images import ImageLimits
from medsearch_catalog.ingest import ImageUpload, IngestOutcome, RefusedImage, ingest_images
from medsearch_catalog.metadata import (
    MAX_METADATA_BYTES,
    load_json,
    load_metadata_json,
    parse_metadata_changes,
)
from medsearch_catalog.parsing import (
    MAX_BATCH_IMAGES,
    decode_cursor,
    encode_cursor,
    flag_arg,
    int_arg,
    parse_audit_filter,
    parse_filter,
    parse_id,
    parse_id_list,
    parse_id_range,
    parse_image_id,
    parse_index_state,
    parse_index_states,
    parse_metadata_list,
    parse_model_id,
    parse_secrets,
    parse_session_request,
    parse_token_request,
)
from medsearch_catalog.repository import (
    CatalogStats,
    ImageFilter,
    ImageRecord,
    ImageRepository,
    IndexState,
    StoredFile,
)
from medsearch_common.problems import problem_response, problem_type, slug_of

CATALOG_EXTENSION = "medsearch_catalog"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# A batch's metadata array (as large as a form's text field may be), and a batch of index
# states: room for 500 with reasons of 2000 characters.
MAX_BATCH_METADATA_BYTES = 1024 * 1024
MAX_INDEX_STATES_BYTES = 2 * 1024 * 1024
# The bytes behind an ID never change, so caches may keep them; private: medical data.
_FILE_CACHE_CONTROL = "private, max-age=31536000, immutable"

_LIST_PARAMS = {
    "dataset", "patient_id", "external_id", "finding", "sex", "view_position",
    "age_min", "age_max", "model_id", "index_state", "limit", "cursor",
}  # fmt: skip
_AUDIT_PARAMS = {"actor", "action", "image_id", "since", "until", "limit", "cursor"}
# Answers that carry a secret, or who did what, stay out of every cache.
_NO_STORE = {"Cache-Control": "no-store"}
_INVALID_TOKEN = "invalid or revoked token"  # noqa: S105 - a message, not a secret
_INVALID_SESSION = "invalid, ended or expired session"

blueprint = Blueprint("catalog", __name__, url_prefix="/v1")


@dataclass(frozen=True)
class CatalogContext:
    repository: ImageRepository
    limits: ImageLimits
    decode_pool: Executor
    deidentifier: Deidentifier
    identity: IdentityStore
    audit: AuditTrail


def _context() -> CatalogContext:
    context: CatalogContext = current_app.extensions[CATALOG_EXTENSION]
    return context


def _ingest(uploads: list[ImageUpload]) -> list[IngestOutcome]:
    context = _context()
    return ingest_images(
        context.repository, context.limits, uploads, context.deidentifier, map_decode=context.decode_pool.map
    )


@blueprint.post("/images")
def create_image() -> tuple[Response, int, dict[str, str]]:
    uploads = request.files.getlist("file")
    if len(uploads) != 1:
        raise MalformedRequest(
            "send exactly one image in the multipart field 'file'"
            + (f" (got {len(uploads)})" if uploads else "")
        )
    text = _metadata_text(MAX_METADATA_BYTES, too_large=InvalidMetadata)
    if text is None:
        raise InvalidMetadata(
            "the multipart field 'metadata' (a JSON object with at least 'dataset') is required"
        )
    outcome = _ingest([ImageUpload(uploads[0].read(), load_metadata_json(text))])[0]
    if isinstance(outcome, RefusedImage):
        raise outcome.error
    location = url_for(".get_image", image_id=outcome.record.id)
    return jsonify(image_json(outcome.record)), 201 if outcome.created else 200, {"Location": location}


@blueprint.post("/images/batch")
def create_images() -> Response:
    """Up to MAX_BATCH_IMAGES images, each stored or refused on its own."""
    uploads = _batch_files()
    text = _metadata_text(MAX_BATCH_METADATA_BYTES, too_large=BatchTooLarge)
    if text is None:
        raise MalformedRequest(
            "the multipart field 'metadata' (a JSON array, one object per file) is required"
        )
    metadata = parse_metadata_list(load_json(text, "metadata", limit=MAX_BATCH_METADATA_BYTES), len(uploads))
    outcomes = _ingest([ImageUpload(u.read(), m) for u, m in zip(uploads, metadata, strict=True)])
    return jsonify(items=[outcome_json(i, outcome) for i, outcome in enumerate(outcomes)])


@blueprint.get("/images/<image_id>")
def get_image(image_id: str) -> Response:
    return jsonify(image_json(_context().repository.get_image(parse_image_id(image_id))))


@blueprint.get("/images")
def list_images() -> Response:
    if "ids" in request.args:
        if len(list(request.args.items(multi=True))) > 1:
            raise MalformedRequest("'ids' comes once and cannot be combined with other parameters")
        ids = parse_id_list(request.args["ids"])
        records = _context().repository.get_images(ids)
        found = {r.id for r in records}
        return jsonify(items=[image_json(r) for r in records], missing=[i for i in ids if i not in found])
    _refuse_unknown_params(_LIST_PARAMS)
    return _page(parse_filter(request.args))


@blueprint.get("/models/<model_id>/pending")
def list_pending(model_id: str) -> Response:
    """Images to (re)index for a model: never indexed or pending, and failed when asked."""
    _refuse_unknown_params({"limit", "cursor", "include_failed"})
    states = ("pending", "failed") if flag_arg(request.args, "include_failed") else ("pending",)
    return _page(ImageFilter(model_id=parse_model_id(model_id), index_state=states))


@blueprint.get("/stats")
def get_stats() -> Response:
    """Counts of images, per dataset and per indexing state; `model_id` adds a model with no state yet."""
    _refuse_unknown_params({"model_id", "breakdown"})
    model_id = request.args.get("model_id")
    breakdown = flag_arg(request.args, "breakdown")
    stats = _context().repository.stats(
        parse_model_id(model_id) if model_id is not None else None, breakdown=breakdown
    )
    return jsonify(stats_json(stats))


@blueprint.get("/images/<image_id>/file")
def get_file(image_id: str) -> Response:
    stored = _context().repository.get_file(parse_image_id(image_id), thumbnail=False)
    return _file_response(stored, etag=stored.sha256)


@blueprint.get("/images/<image_id>/thumbnail")
def get_thumbnail(image_id: str) -> Response:
    stored = _context().repository.get_file(parse_image_id(image_id), thumbnail=True)
    # Tied to the thumbnail's making too, so that a new thumbnail size gets a new tag.
    return _file_response(stored, etag=f"{stored.sha256}-thumb-{_context().limits.thumbnail_px}")


@blueprint.patch("/images/<image_id>")
def update_image(image_id: str) -> Response:
    changes = parse_metadata_changes(_json_body("metadata"))
    return jsonify(image_json(_context().repository.update_metadata(parse_image_id(image_id), changes)))


@blueprint.delete("/images/<image_id>")
def delete_image(image_id: str) -> tuple[str, int]:
    _context().repository.delete_image(parse_image_id(image_id))
    return "", 204


@blueprint.put("/images/<image_id>/index-state/<model_id>")
def set_index_state(image_id: str, model_id: str) -> Response:
    change = parse_index_state(_json_body("the index state"), parse_image_id(image_id))
    saved = _context().repository.set_index_state(
        change.image_id, parse_model_id(model_id), change.state, change.reason
    )
    return jsonify(model_id=model_id, **index_state_json(saved))


@blueprint.get("/models/<model_id>/index-states")
def list_index_states(model_id: str) -> Response:
    """Each image's state for a model in a range of IDs: what `medsearch verify` compares with
    the search service's vectors."""
    _refuse_unknown_params({"from", "to"})
    first, end = parse_id_range(request.args)
    found = _context().repository.index_states_between(parse_model_id(model_id), first, end)
    return jsonify(
        items=[{"image_id": image_id, "state": state} for image_id, state in found.states],
        max_image_id=found.max_image_id,
    )


@blueprint.put("/models/<model_id>/index-states")
def set_index_states(model_id: str) -> Response:
    """Many images' states for one model, all set together or none."""
    model_id = parse_model_id(model_id)
    changes = parse_index_states(
        _json_body("the index states", limit=MAX_INDEX_STATES_BYTES, too_large=BatchTooLarge)
    )
    saved, missing = _context().repository.set_index_states(model_id, changes)
    return jsonify(
        model_id=model_id,
        items=[{"id": image_id, **index_state_json(state)} for image_id, state in saved],
        missing=missing,
    )


# -- identity: API tokens and browser sessions (internal: the gateway calls these) ------------------


@blueprint.post("/tokens")
def create_token() -> tuple[Response, int, dict[str, str]]:
    name, role, expires_at = parse_token_request(
        _json_body("the token request", too_large=InvalidIdentityRequest)
    )
    record, secret = _context().identity.create_token(name, role, expires_at)
    return jsonify(token=token_json(record), secret=secret), 201, _NO_STORE


@blueprint.get("/tokens")
def list_tokens() -> Response:
    _refuse_unknown_params(set())
    return jsonify(items=[token_json(t) for t in _context().identity.list_tokens()])


@blueprint.delete("/tokens/<token_id>")
def revoke_token(token_id: str) -> tuple[str, int]:
    _context().identity.revoke_token(parse_id(token_id, "a token ID"))
    return "", 204


@blueprint.post("/tokens/verify")
def verify_token() -> tuple[Response, int, dict[str, str]]:
    sent = parse_secrets(_json_body("the token", too_large=InvalidIdentityRequest), ("secret",))
    identity = _context().identity.verify_token(sent["secret"])
    if identity is None:
        raise InvalidCredentials(_INVALID_TOKEN)
    return jsonify(identity=identity_json(identity)), 200, _NO_STORE


@blueprint.post("/sessions")
def start_session() -> tuple[Response, int, dict[str, str]]:
    identity, ttl = parse_session_request(_json_body("the session request", too_large=InvalidIdentityRequest))
    session = _context().identity.start_session(identity, ttl or DEFAULT_SESSION_TTL)
    body = {
        "secret": session.secret,
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at.isoformat(),
    }
    return jsonify(body), 201, _NO_STORE


@blueprint.post("/sessions/verify")
def verify_session() -> tuple[Response, int, dict[str, str]]:
    sent = parse_secrets(
        _json_body("the session", too_large=InvalidIdentityRequest), ("secret",), ("csrf_token",)
    )
    store = _context().identity
    identity = store.verify_session(sent["secret"])
    if identity is None:
        raise InvalidCredentials(_INVALID_SESSION)
    body: dict[str, Any] = {"identity": identity_json(identity)}
    if "csrf_token" in sent:
        body["csrf_ok"] = store.check_csrf(sent["secret"], sent["csrf_token"])
    return jsonify(body), 200, _NO_STORE


@blueprint.delete("/sessions")
def end_session() -> tuple[str, int]:
    sent = parse_secrets(_json_body("the session", too_large=InvalidIdentityRequest), ("secret",))
    _context().identity.end_session(sent["secret"])
    return "", 204


# -- the audit trail ----------------------------------------------------------------------------------


@blueprint.post("/audit")
def record_audit_event() -> tuple[Response, int]:
    body = _json_body("the audit event", too_large=InvalidAuditEvent)
    if not isinstance(body, dict) or set(body) != {"event"}:
        raise InvalidAuditEvent('the body must be a JSON object with only "event", the event to record')
    record = _context().audit.record(event_from_json(body["event"]))
    return jsonify(id=record.id), 201


@blueprint.get("/audit")
def query_audit() -> tuple[Response, int, dict[str, str]]:
    _refuse_unknown_params(_AUDIT_PARAMS)
    page = _context().audit.query(
        parse_audit_filter(request.args),
        limit=int_arg(request.args, "limit", 1, AUDIT_MAX_PAGE_SIZE) or AUDIT_DEFAULT_PAGE_SIZE,
        cursor=request.args.get("cursor"),
    )
    return jsonify(items=[audit_json(r) for r in page.items], next_cursor=page.next_cursor), 200, _NO_STORE


@blueprint.get("/audit.csv")
def export_audit() -> Response:
    _refuse_unknown_params(_AUDIT_PARAMS - {"limit", "cursor"})
    lines = _context().audit.export_csv(parse_audit_filter(request.args))
    response = Response(lines, mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="audit.csv"'
    response.headers.update(_NO_STORE)
    return response


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_catalog") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


# -- reading the request ---------------------------------------------------------------


def _page(image_filter: ImageFilter) -> Response:
    limit = int_arg(request.args, "limit", 1, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    cursor = request.args.get("cursor")
    after_id = decode_cursor(cursor) if cursor else 0
    # One more than asked tells whether another page follows.
    records = _context().repository.list_images(image_filter, after_id=after_id, limit=limit + 1)
    page = records[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(records) > limit else None
    return jsonify(items=[image_json(r) for r in page], next_cursor=next_cursor)


def _refuse_unknown_params(known: set[str]) -> None:
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise MalformedRequest(f"unknown parameter(s): {', '.join(unknown)}")


def _batch_files() -> list[FileStorage]:
    """The files of the field 'file', 1 to MAX_BATCH_IMAGES; anything but them and 'metadata' is refused."""
    if request.mimetype != "multipart/form-data":
        raise MalformedRequest(
            "send the images as multipart/form-data, one file per part in the field 'file'"
            + (f" (got {request.mimetype})" if request.mimetype else "")
        )
    others = sorted({*request.files, *request.form} - {"file", "metadata"})
    if others:
        raise MalformedRequest(f"unexpected field(s) {', '.join(map(repr, others))}: send images in 'file'")
    if "file" in request.form:
        raise MalformedRequest("the field 'file' must hold files, not text")
    uploads = request.files.getlist("file")
    if not uploads:
        raise MalformedRequest("no file in the multipart field 'file'")
    if len(uploads) > MAX_BATCH_IMAGES:
        raise BatchTooLarge(f"{len(uploads)} images in one batch; the limit is {MAX_BATCH_IMAGES}")
    return uploads


def _metadata_text(limit: int, too_large: type[Exception]) -> str | None:
    """The metadata JSON: a form field, or a file part for clients that send it so; None if absent."""
    if "metadata" in request.form:
        data: bytes = request.form["metadata"].encode()
    else:
        part = request.files.get("metadata")
        if part is None:
            return None
        # One byte past the limit is enough for the size check to refuse it.
        data = part.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"metadata is over its size limit; the limit is {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the metadata part is not UTF-8 text") from None


def _json_body(
    what: str, limit: int = MAX_METADATA_BYTES, too_large: type[Exception] = InvalidMetadata
) -> Any:
    data = request.get_data()
    if not data:
        raise MalformedRequest("the request body must be JSON")
    if len(data) > limit:
        raise too_large(f"{what} is {len(data)} bytes; the limit is {limit}")
    return load_json(data, what, limit=limit)


def _file_response(stored: StoredFile, *, etag: str) -> Response:
    response = Response(stored.data, mimetype=stored.mime_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = _FILE_CACHE_CONTROL
    response.make_conditional(request)
    if response.status_code == 412:  # werkzeug would send the bytes with it
        return problem_response(412, "If-Match names a version of this file that it is not")
    return response


# -- serializing ------------------------------------------------------------------------


def image_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "sha256": record.sha256,
        "mime_type": record.mime_type,
        "width": record.width,
        "height": record.height,
        "byte_size": record.byte_size,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "metadata": record.metadata.to_json(),
        "index_states": {model: index_state_json(s) for model, s in record.index_states.items()},
    }


def outcome_json(index: int, outcome: IngestOutcome) -> dict[str, Any]:
    if isinstance(outcome, RefusedImage):
        error = outcome.error
        return {
            "index": index,
            "status": status_of(error),
            "type": problem_type(slug_of(type(error))),
            "detail": str(error),
        }
    return {"index": index, "status": 201 if outcome.created else 200, "image": image_json(outcome.record)}


def stats_json(stats: CatalogStats) -> dict[str, Any]:
    return {
        "images": stats.images,
        "datasets": stats.datasets,
        "models": {
            model: {"indexed": c.indexed, "pending": c.pending, "failed": c.failed}
            for model, c in stats.models.items()
        },
        **({"breakdown": stats.breakdown} if stats.breakdown is not None else {}),
    }


def index_state_json(state: IndexState) -> dict[str, Any]:
    return {"state": state.state, "reason": state.reason, "updated_at": state.updated_at.isoformat()}


def token_json(record: TokenRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "created_at": record.created_at.isoformat(),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "last_used_at": _iso(record.last_used_at),
    }


def identity_json(identity: Identity) -> dict[str, Any]:
    return {"subject": identity.subject, "role": identity.role, "token_id": identity.token_id}


def audit_json(record: AuditRecord) -> dict[str, Any]:
    event = record.event
    return {
        "id": record.id,
        "at": record.at.isoformat(),
        "actor": event.actor,
        "role": event.role,
        "action": event.action,
        "outcome": event.outcome,
        "image_id": event.image_id,
        "result_ids": None if event.result_ids is None else list(event.result_ids),
        "request_id": event.request_id,
        "detail": event.detail,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
