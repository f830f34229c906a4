"""A collection dropped or replaced behind the service's back (by another search replica, or by
hand) is looked up again, not served from memory as a 503 until a restart: a missing collection
is a 404 as for a model never stored, an upsert makes it again, and one made again with another
dimension is the one that counts.

Against both real backends; the collection is changed through a pymilvus client of the test's own
(for Milvus Lite, which one process opens alone, the service's own connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pymilvus import MilvusClient

from medsearch_search.app import create_app
from medsearch_search.store import collection_name
from tests.conftest import MilvusServer
from tests.search.conftest import search_ids, search_settings, unit_vectors, upsert

DIM = 16


def items(ids: range, dim: int, seed: int) -> list[dict[str, Any]]:
    vectors = unit_vectors(len(ids), dim, seed=seed)
    return [
        {"id": i, "vector": vector.tolist(), "attributes": {"dataset": "cache", "patient_id": f"p{i}"}}
        for i, vector in zip(ids, vectors, strict=True)
    ]


@pytest.fixture
def behind_its_back(search: FlaskClient, backend: str, milvus_server: MilvusServer) -> Iterator[MilvusClient]:
    """A pymilvus client that is not the service's."""
    if backend == "lite":
        yield search.application.extensions["medsearch_search"].store._connect()
        return
    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token)
    yield client
    client.close()


def test_a_collection_dropped_behind_its_back_is_a_404_and_an_upsert_makes_it_again(
    search: FlaskClient, model_id: str, behind_its_back: MilvusClient
) -> None:
    first = items(range(1, 11), DIM, seed=1)
    assert upsert(search, model_id, first).status_code == 200
    probe = first[4]["vector"]
    assert search_ids(search, model_id, probe, k=1) == [5]

    behind_its_back.drop_collection(collection_name(model_id))

    searched = search.post(f"/v1/models/{model_id}/search", json={"vectors": [probe], "k": 3})
    assert searched.status_code == 404, searched.get_data(as_text=True)
    assert searched.json is not None and searched.json["type"].endswith(":model-not-found")
    assert search.get(f"/v1/models/{model_id}/vectors/5").status_code == 404
    assert search.get(f"/v1/models/{model_id}").status_code == 404
    listed = search.get("/v1/models")
    assert listed.status_code == 200 and listed.json is not None
    assert model_id not in [model["model_id"] for model in listed.json["models"]]
    assert search.delete(f"/v1/models/{model_id}/vectors/5").status_code == 204  # nothing to delete

    second = items(range(21, 26), DIM, seed=2)
    stored = upsert(search, model_id, second)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert search_ids(search, model_id, second[2]["vector"], k=1) == [23]
    assert sorted(search_ids(search, model_id, second[0]["vector"], k=10)) == [21, 22, 23, 24, 25]
    assert search.get(f"/v1/models/{model_id}/vectors/5").status_code == 404
    got = search.get(f"/v1/models/{model_id}/vectors/22")
    assert got.status_code == 200 and got.json is not None and got.json["attributes"]["patient_id"] == "p22"


def test_a_collection_emptied_behind_its_back_answers_no_hits(
    search: FlaskClient, model_id: str, behind_its_back: MilvusClient
) -> None:
    stored = items(range(1, 6), DIM, seed=3)
    assert upsert(search, model_id, stored).status_code == 200
    behind_its_back.delete(collection_name(model_id), ids=list(range(1, 6)))
    assert search_ids(search, model_id, stored[0]["vector"], k=5, consistency="strong") == []


def test_a_collection_made_again_with_another_dimension_by_another_replica_is_used(
    server_app: Flask, model_id: str, milvus_server: MilvusServer
) -> None:
    """Replicas share a Milvus server (Milvus Lite is one process's: it has none)."""
    search = server_app.test_client()
    assert upsert(search, model_id, items(range(1, 6), DIM, seed=4)).status_code == 200
    other = create_app(search_settings(milvus_server.uri, milvus_token=milvus_server.token)).test_client()
    by_hand = MilvusClient(uri=milvus_server.uri, token=milvus_server.token)
    try:
        by_hand.drop_collection(collection_name(model_id))
        narrow = items(range(1, 6), 8, seed=5)
        assert upsert(other, model_id, narrow).status_code == 200  # the other replica makes it anew
    finally:
        by_hand.close()
        other.application.extensions["medsearch_search"].store.close()

    assert search_ids(search, model_id, narrow[3]["vector"], k=1) == [4]
    assert upsert(search, model_id, items(range(6, 8), 8, seed=6)).status_code == 200
    wide = search.post(f"/v1/models/{model_id}/search", json={"vectors": [np.ones(DIM).tolist()], "k": 1})
    assert wide.status_code == 422  # the collection's dimension is 8 now
    described = search.get(f"/v1/models/{model_id}")
    assert described.status_code == 200 and described.json is not None
    assert (described.json["dim"], described.json["count"]) == (8, 7)
