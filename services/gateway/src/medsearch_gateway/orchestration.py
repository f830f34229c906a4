"""The gateway's flows over the other services: search, more like this, ingest, delete, stats.

Each service is reached through a small typed client on libs/common's `ServiceClient`, which
bounds every call with timeouts and turns failures into errors that name the service. A
service refusing what a user sent (a corrupt image, bad metadata, a bad filter) comes back
as the gateway's own 4xx with that service's explanation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import requests

from medsearch_common.client import RetryPolicy, ServiceClient, UpstreamError, UpstreamRejected
from medsearch_common.vectors import pack_vector
from medsearch_gateway.errors import (
    ImageNotFound,
    ImageRejected,
    IngestIncomplete,
    InvalidRequest,
    NotIndexed,
    StoredButRejected,
    UnsupportedUpload,
    UploadTooLarge,
)
from medsearch_gateway.settings import GatewaySettings, Upstream

MAX_K = 100
# The attributes the search service filters on, copied from the catalog's metadata.
FILTER_ATTRIBUTES = ("dataset", "patient_id", "sex", "age", "view_position", "findings")
# Session: a search sees every image this search service indexed before it (ingest, then
# search at once, finds it), and waits for a time tick only right after a write; strong
# would wait for one on every search, bounded could miss an image just added.
SEARCH_CONSISTENCY = "session"
# A vector as base64 of little-endian float32: what the embedder gives and the search service
# takes as it is; the gateway never needs its numbers.
PackedVector = str

_READY_TIMEOUT_S = 2.0
# The model description is answered from memory: a hung embedder must not hold up the
# image reads and stats that only want to know which model is active.
_MODEL_TIMEOUT_S = 2.0
_K = re.compile(r"[0-9]{1,3}")
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
_DICOM_MAGIC = (128, b"DICM")
_REJECTED_AS = {
    400: InvalidRequest,
    413: UploadTooLarge,
    415: UnsupportedUpload,
    422: ImageRejected,
}


# -- uploads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file a user sent, checked by its content: PNG, JPEG or DICOM."""

    data: bytes
    kind: str

    @classmethod
    def check(cls, data: bytes, max_bytes: int) -> Upload:
        if not data:
            raise InvalidRequest("the file is empty")
        if len(data) > max_bytes:
            raise UploadTooLarge(f"the file is {len(data)} bytes; the limit is {max_bytes}")
        offset, magic = _DICOM_MAGIC
        if data[offset : offset + len(magic)] == magic:
            return cls(data, "dicom")
        for kind, signature in _MAGIC.items():
            if data.startswith(signature):
                return cls(data, kind)
        raise UnsupportedUpload("the file is not a PNG, JPEG or DICOM image (judged by its content)")

    @property
    def filename(self) -> str:
        # The services judge by content too; a neutral name keeps the user's out of every log.
        return {"png": "upload.png", "jpeg": "upload.jpg", "dicom": "upload.dcm"}[self.kind]


@dataclass(frozen=True)
class SearchRequest:
    k: int = 10
    filter: dict[str, Any] = field(default_factory=dict)
    one_per_patient: bool = False

    @classmethod
    def parse(cls, k: str | None, filter_json: str | None, one_per_patient: str | None) -> SearchRequest:
        return cls(
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
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("filter is not valid JSON") from None
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


# -- the services --------------------------------------------------------------------------


def _client(upstream: Upstream, settings: GatewaySettings) -> ServiceClient:
    return ServiceClient(
        upstream.name,
        upstream.url,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=upstream.timeout_s,
        retry=RetryPolicy(attempts=settings.attempts),
    )


def _user_error(exc: UpstreamRejected) -> Exception:
    """A service's refusal of what the user sent, as the gateway's own 4xx."""
    detail = str(exc.problem.get("detail") or exc.problem.get("title") or f"HTTP {exc.status}")
    return _REJECTED_AS.get(exc.status, ImageRejected)(detail)


class Embedder:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def model(self) -> dict[str, Any]:
        model: dict[str, Any] = self.client.request(
            "GET", "/v1/model", read_timeout_s=_MODEL_TIMEOUT_S
        ).json()
        return model

    def embed(self, upload: Upload) -> tuple[PackedVector, dict[str, Any]]:
        """The image's vector (packed: the gateway only passes it on) and the model that made it."""
        try:
            response = self.client.request(
                "POST",
                "/v1/embeddings",
                params={"encoding": "base64"},
                files={"images": (upload.filename, upload.data)},
                idempotent=True,  # a pure function of the bytes: safe to send again
            )
        except UpstreamRejected as exc:
            raise _user_error(exc) from None
        body = response.json()
        return body["data"][0]["embedding"], body["model"]

    def render(self, upload: Upload) -> bytes:
        try:
            response = self.client.request(
                "POST", "/v1/render", files={"image": (upload.filename, upload.data)}, idempotent=True
            )
        except UpstreamRejected as exc:
            raise _user_error(exc) from None
        return response.content


class Search:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def search(self, model_id: str, vector: PackedVector, query: SearchRequest) -> list[tuple[int, float]]:
        """Hits as (image ID, score), best first; none when nothing was ever indexed."""
        body = {
            "vectors": [vector],
            "k": query.k,
            "filter": query.filter,
            "one_per_patient": query.one_per_patient,
            "consistency": SEARCH_CONSISTENCY,
        }
        try:
            response = self.client.request(
                "POST", f"/v1/models/{model_id}/search", json=body, idempotent=True
            )
        except UpstreamRejected as exc:
            if exc.status == 404:  # no collection yet for this model: nothing indexed
                return []
            if exc.status == 400:  # the filter: the only part of the request the user wrote
                raise InvalidRequest(f"the search was refused: {exc.problem.get('detail', exc)}") from None
            raise
        return [(int(hit["id"]), float(hit["score"])) for hit in response.json()["results"][0]]

    def vector(self, model_id: str, image_id: int) -> PackedVector | None:
        try:
            body = self.client.get_json(f"/v1/models/{model_id}/vectors/{image_id}")
        except UpstreamRejected as exc:
            if exc.status == 404:
                return None
            raise
        return pack_vector(body["vector"])

    def upsert(self, model_id: str, image_id: int, vector: PackedVector, metadata: dict[str, Any]) -> None:
        attributes = {name: metadata.get(name) for name in FILTER_ATTRIBUTES}
        self.client.request(
            "PUT",
            f"/v1/models/{model_id}/vectors",
            json={"items": [{"id": image_id, "vector": vector, "attributes": attributes}]},
        )

    def delete(self, model_id: str, image_id: int) -> None:
        try:
            self.client.request("DELETE", f"/v1/models/{model_id}/vectors/{image_id}")
        except UpstreamRejected as exc:
            if exc.status != 404:  # no collection for that model: nothing to delete
                raise


class Catalog:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def add(self, upload: Upload, metadata_json: str) -> tuple[dict[str, Any], bool]:
        """The stored image and whether it is new (the same bytes are stored once)."""
        try:
            response = self.client.request(
                "POST",
                "/v1/images",
                files={"file": (upload.filename, upload.data)},
                data={"metadata": metadata_json},
                idempotent=True,  # by sha256: sending it twice stores it once
            )
        except UpstreamRejected as exc:
            raise _user_error(exc) from None
        return response.json(), response.status_code == 201

    def image(self, image_id: int) -> dict[str, Any]:
        try:
            image: dict[str, Any] = self.client.get_json(f"/v1/images/{image_id}")
        except UpstreamRejected as exc:
            raise _not_found_or_user_error(exc, image_id) from None
        return image

    def images(self, image_ids: list[int]) -> dict[int, dict[str, Any]]:
        """One call for all of them; IDs the catalog no longer has are left out."""
        if not image_ids:
            return {}
        body = self.client.get_json("/v1/images", params={"ids": ",".join(map(str, image_ids))})
        return {int(item["id"]): item for item in body["items"]}

    def page(self, params: list[tuple[str, str]], *, path: str = "/v1/images") -> dict[str, Any]:
        try:
            page: dict[str, Any] = self.client.get_json(path, params=params)
        except UpstreamRejected as exc:
            raise _user_error(exc) from None
        return page

    def file(self, image_id: int, *, thumbnail: bool, if_none_match: str | None) -> requests.Response:
        path = f"/v1/images/{image_id}/{'thumbnail' if thumbnail else 'file'}"
        headers = {"If-None-Match": if_none_match} if if_none_match else None
        try:
            return self.client.request("GET", path, headers=headers)
        except UpstreamRejected as exc:
            raise _not_found_or_user_error(exc, image_id) from None

    def set_state(self, image_id: int, model_id: str, state: str, reason: str | None = None) -> None:
        body: dict[str, Any] = {"state": state}
        if reason:
            body["reason"] = reason
        self.client.request("PUT", f"/v1/images/{image_id}/index-state/{model_id}", json=body)

    def delete(self, image_id: int) -> None:
        self.client.request("DELETE", f"/v1/images/{image_id}")

    def stats(self, model_id: str | None) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.get_json(
            "/v1/stats", params={"model_id": model_id} if model_id else None
        )
        return stats


def _not_found_or_user_error(exc: UpstreamRejected, image_id: int) -> Exception:
    if exc.status == 404:
        return ImageNotFound(f"no image has ID {image_id}")
    return _user_error(exc)


# -- the flows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    image: dict[str, Any]


@dataclass(frozen=True)
class Ingested:
    image: dict[str, Any]
    created: bool
    model_id: str
    already_indexed: bool  # nothing was done: stored and indexed for this model before


class Gateway:
    """What the public API does, in terms of the three services."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.embedder = Embedder(_client(settings.embedder, settings))
        self.search_service = Search(_client(settings.search, settings))
        self.catalog = Catalog(_client(settings.catalog, settings))

    def search(self, upload: Upload, query: SearchRequest) -> tuple[dict[str, Any], list[Hit]]:
        """Embed the upload, search, then fetch every hit's record in one catalog call."""
        vector, model = self.embedder.embed(upload)
        return model, self._hits(model, vector, query)

    def similar(self, image_id: int, query: SearchRequest) -> tuple[dict[str, Any], list[Hit]]:
        """More like an indexed image: its stored vector as the query, itself left out."""
        model = self.embedder.model()
        vector = self.search_service.vector(model["model_id"], image_id)
        if vector is None:
            self.catalog.image(image_id)  # raises ImageNotFound when it does not exist at all
            raise NotIndexed(f"image {image_id} has no vector for model {model['model_id']} yet")
        excluded = query.filter.get("exclude_ids")
        if excluded is not None and not isinstance(excluded, list):
            raise InvalidRequest("filter.exclude_ids must be a list of image IDs")
        without_itself = {**query.filter, "exclude_ids": [*(excluded or []), image_id]}
        return model, self._hits(model, vector, SearchRequest(query.k, without_itself, query.one_per_patient))

    def ingest(self, upload: Upload, metadata_json: str) -> Ingested:
        """Catalog, then embed, upsert and mark indexed. A failure after the catalog step
        leaves the image pending; sending the same upload again completes it."""
        if upload.kind == "dicom":
            raise UnsupportedUpload(
                "DICOM files can be searched but not added: the catalog keeps PNG and JPEG"
            )
        image, created = self.catalog.add(upload, metadata_json)
        return self._index(image, upload, created=created)

    def index(self, image_id: int, *, force: bool = False) -> Ingested:
        """(Re)index a stored image for the active model, from the catalog's own bytes;
        `force` even when the catalog says it is indexed (a new or emptied Milvus)."""
        image = self.catalog.image(image_id)
        stored = self.catalog.file(image_id, thumbnail=False, if_none_match=None)
        upload = Upload.check(stored.content, len(stored.content))
        return self._index(image, upload, created=False, force=force)

    def pending(self, params: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        """A page of the images the active model has not indexed (failed ones when asked)."""
        model_id: str = self.embedder.model()["model_id"]
        return model_id, self.catalog.page(params, path=f"/v1/models/{model_id}/pending")

    def _index(
        self, image: dict[str, Any], upload: Upload, *, created: bool, force: bool = False
    ) -> Ingested:
        image_id = int(image["id"])
        stage = self.settings.embedder.name
        try:
            if not created and not force:
                model_id = self.embedder.model()["model_id"]
                if image["index_states"].get(model_id, {}).get("state") == "indexed":
                    return Ingested(image, created, model_id, already_indexed=True)
            vector, model = self.embedder.embed(upload)
            model_id = model["model_id"]
            stage = self.settings.search.name
            self.search_service.upsert(model_id, image_id, vector, image["metadata"])
            stage = self.settings.catalog.name
            self.catalog.set_state(image_id, model_id, "indexed")
        except (ImageRejected, UnsupportedUpload, UploadTooLarge, InvalidRequest) as exc:
            # The catalog took it but the model cannot read it: say so on the record too.
            self._mark_failed(image_id, str(exc))
            raise StoredButRejected(
                f"image {image_id} was stored but cannot be indexed: {exc}", image_id=image_id
            ) from None
        except UpstreamRejected:
            raise  # a refusal a retry cannot mend: a 502, and the image stays pending
        except UpstreamError as exc:
            raise IngestIncomplete(
                f"image {image_id} is stored but not indexed yet ({exc}); try again to finish",
                image_id=image_id,
                dependency=stage,
            ) from None
        image["index_states"][model_id] = {"state": "indexed"}
        return Ingested(image, created, model_id, already_indexed=False)

    def delete(self, image_id: int) -> None:
        """The vectors first (every model that indexed it, and the active one), then the row:
        a vector never outlives its catalog row."""
        image = self.catalog.image(image_id)
        models = set(image.get("index_states", {}))
        models.add(self.embedder.model()["model_id"])
        for model_id in sorted(models):
            self.search_service.delete(model_id, image_id)
        self.catalog.delete(image_id)

    def stats(self) -> dict[str, Any]:
        """Counts from the catalog for the active model; the model is null when the embedder
        cannot say (the catalog's counts still help)."""
        try:
            model: dict[str, Any] | None = self.embedder.model()
        except UpstreamError:
            model = None
        counts = self.catalog.stats(model["model_id"] if model else None)
        index = counts["models"].get(model["model_id"]) if model else None
        return {
            "model": model,
            "images": counts["images"],
            "datasets": counts["datasets"],
            "index": index,
        }

    def readiness(self) -> dict[str, str | None]:
        """Each service's own readiness, asked once with a short timeout: no retries here."""
        checks: dict[str, str | None] = {}
        for client in (self.embedder.client, self.search_service.client, self.catalog.client):
            try:
                client.request("GET", "/readyz", idempotent=False, read_timeout_s=_READY_TIMEOUT_S)
                checks[client.service] = None
            except UpstreamError as exc:
                checks[client.service] = str(exc)
        return checks

    def active_model_id(self) -> str | None:
        try:
            model_id: str = self.embedder.model()["model_id"]
        except UpstreamError:
            return None
        return model_id

    def _hits(self, model: dict[str, Any], vector: PackedVector, query: SearchRequest) -> list[Hit]:
        found = self.search_service.search(model["model_id"], vector, query)
        records = self.catalog.images([image_id for image_id, _ in found])
        # The catalog is right when the two disagree: a hit it no longer has is dropped.
        kept = [(image_id, score) for image_id, score in found if image_id in records]
        return [Hit(rank, score, records[image_id]) for rank, (image_id, score) in enumerate(kept, start=1)]

    def _mark_failed(self, image_id: int, reason: str) -> None:
        try:
            model_id = self.embedder.model()["model_id"]
            self.catalog.set_state(image_id, model_id, "failed", reason)
        except UpstreamError:
            pass  # the image stays pending, which reindex also picks up

    def close(self) -> None:
        for client in (self.embedder.client, self.search_service.client, self.catalog.client):
            client.close()
