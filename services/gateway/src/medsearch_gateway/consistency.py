"""Whether the catalog and the search service agree on what the active model has indexed, and
repairing where they do not: `medsearch verify`, one range of image IDs at a time.

Two kinds of drift:
- a row marked indexed whose vector is missing (Milvus lost it, or was emptied): it is marked
  pending, so that `medsearch reindex` embeds it again;
- a vector without a row (a delete that raced a reindex left it): it is deleted.

Ingests and deletes may run meanwhile, and the order of the reads keeps them safe. A row exists
before its vector (ingest: the row, the vector, then "indexed") and outlives it (delete:
"pending", the vector, then the row), and IDs are never given twice. So the vectors are read
first, then the rows: a vector seen before its row was found missing has no row for good. A row
"indexed" without a vector may have been indexed between the two reads: the range is read again,
vectors then rows, and only a row still indexed and still without a vector is marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from medsearch_gateway.clients import CatalogClient, SearchClient, StateChange

# The catalog sets at most this many states in one call.
_STATES_PER_CALL = 500


@dataclass(frozen=True)
class Drift:
    """Where the two stores disagree, by image ID, ascending."""

    indexed_without_vector: list[int]
    vector_without_image: list[int]

    def __bool__(self) -> bool:
        return bool(self.indexed_without_vector or self.vector_without_image)


@dataclass(frozen=True)
class Verification:
    """What one range came to."""

    model_id: str
    checked: int  # catalog rows in the range
    vectors: int  # vectors in the range
    drift: Drift
    repaired: bool  # the drift was repaired (false under a dry run, and when there was none)
    max_image_id: int | None  # the highest image ID the catalog has given: where a walk ends


def compare(states: Mapping[int, str], vector_ids: Set[int]) -> Drift:
    """The drift between the catalog's states (image ID -> state) and the vectors of one range.
    Only "indexed" claims a vector: a pending or failed row that holds one is an ingest or a
    delete under way, or an image that `reindex` will embed again, not drift."""
    return Drift(
        indexed_without_vector=sorted(
            i for i, state in states.items() if state == "indexed" and i not in vector_ids
        ),
        vector_without_image=sorted(vector_ids - states.keys()),
    )


def verify(
    search: SearchClient, catalog: CatalogClient, model_id: str, first: int, end: int, *, repair: bool
) -> Verification:
    """Compare the image IDs [first, end) of both stores for the model; repair the drift when asked."""
    vector_ids = search.vector_ids(model_id, first, end)  # first: see the module's docstring
    states, max_image_id = catalog.index_states(model_id, first, end)
    drift = compare(states, vector_ids)
    if drift.indexed_without_vector:
        drift = Drift(
            _still_without_vector(search, catalog, model_id, first, end, drift.indexed_without_vector),
            drift.vector_without_image,
        )
    if repair:
        for image_id in drift.vector_without_image:
            search.delete(model_id, image_id)
        marked = drift.indexed_without_vector
        for start in range(0, len(marked), _STATES_PER_CALL):
            chunk = marked[start : start + _STATES_PER_CALL]
            catalog.set_states(model_id, [StateChange(image_id, "pending") for image_id in chunk])
    return Verification(
        model_id,
        len(states),
        len(vector_ids),
        drift,
        repaired=repair and bool(drift),
        max_image_id=max_image_id,
    )


def _still_without_vector(
    search: SearchClient, catalog: CatalogClient, model_id: str, first: int, end: int, candidates: list[int]
) -> list[int]:
    """The candidates that, read again (vectors first), are still indexed and still have no vector:
    one indexed between the first two reads has its vector by now."""
    vector_ids = search.vector_ids(model_id, first, end)
    states, _ = catalog.index_states(model_id, first, end)
    return [i for i in candidates if i not in vector_ids and states.get(i) == "indexed"]
