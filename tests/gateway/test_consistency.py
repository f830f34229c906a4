"""How `verify` tells drift between the catalog and the search service: pure logic, no services
(tests/gateway/test_verify.py runs it against the real ones)."""

from __future__ import annotations

from medsearch_gateway.consistency import Drift, compare


def test_a_row_marked_indexed_without_its_vector_is_drift() -> None:
    drift = compare({1: "indexed", 2: "indexed", 3: "indexed"}, {1, 3})
    assert drift == Drift(indexed_without_vector=[2], vector_without_image=[])
    assert drift


def test_a_vector_without_its_row_is_drift() -> None:
    drift = compare({1: "indexed"}, {1, 7, 5})
    assert drift == Drift(indexed_without_vector=[], vector_without_image=[5, 7])


def test_pending_and_failed_rows_claim_no_vector_either_way() -> None:
    # Without a vector: not indexed yet. With one: an ingest between its upsert and its
    # "indexed", or a delete between its "pending" and its vector's removal.
    states = {1: "pending", 2: "failed", 3: "pending", 4: "failed"}
    assert not compare(states, {3, 4})


def test_agreeing_stores_have_no_drift() -> None:
    assert compare({}, set()) == Drift([], [])
    assert not compare({4: "indexed", 9: "indexed", 10: "pending"}, {4, 9})


def test_both_kinds_at_once_are_listed_ascending() -> None:
    states = {30: "indexed", 10: "indexed", 20: "pending"}
    assert compare(states, {40, 5, 20}) == Drift(
        indexed_without_vector=[10, 30], vector_without_image=[5, 40]
    )
