"""Reviews of the whole collection under /api/v1: near-duplicate pairs (a range of image IDs
at a time) and the 2-D map of the collection with the jobs that make it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from medsearch_common import validation
from medsearch_gateway.api import GATEWAY_EXTENSION, image_json, parse_json
from medsearch_gateway.duplicates import DEFAULT_K, DEFAULT_THRESHOLD, MAX_K, Duplicates
from medsearch_gateway.errors import InvalidRequest
from medsearch_gateway.flows import Gateway
from medsearch_gateway.guard import note

blueprint = Blueprint("collection", __name__, url_prefix="/api/v1")

_EXAMPLE = '{"from": FIRST, "to": END, "threshold": 0.99985, "k": 10}'


@blueprint.post("/map/jobs")
def start_map_job() -> tuple[Response, int]:
    """Start making the active model's map in the background; poll the job for progress."""
    job = _gateway().start_map()
    note().detail = f"map job started over {job.get('vectors', 0)} vectors"
    return jsonify(job), 202


@blueprint.get("/map/jobs/current")
def current_map_job() -> Response:
    return jsonify(_gateway().map_job())


@blueprint.get("/map")
def collection_map() -> Response:
    """Every mapped image's ID, place and attributes (the search service's answer as it is)."""
    note().detail = "the collection map"
    return Response(_gateway().collection_map(), mimetype="application/json")


@blueprint.post("/duplicates")
def duplicates() -> Response:
    """The pairs of images at or above a similarity threshold among the image IDs [from, to)
    and their nearest neighbours: what `medsearch duplicates` calls, range after range."""
    first, end, threshold, k = parse_duplicates(request.get_data(as_text=True))
    found = _gateway().duplicates(first, end, threshold=threshold, k=k)
    note().result_ids = [image.id for image in found.images]
    note().detail = f"duplicates of image IDs {first}-{end - 1} at {threshold:g}: {len(found.pairs)} pairs"
    return jsonify(_duplicates_json(found))


def parse_duplicates(raw: str) -> tuple[int, int, float, int]:
    """A duplicates request's JSON: the range [from, to) of image IDs, the threshold (default:
    the measured one) and how many neighbours of each image to look at (default 10)."""
    if not raw.strip():
        raise InvalidRequest(f"send a JSON body: {_EXAMPLE}")
    body = parse_json("the body", raw)
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object: {_EXAMPLE}")
    known = ("from", "to", "threshold", "k")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)[:200]}; known: {', '.join(known)}")
    try:  # the contract's words, as this API's 400
        first, end = validation.id_range(body.get("from"), body.get("to"))
        threshold = validation.similarity(body.get("threshold", DEFAULT_THRESHOLD), "threshold")
        k = validation.integer(body.get("k", DEFAULT_K), "k", 1, MAX_K)
    except validation.Invalid as exc:
        raise InvalidRequest(str(exc)) from None
    return first, end, threshold, k


def _duplicates_json(found: Duplicates) -> dict[str, Any]:
    return {
        "model_id": found.model_id,
        "threshold": found.threshold,
        "k": found.k,
        "pairs": [{"a": p.a, "b": p.b, "score": p.score, "kind": p.kind} for p in found.pairs],
        "images": [image_json(image, found.model_id) for image in found.images],
        "vectors": found.vectors,
        "max_image_id": found.max_image_id,
    }


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[GATEWAY_EXTENSION]
    return gateway
