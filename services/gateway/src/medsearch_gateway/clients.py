"""Typed clients of the three services the gateway orchestrates.

Each rides on libs/common's `ServiceClient`, which bounds every call with timeouts and turns
failures into errors that name the service, and returns typed results, never raw JSON or
responses. A service refusing what a user sent (a corrupt image, bad metadata, a bad filter)
comes back as the gateway's own 4xx with that service's explanation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from medsearch_common.client import (
    RetryPolicy,
    ServiceClient,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from medsearch_common.vectors import pack_vector
from medsearch_gateway.errors import (
    ImageNotFound,
    ImageRejected,
    InvalidRequest,
    JobConflict,
    MapNotFound,
    NothingToMap,
    UnsupportedUpload,
    UploadTooLarge,
)
from medsearch_gateway.settings import GatewaySettings, Upstream

log = logging.getLogger(__name__)

# The attributes the search service filters on, copied from the catalog's metadata.
FILTER_ATTRIBUTES = ("dataset", "patient_id", "sex", "age", "view_position", "findings")
# Session: a search sees every image this search service indexed before it (ingest, then
# search at once, finds it), and waits for a time tick only right after a write; strong
# would wait for one on every search, bounded could miss an image just added.
SEARCH_CONSISTENCY = "session"
# A vector as base64 of little-endian float32: what the embedder gives and the search service
# takes as it is; the gateway never needs its numbers.
PackedVector = str

# /readyz asks the three services at once and answers within one deadline, well under a
# Kubernetes probe's usual 5 s. Each call's own limits (connect, then read) add up to it, so that
# no call outlives the request that made it.
_READY_DEADLINE_S = 3.0
_READY_CONNECT_TIMEOUT_S = 1.0
_READY_READ_TIMEOUT_S = 2.0
# The model description is answered from memory: a hung embedder must not hold up the
# image reads and stats that only want to know which model is active.
_MODEL_TIMEOUT_S = 2.0
# How long the active model's description is reused. Every embedding refreshes it, so a
# restarted embedder with other weights is noticed at its first embedding, or after this.
_MODEL_TTL_S = 5.0
# The pass-through headers of a stored file: browsers cache files by their immutable IDs.
_FILE_HEADERS = ("Content-Type", "ETag", "Cache-Control")
_REJECTED_AS = {
    400: InvalidRequest,
    413: UploadTooLarge,
    415: UnsupportedUpload,
    422: ImageRejected,
}


# -- what the services answer ----------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file a user sent, already checked by its content (`kind`: png, jpeg or dicom)."""

    data: bytes
    kind: str

    @property
    def filename(self) -> str:
        # The services judge by content too; a neutral name keeps the user's out of every log.
        return {"png": "upload.png", "jpeg": "upload.jpg", "dicom": "upload.dcm"}[self.kind]


@dataclass(frozen=True)
class ActiveModel:
    model_id: str
    description: dict[str, Any]  # the embedder's own description, shown to users as it is


@dataclass(frozen=True)
class ImageRecord:
    id: int
    metadata: dict[str, Any]
    width: int
    height: int
    mime_type: str
    byte_size: int
    sha256: str
    created_at: str
    index_states: dict[str, str]  # model ID -> pending, indexed or failed

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ImageRecord:
        return cls(
            id=int(body["id"]),
            metadata=body["metadata"],
            width=body["width"],
            height=body["height"],
            mime_type=body["mime_type"],
            byte_size=body["byte_size"],
            sha256=body["sha256"],
            created_at=body["created_at"],
            index_states={model: state["state"] for model, state in body["index_states"].items()},
        )

    def state_for(self, model_id: str) -> str:
        return self.index_states.get(model_id, "pending")

    def with_state(self, model_id: str, state: str) -> ImageRecord:
        return replace(self, index_states={**self.index_states, model_id: state})


@dataclass(frozen=True)
class Stored:
    """An image the catalog keeps; `created` when these bytes were new to it."""

    image: ImageRecord
    created: bool


@dataclass(frozen=True)
class Refused:
    """One item of a batch `service` would not take, and why: a public 4xx, or a 503 when the
    service could not take it now (its own words then stay in the log, as for any 5xx)."""

    service: str
    status: int
    detail: str

    def error(self) -> Exception:
        if self.status >= 500:
            log.warning(
                "batch item refused",
                extra={"upstream": self.service, "status": self.status, "upstream_detail": self.detail},
            )
            return UpstreamUnavailable(self.service, f"{self.service} is unavailable")
        return _REJECTED_AS.get(self.status, ImageRejected)(self.detail)


@dataclass(frozen=True)
class Page:
    items: list[ImageRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class StoredFile:
    content: bytes
    status: int  # 200, or 304 when the browser's copy is current
    headers: dict[str, str]


@dataclass(frozen=True)
class CatalogCounts:
    images: int
    datasets: dict[str, int]
    models: dict[str, dict[str, int]]  # model ID -> counts per index state
    breakdown: dict[str, dict[str, int]] | None = None  # by finding, age band, sex, view (when asked)


@dataclass(frozen=True)
class Found:
    image_id: int
    score: float


@dataclass(frozen=True)
class SearchQuery:
    k: int = 10
    filter: dict[str, Any] | None = None
    one_per_patient: bool = False


@dataclass(frozen=True)
class Region:
    """A box on an image in its own pixels (left and top in, right and bottom out); whether it
    lies inside the image is for the embedder, which decodes it."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def text(self) -> str:
        return f"{self.left},{self.top},{self.right},{self.bottom}"

    def to_json(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


@dataclass(frozen=True)
class NearPairs:
    """What the search service found for a range: (a, b, score) with a < b, and the vectors scanned."""

    pairs: list[tuple[int, int, float]]
    vectors: int


@dataclass(frozen=True)
class StateChange:
    image_id: int
    state: str
    reason: str | None = None


def user_error(exc: UpstreamRejected) -> Exception:
    """A service's refusal of what the user sent, as the gateway's own 4xx."""
    detail = str(exc.problem.get("detail") or exc.problem.get("title") or f"HTTP {exc.status}")
    return _REJECTED_AS.get(exc.status, ImageRejected)(detail)


# -- the clients ---------------------------------------------------------------------------


class EmbedderClient:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client
        self._model: ActiveModel | None = None
        self._model_until = 0.0
        self._lock = threading.Lock()

    def model(self, *, fresh: bool = False) -> ActiveModel:
        """The active model; from memory for a few seconds unless `fresh` (stats show
        the embedder as it is now)."""
        with self._lock:
            if not fresh and self._model is not None and time.monotonic() < self._model_until:
                return self._model
        body = self.client.request("GET", "/v1/model", read_timeout_s=_MODEL_TIMEOUT_S).json()
        return self._remember(body)

    def embed(self, upload: Upload, region: Region | None = None) -> tuple[PackedVector, ActiveModel]:
        """The image's vector (packed: the gateway only passes it on) and the model that made it;
        with `region`, the vector of that part of it."""
        try:
            vectors, model = self.embed_many([upload], region)
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        vector = vectors[0]
        if isinstance(vector, Refused):  # not expected: a lone refused image is a 4xx answer
            raise vector.error()
        return vector, model

    def embed_many(
        self, uploads: Sequence[Upload], region: Region | None = None
    ) -> tuple[list[PackedVector | Refused], ActiveModel]:
        """One vector or refusal per upload, in order, from one call. When every image is
        refused the embedder answers with a 4xx, raised as UpstreamRejected."""
        params = {"encoding": "base64"}
        if region is not None:
            params["region"] = region.text
        response = self.client.request(
            "POST",
            "/v1/embeddings",
            params=params,
            files=[("images", (upload.filename, upload.data)) for upload in uploads],
            idempotent=True,  # a pure function of the bytes: safe to send again
        )
        body = response.json()
        outcomes: list[PackedVector | Refused] = [Refused("embedder", 422, "not embedded")] * len(uploads)
        for item in body["data"]:
            outcomes[item["index"]] = item["embedding"]
        for error in body.get("errors", []):
            outcomes[error["index"]] = Refused("embedder", error["status"], error["detail"])
        return outcomes, self._remember(body["model"])

    def similarity_maps(
        self, query: Upload, results: Sequence[Upload], region: Region | None
    ) -> tuple[dict[str, Any], ActiveModel]:
        """The embedder's maps of the query against each result (its JSON answer), and the
        model that made them. A query it cannot read is the user's 4xx."""
        try:
            response = self.client.request(
                "POST",
                "/v1/similarity-maps",
                files=[
                    ("query", ("query", query.data)),
                    *(("results", (f"r{i}", r.data)) for i, r in enumerate(results)),
                ],
                data={"region": region.text} if region else None,
                idempotent=True,  # a pure function of the bytes
            )
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        body: dict[str, Any] = response.json()
        return body, self._remember(body["model"])

    def refusals(self, exc: UpstreamRejected, count: int) -> list[Refused]:
        """Each image's refusal from a 4xx answer to `embed_many`."""
        errors = exc.problem.get("errors")
        if not isinstance(errors, list) or len(errors) != count:
            refused = user_error(exc)
            return [Refused("embedder", exc.status, str(refused))] * count
        return [Refused("embedder", error["status"], error["detail"]) for error in errors]

    def render(self, upload: Upload) -> tuple[bytes, tuple[int, int]]:
        """The upload as a PNG to look at, and the width and height its pixels are counted in."""
        try:
            response = self.client.request(
                "POST", "/v1/render", files={"image": (upload.filename, upload.data)}, idempotent=True
            )
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        size = (int(response.headers["X-Image-Width"]), int(response.headers["X-Image-Height"]))
        return response.content, size

    def _remember(self, description: dict[str, Any]) -> ActiveModel:
        model = ActiveModel(str(description["model_id"]), description)
        with self._lock:
            self._model, self._model_until = model, time.monotonic() + _MODEL_TTL_S
        return model


class SearchClient:
    def __init__(self, client: ServiceClient, maps: ServiceClient | None = None) -> None:
        self.client = client
        # Map jobs and maps live with one search process (map_jobs.py): its own replica in
        # Kubernetes, the one search service elsewhere.
        self.maps = maps or client

    def search(self, model_id: str, vector: PackedVector, query: SearchQuery) -> list[Found]:
        """Hits, best first; none when nothing was ever indexed for the model."""
        return self.search_many(model_id, [vector], query)[0]

    def search_many(
        self, model_id: str, vectors: Sequence[PackedVector], query: SearchQuery
    ) -> list[list[Found]]:
        """Each query vector's hits, best first, in one call; none when nothing was ever indexed."""
        body = {
            "vectors": list(vectors),
            "k": query.k,
            "filter": query.filter or {},
            "one_per_patient": query.one_per_patient,
            "consistency": SEARCH_CONSISTENCY,
        }
        try:
            response = self.client.request(
                "POST", f"/v1/models/{model_id}/search", json=body, idempotent=True
            )
        except UpstreamRejected as exc:
            if exc.status == 404:  # no collection yet for this model: nothing indexed
                return [[] for _ in vectors]
            if exc.status == 400:  # the filter: the only part of the request the user wrote
                raise InvalidRequest(f"the search was refused: {exc.problem.get('detail', exc)}") from None
            raise
        return [
            [Found(int(hit["id"]), float(hit["score"])) for hit in hits]
            for hits in response.json()["results"]
        ]

    def vector(self, model_id: str, image_id: int) -> PackedVector | None:
        try:
            body = self.client.get_json(f"/v1/models/{model_id}/vectors/{image_id}")
        except UpstreamRejected as exc:
            if exc.status == 404:
                return None
            raise
        return pack_vector(body["vector"])

    def vectors(self, model_id: str, image_ids: Sequence[int]) -> dict[int, PackedVector]:
        """The stored vectors of several images in one read (those that have one); none at all
        when nothing was ever indexed for the model."""
        try:
            body = self.client.get_json(
                f"/v1/models/{model_id}/vectors", params={"ids": ",".join(map(str, image_ids))}
            )
        except UpstreamRejected as exc:
            if exc.status == 404:
                return {}
            raise
        return {int(item["id"]): item["vector"] for item in body["vectors"]}

    def upsert(self, model_id: str, items: Sequence[tuple[ImageRecord, PackedVector]]) -> None:
        """Every image's vector with the attributes searches filter on, in one call."""
        self.client.request(
            "PUT",
            f"/v1/models/{model_id}/vectors",
            json={
                "items": [
                    {
                        "id": image.id,
                        "vector": vector,
                        "attributes": {name: image.metadata.get(name) for name in FILTER_ATTRIBUTES},
                    }
                    for image, vector in items
                ]
            },
        )

    def delete(self, model_id: str, image_id: int) -> None:
        try:
            self.client.request("DELETE", f"/v1/models/{model_id}/vectors/{image_id}")
        except UpstreamRejected as exc:
            if exc.status != 404:  # no collection for that model: nothing to delete
                raise

    def vector_ids(self, model_id: str, first: int, end: int) -> set[int]:
        """The IDs in [first, end) that hold a vector for the model (none when it has no collection)."""
        body = self.client.get_json(f"/v1/models/{model_id}/vector-ids", params={"from": first, "to": end})
        return set(body["ids"])

    def neighbors(self, model_id: str, first: int, end: int, *, threshold: float, k: int) -> NearPairs:
        """Each vector of [first, end) paired with its `k` nearest others at or above `threshold`
        (none when nothing was ever indexed for the model)."""
        body = {"from": first, "to": end, "threshold": threshold, "k": k}
        try:
            # It only reads: safe to send again.
            response = self.client.request(
                "POST", f"/v1/models/{model_id}/neighbors", json=body, idempotent=True
            )
        except UpstreamRejected as exc:
            if exc.status == 404:  # no collection yet for this model: nothing indexed
                return NearPairs([], 0)
            raise
        found = response.json()
        return NearPairs([(int(a), int(b), float(score)) for a, b, score in found["pairs"]], found["vectors"])

    def start_map(self, model_id: str) -> dict[str, Any]:
        """A background job making the model's 2-D map: the job as it starts."""
        try:
            # Not sent twice: a second start while the first runs is a conflict.
            return dict(self.maps.request("POST", f"/v1/models/{model_id}/map-jobs").json())
        except UpstreamRejected as exc:
            detail = str(exc.problem.get("detail", ""))[:300]
            if exc.status == 409:
                raise JobConflict(detail or "a map job is already running") from None
            if exc.status == 404:
                raise NothingToMap(
                    f"model {model_id} has no vectors yet: add images before making a map"
                ) from None
            if exc.status == 422:
                raise NothingToMap(detail) from None
            raise

    def map_job(self, model_id: str) -> dict[str, Any]:
        """The model's last map job, with its stage and progress."""
        try:
            return dict(self.maps.get_json(f"/v1/models/{model_id}/map-jobs/current"))
        except UpstreamRejected as exc:
            if exc.status == 404:
                raise MapNotFound(f"no map job was started for model {model_id} yet") from None
            raise

    def map(self, model_id: str) -> bytes:
        """The model's last finished map as the search service's JSON, passed on unparsed
        (a few MB at 112k points)."""
        try:
            return self.maps.request("GET", f"/v1/models/{model_id}/map").content
        except UpstreamRejected as exc:
            if exc.status == 404:
                raise MapNotFound(
                    f"no map of model {model_id} was made yet: an editor starts one (POST /api/v1/map/jobs)"
                ) from None
            raise


class CatalogClient:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def add(self, upload: Upload, metadata_json: str) -> Stored:
        """Store the image (the same bytes are stored once)."""
        try:
            response = self.client.request(
                "POST",
                "/v1/images",
                files={"file": (upload.filename, upload.data)},
                data={"metadata": metadata_json},
                idempotent=True,  # by sha256: sending it twice stores it once
            )
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        return Stored(ImageRecord.from_json(response.json()), response.status_code == 201)

    def add_many(self, uploads: Sequence[Upload], metadata_json: str) -> list[Stored | Refused]:
        """Store a batch in one call: `metadata_json` is a JSON array, one object per upload.
        Each upload is stored or refused on its own."""
        try:
            response = self.client.request(
                "POST",
                "/v1/images/batch",
                files=[("file", (upload.filename, upload.data)) for upload in uploads],
                data={"metadata": metadata_json},
                idempotent=True,
            )
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        outcomes: list[Stored | Refused] = []
        for item in response.json()["items"]:
            if "image" in item:
                outcomes.append(Stored(ImageRecord.from_json(item["image"]), item["status"] == 201))
            else:
                outcomes.append(Refused("catalog", item["status"], item["detail"]))
        return outcomes

    def image(self, image_id: int) -> ImageRecord:
        try:
            body = self.client.get_json(f"/v1/images/{image_id}")
        except UpstreamRejected as exc:
            raise _not_found_or_user_error(exc, image_id) from None
        return ImageRecord.from_json(body)

    def images(self, image_ids: list[int]) -> dict[int, ImageRecord]:
        """One call for all of them; IDs the catalog no longer has are left out."""
        if not image_ids:
            return {}
        body = self.client.get_json("/v1/images", params={"ids": ",".join(map(str, image_ids))})
        return {record.id: record for record in map(ImageRecord.from_json, body["items"])}

    def page(self, params: list[tuple[str, str]], *, path: str = "/v1/images") -> Page:
        try:
            body = self.client.get_json(path, params=params)
        except UpstreamRejected as exc:
            raise user_error(exc) from None
        return Page([ImageRecord.from_json(item) for item in body["items"]], body["next_cursor"])

    def file(self, image_id: int, *, thumbnail: bool, if_none_match: str | None) -> StoredFile:
        path = f"/v1/images/{image_id}/{'thumbnail' if thumbnail else 'file'}"
        headers = {"If-None-Match": if_none_match} if if_none_match else None
        try:
            response = self.client.request("GET", path, headers=headers)
        except UpstreamRejected as exc:
            raise _not_found_or_user_error(exc, image_id) from None
        kept = {name: response.headers[name] for name in _FILE_HEADERS if name in response.headers}
        return StoredFile(response.content, response.status_code, kept)

    def set_states(self, model_id: str, changes: Sequence[StateChange]) -> None:
        """All in one statement; images deleted meanwhile are skipped."""
        items: list[dict[str, Any]] = []
        for change in changes:
            item: dict[str, Any] = {"id": change.image_id, "state": change.state}
            if change.reason:
                item["reason"] = change.reason
            items.append(item)
        self.client.request("PUT", f"/v1/models/{model_id}/index-states", json={"items": items})

    def delete(self, image_id: int) -> None:
        self.client.request("DELETE", f"/v1/images/{image_id}")

    def counts(self, model_id: str | None, *, breakdown: bool = False) -> CatalogCounts:
        params = {"model_id": model_id} if model_id else {}
        if breakdown:
            params["breakdown"] = "true"
        body = self.client.get_json("/v1/stats", params=params)
        return CatalogCounts(body["images"], body["datasets"], body["models"], body.get("breakdown"))

    def index_states(self, model_id: str, first: int, end: int) -> tuple[dict[int, str], int | None]:
        """Each image's state for the model in [first, end) (pending when it has none), and the
        highest image ID the catalog has given."""
        body = self.client.get_json(f"/v1/models/{model_id}/index-states", params={"from": first, "to": end})
        return {item["image_id"]: item["state"] for item in body["items"]}, body["max_image_id"]


def _readiness_of(client: ServiceClient) -> str | None:
    """None when the service says it is ready, else why not (never its address: admins see it)."""
    try:
        client.request(
            "GET",
            "/readyz",
            idempotent=False,
            connect_timeout_s=_READY_CONNECT_TIMEOUT_S,
            read_timeout_s=_READY_READ_TIMEOUT_S,
        )
    except UpstreamError as exc:
        return str(exc)
    return None


def _not_found_or_user_error(exc: UpstreamRejected, image_id: int) -> Exception:
    if exc.status == 404:
        return ImageNotFound(f"no image has ID {image_id}")
    return user_error(exc)


# -- all three -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    embedder: EmbedderClient
    search: SearchClient
    catalog: CatalogClient

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Services:
        def client(upstream: Upstream) -> ServiceClient:
            return ServiceClient(
                upstream.name,
                upstream.url,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=upstream.timeout_s,
                retry=RetryPolicy(attempts=settings.attempts),
                pool_size=settings.threads,
            )

        return cls(
            EmbedderClient(client(settings.embedder)),
            SearchClient(client(settings.search), client(settings.maps) if settings.maps else None),
            CatalogClient(client(settings.catalog)),
        )

    def readiness(self) -> dict[str, str | None]:
        """Each service's own readiness (None: ready), all three asked at once, once each (no
        retries), within one deadline: a service that has not answered by then is named as such."""
        clients = self._clients()
        asking = ThreadPoolExecutor(len(clients), thread_name_prefix="readiness")
        try:
            futures = {client.service: asking.submit(_readiness_of, client) for client in clients}
            done, _ = wait(futures.values(), timeout=_READY_DEADLINE_S)
        finally:
            asking.shutdown(wait=False, cancel_futures=True)
        return {
            name: future.result()
            if future in done
            else f"{name} did not answer within {_READY_DEADLINE_S:g} s"
            for name, future in futures.items()
        }

    def close(self) -> None:
        for client in {*self._clients(), self.search.maps}:
            client.close()

    def _clients(self) -> tuple[ServiceClient, ...]:
        return (self.embedder.client, self.search.client, self.catalog.client)
