"""The public JSON API under /api/v1: parse the request, run the flow, serialize the answer."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from medsearch_gateway.errors import InvalidRequest
from medsearch_gateway.orchestration import Gateway, Hit, Ingested, SearchRequest, Upload, parse_flag

GATEWAY_EXTENSION = "medsearch_gateway"
_DIGITS = re.compile(r"[0-9]{1,19}")
_MAX_BIGINT = 2**63 - 1
# What a browse may ask the catalog for; anything else is refused here, not passed on.
_BROWSE_PARAMS = {
    "dataset", "patient_id", "external_id", "finding", "sex", "view_position",
    "age_min", "age_max", "limit", "cursor",
}  # fmt: skip
# Passed through from the catalog so that browsers cache files by their immutable IDs.
_FILE_HEADERS = ("Content-Type", "ETag", "Cache-Control")

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[GATEWAY_EXTENSION]
    return gateway


@blueprint.post("/search")
def search() -> Response:
    upload = _upload()
    query = SearchRequest.parse(
        request.form.get("k"), request.form.get("filter"), request.form.get("one_per_patient")
    )
    model, hits = _gateway().search(upload, query)
    return jsonify(model=model, results=_hits_json(hits, model["model_id"]))


@blueprint.get("/images/<image_id>/similar")
def similar(image_id: str) -> Response:
    _refuse_unknown_params({"k", "filter", "one_per_patient"})
    query = SearchRequest.parse(
        request.args.get("k"), request.args.get("filter"), request.args.get("one_per_patient")
    )
    parsed_id = parse_image_id(image_id)
    model, hits = _gateway().similar(parsed_id, query)
    return jsonify(model=model, query={"image_id": parsed_id}, results=_hits_json(hits, model["model_id"]))


@blueprint.get("/images")
def list_images() -> Response:
    _refuse_unknown_params(_BROWSE_PARAMS)
    gateway = _gateway()
    page = gateway.catalog.page(list(request.args.items(multi=True)))
    model_id = gateway.active_model_id()
    return jsonify(
        items=[image_json(item, model_id) for item in page["items"]], next_cursor=page["next_cursor"]
    )


@blueprint.post("/images")
def add_image() -> tuple[Response, int]:
    upload = _upload()
    metadata = request.form.get("metadata")
    if metadata is None:
        raise InvalidRequest("the form field 'metadata' (a JSON object with at least 'dataset') is required")
    ingested = _gateway().ingest(upload, metadata)
    response = jsonify(_ingested_json(ingested))
    if ingested.created:
        response.headers["Location"] = url_for(".get_image", image_id=ingested.image["id"])
    return response, 201 if ingested.created else 200


@blueprint.post("/images/<image_id>/index")
def index_image(image_id: str) -> Response:
    """(Re)index a stored image for the active model: what `medsearch reindex` calls."""
    _refuse_unknown_params({"force"})
    force = parse_flag("force", request.args.get("force"))
    return jsonify(_ingested_json(_gateway().index(parse_image_id(image_id), force=force)))


@blueprint.get("/pending")
def list_pending() -> Response:
    _refuse_unknown_params({"include_failed", "limit", "cursor"})
    model_id, page = _gateway().pending(list(request.args.items(multi=True)))
    items = [image_json(item, model_id) for item in page["items"]]
    return jsonify(model_id=model_id, items=items, next_cursor=page["next_cursor"])


@blueprint.get("/images/<image_id>")
def get_image(image_id: str) -> Response:
    gateway = _gateway()
    return jsonify(image_json(gateway.catalog.image(parse_image_id(image_id)), gateway.active_model_id()))


@blueprint.delete("/images/<image_id>")
def delete_image(image_id: str) -> tuple[str, int]:
    _gateway().delete(parse_image_id(image_id))
    return "", 204


@blueprint.get("/images/<image_id>/file")
def get_file(image_id: str) -> Response:
    return _file(image_id, thumbnail=False)


@blueprint.get("/images/<image_id>/thumbnail")
def get_thumbnail(image_id: str) -> Response:
    return _file(image_id, thumbnail=True)


@blueprint.post("/previews")
def preview() -> Response:
    """A PNG of the upload as the model reads it: how the browser shows a DICOM query."""
    response = Response(_gateway().embedder.render(_upload()), mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"  # a user's query: nothing keeps it
    return response


@blueprint.get("/stats")
def stats() -> Response:
    return jsonify(_gateway().stats())


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_gateway") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


# -- parsing and serializing --------------------------------------------------------------


def parse_image_id(raw: str) -> int:
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= _MAX_BIGINT:
        raise InvalidRequest(f"an image ID is a positive integer, got {raw[:40]!r}")
    return int(raw)


def _upload() -> Upload:
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest(
            "send the image as multipart/form-data in the field 'image'"
            + (f" (got {request.mimetype})" if request.mimetype else "")
        )
    files = request.files.getlist("image")
    if len(files) != 1:
        raise InvalidRequest(
            "send exactly one file in the multipart field 'image'" + (f" (got {len(files)})" if files else "")
        )
    return Upload.check(files[0].read(), _gateway().settings.max_upload_bytes)


def _refuse_unknown_params(known: set[str]) -> None:
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _file(image_id: str, *, thumbnail: bool) -> Response:
    upstream = _gateway().catalog.file(
        parse_image_id(image_id), thumbnail=thumbnail, if_none_match=request.headers.get("If-None-Match")
    )
    response = Response(upstream.content, status=upstream.status_code)
    for name in _FILE_HEADERS:
        if name in upstream.headers:
            response.headers[name] = upstream.headers[name]
    return response


def image_json(record: dict[str, Any], model_id: str | None) -> dict[str, Any]:
    """The catalog's record as the public API shows it: its state for the active model
    (null when the embedder cannot say which that is) and the gateway's own file URLs."""
    image_id = record["id"]
    state = record["index_states"].get(model_id, {}).get("state", "pending") if model_id else None
    return {
        "id": image_id,
        "metadata": record["metadata"],
        "width": record["width"],
        "height": record["height"],
        "mime_type": record["mime_type"],
        "byte_size": record["byte_size"],
        "sha256": record["sha256"],
        "created_at": record["created_at"],
        "index_state": state,
        "thumbnail_url": url_for("api.get_thumbnail", image_id=image_id),
        "file_url": url_for("api.get_file", image_id=image_id),
    }


def _ingested_json(ingested: Ingested) -> dict[str, Any]:
    return {
        "image": image_json(ingested.image, ingested.model_id),
        "indexed": True,
        "model_id": ingested.model_id,
        "already_indexed": ingested.already_indexed,
    }


def _hits_json(hits: list[Hit], model_id: str) -> list[dict[str, Any]]:
    return [{"rank": hit.rank, "score": hit.score, "image": image_json(hit.image, model_id)} for hit in hits]
