"""The public JSON API under /api/v1: parse the request, run the flow, serialize the answer."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from medsearch_common import validation
from medsearch_common.httpapp import error_problem
from medsearch_gateway.clients import ImageRecord, Region, SearchQuery, Upload
from medsearch_gateway.consistency import Verification
from medsearch_gateway.errors import ERROR_STATUSES, InvalidRequest, UnsupportedUpload, UploadTooLarge
from medsearch_gateway.exploring import MAX_EXAMPLES, Explorer, Steering
from medsearch_gateway.flows import Gateway, Hit, Ingested
from medsearch_gateway.guard import note

GATEWAY_EXTENSION = "medsearch_gateway"
EXPLORER_EXTENSION = "medsearch_explorer"
MAX_K = 100
# Images per batch ingest: one embedder request holds them all (its default limit is 32).
MAX_BATCH_IMAGES = 32
_DIGITS = re.compile(r"[0-9]{1,19}")
_K = re.compile(r"[0-9]{1,3}")
_REGION = re.compile(r"\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*")
_MAX_BIGINT = 2**63 - 1
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
_DICOM_MAGIC = (128, b"DICM")
# What a browse may ask the catalog for; anything else is refused here, not passed on.
_BROWSE_PARAMS = {
    "dataset", "patient_id", "external_id", "finding", "sex", "view_position",
    "age_min", "age_max", "limit", "cursor",
}  # fmt: skip

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[GATEWAY_EXTENSION]
    return gateway


def explorer() -> Explorer:
    found: Explorer = current_app.extensions[EXPLORER_EXTENSION]
    return found


def _max_upload_bytes() -> int:
    limit: int = current_app.config["MEDSEARCH_MAX_UPLOAD_BYTES"]
    return limit


@blueprint.post("/search")
def search() -> Response:
    """A search by an upload, as ever; or steered: by a stored image, a region of the query,
    and images marked positive and negative (exploring.py)."""
    upload = optional_upload()
    steering = parse_steering()
    query = parse_query(
        request.form.get("k"), request.form.get("filter"), request.form.get("one_per_patient")
    )
    if upload is not None and steering == Steering():
        model, hits = _gateway().search(upload, query)
    else:
        model, hits = explorer().search(upload, steering, query)
    note().result_ids = [hit.image.id for hit in hits]
    return jsonify(
        model=model.description,
        query={
            "image_id": steering.query_id,
            "region": steering.region.to_json() if steering.region else None,
            "positive": list(steering.positive),
            "negative": list(steering.negative),
        },
        results=_hits_json(hits, model.model_id),
    )


@blueprint.post("/searches")
def search_many() -> Response:
    """Several query images at once, each with its own results (or its own problem), in order."""
    files = _files(1, MAX_BATCH_IMAGES)
    query = parse_query(
        request.form.get("k"), request.form.get("filter"), request.form.get("one_per_patient")
    )
    uploads: list[Upload | Exception] = []
    for data in files:
        try:
            uploads.append(check_upload(data, _max_upload_bytes()))
        except (InvalidRequest, UploadTooLarge, UnsupportedUpload) as exc:
            uploads.append(exc)
    model, outcomes = _gateway().search_many(uploads, query)
    note().result_ids = [hit.image.id for hits in outcomes if isinstance(hits, list) for hit in hits]
    searches = [
        {"index": index, "results": _hits_json(outcome, model.model_id)}
        if isinstance(outcome, list)
        else {"index": index, **_problem_of(outcome)}
        for index, outcome in enumerate(outcomes)
    ]
    return jsonify(model=model.description, searches=searches)


@blueprint.get("/images/<image_id>/similar")
def similar(image_id: str) -> Response:
    refuse_unknown_params({"k", "filter", "one_per_patient"})
    query = parse_query(
        request.args.get("k"), request.args.get("filter"), request.args.get("one_per_patient")
    )
    parsed_id = parse_image_id(image_id)
    model, hits = _gateway().similar(parsed_id, query)
    note().result_ids = [hit.image.id for hit in hits]
    return jsonify(
        model=model.description, query={"image_id": parsed_id}, results=_hits_json(hits, model.model_id)
    )


@blueprint.get("/images")
def list_images() -> Response:
    refuse_unknown_params(_BROWSE_PARAMS)
    model_id, page = _gateway().browse(list(request.args.items(multi=True)))
    note().result_ids = [item.id for item in page.items]
    return jsonify(items=[image_json(item, model_id) for item in page.items], next_cursor=page.next_cursor)


@blueprint.post("/images")
def add_image() -> tuple[Response, int]:
    upload = _upload()
    metadata = request.form.get("metadata")
    if metadata is None:
        raise InvalidRequest("the form field 'metadata' (a JSON object with at least 'dataset') is required")
    ingested = _gateway().ingest(upload, metadata)
    note().image_id = ingested.image.id
    response = jsonify(_ingested_json(ingested))
    if ingested.created:
        response.headers["Location"] = url_for(".get_image", image_id=ingested.image.id)
    return response, 201 if ingested.created else 200


@blueprint.post("/images/batch")
def add_images() -> Response:
    """Many images in one request, each stored and indexed or refused on its own: the answer
    lists, in order, what a single ingest would have answered for each."""
    files = _files(1, MAX_BATCH_IMAGES)
    metadata = _metadata_list(len(files))
    uploads: list[Upload | Exception] = []
    for data in files:
        try:
            uploads.append(check_upload(data, _max_upload_bytes()))
        except (InvalidRequest, UploadTooLarge, UnsupportedUpload) as exc:
            uploads.append(exc)
    outcomes = _gateway().ingest_many(uploads, metadata)
    note().result_ids = [outcome.image.id for outcome in outcomes if isinstance(outcome, Ingested)]
    items = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Ingested):
            items.append(
                {"index": index, "status": 201 if outcome.created else 200, **_ingested_json(outcome)}
            )
        else:
            items.append({"index": index, **_problem_of(outcome)})
    return jsonify(items=items)


@blueprint.post("/images/<image_id>/index")
def index_image(image_id: str) -> Response:
    """(Re)index a stored image for the active model: what `medsearch reindex` calls."""
    refuse_unknown_params({"force"})
    force = parse_flag("force", request.args.get("force"))
    return jsonify(_ingested_json(_gateway().index(parse_image_id(image_id), force=force)))


@blueprint.get("/pending")
def list_pending() -> Response:
    refuse_unknown_params({"include_failed", "limit", "cursor"})
    model_id, page = _gateway().pending(list(request.args.items(multi=True)))
    note().result_ids = [item.id for item in page.items]
    items = [image_json(item, model_id) for item in page.items]
    return jsonify(model_id=model_id, items=items, next_cursor=page.next_cursor)


@blueprint.post("/verify")
def verify() -> Response:
    """Compare the catalog's index states with the search service's vectors for a range of image
    IDs, and repair the drift when asked: what `medsearch verify` calls, range after range."""
    first, end, repair = parse_verify(request.get_data(as_text=True))
    verification = _gateway().verify(first, end, repair=repair)
    note().detail = _verify_detail(first, end, verification)
    return jsonify(_verification_json(verification))


@blueprint.get("/images/<image_id>")
def get_image(image_id: str) -> Response:
    model_id, image = _gateway().image(parse_image_id(image_id))
    return jsonify(image_json(image, model_id))


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
    """A PNG of the upload as the model reads it: how the browser shows a DICOM query; with
    the size of the image in the pixels a region of it is given in."""
    png, (width, height) = _gateway().preview(_upload())
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"  # a user's query: nothing keeps it
    response.headers["X-Image-Width"], response.headers["X-Image-Height"] = str(width), str(height)
    return response


@blueprint.get("/stats")
def stats() -> Response:
    refuse_unknown_params({"breakdown"})
    breakdown = parse_flag("breakdown", request.args.get("breakdown"))
    found = _gateway().stats(breakdown=breakdown)
    answer: dict[str, Any] = {
        "model": found.model.description if found.model else None,
        "images": found.images,
        "datasets": found.datasets,
        "index": found.index,
    }
    if breakdown:  # the collection's statistics page
        answer["models"] = found.models
        answer["breakdown"] = found.breakdown
    return jsonify(answer)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_gateway") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


# -- parsing ------------------------------------------------------------------------------


def check_upload(data: bytes, max_bytes: int) -> Upload:
    """A file a user sent, judged by its content: PNG, JPEG or DICOM."""
    if not data:
        raise InvalidRequest("the file is empty")
    if len(data) > max_bytes:
        raise UploadTooLarge(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    offset, magic = _DICOM_MAGIC
    if data[offset : offset + len(magic)] == magic:
        return Upload(data, "dicom")
    for kind, signature in _MAGIC.items():
        if data.startswith(signature):
            return Upload(data, kind)
    raise UnsupportedUpload("the file is not a PNG, JPEG or DICOM image (judged by its content)")


def parse_query(k: str | None, filter_json: str | None, one_per_patient: str | None) -> SearchQuery:
    return SearchQuery(
        k=_parse_k(k),
        filter=_parse_filter(filter_json),
        one_per_patient=parse_flag("one_per_patient", one_per_patient),
    )


def _parse_k(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return 10
    if not _K.fullmatch(raw.strip()) or not 1 <= int(raw) <= MAX_K:
        raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {raw[:20]!r}")
    return int(raw)


def _parse_filter(raw: str | None) -> dict[str, Any]:
    if raw is None or raw.strip() == "":
        return {}
    value = parse_json("filter", raw)
    if not isinstance(value, dict):
        raise InvalidRequest('filter must be a JSON object, e.g. {"sex": ["F"]}')
    return value  # the search service checks every field and value, and says what is wrong


def parse_flag(name: str, raw: str | None) -> bool:
    if raw is None or raw.strip() == "":
        return False
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "on", "off"):
        raise InvalidRequest(f"{name} must be true or false, got {raw[:20]!r}")
    return value in ("true", "1", "on")


def parse_verify(raw: str) -> tuple[int, int, bool]:
    """A verify request's JSON: the range [from, to) of image IDs, and whether to repair (default: no)."""
    if not raw.strip():
        raise InvalidRequest('send a JSON body: {"from": FIRST, "to": END, "repair": true}')
    body = parse_json("the body", raw)
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"from": FIRST, "to": END, "repair": true}')
    unknown = sorted(set(body) - {"from", "to", "repair"})
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)[:200]}; known: from, to, repair")
    repair = body.get("repair", False)
    if not isinstance(repair, bool):
        raise InvalidRequest(f"repair must be true or false, got {validation.json_type(repair)}")
    try:
        first, end = validation.id_range(body.get("from"), body.get("to"))
    except validation.Invalid as exc:  # the contract's words, as this API's 400
        raise InvalidRequest(str(exc)) from None
    return first, end, repair


def parse_steering() -> Steering:
    """A search's stored query, region and marked images, from its form."""
    raw_query_id = request.form.get("query_id", "").strip()
    return Steering(
        query_id=parse_id(raw_query_id, "query_id") if raw_query_id else None,
        region=parse_region(request.form.get("region")),
        positive=parse_ids("positive"),
        negative=parse_ids("negative"),
    )


def parse_ids(field: str) -> tuple[int, ...]:
    """Image IDs of a form field, repeated or comma-separated, in order, each once."""
    found: dict[int, None] = {}
    for value in request.form.getlist(field):
        for part in value.split(","):
            if part.strip():
                found[parse_id(part.strip(), f"each {field} image ID")] = None
                if len(found) > MAX_EXAMPLES:
                    raise InvalidRequest(f"more than {MAX_EXAMPLES} {field} image IDs")
    return tuple(found)


def parse_region(raw: str | None) -> Region | None:
    """`left,top,right,bottom` in the query image's pixels. Whether it lies inside the image
    and is large enough is for the embedder, which decodes it."""
    if raw is None or not raw.strip():
        return None
    matched = _REGION.fullmatch(raw)
    if not matched:
        raise InvalidRequest(
            f"region must be four whole numbers of pixels, left,top,right,bottom; got {raw[:40]!r}"
        )
    region = Region(*(int(part) for part in matched.groups()))
    if region.right <= region.left or region.bottom <= region.top:
        raise InvalidRequest(f"the region {region.text} has no area: right must exceed left, and bottom top")
    return region


def parse_image_id(raw: str) -> int:
    image_id = parse_id(raw, "an image ID")
    note().image_id = image_id
    return image_id


def parse_id(raw: str, what: str) -> int:
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= _MAX_BIGINT:
        raise InvalidRequest(f"{what} is a positive integer, got {raw[:40]!r}")
    return int(raw)


def parse_json(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"{name} is not valid JSON") from None


def _upload() -> Upload:
    return check_upload(_files(1, 1)[0], _max_upload_bytes())


def optional_upload() -> Upload | None:
    """The form's one image when it has one: a steered search may have none."""
    if request.mimetype == "multipart/form-data" and request.files.getlist("image"):
        return _upload()
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise InvalidRequest(
            "send a search as multipart/form-data (with the image in the field 'image')"
            + (f" (got {request.mimetype})" if request.mimetype else "")
        )
    return None


def _files(least: int, most: int) -> list[bytes]:
    """The files of the multipart field 'image', `least` to `most` of them."""
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest(
            "send the image as multipart/form-data in the field 'image'"
            + (f" (got {request.mimetype})" if request.mimetype else "")
        )
    files = request.files.getlist("image")
    if not least <= len(files) <= most:
        wanted = "exactly one file" if most == 1 else f"{least} to {most} files"
        raise InvalidRequest(
            f"send {wanted} in the multipart field 'image'" + (f" (got {len(files)})" if files else "")
        )
    return [file.read() for file in files]


def _metadata_list(count: int) -> list[Any]:
    """The batch's metadata: a JSON array with one object per image, in order. The catalog
    checks each object, and says what is wrong with it."""
    raw = request.form.get("metadata")
    if raw is None:
        raise InvalidRequest("the form field 'metadata' (a JSON array with one object per image) is required")
    metadata = parse_json("metadata", raw)
    if not isinstance(metadata, list) or len(metadata) != count:
        raise InvalidRequest(f"metadata must be a JSON array with one object per image ({count})")
    return metadata


def refuse_unknown_params(known: set[str]) -> None:
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _file(image_id: str, *, thumbnail: bool) -> Response:
    stored = _gateway().file(
        parse_image_id(image_id), thumbnail=thumbnail, if_none_match=request.headers.get("If-None-Match")
    )
    response = Response(stored.content, status=stored.status)
    response.headers.update(stored.headers)
    return response


# -- serializing --------------------------------------------------------------------------


def image_json(record: ImageRecord, model_id: str | None) -> dict[str, Any]:
    """The catalog's record as the public API shows it: its state for the active model
    (null when the embedder cannot say which that is) and the gateway's own file URLs."""
    return {
        "id": record.id,
        "metadata": record.metadata,
        "width": record.width,
        "height": record.height,
        "mime_type": record.mime_type,
        "byte_size": record.byte_size,
        "sha256": record.sha256,
        "created_at": record.created_at,
        "index_state": record.state_for(model_id) if model_id else None,
        "thumbnail_url": url_for("api.get_thumbnail", image_id=record.id),
        "file_url": url_for("api.get_file", image_id=record.id),
    }


def _ingested_json(ingested: Ingested) -> dict[str, Any]:
    return {
        "image": image_json(ingested.image, ingested.model_id),
        "indexed": True,
        "model_id": ingested.model_id,
        "already_indexed": ingested.already_indexed,
    }


def _verification_json(verification: Verification) -> dict[str, Any]:
    return {
        "model_id": verification.model_id,
        "checked": verification.checked,
        "vectors": verification.vectors,
        "indexed_without_vector": verification.drift.indexed_without_vector,
        "vector_without_image": verification.drift.vector_without_image,
        "repaired": verification.repaired,
        "max_image_id": verification.max_image_id,
    }


def _verify_detail(first: int, end: int, verification: Verification) -> str:
    """The audit event's detail (recorded as a reindex: the trail's actions are fixed)."""
    drift = verification.drift
    return (
        f"verify of image IDs {first}-{end - 1}: {len(drift.indexed_without_vector)} indexed without a "
        f"vector, {len(drift.vector_without_image)} vectors without an image"
        + ("; repaired" if verification.repaired else "")
    )


def _hits_json(hits: list[Hit], model_id: str) -> list[dict[str, Any]]:
    return [{"rank": hit.rank, "score": hit.score, "image": image_json(hit.image, model_id)} for hit in hits]


def _problem_of(error: Exception) -> dict[str, Any]:
    """A failed batch item as the problem a single ingest would have answered."""
    problem = error_problem(error, ERROR_STATUSES)
    if problem is None:
        raise error  # not a domain error: the whole request fails, as it would alone
    return problem
