"""Searching the way a reader steers it, and seeing why results are similar.

- A query is an upload, a stored image, or a region of either; relevance feedback adds
  images marked "more like this" (positive) and "not like this" (negative). The query vector
  becomes Rocchio's (Rocchio 1971, with SMART's usual weights):

      q' = 1.0 q + 0.75 mean(positive) - 0.25 mean(negative),  normalized

  and with no query image, the positives' mean takes the query's place. The search then runs
  once, the query image and every marked image left out of the results.
- Similarity maps: the embedder's maps of the query (or its region) against stored results.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medsearch_common.vectors import pack_vector, unpack_vector
from medsearch_gateway.clients import ActiveModel, PackedVector, Region, SearchQuery, Upload
from medsearch_gateway.errors import (
    ExampleNotFound,
    ImageNotFound,
    InvalidRequest,
    ModelMismatch,
    NotIndexed,
)
from medsearch_gateway.flows import UPLOAD_KINDS, Gateway, Hit

QUERY_WEIGHT = 1.0
POSITIVE_WEIGHT = 0.75
NEGATIVE_WEIGHT = 0.25
# Marked images one search may take, positive and negative together: a page of results and more.
MAX_EXAMPLES = 20
# Results one maps request may pair with its query (the embedder's limit).
MAX_MAP_RESULTS = 16
# Reads made beside a request's own work: stored vectors, and files from the catalog.
_FETCHES_AT_ONCE = 8


@dataclass(frozen=True)
class Steering:
    """What a search starts from besides an upload: a stored query image, a region of the
    query, and the images marked positive and negative."""

    query_id: int | None = None
    region: Region | None = None
    positive: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()

    def check(self, *, has_upload: bool) -> None:
        """Refuses what cannot make one query: the words say which part is wrong."""
        if has_upload and self.query_id is not None:
            raise InvalidRequest("send either an image or a query_id, not both")
        if not has_upload and self.query_id is None and not self.positive:
            raise InvalidRequest(
                "send an image (one file in the multipart field 'image'), a query_id,"
                " or at least one positive image ID"
            )
        if self.region is not None and not has_upload and self.query_id is None:
            raise InvalidRequest("a region is of the query image: send an image or a query_id with it")
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise InvalidRequest(f"image {both[0]} is both positive and negative; mark it one way")
        if len(self.positive) + len(self.negative) > MAX_EXAMPLES:
            raise InvalidRequest(
                f"{len(self.positive) + len(self.negative)} marked images; at most {MAX_EXAMPLES}"
                " positive and negative together"
            )
        if self.query_id is not None and self.query_id in set(self.positive) | set(self.negative):
            raise InvalidRequest(f"image {self.query_id} is the query; it cannot be marked too")

    @property
    def left_out(self) -> list[int]:
        """The images a steered search never returns: the query's own and the marked ones."""
        stored_query = [self.query_id] if self.query_id is not None else []
        return [*stored_query, *self.positive, *self.negative]


@dataclass(frozen=True)
class MapsAnswer:
    model_id: str
    query_extent: list[float]
    maps: list[dict[str, Any]]  # each with its image_id
    errors: list[dict[str, Any]]  # each with its image_id, status and detail


def rocchio(
    query: NDArray[np.float32] | None,
    positive: Sequence[NDArray[np.float32]],
    negative: Sequence[NDArray[np.float32]],
) -> NDArray[np.float32]:
    """The steered query vector, of norm 1 (see the module's docstring)."""
    if query is None and not positive:
        raise ValueError("a steered query needs a query vector or a positive example")
    combined = (
        QUERY_WEIGHT * np.asarray(query, dtype=np.float64)
        if query is not None
        else QUERY_WEIGHT * np.mean(positive, axis=0, dtype=np.float64)
    )
    if query is not None and positive:
        combined = combined + POSITIVE_WEIGHT * np.mean(positive, axis=0, dtype=np.float64)
    if negative:
        combined = combined - NEGATIVE_WEIGHT * np.mean(negative, axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(combined))
    if norm < 1e-6:
        raise InvalidRequest("the marked images cancel the query out: mark fewer as not like this")
    return np.asarray(combined / norm, dtype=np.float32)


class Explorer:
    """Steered searches and similarity maps, over the gateway's flows and services."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.embedder = gateway.embedder
        self.search_service = gateway.search_service
        self.catalog = gateway.catalog
        self._fetcher = ThreadPoolExecutor(_FETCHES_AT_ONCE, thread_name_prefix="fetch")

    def search(
        self, upload: Upload | None, steering: Steering, query: SearchQuery
    ) -> tuple[ActiveModel, list[Hit]]:
        steering.check(has_upload=upload is not None)
        model = self.embedder.model()
        # The stored vectors it needs (a stored query's, the marked images') come in one read,
        # made while an upload or a region is embedded.
        stored = self._fetcher.submit(self._stored_vectors, model, steering)
        start = self._query_vector(model, upload, steering, stored)
        examples = self._examples(model, steering, stored.result())
        positive = [vector for vector, sign in examples if sign > 0]
        negative = [vector for vector, sign in examples if sign < 0]
        if steering.positive or steering.negative:
            vector = pack_vector(rocchio(_unpacked(start) if start else None, positive, negative).tolist())
        else:
            assert start is not None  # check() asked for an upload, a query_id or a positive
            vector = start
        query_filter = dict(query.filter or {})
        excluded = query_filter.get("exclude_ids")
        if excluded is not None and not isinstance(excluded, list):
            raise InvalidRequest("filter.exclude_ids must be a list of image IDs")
        if steering.left_out:
            query_filter["exclude_ids"] = [*(excluded or []), *steering.left_out]
        return model, self.gateway.hits(model, vector, replace(query, filter=query_filter))

    def similarity_maps(
        self,
        upload: Upload | None,
        query_id: int | None,
        region: Region | None,
        result_ids: Sequence[int],
        model_id: str | None,
    ) -> MapsAnswer:
        if (upload is None) == (query_id is None):
            raise InvalidRequest("send either an image or a query_id for the query")
        if not 1 <= len(result_ids) <= MAX_MAP_RESULTS:
            raise InvalidRequest(
                f"send 1 to {MAX_MAP_RESULTS} result IDs in result_id (got {len(result_ids)})"
            )
        active = self.embedder.model()
        if model_id is not None and model_id != active.model_id:
            raise ModelMismatch(
                f"the maps were asked for model {model_id[:80]!r}; the active model is {active.model_id}"
            )
        query = upload if upload is not None else self._stored_upload(query_id)
        fetched = list(self._fetcher.map(self._stored_or_missing, result_ids))
        found = [
            (image_id, item) for image_id, item in zip(result_ids, fetched, strict=True) if item is not None
        ]
        errors = [
            {"image_id": image_id, "status": 404, "detail": f"image {image_id} does not exist"}
            for image_id, item in zip(result_ids, fetched, strict=True)
            if item is None
        ]
        if not found:
            raise ImageNotFound(f"none of the result images exist: {', '.join(map(str, result_ids))[:200]}")
        body, model = self.embedder.similarity_maps(query, [item for _, item in found], region)
        ids = [image_id for image_id, _ in found]
        maps = [{"image_id": ids[item.pop("index")], **item} for item in body["maps"]]
        errors += [
            {"image_id": ids[error["index"]], "status": error["status"], "detail": error["detail"]}
            for error in body["errors"]
        ]
        return MapsAnswer(model.model_id, body["query_extent"], maps, errors)

    def close(self) -> None:
        self._fetcher.shutdown(wait=False, cancel_futures=True)

    def _stored_vectors(self, model: ActiveModel, steering: Steering) -> dict[int, PackedVector]:
        """What the search reads from the search service, by image ID."""
        wanted = [*steering.positive, *steering.negative]
        if steering.query_id is not None and steering.region is None:  # a region is embedded anew
            wanted.insert(0, steering.query_id)
        return self.search_service.vectors(model.model_id, wanted) if wanted else {}

    def _query_vector(
        self,
        model: ActiveModel,
        upload: Upload | None,
        steering: Steering,
        stored: Future[dict[int, PackedVector]],
    ) -> PackedVector | None:
        if upload is not None:
            return self.embedder.embed(upload, steering.region)[0]
        if steering.query_id is None:
            return None
        if steering.region is not None:
            return self.embedder.embed(self._stored_upload(steering.query_id), steering.region)[0]
        vector = stored.result().get(steering.query_id)
        if vector is None:
            self.catalog.image(steering.query_id)  # ImageNotFound when it does not exist at all
            raise NotIndexed(f"image {steering.query_id} has no vector for model {model.model_id} yet")
        return vector

    def _examples(
        self, model: ActiveModel, steering: Steering, stored: dict[int, PackedVector]
    ) -> list[tuple[NDArray[np.float32], int]]:
        """Each marked image's stored vector, with +1 for positive and -1 for negative."""
        marked = [(image_id, 1) for image_id in steering.positive] + [(i, -1) for i in steering.negative]
        examples = []
        for image_id, sign in marked:
            vector = stored.get(image_id)
            if vector is None:
                kind = "positive" if sign > 0 else "negative"
                try:
                    self.catalog.image(image_id)
                except ImageNotFound:
                    raise ExampleNotFound(f"{kind} image {image_id} is not in the collection") from None
                raise NotIndexed(f"{kind} image {image_id} has no vector for model {model.model_id} yet")
            examples.append((_unpacked(vector), sign))
        return examples

    def _stored_upload(self, image_id: int | None) -> Upload:
        assert image_id is not None  # the caller checked for an upload or a query ID
        stored = self._stored_or_missing(image_id)
        if stored is None:
            raise ImageNotFound(f"image {image_id} does not exist")
        return stored

    def _stored_or_missing(self, image_id: int) -> Upload | None:
        try:
            stored = self.catalog.file(image_id, thumbnail=False, if_none_match=None)
        except ImageNotFound:
            return None
        return Upload(stored.content, UPLOAD_KINDS.get(stored.headers.get("Content-Type", ""), "png"))


def _unpacked(vector: PackedVector) -> NDArray[np.float32]:
    return np.frombuffer(unpack_vector(vector), dtype="<f4").astype(np.float32)
