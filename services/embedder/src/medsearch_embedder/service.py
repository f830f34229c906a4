"""The embedder's core, without HTTP: load the model, decode uploads in parallel, batch, embed."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from medsearch_embedder.batching import DynamicBatcher
from medsearch_embedder.errors import BlankImage, ImageRejected, ModelNotReady, Overloaded
from medsearch_embedder.maps import PairMaps, Placement, pair_maps
from medsearch_embedder.preprocessing import (
    InputLimits,
    Prepared,
    Region,
    prepare,
    prepare_region,
    render_png,
)
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.weights import locate_weights

if TYPE_CHECKING:
    from medsearch_embedder.model import Embedder, ModelInfo

log = logging.getLogger("medsearch.embedder")

# One outcome per uploaded image, in order: its vector, or why it was rejected.
Outcome = NDArray[np.float32] | ImageRejected
# Feature maps kept for similarity maps: 400 KB each, 25 MB in all.
_FEATURE_CACHE_SIZE = 64


@dataclass(frozen=True)
class ResultMaps:
    """A result's maps against the query, and where its map lies on it."""

    maps: PairMaps
    placement: Placement


# One outcome per result image of a similarity-maps request.
MapOutcome = ResultMaps | ImageRejected
# What the model saw of an image: its feature maps, and where they lie on it.
Seen = tuple[NDArray[np.float32], Placement]


def _feature_key(data: bytes, region: Region | None) -> str:
    return hashlib.sha256(data).hexdigest() + (f"/{region}" if region else "")


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "embedder_batch_size",
            "Images per model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "embedder_inference_seconds",
            "Time of one model call (one batch).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.preprocessing_seconds = Histogram(
            "embedder_preprocessing_seconds",
            "Time to decode, check and resize one image.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.queue_depth = Gauge("embedder_queue_depth", "Images waiting for the model.", registry=registry)
        self.images = Counter(
            "embedder_images_total", "Images received, by outcome.", ["outcome"], registry=registry
        )


class EmbeddingService:
    """Owns the model and the batcher. Give it an `embedder` to skip loading (tests share one)."""

    def __init__(
        self,
        settings: EmbedderSettings,
        registry: CollectorRegistry,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self._limits = InputLimits(settings.max_image_bytes, settings.max_image_pixels)
        self._metrics = _Metrics(registry)
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._embedder: Embedder | None = None
        self._batcher: DynamicBatcher | None = None
        self._load_error: str | None = None
        # Similarity maps run beside the batcher (they need the feature maps, not the vectors),
        # one call at a time, and keep the features of the last images seen: a query's maps
        # against each of its results cost one forward pass for the query, not one per result.
        self._maps_slots = threading.BoundedSemaphore(1)
        self._maps_lock = threading.Lock()
        self._feature_cache: OrderedDict[str, Seen] = OrderedDict()
        self._metrics.queue_depth.set_function(lambda: self._batcher.depth() if self._batcher else 0)
        if embedder is not None:
            self._start(embedder)
        else:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def readiness(self) -> str | None:
        """None when the model is loaded and warm, else why not."""
        if self._embedder is not None:
            return None
        return f"the model failed to load: {self._load_error}" if self._load_error else "the model is loading"

    def model_info(self) -> ModelInfo:
        return self._ready_embedder().info

    def embed(self, uploads: Sequence[bytes], region: Region | None = None) -> list[Outcome]:
        """One outcome per upload, in order; a bad image does not fail the others. With
        `region`, that part of the (one) upload, embedded as a whole image would be."""
        embedder = self._ready_embedder()
        assert self._batcher is not None and embedder is not None
        prepare_one = (
            self._prepare if region is None else lambda data: self._prepare_region_pixels(data, region)
        )
        # Room in the queue first: a full queue refuses the request before any decoding.
        with self._batcher.admitting(len(uploads)) as admission:
            outcomes: list[Outcome | NDArray[np.uint8]] = list(self._decoder.map(prepare_one, uploads))
            good = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, ImageRejected)]
            futures = admission.submit([outcomes[i] for i in good])  # type: ignore[misc]
        deadline = time.monotonic() + self.settings.wait_timeout_s
        try:
            for i, future in zip(good, futures, strict=True):
                vector = future.result(timeout=max(0.0, deadline - time.monotonic()))
                # All-zero features normalize to a zero vector, which no similarity can score.
                outcomes[i] = (
                    vector
                    if np.linalg.norm(vector) > 0.5
                    else BlankImage("the model finds no features in it")
                )
        except FutureTimeout:
            for future in futures:
                future.cancel()
            raise Overloaded(
                f"the model did not get to these images within {self.settings.wait_timeout_s:g} s",
                retry_after_s=5,
            ) from None
        for outcome in outcomes:
            self._metrics.images.labels(
                "rejected" if isinstance(outcome, ImageRejected) else "embedded"
            ).inc()
        return outcomes  # type: ignore[return-value]

    def similarity_maps(
        self, query: bytes, results: Sequence[bytes], region: Region | None = None
    ) -> tuple[Placement, list[MapOutcome]]:
        """Where the query (or its `region`) and each result look alike: one outcome per result,
        in order, a bad result image not failing the others. A bad query fails the request."""
        uploads = [(query, region), *((data, None) for data in results)]
        seen = self._features_of(uploads)
        query_seen = seen[0]
        if isinstance(query_seen, ImageRejected):
            raise query_seen
        query_features, query_placement = query_seen
        if not np.any(query_features):
            raise BlankImage("the model finds no features in the query")
        outcomes: list[MapOutcome] = []
        for result_seen in seen[1:]:
            if isinstance(result_seen, ImageRejected):
                outcomes.append(result_seen)
            elif not np.any(result_seen[0]):
                outcomes.append(BlankImage("the model finds no features in it"))
            else:
                outcomes.append(ResultMaps(pair_maps(query_features, result_seen[0]), result_seen[1]))
        return query_placement, outcomes

    def _features_of(self, uploads: Sequence[tuple[bytes, Region | None]]) -> list[Seen | ImageRejected]:
        """Each upload's feature maps and placement, from the cache or one model call for all
        the others; or why it could not be read."""
        embedder = self._ready_embedder()
        keys = [_feature_key(data, region) for data, region in uploads]
        found: list[Seen | ImageRejected | None] = []
        with self._maps_lock:
            for key in keys:
                found.append(self._feature_cache.get(key))
                if found[-1] is not None:
                    self._feature_cache.move_to_end(key)  # the least recently used goes first
        missing = [i for i, hit in enumerate(found) if hit is None]
        prepared = list(self._decoder.map(lambda i: self._prepare_region(*uploads[i]), missing))
        readable = [(i, p) for i, p in zip(missing, prepared, strict=True) if isinstance(p, Prepared)]
        for i, p in zip(missing, prepared, strict=True):
            if isinstance(p, ImageRejected):
                found[i] = p
        if readable:
            if not self._maps_slots.acquire(timeout=self.settings.wait_timeout_s):
                raise Overloaded("the embedder is busy with other similarity maps; try again shortly", 5)
            try:
                with self._metrics.inference_seconds.time():
                    features = embedder.features(np.stack([p.pixels for _, p in readable]))
            finally:
                self._maps_slots.release()
            with self._maps_lock:
                for (i, p), maps in zip(readable, features, strict=True):
                    found[i] = self._feature_cache[keys[i]] = (maps, Placement.of(p))
                while len(self._feature_cache) > _FEATURE_CACHE_SIZE:
                    self._feature_cache.popitem(last=False)  # the oldest
        return [hit for hit in found if hit is not None]

    def render(self, data: bytes) -> tuple[bytes, tuple[int, int]]:
        """The upload as the model reads it, as a PNG to look at; needs no model, so works while it loads."""
        return render_png(data, self._limits)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self._decoder.shutdown()

    def _prepare_region(self, data: bytes, region: Region | None) -> Prepared | ImageRejected:
        with self._metrics.preprocessing_seconds.time():
            try:
                return prepare_region(data, self._limits, region)
            except ImageRejected as exc:
                return exc

    def _prepare_region_pixels(self, data: bytes, region: Region) -> NDArray[np.uint8] | ImageRejected:
        prepared = self._prepare_region(data, region)
        return prepared if isinstance(prepared, ImageRejected) else prepared.pixels

    def _prepare(self, data: bytes) -> NDArray[np.uint8] | ImageRejected:
        with self._metrics.preprocessing_seconds.time():
            try:
                return prepare(data, self._limits)
            except ImageRejected as exc:
                return exc

    def _ready_embedder(self) -> Embedder:
        if self._embedder is None:
            raise ModelNotReady(
                f"the embedder is not ready: {self.readiness()}", loading=not self._load_error
            )
        return self._embedder

    def _load(self) -> None:
        # TensorFlow is imported here, in the loader thread, so the process answers /healthz
        # and /readyz ("loading") within a second of starting instead of after the import.
        from medsearch_embedder.model import load_embedder

        settings = self.settings
        try:
            embedder = load_embedder(
                locate_weights(settings.weights),
                device=settings.device,
                precision=settings.precision,
                max_batch=settings.max_batch,
                runtime=settings.runtime,
                cache_dir=settings.cache_dir,
            )
        except Exception as exc:
            self._load_error = str(exc) or type(exc).__name__
            log.error("model failed to load", extra={"error": self._load_error})
            return
        self._start(embedder)

    def _start(self, embedder: Embedder) -> None:
        def observe(size: int, seconds: float) -> None:
            self._metrics.batch_size.observe(size)
            self._metrics.inference_seconds.observe(seconds)

        self._batcher = DynamicBatcher(
            embedder.embed,
            max_batch=min(self.settings.max_batch, embedder.max_batch),
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            on_batch=observe,
        )
        self._embedder = embedder  # last: readiness turns true only with the batcher in place
