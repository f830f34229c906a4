"""Milvus behind one interface, Lite or server: collections per model_id, upsert, get, search.

The two backends differ; this module hides it:
- Milvus Lite (a local path ending in .db) is one process's: the service runs one process.
- Grouping search (one hit per patient) exists in Milvus 2.4+ and Lite; on older servers
  (the embedded Milvus 2.3 of the tests) the store over-fetches and keeps each patient's best.
- Nullable fields are 2.5+; unknown values are stored as sentinels everywhere (filters.py).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from numpy.typing import NDArray
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ErrorCode, MilvusException

from medsearch_search.errors import InvalidRequest, MilvusUnavailable
from medsearch_search.filters import MAX_FINDINGS, MAX_FINDINGS_KEY_BYTES, Attributes, SearchFilter
from medsearch_search.settings import SearchSettings

log = logging.getLogger("medsearch.search")

T = TypeVar("T")
ATTRIBUTE_FIELDS = ("dataset", "patient_id", "sex", "age", "view_position", "findings")
# Milvus counts VARCHAR lengths in bytes: room for 256 characters of any script.
_MAX_TEXT_BYTES = 1024
_MAX_TOPK = 16384  # Milvus's limit on hits per query
_HNSW = {"M": 16, "efConstruction": 200}
# gRPC's shared subchannel pool keeps its reconnect backoff (up to 120 s) across clients: after
# a long outage the service would wait a minute to see Milvus back. Measured: 52 s -> 0.07 s.
_GRPC_OPTIONS = {"grpc.use_local_subchannel_pool": 1, "grpc.max_reconnect_backoff_ms": 2000}
# Creating a collection also loads it: 2.7 s on the embedded 2.3 server, whatever the call timeout.
_CREATE_TIMEOUT_S = 120.0
_MILVUS_ERRORS = (
    MilvusException,
    grpc.RpcError,
    grpc.FutureTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class CollectionGone(Exception):
    """Milvus no longer has a collection this service knew (another replica or an admin dropped
    it): the handle is forgotten, and the caller looks the model's collection up again."""


@dataclass(frozen=True)
class Collection:
    model_id: str
    name: str
    dim: int
    index: str


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


@dataclass(frozen=True)
class StoredVector:
    id: int
    vector: list[float]
    attributes: Attributes


_PREFIX = "medsearch_"
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ESCAPES = {"_": "__", "-": "_h", ".": "_d"}


def collection_name(model_id: str) -> str:
    """A valid Milvus name (letters, digits, _) from which the model_id can be read back."""
    name = _PREFIX + "".join(_ESCAPES.get(char, char) for char in model_id)
    if len(name) > 255:
        raise InvalidRequest(f"model_id {model_id[:40]!r}... is too long to name a Milvus collection")
    return name


def model_id_of(name: str) -> str | None:
    """The model_id a collection name was made from; None for a collection not ours."""
    if not name.startswith(_PREFIX):
        return None
    encoded, chars, i = name[len(_PREFIX) :], [], 0
    reverse = {escape[1]: char for char, escape in _ESCAPES.items()}
    while i < len(encoded):
        if encoded[i] == "_":
            if i + 1 >= len(encoded) or encoded[i + 1] not in reverse:
                return None
            chars.append(reverse[encoded[i + 1]])
            i += 2
        else:
            chars.append(encoded[i])
            i += 1
    model_id = "".join(chars)
    return model_id if MODEL_ID.fullmatch(model_id) else None


class MilvusStore:
    def __init__(self, settings: SearchSettings) -> None:
        self._settings = settings
        self._timeout = settings.milvus_timeout_s
        self._connect_lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._client: MilvusClient | None = None
        self._grouping = False
        self._lite_engine = settings.is_lite  # known for sure once connected (a Lite server has a URL)
        self._collections: dict[str, Collection] = {}
        # Milvus Lite 3.x appends concurrent writes to its write-ahead log unserialized: with 8
        # threads upserting, the log's Arrow stream interleaves, and after a kill -9 recovery
        # keeps only its valid prefix (10 of 104 images kept their vector, measured). One writer at
        # a time makes every acknowledged write survive; servers need no such lock.
        self._lite_write_lock = threading.Lock()
        # Collections this process has seen whole: after one write or one strong read here, a
        # session read sees everything acknowledged before it (see search()).
        self._caught_up: set[str] = set()

    @property
    def backend(self) -> str:
        return "milvus-lite" if self._lite_engine else "milvus-server"

    def check(self) -> str | None:
        """None when Milvus answers, else why not (for /readyz)."""
        try:
            self._call("list collections", lambda c: c.list_collections(timeout=self._timeout))
        except MilvusUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        with self._connect_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- collections -------------------------------------------------------------------

    def collection(self, model_id: str, *, fresh: bool = False) -> Collection | None:
        """The model's collection, None when Milvus has none; from memory unless `fresh`."""
        if fresh:
            self.forget(model_id)
        cached = self._collections.get(model_id)
        if cached is not None:
            return cached
        name = collection_name(model_id)

        def describe(client: MilvusClient) -> Collection | None:
            if not client.has_collection(name, timeout=self._timeout):
                return None
            client.load_collection(name, timeout=self._timeout)  # after a restart it may not be
            fields = client.describe_collection(name, timeout=self._timeout)["fields"]
            dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
            index = client.describe_index(name, "vector", timeout=self._timeout)
            return Collection(model_id, name, dim, str(index.get("index_type", "unknown")))

        collection = self._call("describe a collection", describe)
        if collection is None:
            return None
        self._collections[model_id] = collection
        return collection

    def forget(self, model_id: str) -> None:
        """Drop what this process remembers of the model's collection: the next use looks again."""
        gone = self._collections.pop(model_id, None)
        if gone is not None:
            self._caught_up.discard(gone.name)

    def collections(self) -> list[Collection]:
        names = self._call("list collections", lambda c: c.list_collections(timeout=self._timeout))
        model_ids = sorted(filter(None, map(model_id_of, names)))
        return [collection for model_id in model_ids if (collection := self.collection(model_id)) is not None]

    def ensure_collection(self, model_id: str, dim: int) -> Collection:
        """The model's collection, created with `dim` on first write."""
        with self._create_lock:
            existing = self.collection(model_id)
            if existing is not None:
                return existing
            index = self._index_type()
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            for text_field in ("dataset", "patient_id", "sex", "view_position"):
                schema.add_field(text_field, DataType.VARCHAR, max_length=_MAX_TEXT_BYTES)
            schema.add_field("patient_key", DataType.VARCHAR, max_length=_MAX_TEXT_BYTES + 32)
            schema.add_field("findings_key", DataType.VARCHAR, max_length=MAX_FINDINGS_KEY_BYTES)
            schema.add_field("age", DataType.INT64)
            schema.add_field(
                "findings",
                DataType.ARRAY,
                element_type=DataType.VARCHAR,
                max_capacity=MAX_FINDINGS,
                max_length=_MAX_TEXT_BYTES,
            )
            index_params = MilvusClient.prepare_index_params()
            index_params.add_index(
                field_name="vector",
                index_type=index,
                metric_type="COSINE",
                params=_HNSW if index == "HNSW" else {},
            )
            name = collection_name(model_id)
            self._call(
                "create a collection",
                lambda c: c.create_collection(
                    name,
                    schema=schema,
                    index_params=index_params,
                    consistency_level="Strong",
                    timeout=max(self._timeout, _CREATE_TIMEOUT_S),
                ),
            )
            log.info("collection created", extra={"model_id": model_id, "dim": dim, "index": index})
            self._collections.pop(model_id, None)
            created = self.collection(model_id)
            assert created is not None
            return created

    def count(self, collection: Collection, *, above: int | None = None) -> int:
        """The stored vectors, or those whose ID is above `above`."""
        where = "" if above is None else f"id > {int(above)}"
        rows = self._call(
            "count vectors",
            lambda c: c.query(
                collection.name, filter=where, output_fields=["count(*)"], timeout=self._timeout
            ),
            collection,
        )
        return int(rows[0]["count(*)"])

    # -- vectors -----------------------------------------------------------------------

    def upsert(
        self,
        collection: Collection,
        ids: Sequence[int],
        vectors: NDArray[np.float32],
        attributes: Sequence[Attributes],
    ) -> None:
        rows = [
            # numpy rows: pymilvus packs them whole, not float by float
            {"id": i, "vector": vector, "patient_key": _patient_key(i, attrs), **attrs.to_row()}
            for i, vector, attrs in zip(ids, vectors, attributes, strict=True)
        ]
        with self._write_guard():
            self._call(
                "upsert vectors",
                lambda c: c.upsert(collection.name, rows, timeout=self._timeout),
                collection,
            )
        self._caught_up.add(collection.name)

    def get(self, collection: Collection, vector_id: int) -> StoredVector | None:
        # Session, as a search: the collection's strong default waits for the next time tick
        # (up to 200 ms), which made a refined search of three marked images cost 2x a plain one.
        level = self._level(collection, "session")
        rows = self._call(
            "get a vector",
            lambda c: c.get(
                collection.name,
                ids=[vector_id],
                output_fields=["vector", *ATTRIBUTE_FIELDS],
                timeout=self._timeout,
                consistency_level=level,
            ),
            collection,
        )
        if not rows:
            return None
        row = dict(rows[0])
        return StoredVector(int(row["id"]), [float(x) for x in row["vector"]], Attributes.from_row(row))

    def ids_between(self, collection: Collection, first: int, end: int) -> list[int]:
        """The IDs of the stored vectors in [first, end), ascending; `end - first` is at most Milvus's
        16,384 rows per query, so none is cut off."""
        rows = self._call(
            "list vector ids",
            lambda c: c.query(
                collection.name,
                filter=f"id >= {int(first)} and id < {int(end)}",
                output_fields=["id"],
                limit=end - first,
                timeout=self._timeout,
                consistency_level="Strong",  # verify compares it with writes acknowledged just before
            ),
            collection,
        )
        return sorted(int(row["id"]) for row in rows)

    def vectors(self, collection: Collection, ids: Sequence[int]) -> tuple[list[int], NDArray[np.float32]]:
        """The stored vectors of these IDs (those still there), one Milvus query, as rows of a matrix."""
        # Session, as a search: a strong read would wait for a time tick (up to 200 ms) each time.
        level = self._level(collection, "session")
        rows = self._call(
            "read vectors",
            lambda c: c.get(
                collection.name,
                ids=list(ids),
                output_fields=["vector"],
                timeout=self._timeout,
                consistency_level=level,
            ),
            collection,
        )
        vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32).reshape(
            len(rows), collection.dim
        )
        return [int(row["id"]) for row in rows], vectors

    def scan(
        self, collection: Collection, batch_size: int
    ) -> Iterator[tuple[list[int], NDArray[np.float32], list[Attributes]]]:
        """Every stored row, `batch_size` at a time (Milvus pages past its 16,384-row cap): the
        IDs, their vectors as rows of a matrix, and their attributes."""
        level = self._level(collection, "session")
        pages = self._call(
            "read vectors",
            lambda c: c.query_iterator(
                collection.name,
                batch_size=batch_size,
                filter="",
                output_fields=["id", "vector", *ATTRIBUTE_FIELDS],
                timeout=self._timeout,
                consistency_level=level,
            ),
            collection,
        )
        try:
            while rows := self._call("read vectors", lambda c: pages.next(), collection):
                matrix = np.asarray([row["vector"] for row in rows], dtype=np.float32)
                yield (
                    [int(row["id"]) for row in rows],
                    matrix.reshape(len(rows), collection.dim),
                    [Attributes.from_row(dict(row)) for row in rows],
                )
        finally:
            pages.close()

    def delete(self, collection: Collection, vector_id: int) -> None:
        with self._write_guard():
            self._call(
                "delete a vector",
                lambda c: c.delete(collection.name, ids=[vector_id], timeout=self._timeout),
                collection,
            )
        # Milvus 2.3 answers a delete without its timestamp, so a session read could not wait for
        # it (a deleted image came back in the next search, seen once in tests/run): the next
        # search of this collection is strong.
        self._caught_up.discard(collection.name)

    def search(
        self,
        collection: Collection,
        vectors: NDArray[np.float32],
        k: int,
        search_filter: SearchFilter,
        *,
        one_per_patient: bool,
        consistency: str = "session",
    ) -> list[list[Hit]]:
        """The k best hits of each query, best first; one Milvus call for all queries."""
        expression = self.expression(search_filter)
        level = self._level(collection, consistency)
        if not one_per_patient:
            return [
                [Hit(id_, score) for id_, score, _ in hits]
                for hits in self._search(collection, vectors, k, expression, level)
            ]
        if self._grouping:
            found = self._search(collection, vectors, k, expression, level, group_by="patient_key")
            return [[Hit(id_, score) for id_, score, _ in hits] for hits in found]
        return self._search_over_fetching(collection, vectors, k, expression, level)

    def _search_over_fetching(
        self, collection: Collection, vectors: NDArray[np.float32], k: int, expression: str, level: str
    ) -> list[list[Hit]]:
        """Without grouping: fetch more than k, keep each patient's best, widen until k or no more rows."""
        results: list[list[Hit]] = [[] for _ in range(len(vectors))]
        pending = list(range(len(vectors)))
        fetch = min(k * 4, _MAX_TOPK)
        while pending:
            found = self._search(collection, vectors[pending], fetch, expression, level, with_patient=True)
            still = []
            for query, hits in zip(pending, found, strict=True):
                best: dict[str, Hit] = {}
                for id_, score, patient_key in hits:
                    best.setdefault(patient_key, Hit(id_, score))
                results[query] = list(best.values())[:k]
                if len(best) < k and len(hits) == fetch and fetch < _MAX_TOPK:
                    still.append(query)
            pending = still
            fetch = min(fetch * 4, _MAX_TOPK)
        return results

    def _search(
        self,
        collection: Collection,
        vectors: NDArray[np.float32],
        limit: int,
        expression: str,
        level: str,
        group_by: str | None = None,
        with_patient: bool = False,
    ) -> list[list[tuple[int, float, str]]]:
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if collection.index == "HNSW":
            # ef below the hits asked for would cut them
            params["params"] = {"ef": max(self._settings.hnsw_ef, limit)}
        extra = {"group_by_field": group_by} if group_by else {}
        found = self._call(
            "search",
            lambda c: c.search(
                collection.name,
                data=list(vectors),  # numpy rows: packed for gRPC without a Python float each
                limit=limit,
                filter=expression,
                output_fields=["patient_key"] if with_patient else [],
                search_params=params,
                timeout=self._timeout,
                consistency_level=level,
                **extra,
            ),
            collection,
        )
        return [
            [
                (int(hit["id"]), float(hit["distance"]), str(hit["entity"].get("patient_key", "")))
                for hit in hits
            ]
            for hits in found
        ]

    def expression(self, search_filter: SearchFilter) -> str:
        """The filter as this engine runs it best: Lite runs array_contains_any ~30x slower
        than LIKE, and servers before 2.4 have no infix LIKE. Both forms admit the same rows."""
        self._connect()
        return search_filter.expression("key" if self._lite_engine else "array")

    # -- plumbing ----------------------------------------------------------------------

    def _level(self, collection: Collection, consistency: str) -> str:
        """Milvus's consistency level for a search. Strong waits for the server's next time tick
        to see every write; session waits only for this process's own last write (pymilvus
        keeps its timestamp), once a first strong read has seen what came before the process;
        bounded may miss the last seconds of writes. Lite always sees every write."""
        if consistency == "bounded":
            return "Bounded"
        if consistency == "strong" or collection.name not in self._caught_up:
            self._caught_up.add(collection.name)
            return "Strong"
        return "Session"

    @contextmanager
    def _write_guard(self) -> Iterator[None]:
        if self._lite_engine:
            with self._lite_write_lock:
                yield
        else:
            yield

    def _index_type(self) -> str:
        # Lite 3.x searches an "HNSW" index exhaustively (recall 1.0 on random vectors) and
        # slower than FLAT (176 vs 105 ms per query at 20k x 2048-d), so Lite gets FLAT.
        if self._settings.index != "auto":
            return self._settings.index
        return "FLAT" if self._lite_engine else "HNSW"

    def _connect(self) -> MilvusClient:
        with self._connect_lock:
            if self._client is None:
                uri = self._settings.milvus_uri
                if self._settings.is_lite:
                    Path(uri).parent.mkdir(parents=True, exist_ok=True)
                try:
                    client = MilvusClient(
                        uri=uri,
                        token=self._settings.milvus_token or "",
                        timeout=self._timeout,
                        grpc_options=_GRPC_OPTIONS,
                    )
                    version = str(client.get_server_version(timeout=self._timeout))
                except Exception as exc:  # whatever pymilvus raises, Milvus is what failed
                    # The address and pymilvus's words (which hold it too) stay in the log.
                    log.warning(
                        "milvus unreachable",
                        extra={"uri": self._settings.milvus_uri_redacted, "error": _first_line(exc)},
                    )
                    raise MilvusUnavailable("Milvus is unreachable") from exc
                self._grouping = _has_grouping(version)
                self._lite_engine = version.startswith("milvus_lite")
                log.info("milvus connected", extra={"backend": self.backend, "version": version})
                self._client = client
            return self._client

    def _call(
        self, what: str, action: Callable[[MilvusClient], T], collection: Collection | None = None
    ) -> T:
        """`action` on the connected client. Milvus failing is MilvusUnavailable, whose message
        names Milvus but never its address (the service shows it to callers; the log has it).
        `collection` missing from Milvus (dropped behind this process's back) is CollectionGone."""
        try:
            return action(self._connect())
        except _MILVUS_ERRORS as exc:
            if collection is not None and _is_collection_missing(exc):
                log.warning(
                    "collection gone", extra={"model_id": collection.model_id, "collection": collection.name}
                )
                self.forget(collection.model_id)
                raise CollectionGone(collection.model_id) from exc
            log.warning(
                "milvus call failed",
                extra={"uri": self._settings.milvus_uri_redacted, "what": what, "error": _first_line(exc)},
            )
            raise MilvusUnavailable(f"Milvus failed to {what}") from exc


def _is_collection_missing(exc: BaseException) -> bool:
    return isinstance(exc, MilvusException) and exc.code == ErrorCode.COLLECTION_NOT_FOUND


def _has_grouping(version: str) -> bool:
    """Grouping search came with Milvus 2.4; Lite has it."""
    if version.startswith("milvus_lite"):
        return True
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) >= (2, 4)


def _patient_key(image_id: int, attributes: Attributes) -> str:
    """What one-per-patient groups by: the patient, or the image itself when the patient is unknown."""
    return f"p:{attributes.patient_id}" if attributes.patient_id else f"i:{image_id}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
