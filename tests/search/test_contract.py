"""One contract, two real backends: every test runs on Milvus Lite and on a Milvus server.

Expected answers come from a plain-Python reference: the rows a filter admits, ranked by
cosine. Hostile strings are real attribute values, so an injection that widened a filter
would return rows the reference does not.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from numpy.typing import NDArray

from tests.search.conftest import new_model_id, search_ids, unit_vectors, upsert

HOSTILE = [
    '" or 1==1',
    'p" || id > 0 || "',
    "back\\slash",
    'quote\\"',
    ") or (id > 0",
    '"]) or (id > 0',
    "ünïcødé 患者 🫁",
    "x" * 256,
    "' or ''='",
]
PATIENTS = ["p1", "p2", "p3", *HOSTILE]
FINDINGS = ["Effusion", "Mass", "Nodule", 'Weird "finding"', "Cardiomegaly"]


@dataclass(frozen=True)
class Row:
    id: int
    vector: NDArray[np.float32]
    attributes: dict[str, Any]


def make_rows(count: int = 120, dim: int = 32) -> list[Row]:
    vectors = unit_vectors(count, dim, seed=7)
    rng = np.random.default_rng(11)
    rows = []
    for i in range(count):
        findings = sorted(
            {FINDINGS[j] for j in rng.choice(len(FINDINGS), size=rng.integers(0, 3), replace=False)}
        )
        attributes = {
            "dataset": "nih" if i % 3 else "hannover",
            "patient_id": PATIENTS[i % len(PATIENTS)] if i % 10 else None,  # some unknown patients
            "sex": [None, "M", "F", "O"][i % 4],
            "age": None if i % 7 == 0 else int(rng.integers(1, 95)),
            "view_position": ["PA", "AP", None][i % 3],
            "findings": findings,
        }
        rows.append(Row(i + 1, vectors[i], attributes))
    return rows


ROWS = make_rows()


def admits(flt: dict[str, Any], row: Row) -> bool:
    """The reference meaning of a structured filter."""
    a = row.attributes
    for name in ("dataset", "sex", "view_position", "patient_id"):
        if name in flt and a[name] not in flt[name]:
            return False
    if "age" in flt:
        if a["age"] is None:
            return False
        if a["age"] < flt["age"].get("min", 0) or a["age"] > flt["age"].get("max", 130):
            return False
    findings = set(a["findings"])
    spec = flt.get("findings", {})
    if "any" in spec and not findings & set(spec["any"]):
        return False
    if "all" in spec and not set(spec["all"]) <= findings:
        return False
    if "none" in spec and findings & set(spec["none"]):
        return False
    if row.id in flt.get("exclude_ids", []):
        return False
    return not (a["patient_id"] is not None and a["patient_id"] in flt.get("exclude_patients", []))


def expected(
    query: NDArray[np.float32], flt: dict[str, Any], k: int, *, one_per_patient: bool = False
) -> list[int]:
    ranked = sorted((row for row in ROWS if admits(flt, row)), key=lambda row: -float(row.vector @ query))
    if one_per_patient:
        seen: set[str] = set()
        kept = []
        for row in ranked:
            patient = row.attributes["patient_id"] or f"image {row.id}"
            if patient not in seen:
                seen.add(patient)
                kept.append(row)
        ranked = kept
    return [row.id for row in ranked[:k]]


@pytest.fixture(scope="module")
def loaded(search: FlaskClient) -> tuple[FlaskClient, str]:
    """ROWS under one model, shared by the tests that only read."""
    model_id = new_model_id()
    items = [{"id": r.id, "vector": r.vector.tolist(), "attributes": r.attributes} for r in ROWS]
    response = upsert(search, model_id, items)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"upserted": len(ROWS)}
    return search, model_id


QUERY = unit_vectors(1, 32, seed=99)[0]


def test_each_stored_vector_is_its_own_nearest_with_score_one(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    vectors = [row.vector.tolist() for row in ROWS[:20]]
    response = client.post(f"/v1/models/{model_id}/search", json={"vectors": vectors, "k": 3})
    assert response.status_code == 200 and response.json is not None
    results = response.json["results"]
    assert len(results) == 20
    for row, hits in zip(ROWS[:20], results, strict=True):
        assert hits[0]["id"] == row.id
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len(hits) == 3
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_k_asked_is_k_returned_and_the_ranking_is_exact(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    for k in (1, 10, 100):
        assert search_ids(client, model_id, QUERY, k=k) == expected(QUERY, {}, k)


def test_a_batch_of_queries_answers_like_single_queries(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    queries = unit_vectors(5, 32, seed=5)
    response = client.post(f"/v1/models/{model_id}/search", json={"vectors": queries.tolist(), "k": 7})
    assert response.status_code == 200 and response.json is not None
    batched = [[hit["id"] for hit in hits] for hits in response.json["results"]]
    assert batched == [search_ids(client, model_id, query, k=7) for query in queries]


FILTERS: list[dict[str, Any]] = [
    {"dataset": ["hannover"]},
    {"sex": ["F", "O"]},
    {"sex": ["m"]},
    {"view_position": ["AP"]},
    {"age": {"min": 40, "max": 70}},
    {"age": {"max": 30}},
    {"age": {"min": 80}},
    {"findings": {"any": ["Mass", "Nodule"]}},
    {"findings": {"all": ["Effusion", "Mass"]}},
    {"findings": {"none": ["Effusion"]}},
    {"findings": {"any": ['Weird "finding"']}},
    {"exclude_ids": [r.id for r in ROWS[::2]]},
    {"exclude_patients": ["p1", '" or 1==1']},
    {"dataset": ["nih"], "sex": ["F"], "age": {"min": 20}, "findings": {"none": ["Mass"]}},
    *({"patient_id": [patient]} for patient in PATIENTS),
    {"patient_id": HOSTILE},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_return_exactly_the_rows_the_reference_admits(
    loaded: tuple[FlaskClient, str], flt: dict[str, Any]
) -> None:
    client, model_id = loaded
    reference = dict(flt)
    if "sex" in reference:
        reference["sex"] = [s.upper() for s in reference["sex"]]
    want = expected(QUERY, reference, 100)
    assert want or flt == {"findings": {"all": ["Effusion", "Mass"]}}, (
        "a filter that admits nothing tests little"
    )
    assert search_ids(client, model_id, QUERY, k=100, filter=flt) == want


@pytest.mark.parametrize(
    "attack",
    [
        '" or 1==1',
        '") or id > 0 or ("',
        '\\" or 1==1 or \\"',
        "\\",
        '"',
        'p1" or patient_id != "',
        "]) or true or ([",
        "p1' or '1'='1",
    ],
)
def test_injection_attempts_match_only_the_literal_value(
    loaded: tuple[FlaskClient, str], attack: str
) -> None:
    client, model_id = loaded
    for field in ("patient_id", "dataset", "view_position", "exclude_patients"):
        flt = {field: [attack]}
        assert search_ids(client, model_id, QUERY, k=100, filter=flt) == expected(QUERY, flt, 100), field
    flt = {"findings": {"any": [attack]}}
    assert search_ids(client, model_id, QUERY, k=100, filter=flt) == expected(QUERY, flt, 100)


@pytest.mark.parametrize("k", [1, 5, 12, 100])
def test_one_per_patient_keeps_each_patients_best_hit(loaded: tuple[FlaskClient, str], k: int) -> None:
    client, model_id = loaded
    got = search_ids(client, model_id, QUERY, k=k, one_per_patient=True)
    assert got == expected(QUERY, {}, k, one_per_patient=True)
    flt = {"dataset": ["nih"]}
    got = search_ids(client, model_id, QUERY, k=k, one_per_patient=True, filter=flt)
    assert got == expected(QUERY, flt, k, one_per_patient=True)


def test_one_per_patient_over_a_batch(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    queries = unit_vectors(3, 32, seed=3)
    body = {"vectors": queries.tolist(), "k": 8, "one_per_patient": True}
    response = client.post(f"/v1/models/{model_id}/search", json=body)
    assert response.status_code == 200 and response.json is not None
    got = [[hit["id"] for hit in hits] for hits in response.json["results"]]
    assert got == [expected(query, {}, 8, one_per_patient=True) for query in queries]


def test_stored_vector_and_attributes_come_back(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    for row in (ROWS[0], ROWS[7], ROWS[13]):
        response = client.get(f"/v1/models/{model_id}/vectors/{row.id}")
        assert response.status_code == 200 and response.json is not None
        assert response.json["id"] == row.id
        np.testing.assert_allclose(response.json["vector"], row.vector, atol=1e-6)
        want = dict(row.attributes)
        assert response.json["attributes"] == want


def small_model(client: FlaskClient, model_id: str, count: int = 6) -> NDArray[np.float32]:
    vectors = unit_vectors(count, 16, seed=42)
    items = [
        {"id": i + 1, "vector": v.tolist(), "attributes": {"dataset": "d"}} for i, v in enumerate(vectors)
    ]
    assert upsert(client, model_id, items).status_code == 200
    return vectors


def test_upsert_is_idempotent_and_replaces(search: FlaskClient, model_id: str) -> None:
    vectors = small_model(search, model_id)
    new_vector = unit_vectors(1, 16, seed=1234)[0]
    item = {"id": 3, "vector": new_vector.tolist(), "attributes": {"dataset": "moved"}}
    for _ in range(2):
        assert upsert(search, model_id, [item]).status_code == 200
    model = search.get(f"/v1/models/{model_id}").json
    assert model is not None and model["count"] == len(vectors)
    assert search_ids(search, model_id, new_vector, k=1) == [3]
    assert search_ids(search, model_id, new_vector, k=10, filter={"dataset": ["moved"]}) == [3]
    assert 3 not in search_ids(search, model_id, vectors[2], k=10, filter={"dataset": ["d"]})


def test_delete_removes_from_get_and_search_and_is_idempotent(search: FlaskClient, model_id: str) -> None:
    vectors = small_model(search, model_id)
    assert search.delete(f"/v1/models/{model_id}/vectors/2").status_code == 204
    assert search.get(f"/v1/models/{model_id}/vectors/2").status_code == 404
    assert 2 not in search_ids(search, model_id, vectors[1], k=10)
    assert search.delete(f"/v1/models/{model_id}/vectors/2").status_code == 204
    model = search.get(f"/v1/models/{model_id}").json
    assert model is not None and model["count"] == len(vectors) - 1


def test_a_delete_is_gone_from_the_very_next_search(search: FlaskClient, model_id: str) -> None:
    """Delete then search at once, several times: Milvus 2.3 answers a delete without its
    timestamp, so a session search could be served before the delete was applied."""
    vectors = unit_vectors(8, 16, seed=41)
    items = [{"id": i, "vector": vector.tolist()} for i, vector in enumerate(vectors, start=1)]
    assert upsert(search, model_id, items).status_code == 200
    assert search_ids(search, model_id, vectors[0], k=1) == [1]  # the service has seen its writes
    for i, vector in enumerate(vectors, start=1):
        assert search.delete(f"/v1/models/{model_id}/vectors/{i}").status_code == 204
        assert i not in search_ids(search, model_id, vector, k=8)


def test_a_get_sees_the_write_and_the_delete_just_before_it(search: FlaskClient, model_id: str) -> None:
    """Gets and batched reads are at session consistency (not the collection's strong default,
    which waits for a time tick): each must still see the upsert and the delete this service
    acknowledged just before."""
    vectors = unit_vectors(8, 16, seed=47)
    for i, vector in enumerate(vectors, start=1):
        assert upsert(search, model_id, [{"id": i, "vector": vector.tolist()}]).status_code == 200
        got = search.get(f"/v1/models/{model_id}/vectors/{i}")
        assert got.status_code == 200 and np.allclose(got.json["vector"], vector, atol=1e-6)  # type: ignore[index]
        [read] = read_vectors(search, model_id, [i])["vectors"]
        assert np.allclose(np.frombuffer(base64.b64decode(read["vector"]), dtype="<f4"), vector, atol=1e-6)
        assert search.delete(f"/v1/models/{model_id}/vectors/{i}").status_code == 204
        assert search.get(f"/v1/models/{model_id}/vectors/{i}").status_code == 404
        assert read_vectors(search, model_id, [i]) == {"vectors": [], "missing": [i]}


def read_vectors(client: FlaskClient, model_id: str, ids: list[int]) -> Any:
    """The batched read: several vectors (packed) in one call, and the IDs that hold none."""
    response = client.get(f"/v1/models/{model_id}/vectors", query_string={"ids": ",".join(map(str, ids))})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def vector_ids(client: FlaskClient, model_id: str, first: int, end: int) -> list[int]:
    response = client.get(f"/v1/models/{model_id}/vector-ids", query_string={"from": first, "to": end})
    assert response.status_code == 200, response.get_data(as_text=True)
    ids: list[int] = response.json["ids"]  # type: ignore[index]
    return ids


def test_vector_ids_are_exactly_the_stored_ids_of_the_range(loaded: tuple[FlaskClient, str]) -> None:
    client, model_id = loaded
    stored = [row.id for row in ROWS]
    for first, end in ((0, 1), (0, 2), (10, 50), (0, 16_000), (len(ROWS), len(ROWS) + 5)):
        assert vector_ids(client, model_id, first, end) == [i for i in stored if first <= i < end]


def test_a_delete_is_gone_from_the_very_next_listing_of_ids(search: FlaskClient, model_id: str) -> None:
    """What `verify` relies on: a listing sees every write and delete acknowledged before it."""
    vectors = unit_vectors(8, 16, seed=43)
    items = [{"id": i, "vector": vector.tolist()} for i, vector in enumerate(vectors, start=1)]
    assert upsert(search, model_id, items).status_code == 200
    assert vector_ids(search, model_id, 0, 100) == list(range(1, 9))
    for i in range(1, 9):
        assert search.delete(f"/v1/models/{model_id}/vectors/{i}").status_code == 204
        assert vector_ids(search, model_id, 0, 100) == list(range(i + 1, 9))


def expected_neighbors(first: int, end: int, threshold: float, k: int) -> dict[tuple[int, int], float]:
    """The reference near pairs: each row of [first, end) with its k nearest others over all ROWS
    that score at least `threshold`, each pair once."""
    pairs: dict[tuple[int, int], float] = {}
    for row in ROWS:
        if not first <= row.id < end:
            continue
        others = sorted(
            ((float(other.vector @ row.vector), other.id) for other in ROWS if other.id != row.id),
            reverse=True,
        )
        for score, other_id in others[:k]:
            if score >= threshold:
                pairs[(min(row.id, other_id), max(row.id, other_id))] = score
    return pairs


@pytest.mark.parametrize(
    ("first", "end", "threshold", "k"), [(0, 200, 0.45, 5), (30, 61, 0.3, 10), (0, 200, 0.99, 10)]
)
def test_neighbors_are_the_reference_near_pairs(
    loaded: tuple[FlaskClient, str], first: int, end: int, threshold: float, k: int
) -> None:
    client, model_id = loaded
    body = {"from": first, "to": end, "threshold": threshold, "k": k}
    response = client.post(f"/v1/models/{model_id}/neighbors", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = response.json
    assert found is not None
    assert found["vectors"] == sum(first <= row.id < end for row in ROWS)
    want = expected_neighbors(first, end, threshold, k)
    assert [(a, b) for a, b, _ in found["pairs"]] == sorted(want)  # a < b, each once, ordered
    for a, b, score in found["pairs"]:
        assert score == pytest.approx(want[(a, b)], abs=1e-4)
    if threshold < 0.9:
        assert want, "the case should find pairs"


def test_base64_vectors_store_and_search_like_lists(search: FlaskClient, model_id: str) -> None:
    vectors = unit_vectors(8, 16, seed=31)
    encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    items = [{"id": i, "vector": text} for i, text in enumerate(encoded, start=1)]
    assert upsert(search, model_id, items).status_code == 200
    stored = search.get(f"/v1/models/{model_id}/vectors/3").json
    assert stored is not None
    np.testing.assert_allclose(stored["vector"], vectors[2], atol=1e-6)
    for i, (vector, text) in enumerate(zip(vectors, encoded, strict=True), start=1):
        as_list = search_ids(search, model_id, vector, k=5)
        assert as_list[0] == i
        assert search_ids(search, model_id, text, k=5) == as_list


@pytest.mark.parametrize("consistency", ["session", "strong"])
def test_a_write_is_found_by_the_next_search(search: FlaskClient, model_id: str, consistency: str) -> None:
    vectors = unit_vectors(6, 16, seed=21)
    for i, vector in enumerate(vectors, start=1):
        assert upsert(search, model_id, [{"id": i, "vector": vector.tolist()}]).status_code == 200
        assert search_ids(search, model_id, vector, k=1, consistency=consistency) == [i]


def test_vectors_are_stored_at_unit_length(search: FlaskClient, model_id: str) -> None:
    assert upsert(search, model_id, [{"id": 1, "vector": [3.0, 4.0, 0.0]}]).status_code == 200
    response = search.get(f"/v1/models/{model_id}/vectors/1")
    assert response.json is not None
    np.testing.assert_allclose(response.json["vector"], [0.6, 0.8, 0.0], atol=1e-6)


def test_models_are_listed_with_dimension_and_count(loaded: tuple[FlaskClient, str], backend: str) -> None:
    client, model_id = loaded
    response = client.get("/v1/models")
    assert response.status_code == 200 and response.json is not None
    [model] = [m for m in response.json["models"] if m["model_id"] == model_id]
    assert model["dim"] == 32 and model["count"] == len(ROWS) and model["metric"] == "COSINE"
    assert model["backend"] == ("milvus-lite" if backend == "lite" else "milvus-server")
    assert model["index"] == ("FLAT" if backend == "lite" else "HNSW")


def test_model_ids_with_dots_dashes_and_underscores_stay_apart(search: FlaskClient) -> None:
    # Milvus names allow only letters, digits and _: these must still name two collections.
    names = ["a.b-c_d", "a_b-c.d"]
    for n, name in enumerate(names, start=1):
        assert upsert(search, name, [{"id": n, "vector": [1.0, float(n)]}]).status_code == 200
    listed = {m["model_id"]: m["count"] for m in search.get("/v1/models").json["models"]}  # type: ignore[index]
    for name in names:
        assert listed[name] >= 1
        ids = search_ids(search, name, [1.0, 0.0], k=10)
        assert ids == [names.index(name) + 1]
