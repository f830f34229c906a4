"""`medsearch eval`'s collection side: the labelled set as MedSearch holds it, and its rankings.

Everything goes through the gateway's public API, like every other command: the set's files
are matched to stored images by their bytes (sha256, which the catalog keeps), so labels come
from the user's own label file, whatever the catalog was told at ingest. Each query searches by
the image's stored vector (`/images/{id}/similar`), within the set's datasets, leaving out the
image itself and, by default, every image of its patient. The metrics are `evaluation.py`'s.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from medsearch_client.client import GatewayClient
from medsearch_client.evaluation import LabelledImage, Ranking, labels_of
from medsearch_client.sources import Source

# Hits asked per query: a rule leaves some out before scoring (images outside the set, images
# with several findings under the single-label rule), and k = 20 must remain to score.
FETCH = 100
# Half-size JPEG at this quality: a copy as a messaging app or a PACS export would make it.
NEAR_DUPLICATE_QUALITY = 85
T = TypeVar("T")
R = TypeVar("R")


class EvaluationError(ValueError):
    """The set cannot be evaluated as asked; the message says why."""


@dataclass(frozen=True)
class IndexedSet:
    """The labelled set's images that MedSearch holds and has indexed for its active model."""

    images: dict[int, LabelledImage]  # by image ID
    datasets: tuple[str, ...]
    not_stored: int  # files of the set the catalog does not hold
    not_indexed: int  # stored, but without a vector for the active model


def indexed_set(client: GatewayClient, source: Source) -> IndexedSet:
    """Match the set's files to stored images by sha256; labels and patients from the set."""
    wanted: dict[str, dict[str, Any]] = {}
    for item in source.items:
        wanted[hashlib.sha256(item.path.read_bytes()).hexdigest()] = item.metadata
    images: dict[int, LabelledImage] = {}
    datasets: set[str] = set()
    stored = not_indexed = 0
    for image in client.iter_images():
        metadata = wanted.get(image["sha256"])
        if metadata is None:
            continue
        stored += 1
        if image["index_state"] != "indexed":
            not_indexed += 1
            continue
        patient = metadata.get("patient_id")
        images[image["id"]] = LabelledImage(
            image_id=image["id"],
            patient=str(patient) if patient not in (None, "") else None,
            labels=labels_of(metadata.get("findings") or ()),
        )
        datasets.add(image["metadata"]["dataset"])
    if not images:
        raise EvaluationError(
            f"none of the {len(wanted)} images of the set is indexed in MedSearch "
            f"({stored} stored): run `medsearch ingest` on it first, or pass --ingest"
        )
    return IndexedSet(images, tuple(sorted(datasets)), len(wanted) - stored, not_indexed)


def sample_queries(indexed: IndexedSet, count: int, seed: int) -> list[int]:
    """Every image, or a seeded sample of `count` of them, in ID order."""
    ids = sorted(indexed.images)
    if count and count < len(ids):
        ids = sorted(random.Random(seed).sample(ids, count))
    return ids


def rankings(
    client: GatewayClient,
    indexed: IndexedSet,
    query_ids: Sequence[int],
    *,
    k: int,
    exclude_same_patient: bool,
    concurrency: int,
    progress: Callable[[int], object] = lambda _: None,
) -> list[Ranking]:
    """Each query's `k` nearest stored images within the set's datasets, best first."""

    def rank(query_id: int) -> Ranking:
        search_filter: dict[str, Any] = {"dataset": list(indexed.datasets)}
        patient = indexed.images[query_id].patient
        if exclude_same_patient and patient is not None:
            search_filter["exclude_patients"] = [patient]
        found = client.similar(query_id, k=k, filter=search_filter)
        return Ranking(query_id, tuple(hit["image"]["id"] for hit in found["results"]))

    return _in_parallel(rank, query_ids, concurrency, progress)


def patients_with_followups(indexed: IndexedSet) -> list[int]:
    """Images whose patient has other images in the set: the same-patient recall queries."""
    counts: dict[str, int] = {}
    for image in indexed.images.values():
        if image.patient is not None:
            counts[image.patient] = counts.get(image.patient, 0) + 1
    return sorted(i for i, image in indexed.images.items() if image.patient and counts[image.patient] > 1)


def near_duplicate_tops(
    client: GatewayClient,
    indexed: IndexedSet,
    originals: Sequence[int],
    *,
    concurrency: int,
    progress: Callable[[int], object] = lambda _: None,
) -> list[tuple[int, int | None]]:
    """For each original, the top hit of a search by its re-encoded copy (half size, JPEG)."""

    def top(image_id: int) -> tuple[int, int | None]:
        copy = reencoded(client.image_file(image_id))
        found = client.search(copy, k=1, filter={"dataset": list(indexed.datasets)}, filename="copy.jpg")
        hits = found["results"]
        return image_id, (hits[0]["image"]["id"] if hits else None)

    return _in_parallel(top, originals, concurrency, progress)


def reencoded(data: bytes) -> bytes:
    """The image at half its size as a JPEG: what near-duplicate search must see through."""
    from PIL import Image as PillowImage  # only `eval` needs Pillow

    with PillowImage.open(io.BytesIO(data)) as image:
        image.load()
        gray = image.convert("L") if image.mode not in ("L", "RGB") else image
        half = gray.resize(
            (max(1, gray.width // 2), max(1, gray.height // 2)), PillowImage.Resampling.LANCZOS
        )
    out = io.BytesIO()
    half.save(out, format="JPEG", quality=NEAR_DUPLICATE_QUALITY)
    return out.getvalue()


def _in_parallel(
    call: Callable[[T], R], items: Iterable[T], concurrency: int, progress: Callable[[int], object]
) -> list[R]:
    """`call` on each item on a few threads, results in the items' order."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = []
        for result in pool.map(call, items):
            results.append(result)
            progress(1)
    return results
