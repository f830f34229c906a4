"""The catalog's HTTP API: parse the request, call the core, serialize the answer."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from medsearch_catalog.errors import InvalidMetadata, MalformedRequest
from medsearch_catalog.images import ImageLimits, check_image
from medsearch_catalog.metadata import (
    MAX_METADATA_BYTES,
    MAX_TEXT_CHARS,
    SEXES,
    load_json,
    load_metadata_json,
    parse_metadata,
    parse_metadata_changes,
)
from medsearch_catalog.repository import (
    INDEX_STATES,
    CatalogStats,
    ImageFilter,
    ImageRecord,
    ImageRepository,
    IndexState,
    StoredFile,
)
from medsearch_common.problems import problem_response

CATALOG_EXTENSION = "medsearch_catalog"
MAX_BATCH_IDS = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_REASON_CHARS = 2000
_MAX_BIGINT = 2**63 - 1
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGITS = re.compile(r"[0-9]{1,19}")
# The bytes behind an ID never change, so caches may keep them; private: medical data.
_FILE_CACHE_CONTROL = "private, max-age=31536000, immutable"

_LIST_PARAMS = {
    "dataset", "patient_id", "external_id", "finding", "sex", "view_position",
    "age_min", "age_max", "model_id", "index_state", "limit", "cursor",
}  # fmt: skip

blueprint = Blueprint("catalog", __name__, url_prefix="/v1")


@dataclass(frozen=True)
class CatalogContext:
    repository: ImageRepository
    limits: ImageLimits


def _context() -> CatalogContext:
    context: CatalogContext = current_app.extensions[CATALOG_EXTENSION]
    return context


@blueprint.post("/images")
def create_image() -> tuple[Response, int, dict[str, str]]:
    uploads = request.files.getlist("file")
    if len(uploads) != 1:
        raise MalformedRequest(
            "send exactly one image in the multipart field 'file'"
            + (f" (got {len(uploads)})" if uploads else "")
        )
    metadata = parse_metadata(load_metadata_json(_metadata_text()))
    image = check_image(uploads[0].read(), _context().limits)
    record, created = _context().repository.add_image(image, metadata)
    location = url_for(".get_image", image_id=record.id)
    return jsonify(image_json(record)), 201 if created else 200, {"Location": location}


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
    states = ("pending", "failed") if _flag("include_failed") else ("pending",)
    return _page(ImageFilter(model_id=parse_model_id(model_id), index_state=states))


@blueprint.get("/stats")
def get_stats() -> Response:
    """Counts of images, per dataset and per indexing state; `model_id` adds a model with no state yet."""
    _refuse_unknown_params({"model_id"})
    model_id = request.args.get("model_id")
    stats = _context().repository.stats(parse_model_id(model_id) if model_id is not None else None)
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
    body = _json_body("the index state")
    if not isinstance(body, dict):
        raise InvalidMetadata("the body must be a JSON object with 'state' and, when failed, 'reason'")
    unknown = sorted(set(body) - {"state", "reason"})
    if unknown:
        raise InvalidMetadata(f"unknown field(s): {', '.join(unknown)}; known fields are: state, reason")
    state, reason = body.get("state"), body.get("reason")
    if state not in INDEX_STATES:
        raise InvalidMetadata(f"state must be one of {', '.join(INDEX_STATES)}, got {state!r}")
    if state == "failed":
        if isinstance(reason, str):
            reason = reason.replace("\x00", "").strip()[:MAX_REASON_CHARS]
        if not isinstance(reason, str) or not reason:
            raise InvalidMetadata("a failed state needs a 'reason' (a non-empty string)")
    elif reason is not None:
        raise InvalidMetadata(f"'reason' is only for the failed state, not {state}")
    saved = _context().repository.set_index_state(
        parse_image_id(image_id), parse_model_id(model_id), state, reason
    )
    return jsonify(model_id=model_id, **index_state_json(saved))


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_catalog") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


# -- parsing ----------------------------------------------------------------------------


def parse_image_id(raw: str) -> int:
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= _MAX_BIGINT:
        raise MalformedRequest(f"an image ID is a positive integer, got {raw[:40]!r}")
    return int(raw)


def parse_id_list(raw: str) -> list[int]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise MalformedRequest("'ids' must list at least one image ID, separated by commas")
    if len(parts) > MAX_BATCH_IDS:
        raise MalformedRequest(f"'ids' lists {len(parts)} IDs; the limit is {MAX_BATCH_IDS}")
    return [parse_image_id(p) for p in parts]


def parse_model_id(raw: str) -> str:
    if not _MODEL_ID.fullmatch(raw):
        raise MalformedRequest(
            "a model ID is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit;"
            f" got {raw[:40]!r}"
        )
    return raw


def parse_filter(args: Any) -> ImageFilter:
    def texts(name: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in args.getlist(name) if v.strip())
        if any(len(v) > MAX_TEXT_CHARS for v in values):
            raise MalformedRequest(f"'{name}' is longer than {MAX_TEXT_CHARS} characters")
        return values

    index_states = texts("index_state")
    bad_states = [s for s in index_states if s not in INDEX_STATES]
    if bad_states:
        raise MalformedRequest(f"index_state must be one of {', '.join(INDEX_STATES)}, got {bad_states[0]!r}")
    model_id = args.get("model_id")
    if bool(index_states) != (model_id is not None):
        raise MalformedRequest("'index_state' and 'model_id' go together: the state is per model")
    age_min, age_max = _int_arg("age_min", 0, 130), _int_arg("age_max", 0, 130)
    if age_min is not None and age_max is not None and age_min > age_max:
        raise MalformedRequest(f"age_min ({age_min}) is greater than age_max ({age_max})")
    return ImageFilter(
        dataset=texts("dataset"),
        patient_id=texts("patient_id"),
        external_id=texts("external_id"),
        finding=texts("finding"),
        sex=_sexes(texts("sex")),
        view_position=tuple(v.upper() for v in texts("view_position")),
        age_min=age_min,
        age_max=age_max,
        model_id=parse_model_id(model_id) if model_id is not None else None,
        index_state=index_states,
    )


def _sexes(values: tuple[str, ...]) -> tuple[str, ...]:
    sexes = tuple(v.upper() for v in values)
    bad = [v for v in sexes if v not in SEXES]
    if bad:
        raise MalformedRequest(f"'sex' must be one of {', '.join(SEXES)}, got {bad[0][:40]!r}")
    return sexes


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise MalformedRequest("'cursor' is not a cursor this service gave out") from None
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= _MAX_BIGINT:
        raise MalformedRequest("'cursor' is not a cursor this service gave out")
    return after


def _page(image_filter: ImageFilter) -> Response:
    limit = _int_arg("limit", 1, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
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


def _int_arg(name: str, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise MalformedRequest(f"'{name}' must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise MalformedRequest(f"'{name}' must be between {minimum} and {maximum}, got {value}")
    return value


def _flag(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise MalformedRequest(f"'{name}' must be true or false, got {raw[:40]!r}")
    return raw in ("true", "1")


def _metadata_text() -> str:
    """The metadata JSON: a form field, or a file part for clients that send it so."""
    if "metadata" in request.form:
        return request.form["metadata"]
    part = request.files.get("metadata")
    if part is not None:
        # One byte past the limit is enough for the size check to refuse it.
        data: bytes = part.read(MAX_METADATA_BYTES + 1)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            if len(data) > MAX_METADATA_BYTES:
                raise InvalidMetadata(
                    f"metadata is larger than the limit of {MAX_METADATA_BYTES} bytes"
                ) from None
            raise MalformedRequest("the metadata part is not UTF-8 text") from None
    raise InvalidMetadata(
        "the multipart field 'metadata' (a JSON object with at least 'dataset') is required"
    )


def _json_body(what: str) -> Any:
    if not request.data:
        raise MalformedRequest("the request body must be JSON")
    return load_json(request.get_data(), what)


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


def stats_json(stats: CatalogStats) -> dict[str, Any]:
    return {
        "images": stats.images,
        "datasets": stats.datasets,
        "models": {
            model: {"indexed": c.indexed, "pending": c.pending, "failed": c.failed}
            for model, c in stats.models.items()
        },
    }


def index_state_json(state: IndexState) -> dict[str, Any]:
    return {"state": state.state, "reason": state.reason, "updated_at": state.updated_at.isoformat()}
