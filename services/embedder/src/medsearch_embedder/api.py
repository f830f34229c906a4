"""The embedder's HTTP API: parse the request, call the core, serialize the answer."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from numpy.typing import NDArray
from werkzeug.datastructures import FileStorage

from medsearch_common.problems import problem_response, problem_type, slug_of
from medsearch_common.vectors import pack_vector
from medsearch_embedder.errors import (
    ImageRejected,
    MalformedRequest,
    ModelMismatch,
    TooManyImages,
    status_of,
)
from medsearch_embedder.preprocessing import Region
from medsearch_embedder.service import EmbeddingService, ResultMaps

EMBEDDER_EXTENSION = "medsearch_embedder"

blueprint = Blueprint("embedder", __name__, url_prefix="/v1")
# The most results one similarity-maps request may pair with its query: a page of results.
MAX_MAP_RESULTS = 16


def _service() -> EmbeddingService:
    service: EmbeddingService = current_app.extensions[EMBEDDER_EXTENSION]
    return service


@blueprint.post("/embeddings")
def create_embeddings() -> Response:
    service = _service()
    encode = _encoder(request.args.get("encoding", "float"))
    uploads = _uploads()
    region = _region(request.args.get("region"))
    if region is not None and len(uploads) != 1:
        raise MalformedRequest(f"a region is of one image; send exactly one with it (got {len(uploads)})")
    outcomes = service.embed([upload.read() for upload in uploads], region)
    data = [
        {"index": i, "embedding": encode(outcome)}
        for i, outcome in enumerate(outcomes)
        if not isinstance(outcome, ImageRejected)
    ]
    errors = [
        _image_error(i, outcome) for i, outcome in enumerate(outcomes) if isinstance(outcome, ImageRejected)
    ]
    if data:
        return jsonify(model=service.model_info().to_json(), data=data, errors=errors)
    # Nothing to return: the request as a whole failed, for the reasons listed.
    statuses = {error["status"] for error in errors}
    status = statuses.pop() if len(statuses) == 1 else 422
    if len(errors) == 1:
        return problem_response(status, errors[0]["detail"], slug=_slug(outcomes[0]), errors=errors)  # type: ignore[arg-type]
    return problem_response(
        status,
        f"none of the {len(errors)} images could be embedded; see errors",
        slug="images-rejected",
        errors=errors,
    )


@blueprint.post("/similarity-maps")
def create_similarity_maps() -> Response:
    """The maps of one query (or a region of it) against each of up to MAX_MAP_RESULTS results."""
    service = _service()
    model = service.model_info()
    asked_model = request.form.get("model_id")
    if asked_model is not None and asked_model != model.model_id:
        raise ModelMismatch(
            f"the maps were asked for model {asked_model[:80]!r}, but this embedder runs {model.model_id}"
        )
    queries = _files("query", others=("results",))
    if len(queries) != 1:
        raise MalformedRequest(f"send exactly one file in the multipart field 'query' (got {len(queries)})")
    results = _files("results", others=("query",))
    if len(results) > MAX_MAP_RESULTS:
        raise TooManyImages(f"{len(results)} results in one request; the limit is {MAX_MAP_RESULTS}")
    region = _region(request.form.get("region"))
    placement, outcomes = service.similarity_maps(
        queries[0].read(), [upload.read() for upload in results], region
    )
    data = [
        {
            "index": i,
            "score": round(outcome.maps.score, 6),
            "query_map": _grid(outcome.maps.query),
            "result_map": _grid(outcome.maps.result),
            "result_extent": outcome.placement.to_json(),
        }
        for i, outcome in enumerate(outcomes)
        if isinstance(outcome, ResultMaps)
    ]
    errors = [
        _image_error(i, outcome) for i, outcome in enumerate(outcomes) if isinstance(outcome, ImageRejected)
    ]
    return jsonify(
        model=model.to_json(),
        query_extent=placement.to_json(),
        region=[region.left, region.top, region.right, region.bottom] if region else None,
        maps=data,
        errors=errors,
    )


@blueprint.post("/render")
def render() -> Response:
    """The image decoded as the model reads it, as a PNG: how the gateway shows a DICOM query."""
    uploads = _files("image")
    if len(uploads) > 1:
        raise MalformedRequest(f"send exactly one file in the multipart field 'image' (got {len(uploads)})")
    png, (width, height) = _service().render(uploads[0].read())
    response = Response(png, mimetype="image/png")
    # The size the image was decoded at: the pixels a region of it is given in.
    response.headers["X-Image-Width"], response.headers["X-Image-Height"] = str(width), str(height)
    return response


@blueprint.get("/model")
def get_model() -> Response:
    return jsonify(_service().model_info().to_json())


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_embedder") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


def _encoder(encoding: str) -> Callable[[NDArray[np.float32]], list[float] | str]:
    """A list of numbers, or base64 of little-endian float32: what the search service takes
    as it is, with no 2048 numbers to print here and parse in the gateway."""
    if encoding == "float":
        return lambda vector: vector.tolist()
    if encoding == "base64":
        return lambda vector: pack_vector(vector.tolist())
    raise MalformedRequest(f'encoding must be "float" or "base64", got {encoding[:20]!r}')


def _region(text: str | None) -> Region | None:
    """`left,top,right,bottom` in the image's pixels, or none."""
    if text is None or not text.strip():
        return None
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() and len(part.strip()) <= 6 for part in parts):
        raise MalformedRequest(
            f"region must be four whole numbers of pixels, left,top,right,bottom (got {text[:40]!r})"
        )
    left, top, right, bottom = (int(part) for part in parts)
    return Region(left, top, right, bottom)


def _grid(cells: NDArray[np.float64]) -> list[list[float]]:
    """A map's cells, rows top to bottom; to 7 significant digits, which keep its sum exact to 1e-6."""
    return [[float(f"{value:.7g}") for value in row] for row in cells]


def _uploads() -> list[FileStorage]:
    limit = _service().settings.max_images_per_request
    uploads = _files("images")
    if len(uploads) > limit:
        raise TooManyImages(f"{len(uploads)} images in one request; the limit is {limit}")
    return uploads


def _files(field: str, *, others: tuple[str, ...] = ()) -> list[FileStorage]:
    """The files of the multipart field `field`, at least one; files in fields neither `field`
    nor one of `others` are refused, not ignored."""
    if request.mimetype != "multipart/form-data":
        raise MalformedRequest(
            f"send the {field} as multipart/form-data, one file per part in the field '{field}'"
            + (f" (got {request.mimetype})" if request.mimetype else "")
        )
    unexpected = sorted(name for name in request.files if name != field and name not in others)
    if unexpected:
        raise MalformedRequest(
            f"unexpected file field {', '.join(map(repr, unexpected))}: send {field} in '{field}'"
        )
    if field in request.form:
        raise MalformedRequest(f"the field '{field}' must hold files, not text")
    uploads = request.files.getlist(field)
    if not uploads:
        raise MalformedRequest(f"no file in the multipart field '{field}'")
    return uploads


def _slug(error: ImageRejected) -> str:
    return slug_of(type(error))


def _image_error(index: int, error: ImageRejected) -> dict[str, Any]:
    return {
        "index": index,
        "status": status_of(error),
        "type": problem_type(_slug(error)),
        "detail": str(error),
    }
