"""Near-duplicate pairs in the active model's index, one range of image IDs at a time: what
`medsearch duplicates` walks (and the page that lists them).

The search service finds, for each vector of the range, its nearest others over the whole
collection at or above the threshold; the catalog says whose images they are. Each pair is of
one kind: the same patient (an expected follow-up or a repeat), different patients (a likely
labelling or filing error), or a patient unknown for either image. A pair whose image the
catalog no longer has is dropped, as a search drops such a hit. Nothing is written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsearch_gateway.clients import CatalogClient, ImageRecord, SearchClient

# Measured by benchmarks/calibrate_duplicates.py on the shared sets and two re-encoded copies of
# each image with the `random:42` weights (README, "Near-duplicates"): no pair of different
# images scores above it, and 1,217 of the 1,221 copy pairs do. Other weights need their own.
DEFAULT_THRESHOLD = 0.99985
DEFAULT_K = 10
MAX_K = 50
# The catalog reads at most this many images in one call.
_IMAGES_PER_CALL = 100

SAME_PATIENT = "same_patient"
DIFFERENT_PATIENTS = "different_patients"
UNKNOWN_PATIENT = "unknown_patient"


@dataclass(frozen=True)
class Pair:
    a: int  # the lower image ID
    b: int
    score: float
    kind: str  # SAME_PATIENT, DIFFERENT_PATIENTS or UNKNOWN_PATIENT


@dataclass(frozen=True)
class Duplicates:
    """What one range came to."""

    model_id: str
    threshold: float
    k: int
    pairs: list[Pair]  # by a, then b
    images: list[ImageRecord]  # every image of a pair, by ID
    vectors: int  # the vectors in the range that were scanned
    max_image_id: int | None  # the highest image ID the catalog has given: where a walk ends


def kind_of(a: ImageRecord, b: ImageRecord) -> str:
    """Whose images a pair holds. A patient is a patient ID within its dataset: two datasets
    number their patients independently."""
    first, second = _patient(a), _patient(b)
    if first is None or second is None:
        return UNKNOWN_PATIENT
    return SAME_PATIENT if first == second else DIFFERENT_PATIENTS


def find(
    search: SearchClient,
    catalog: CatalogClient,
    model_id: str,
    first: int,
    end: int,
    *,
    threshold: float,
    k: int,
) -> Duplicates:
    """The pairs at or above `threshold` among each image of [first, end) and its `k` nearest."""
    found = search.neighbors(model_id, first, end, threshold=threshold, k=k)
    _, max_image_id = catalog.index_states(model_id, first, end)
    ids = sorted({image_id for a, b, _ in found.pairs for image_id in (a, b)})
    records: dict[int, ImageRecord] = {}
    for start in range(0, len(ids), _IMAGES_PER_CALL):
        records.update(catalog.images(ids[start : start + _IMAGES_PER_CALL]))
    pairs = [
        Pair(a, b, score, kind_of(records[a], records[b]))
        for a, b, score in found.pairs
        if a in records and b in records
    ]
    kept = sorted({image_id for pair in pairs for image_id in (pair.a, pair.b)})
    return Duplicates(model_id, threshold, k, pairs, [records[i] for i in kept], found.vectors, max_image_id)


def _patient(image: ImageRecord) -> tuple[str, str] | None:
    patient_id = image.metadata.get("patient_id")
    return (str(image.metadata.get("dataset")), str(patient_id)) if patient_id else None
