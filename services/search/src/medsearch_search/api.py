"""The search service's HTTP API: parse the request, call the core, serialize the answer."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from medsearch_common.validation import id_range_in_query
from medsearch_common.vectors import pack_vector
from medsearch_search.errors import InvalidRequest
from medsearch_search.service import SearchService, parse_vector_id

SEARCH_EXTENSION = "medsearch_search"

blueprint = Blueprint("search", __name__, url_prefix="/v1")


def _service() -> SearchService:
    service: SearchService = current_app.extensions[SEARCH_EXTENSION]
    return service


@blueprint.get("/models")
def list_models() -> Response:
    return jsonify(models=_service().models())


@blueprint.get("/models/<model_id>")
def get_model(model_id: str) -> Response:
    return jsonify(_service().model(model_id))


@blueprint.put("/models/<model_id>/vectors")
def upsert_vectors(model_id: str) -> Response:
    return jsonify(upserted=_service().upsert(model_id, _json_body()))


@blueprint.get("/models/<model_id>/vectors")
def read_vectors(model_id: str) -> Response:
    """Several vectors in one read, packed (base64 of little-endian float32), with the IDs
    that hold none."""
    unknown = sorted(set(request.args) - {"ids"})
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)[:200]}; known: ids")
    found, missing = _service().read(model_id, request.args.get("ids"))
    return jsonify(
        vectors=[{"id": i, "vector": pack_vector(vector.tolist())} for i, vector in found.items()],
        missing=missing,
    )


@blueprint.get("/models/<model_id>/vectors/<vector_id>")
def get_vector(model_id: str, vector_id: str) -> Response:
    stored = _service().get(model_id, parse_vector_id(vector_id))
    return jsonify(id=stored.id, vector=stored.vector, attributes=stored.attributes.to_json())


@blueprint.delete("/models/<model_id>/vectors/<vector_id>")
def delete_vector(model_id: str, vector_id: str) -> tuple[str, int]:
    _service().delete(model_id, parse_vector_id(vector_id))
    return "", 204


@blueprint.get("/models/<model_id>/vector-ids")
def list_vector_ids(model_id: str) -> Response:
    """Which IDs of a range hold a vector: what `medsearch verify` compares with the catalog."""
    unknown = sorted(set(request.args) - {"from", "to"})
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}; known: from, to")
    first, end = id_range_in_query(request.args.get("from"), request.args.get("to"), error=InvalidRequest)
    return jsonify(ids=_service().vector_ids(model_id, first, end))


@blueprint.post("/models/<model_id>/neighbors")
def neighbors(model_id: str) -> Response:
    """The near pairs of a range of IDs: what the gateway's `duplicates` asks, range after range."""
    found = _service().neighbors(model_id, _json_body())
    return jsonify(pairs=[[a, b, score] for a, b, score in found.pairs], vectors=found.vectors)


@blueprint.post("/models/<model_id>/map-jobs")
def start_map_job(model_id: str) -> tuple[Response, int]:
    return jsonify(_service().start_map(model_id).to_json()), 202


@blueprint.get("/models/<model_id>/map-jobs/current")
def current_map_job(model_id: str) -> Response:
    return jsonify(_service().map_job(model_id).to_json())


@blueprint.get("/models/<model_id>/map")
def get_map(model_id: str) -> Response:
    return jsonify(_service().map(model_id))


@blueprint.post("/models/<model_id>/search")
def search(model_id: str) -> Response:
    results = _service().search(model_id, _json_body())
    return jsonify(results=[[{"id": hit.id, "score": hit.score} for hit in hits] for hits in results])


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document = (resources.files("medsearch_search") / "openapi.json").read_text(encoding="utf-8")
    return Response(document, mimetype="application/json")


def _json_body() -> Any:
    if not request.is_json:
        raise InvalidRequest("send a JSON body with Content-Type: application/json")
    try:
        return json.loads(request.get_data(as_text=True))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise InvalidRequest("the body is not valid JSON") from None
