"""The similarity maps under /api/v1: which parts of a query and of each result make them alike."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from medsearch_gateway.api import explorer, optional_upload, parse_id, parse_region
from medsearch_gateway.errors import InvalidRequest
from medsearch_gateway.exploring import MAX_MAP_RESULTS
from medsearch_gateway.guard import note

blueprint = Blueprint("explore", __name__, url_prefix="/api/v1")


@blueprint.post("/similarity-maps")
def similarity_maps() -> Response:
    upload = optional_upload()
    raw_query_id = request.form.get("query_id", "").strip()
    query_id = parse_id(raw_query_id, "query_id") if raw_query_id else None
    region = parse_region(request.form.get("region"))
    result_ids = _result_ids()
    answer = explorer().similarity_maps(
        upload, query_id, region, result_ids, request.form.get("model_id") or None
    )
    note().result_ids = result_ids
    return jsonify(
        model_id=answer.model_id,
        query={
            "image_id": query_id,
            "region": region.to_json() if region else None,
            "extent": answer.query_extent,
        },
        maps=answer.maps,
        errors=answer.errors,
    )


def _result_ids() -> list[int]:
    found: dict[int, None] = {}
    for value in request.form.getlist("result_id"):
        for part in value.split(","):
            if part.strip():
                found[parse_id(part.strip(), "each result_id")] = None
    if not 1 <= len(found) <= MAX_MAP_RESULTS:
        raise InvalidRequest(f"send 1 to {MAX_MAP_RESULTS} image IDs in result_id (got {len(found)})")
    return list(found)
