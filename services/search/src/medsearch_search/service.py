"""The search service's core, without HTTP: validate, normalize, and ask the store."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
from numpy.typing import NDArray

from medsearch_common import validation
from medsearch_common.vectors import BadPackedVector, unpack_vector
from medsearch_search.errors import (
    BatchTooLarge,
    InvalidRequest,
    InvalidVector,
    MapNotFound,
    MilvusUnavailable,
    ModelNotFound,
    VectorNotFound,
)
from medsearch_search.filters import SearchFilter, parse_attributes, parse_filter
from medsearch_search.map_jobs import MapJob, MapJobs
from medsearch_search.settings import SearchSettings
from medsearch_search.store import MODEL_ID, Collection, CollectionGone, Hit, MilvusStore, StoredVector

T = TypeVar("T")

MAX_K = 100
MAX_NEIGHBORS = 50  # per stored vector in a near-duplicate scan
DEFAULT_NEIGHBORS = 10
CONSISTENCY_LEVELS = ("session", "strong", "bounded")
MAX_DIM = 32_768  # Milvus's own limit on a float vector
_MAX_BASE64 = (MAX_DIM * 4 + 2) // 3 * 4
_MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() also takes superscripts and other scripts


@dataclass(frozen=True)
class Neighbors:
    """The near pairs of a range of IDs: (a, b, score) with a < b, each pair once, by a then b."""

    pairs: list[tuple[int, int, float]]
    vectors: int  # the stored vectors in the range that were scanned


@dataclass(frozen=True)
class SearchRequest:
    vectors: NDArray[np.float32]
    k: int
    filter: SearchFilter
    one_per_patient: bool
    consistency: str


class SearchService:
    def __init__(self, settings: SearchSettings, store: MilvusStore) -> None:
        self.settings = settings
        self.store = store
        self.maps = MapJobs(store, Path(settings.map_dir), settings.map_timeout_s)

    def upsert(self, model_id: str, body: Any) -> int:
        """Store every item or none (all are checked before Milvus sees any); the count stored."""
        check_model_id(model_id)
        items = _field(body, "items", list)
        unknown = sorted(set(body) - {"items"})
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; the body holds only items")
        if not items:
            raise InvalidRequest("items is empty: send at least one")
        if len(items) > self.settings.max_items:
            raise BatchTooLarge(f"{len(items)} items in one request; the limit is {self.settings.max_items}")
        ids, raw_vectors, attributes = [], [], []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) - {"id", "vector", "attributes"}:
                raise InvalidRequest(f"items[{i}] must be an object with id, vector and attributes")
            ids.append(_image_id(item.get("id"), f"items[{i}].id"))
            raw_vectors.append(item.get("vector"))
            attributes.append(parse_attributes(item.get("attributes"), f"items[{i}].attributes"))
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise InvalidRequest(f"items repeat the id(s) {duplicates[:10]}: each id once per request")
        vectors = parse_vectors(raw_vectors, "items[].vector", None)

        def write(collection: Collection) -> None:
            self.store.upsert(collection, ids, vectors, attributes)

        self._on_collection(
            model_id,
            write,
            missing=lambda: write(self.store.ensure_collection(model_id, vectors.shape[1])),
            vectors=(vectors, "items[].vector"),
        )
        return len(ids)

    def get(self, model_id: str, vector_id: int) -> StoredVector:
        check_model_id(model_id)
        stored = self._on_collection(
            model_id, lambda c: self.store.get(c, vector_id), missing=lambda: _no_model(model_id)
        )
        if stored is None:
            raise VectorNotFound(f"model {model_id} has no vector with id {vector_id}")
        return stored

    def read(self, model_id: str, raw_ids: str | None) -> tuple[dict[int, NDArray[np.float32]], list[int]]:
        """Several stored vectors in one Milvus read (what a refined search needs of its marked
        images): those found by ID, and the asked IDs that hold none, each in the order asked."""
        check_model_id(model_id)
        ids = parse_vector_ids(raw_ids, self.settings.max_queries)
        found_ids, vectors = self._on_collection(
            model_id, lambda c: self.store.vectors(c, ids), missing=lambda: _no_model(model_id)
        )
        read = dict(zip(found_ids, vectors, strict=True))
        return {i: read[i] for i in ids if i in read}, [i for i in ids if i not in read]

    def vector_ids(self, model_id: str, first: int, end: int) -> list[int]:
        """The IDs in [first, end) that hold a vector, ascending; none for a model never written."""
        check_model_id(model_id)
        return self._on_collection(
            model_id, lambda c: self.store.ids_between(c, first, end), missing=lambda: []
        )

    def neighbors(self, model_id: str, body: Any) -> Neighbors:
        """For each stored vector whose ID is in [from, to): its `k` nearest others over the whole
        collection with a score of at least `threshold`, as pairs. The range's vectors are read
        and searched `max_queries` at a time, so that memory stays bounded whatever the range."""
        check_model_id(model_id)
        first, end, threshold, k = parse_neighbors(body)

        def scan(collection: Collection) -> Neighbors:
            ids = self.store.ids_between(collection, first, end)
            best: dict[tuple[int, int], float] = {}
            for start in range(0, len(ids), self.settings.max_queries):
                read_ids, vectors = self.store.vectors(
                    collection, ids[start : start + self.settings.max_queries]
                )
                if not read_ids:
                    continue  # deleted since they were listed
                # k + 1: each vector finds itself too, left out below.
                found = self.store.search(collection, vectors, k + 1, SearchFilter(), one_per_patient=False)
                for a, hits in zip(read_ids, found, strict=True):
                    for hit in [hit for hit in hits if hit.id != a][:k]:
                        if hit.score < threshold:
                            break  # best first: the rest score lower
                        pair = (min(a, hit.id), max(a, hit.id))
                        best[pair] = max(best.get(pair, hit.score), hit.score)
            return Neighbors(sorted((a, b, score) for (a, b), score in best.items()), len(ids))

        return self._on_collection(model_id, scan, missing=lambda: _no_model(model_id))

    def delete(self, model_id: str, vector_id: int) -> None:
        """Idempotent: deleting what is not there is no error."""
        check_model_id(model_id)
        self._on_collection(model_id, lambda c: self.store.delete(c, vector_id), missing=lambda: None)

    def search(self, model_id: str, body: Any) -> list[list[Hit]]:
        # The request first: a bad filter is a 400 even for a model with nothing stored yet.
        check_model_id(model_id)
        request = self.parse_search(body, None)
        return self._on_collection(
            model_id,
            lambda collection: self.store.search(
                collection,
                request.vectors,
                request.k,
                request.filter,
                one_per_patient=request.one_per_patient,
                consistency=request.consistency,
            ),
            missing=lambda: _no_model(model_id),
            vectors=(request.vectors, "vectors"),
        )

    def parse_search(self, body: Any, dim: int | None) -> SearchRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object with vectors, k and filter")
        known = ("vectors", "k", "filter", "one_per_patient", "consistency")
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(known)}")
        raw = _field(body, "vectors", list)
        if not raw:
            raise InvalidRequest("vectors is empty: send at least one query vector")
        if len(raw) > self.settings.max_queries:
            raise BatchTooLarge(
                f"{len(raw)} query vectors in one request; the limit is {self.settings.max_queries}"
            )
        k = body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {json_text(k)}")
        one_per_patient = body.get("one_per_patient", False)
        if not isinstance(one_per_patient, bool):
            raise InvalidRequest(f"one_per_patient must be true or false, got {json_text(one_per_patient)}")
        consistency = body.get("consistency", "session")
        if consistency not in CONSISTENCY_LEVELS:
            raise InvalidRequest(
                f'consistency must be "session", "strong" or "bounded", got {json_text(consistency)}'
            )
        vectors = parse_vectors(raw, "vectors", dim)
        return SearchRequest(vectors, k, parse_filter(body.get("filter")), one_per_patient, consistency)

    def start_map(self, model_id: str) -> MapJob:
        """A background job making the model's 2-D map (map_jobs.py)."""
        check_model_id(model_id)
        return self._on_collection(model_id, self.maps.start, missing=lambda: _no_model(model_id))

    def map_job(self, model_id: str) -> MapJob:
        check_model_id(model_id)
        job = self._on_collection(model_id, self.maps.current, missing=lambda: _no_model(model_id))
        if job is None:
            raise MapNotFound(f"no map job was ever started for model {model_id}")
        return job

    def map(self, model_id: str) -> dict[str, Any]:
        """The model's last finished map: each point's ID, place and attributes, what changed
        since, and the job that runs (started here when the changes make the map stale)."""
        check_model_id(model_id)

        def read(collection: Collection) -> dict[str, Any]:
            stored = self.maps.stored(collection)
            try:
                changes: dict[str, Any] | None = self.maps.changes(collection, stored)
            except MilvusUnavailable:
                # The map is a file: served without what changed since while Milvus does not
                # answer (seen once at 112k, as the engine sealed and indexed the new rows).
                changes = None
            refreshed = self.maps.refresh_if_stale(collection, changes) if changes else None
            job = refreshed or self.maps.current(collection)
            return {
                **stored.meta,
                "changes": changes,
                "job": job.to_json() if job is not None else None,
                "points": {
                    "id": stored.ids.tolist(),
                    "x": np.round(stored.xy[:, 0].astype(np.float64), 5).tolist(),
                    "y": np.round(stored.xy[:, 1].astype(np.float64), 5).tolist(),
                },
                "fields": stored.attributes.to_json(),
            }

        return self._on_collection(model_id, read, missing=lambda: _no_model(model_id))

    def model(self, model_id: str) -> dict[str, Any]:
        check_model_id(model_id)
        return self._on_collection(model_id, self._describe, missing=lambda: _no_model(model_id))

    def models(self) -> list[dict[str, Any]]:
        described = []
        for collection in self.store.collections():
            try:
                described.append(self._describe(collection))
            except CollectionGone:
                continue  # dropped since it was listed
        return described

    def _describe(self, collection: Collection) -> dict[str, Any]:
        return {
            "model_id": collection.model_id,
            "dim": collection.dim,
            "count": self.store.count(collection),
            "metric": "COSINE",
            "index": collection.index,
            "backend": self.store.backend,
        }

    def _on_collection(
        self,
        model_id: str,
        action: Callable[[Collection], T],
        *,
        missing: Callable[[], T],
        vectors: tuple[NDArray[np.float32], str] | None = None,
    ) -> T:
        """`action` on the model's collection, or `missing()` when Milvus has none.

        What this process remembers of the collection is checked against Milvus once when it
        no longer fits: dropped behind its back (by another replica, by hand), the collection is
        looked up again, and is missing when it is gone; `vectors` (and where the request holds
        them) of another dimension than the remembered one are refused only when Milvus says the
        same (another replica may have made the collection anew)."""
        fresh = False
        while True:
            collection = self.store.collection(model_id, fresh=fresh)
            if collection is None:
                return missing()
            if vectors is not None and vectors[0].shape[1] != collection.dim:
                if not fresh:
                    fresh = True
                    continue
                raise InvalidVector(
                    f"{vectors[1]}: dimension {vectors[0].shape[1]}, but this model's vectors have "
                    f"dimension {collection.dim}"
                )
            try:
                return action(collection)
            except CollectionGone:
                if fresh:
                    return missing()  # gone again as soon as it was found: as good as missing
                fresh = True


def _no_model(model_id: str) -> NoReturn:
    raise ModelNotFound(f"no vectors were ever stored for model {model_id}")


def check_model_id(model_id: str) -> None:
    if not MODEL_ID.fullmatch(model_id):
        raise InvalidRequest(
            f"a model_id is 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit, got {model_id[:40]!r}"
        )


def parse_vector_id(raw: str) -> int:
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= _MAX_ID:
        raise InvalidRequest(f"a vector id is a positive integer (the catalog's image id), got {raw[:40]!r}")
    return int(raw)


def parse_vector_ids(raw: str | None, limit: int) -> list[int]:
    """The `ids` query parameter of a batched read: comma-separated vector IDs, repeats once."""
    if not raw:
        raise InvalidRequest("ids is required: the vector IDs to read, separated by commas")
    parts = raw.split(",")
    if len(parts) > limit:
        raise InvalidRequest(f"{len(parts)} vector IDs in one read; the limit is {limit}")
    return list(dict.fromkeys(parse_vector_id(part.strip()) for part in parts))


def parse_neighbors(body: Any) -> tuple[int, int, float, int]:
    """A near-duplicate scan's JSON: the range [from, to) of IDs, the threshold, and k."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with from, to, threshold and k")
    known = ("from", "to", "threshold", "k")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)[:200]}; known: {', '.join(known)}")
    first, end = validation.id_range(body.get("from"), body.get("to"), error=InvalidRequest)
    threshold = validation.similarity(body.get("threshold"), "threshold", error=InvalidRequest)
    k = validation.integer(body.get("k", DEFAULT_NEIGHBORS), "k", 1, MAX_NEIGHBORS, error=InvalidRequest)
    return first, end, threshold, k


def parse_vectors(raw: Sequence[Any], where: str, dim: int | None) -> NDArray[np.float32]:
    """Rows of finite numbers, all of one dimension (the collection's, if any), scaled to unit length.

    Each row is a list of numbers or base64 of little-endian float32 values (4 bytes a
    dimension, a third of the JSON, and no number parsing)."""
    rows: list[NDArray[np.float64]] = []
    for i, vector in enumerate(raw):
        if isinstance(vector, str):
            rows.append(_decode_vector(vector, f"{where} #{i}"))
            continue
        if not isinstance(vector, list) or not vector:
            raise InvalidRequest(f"{where} #{i} must be a non-empty list of numbers or a base64 string")
        if any(isinstance(x, bool) or not isinstance(x, int | float) for x in vector):
            raise InvalidRequest(f"{where} #{i} must hold only numbers")
        if any(isinstance(x, int) and abs(x) > 2**1023 for x in vector):
            raise InvalidVector(f"{where} #{i} holds a number too large for a float")
        rows.append(np.asarray(vector, dtype=np.float64))
    lengths = {row.shape[0] for row in rows}
    if len(lengths) > 1:
        raise InvalidVector(f"{where}: the vectors have different dimensions {sorted(lengths)}")
    length = lengths.pop()
    if dim is not None and length != dim:
        raise InvalidVector(f"{where}: dimension {length}, but this model's vectors have dimension {dim}")
    if length > MAX_DIM:
        raise InvalidVector(f"{where}: dimension {length} is more than Milvus's limit of {MAX_DIM}")
    vectors = np.stack(rows)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InvalidVector(f"{where} #{int(np.argmin(finite))} holds NaN or infinity")
    # Scale by the largest component first, so that the norm of huge values cannot overflow.
    largest = np.abs(vectors).max(axis=1)
    if (largest == 0).any():
        zero = int(np.argmax(largest == 0))
        raise InvalidVector(f"{where} #{zero} is a zero vector: it has no direction to compare")
    scaled = vectors / largest[:, np.newaxis]
    # Cosine ignores length; stored and compared vectors are unit length all the same.
    unit: NDArray[np.float32] = (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _decode_vector(text: str, where: str) -> NDArray[np.float64]:
    if len(text) > _MAX_BASE64:
        raise InvalidVector(f"{where}: more than Milvus's limit of {MAX_DIM} dimensions")
    try:
        data = unpack_vector(text, where)
    except BadPackedVector as exc:
        raise InvalidRequest(str(exc)) from None
    return np.frombuffer(data, dtype="<f4").astype(np.float64)


def _field(body: Any, name: str, kind: type) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object with {name}")
    if name not in body:
        raise InvalidRequest(f"{name} is missing")
    value = body[name]
    if not isinstance(value, kind):
        raise InvalidRequest(
            f"{name} must be a {'list' if kind is list else kind.__name__}, got {json_text(value)}"
        )
    return value


def _image_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise InvalidRequest(
            f"{where} must be a positive integer (the catalog's image id), got {json_text(value)}"
        )
    return value


def json_text(value: Any) -> str:
    """A short JSON rendering of a bad value, for error messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)[:60]
