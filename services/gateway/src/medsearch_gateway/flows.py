"""What the public API does, in terms of the three services: search, more like this,
ingest (one image or a batch), (re)index, browse, delete and stats."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from medsearch_common.client import DEFAULT_RETRY_AFTER_S, UpstreamError, UpstreamRejected
from medsearch_gateway import consistency, duplicates
from medsearch_gateway.clients import (
    ActiveModel,
    ImageRecord,
    PackedVector,
    Page,
    Refused,
    SearchQuery,
    Services,
    StateChange,
    Stored,
    StoredFile,
    Upload,
)
from medsearch_gateway.consistency import Verification
from medsearch_gateway.duplicates import Duplicates
from medsearch_gateway.errors import (
    IngestIncomplete,
    InvalidRequest,
    NotIndexed,
    StoredButRejected,
)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    image: ImageRecord


@dataclass(frozen=True)
class Ingested:
    image: ImageRecord
    created: bool
    model_id: str
    already_indexed: bool  # nothing was done: stored and indexed for this model before


# What a batch gives for each item: its result, or the public error it met.
Outcome = Ingested | Exception


@dataclass(frozen=True)
class Stats:
    model: ActiveModel | None  # None when the embedder cannot say
    images: int
    datasets: dict[str, int]
    index: dict[str, int] | None  # the active model's counts per state
    models: dict[str, dict[str, int]]  # every model's counts per state
    breakdown: dict[str, dict[str, int]] | None = None


@dataclass(frozen=True)
class _Unindexed:
    """A stored image and the bytes to embed it from."""

    stored: Stored
    upload: Upload


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder, self.search_service, self.catalog = (
            services.embedder,
            services.search,
            services.catalog,
        )

    # -- search --------------------------------------------------------------------------

    def search(self, upload: Upload, query: SearchQuery) -> tuple[ActiveModel, list[Hit]]:
        """Embed the upload, search, then fetch every hit's record in one catalog call."""
        vector, model = self.embedder.embed(upload)
        return model, self.hits(model, vector, query)

    def search_many(
        self, uploads: Sequence[Upload | Exception], query: SearchQuery
    ) -> tuple[ActiveModel, list[list[Hit] | Exception]]:
        """Each upload's hits (or the public error it met), with one call to each service for
        all of them: one embedding call, one search of every vector, one catalog fetch."""
        todo = [i for i, upload in enumerate(uploads) if isinstance(upload, Upload)]
        outcomes: list[list[Hit] | Exception] = [
            upload if isinstance(upload, Exception) else [] for upload in uploads
        ]
        if not todo:
            return self.embedder.model(), outcomes
        try:
            vectors, model = self.embedder.embed_many([uploads[i] for i in todo])  # type: ignore[misc]
        except UpstreamRejected as exc:  # every image refused
            for i, refused in zip(todo, self.embedder.refusals(exc, len(todo)), strict=True):
                outcomes[i] = refused.error()
            return self.embedder.model(), outcomes
        embedded = [(i, v) for i, v in zip(todo, vectors, strict=True) if not isinstance(v, Refused)]
        for i, vector in zip(todo, vectors, strict=True):
            if isinstance(vector, Refused):
                outcomes[i] = vector.error()
        if embedded:
            found = self.search_service.search_many(model.model_id, [v for _, v in embedded], query)
            records = self.catalog.images(sorted({hit.image_id for hits in found for hit in hits}))
            for (i, _), hits in zip(embedded, found, strict=True):
                kept = [hit for hit in hits if hit.image_id in records]
                outcomes[i] = [
                    Hit(rank, hit.score, records[hit.image_id]) for rank, hit in enumerate(kept, 1)
                ]
        return model, outcomes

    def similar(self, image_id: int, query: SearchQuery) -> tuple[ActiveModel, list[Hit]]:
        """More like an indexed image: its stored vector as the query, itself left out."""
        model = self.embedder.model()
        vector = self.search_service.vector(model.model_id, image_id)
        if vector is None:
            self.catalog.image(image_id)  # raises ImageNotFound when it does not exist at all
            raise NotIndexed(f"image {image_id} has no vector for model {model.model_id} yet")
        query_filter = query.filter or {}
        excluded = query_filter.get("exclude_ids")
        if excluded is not None and not isinstance(excluded, list):
            raise InvalidRequest("filter.exclude_ids must be a list of image IDs")
        without_itself = {**query_filter, "exclude_ids": [*(excluded or []), image_id]}
        return model, self.hits(model, vector, replace(query, filter=without_itself))

    def preview(self, upload: Upload) -> tuple[bytes, tuple[int, int]]:
        return self.embedder.render(upload)

    # -- adding and indexing -----------------------------------------------------------------

    def ingest(self, upload: Upload, metadata_json: str) -> Ingested:
        """Catalog, then embed, upsert and mark indexed. A failure after the catalog step
        leaves the image pending; sending the same upload again completes it."""
        stored = self.catalog.add(upload, metadata_json)
        return _raised(self._index([_Unindexed(stored, upload)])[0])

    def ingest_many(self, uploads: Sequence[Upload | Exception], metadata: Sequence[Any]) -> list[Outcome]:
        """A batch: each item an upload (or the error its check met) with its metadata object.
        One catalog call stores them, one embedder call embeds those not yet indexed, one
        search call upserts their vectors and one catalog call sets their states. Each item
        succeeds or fails on its own, with the error the single ingest would give."""
        outcomes: list[Outcome | None] = []
        sent: list[tuple[int, Upload]] = []
        for position, upload in enumerate(uploads):
            if isinstance(upload, Upload):
                sent.append((position, upload))
                outcomes.append(None)
            else:
                outcomes.append(upload)
        if sent:
            self._store_and_index(sent, metadata, outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _store_and_index(
        self, sent: list[tuple[int, Upload]], metadata: Sequence[Any], outcomes: list[Outcome | None]
    ) -> None:
        stored = self.catalog.add_many(
            [upload for _, upload in sent], json.dumps([metadata[position] for position, _ in sent])
        )
        unindexed: list[tuple[int, _Unindexed]] = []
        for (position, upload), result in zip(sent, stored, strict=True):
            if isinstance(result, Refused):
                outcomes[position] = result.error()
            else:
                unindexed.append((position, _Unindexed(result, upload)))
        for (position, _), outcome in zip(
            unindexed, self._index([item for _, item in unindexed]), strict=True
        ):
            outcomes[position] = outcome

    def index(self, image_id: int, *, force: bool = False) -> Ingested:
        """(Re)index a stored image for the active model, from the catalog's own bytes;
        `force` even when the catalog says it is indexed (a new or emptied Milvus)."""
        image = self.catalog.image(image_id)
        stored = self.catalog.file(image_id, thumbnail=False, if_none_match=None)
        upload = Upload(stored.content, UPLOAD_KINDS.get(image.mime_type, "png"))
        return _raised(self._index([_Unindexed(Stored(image, created=False), upload)], force=force)[0])

    def pending(self, params: list[tuple[str, str]]) -> tuple[str, Page]:
        """A page of the images the active model has not indexed (failed ones when asked)."""
        model_id = self.embedder.model().model_id
        return model_id, self.catalog.page(params, path=f"/v1/models/{model_id}/pending")

    def _index(self, items: Sequence[_Unindexed], *, force: bool = False) -> list[Outcome]:
        """Embed, upsert and mark indexed the stored images, each call made once for all.
        The same image twice in a batch is indexed once; its second place says so."""
        first: dict[int, int] = {}
        for position, item in enumerate(items):
            first.setdefault(item.stored.image.id, position)
        outcomes = self._index_once([items[p] for p in first.values()], force=force)
        by_image = dict(zip(first, outcomes, strict=True))
        return [
            _repeated(by_image[item.stored.image.id])
            if first[item.stored.image.id] != position
            else by_image[item.stored.image.id]
            for position, item in enumerate(items)
        ]

    def _index_once(self, items: Sequence[_Unindexed], *, force: bool = False) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        todo = list(range(len(items)))
        stage = "embedder"
        try:
            if not force and any(not item.stored.created for item in items):
                model_id = self.embedder.model().model_id
                for position in list(todo):
                    stored = items[position].stored
                    if not stored.created and stored.image.state_for(model_id) == "indexed":
                        outcomes[position] = Ingested(stored.image, False, model_id, already_indexed=True)
                        todo.remove(position)
            if not todo:
                return _complete(outcomes)
            try:
                vectors, model = self.embedder.embed_many([items[p].upload for p in todo])
            except UpstreamRejected as exc:
                # Every image refused: a 4xx with one error per image.
                vectors, model = list(self.embedder.refusals(exc, len(todo))), None
            embedded: list[tuple[int, PackedVector]] = []
            failed: list[StateChange] = []
            for position, vector in zip(todo, vectors, strict=True):
                image_id = items[position].stored.image.id
                if isinstance(vector, Refused):
                    # The catalog took it but the model cannot read it: say so on the record too.
                    outcomes[position] = StoredButRejected(
                        f"image {image_id} was stored but cannot be indexed: {vector.detail}",
                        image_id=image_id,
                    )
                    failed.append(StateChange(image_id, "failed", vector.detail))
                else:
                    embedded.append((position, vector))
            model_id = model.model_id if model else self.embedder.model().model_id
            stage = "search"
            if embedded:
                for position, reason in self._upsert(model_id, items, embedded):
                    image_id = items[position].stored.image.id
                    outcomes[position] = StoredButRejected(
                        f"image {image_id} was stored but the search service refuses it: {reason}",
                        image_id=image_id,
                    )
                    failed.append(StateChange(image_id, "failed", reason))
                embedded = [(p, v) for p, v in embedded if outcomes[p] is None]
            stage = "catalog"
            indexed = [StateChange(items[p].stored.image.id, "indexed") for p, _ in embedded]
            self._set_states(model_id, indexed, failed)
        except UpstreamRejected:
            raise  # a refusal a retry cannot mend: a 502, and the images stay pending
        except UpstreamError as exc:
            for position in todo:
                if outcomes[position] is None:
                    image_id = items[position].stored.image.id
                    outcomes[position] = IngestIncomplete(
                        f"image {image_id} is stored but not indexed yet ({exc}); try again to finish",
                        image_id=image_id,
                        dependency=stage,
                        retry_after_s=_retry_after_s(exc),
                    )
            return _complete(outcomes)
        for position, _ in embedded:
            stored = items[position].stored
            outcomes[position] = Ingested(
                stored.image.with_state(model_id, "indexed"), stored.created, model_id, already_indexed=False
            )
        return _complete(outcomes)

    def _upsert(
        self, model_id: str, items: Sequence[_Unindexed], embedded: list[tuple[int, PackedVector]]
    ) -> list[tuple[int, str]]:
        """Upsert the vectors in one call; the positions the search service refuses, with its
        reason. A refusal (400/422: what the gateway passed on from the image's metadata) is
        the image's own failure, not an outage to retry: when a batch is refused, each image is
        sent alone to find which."""
        pairs = [(items[p].stored.image, v) for p, v in embedded]
        try:
            self.search_service.upsert(model_id, pairs)
            return []
        except UpstreamRejected as exc:
            if exc.status not in (400, 422):
                raise
            if len(embedded) == 1:
                return [(embedded[0][0], _detail_of(exc))]
        refused = []
        for (position, _), pair in zip(embedded, pairs, strict=True):
            try:
                self.search_service.upsert(model_id, [pair])
            except UpstreamRejected as exc:
                if exc.status not in (400, 422):
                    raise
                refused.append((position, _detail_of(exc)))
        return refused

    def _set_states(self, model_id: str, indexed: list[StateChange], failed: list[StateChange]) -> None:
        """Indexed and failed in one call. Failed states alone are a courtesy: when they
        cannot be written the images stay pending, which reindex picks up too."""
        if indexed:
            self.catalog.set_states(model_id, [*indexed, *failed])
        elif failed:
            try:
                self.catalog.set_states(model_id, failed)
            except UpstreamError:
                pass

    # -- reading and removing -------------------------------------------------------------

    def browse(self, params: list[tuple[str, str]]) -> tuple[str | None, Page]:
        return self.active_model_id(), self.catalog.page(params)

    def image(self, image_id: int) -> tuple[str | None, ImageRecord]:
        return self.active_model_id(), self.catalog.image(image_id)

    def file(self, image_id: int, *, thumbnail: bool, if_none_match: str | None) -> StoredFile:
        return self.catalog.file(image_id, thumbnail=thumbnail, if_none_match=if_none_match)

    def delete(self, image_id: int) -> None:
        """Three steps, each safe to repeat, so that a failure between any two leaves a state
        that a retry of the delete, or `reindex`, repairs:
        1. the catalog marks the image pending for every model that has a state for it and the
           active one, so that it no longer says "indexed" of a vector about to go;
        2. the vectors go;
        3. the row goes. A vector never outlives its row.
        Cut after 1 or 2, the image is still there, pending: a retry deletes it, and `reindex`
        gives it its vector back (the delete never completed)."""
        image = self.catalog.image(image_id)
        models = sorted({*image.index_states, self.embedder.model().model_id})
        for model_id in models:
            self.catalog.set_states(model_id, [StateChange(image_id, "pending")])
        for model_id in models:
            self.search_service.delete(model_id, image_id)
        self.catalog.delete(image_id)

    def stats(self, *, breakdown: bool = False) -> Stats:
        """Counts from the catalog for the active model (and, with `breakdown`, the collection's
        counts by finding, age band, sex and view position); the model is None when the
        embedder cannot say (the catalog's counts still help)."""
        try:
            model: ActiveModel | None = self.embedder.model(fresh=True)
        except UpstreamError:
            model = None
        counts = self.catalog.counts(model.model_id if model else None, breakdown=breakdown)
        index = counts.models.get(model.model_id) if model else None
        return Stats(model, counts.images, counts.datasets, index, counts.models, counts.breakdown)

    def verify(self, first: int, end: int, *, repair: bool) -> Verification:
        """Whether the catalog and the search service agree on the active model's index for
        the image IDs [first, end); the drift repaired when asked (see consistency.py)."""
        model_id = self.embedder.model().model_id
        return consistency.verify(self.search_service, self.catalog, model_id, first, end, repair=repair)

    def duplicates(self, first: int, end: int, *, threshold: float, k: int) -> Duplicates:
        """The near-duplicate pairs of the image IDs [first, end) in the active model's index
        (see duplicates.py)."""
        model_id = self.embedder.model().model_id
        return duplicates.find(
            self.search_service, self.catalog, model_id, first, end, threshold=threshold, k=k
        )

    def start_map(self) -> dict[str, Any]:
        """A background job making the active model's 2-D map (the search service runs it)."""
        return self.search_service.start_map(self.embedder.model().model_id)

    def map_job(self) -> dict[str, Any]:
        return self.search_service.map_job(self.embedder.model().model_id)

    def collection_map(self) -> bytes:
        return self.search_service.map(self.embedder.model().model_id)

    def readiness(self) -> dict[str, str | None]:
        return self.services.readiness()

    def active_model_id(self) -> str | None:
        try:
            return self.embedder.model().model_id
        except UpstreamError:
            return None

    def close(self) -> None:
        self.services.close()

    def hits(self, model: ActiveModel, vector: PackedVector, query: SearchQuery) -> list[Hit]:
        found = self.search_service.search(model.model_id, vector, query)
        records = self.catalog.images([hit.image_id for hit in found])
        # The catalog is right when the two disagree: a hit it no longer has is dropped.
        kept = [hit for hit in found if hit.image_id in records]
        return [Hit(rank, hit.score, records[hit.image_id]) for rank, hit in enumerate(kept, start=1)]


# The kind of upload each stored type is, to index it from the catalog's bytes.
UPLOAD_KINDS = {"image/png": "png", "image/jpeg": "jpeg", "application/dicom": "dicom"}


def _retry_after_s(exc: UpstreamError) -> int:
    """When to try an incomplete ingest again: when the failing service said, else soon."""
    said = getattr(exc, "problem_headers", {}).get("Retry-After")
    return said if isinstance(said, int) else DEFAULT_RETRY_AFTER_S


def _raised(outcome: Outcome) -> Ingested:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _repeated(outcome: Outcome) -> Outcome:
    """An image's second place in a batch: nothing more was done for it."""
    if isinstance(outcome, Ingested):
        return replace(outcome, created=False, already_indexed=True)
    return outcome


def _complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    """Every item has its outcome by now; a gap would be a bug in the flow."""
    if any(outcome is None for outcome in outcomes):
        raise RuntimeError("an item of the batch was left without an outcome")
    return [outcome for outcome in outcomes if outcome is not None]


def _detail_of(exc: UpstreamRejected) -> str:
    return str(exc.problem.get("detail") or exc.problem.get("title") or f"HTTP {exc.status}")
