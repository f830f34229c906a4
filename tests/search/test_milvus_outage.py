"""A Milvus server going away: 503 naming Milvus, in bounded time, and recovery without a restart.

Each test puts its own proxy in front of the session's Milvus server, so cutting it never
touches the proxy that the other search tests share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from medsearch_search.app import create_app
from tests.conftest import MilvusServer
from tests.search.conftest import new_model_id, search_ids, search_settings, unit_vectors, upsert
from tests.support.proxy import CuttableProxy

# Generous: these guard against a hang, they do not measure speed.
HANG_GUARD_S = 30.0
READY_GUARD_S = 60.0
DIM = 16

T = TypeVar("T")


@pytest.fixture
def proxy(milvus_server: MilvusServer) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(milvus_server.host, milvus_server.port)
    yield proxy
    proxy.cut()


def answer(request: Callable[[], T]) -> T:
    """What the request gives, failing the test if nothing comes within the hang guard."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = request()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)  # a hung request must not hold pytest's exit
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"no answer within {HANG_GUARD_S} s: the request hangs"
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def wait_until_ready(client: FlaskClient) -> None:
    deadline = time.monotonic() + READY_GUARD_S
    while True:
        response = answer(lambda: client.get("/readyz"))
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"not ready after {READY_GUARD_S} s: {response.json}"
        time.sleep(0.2)


def cut(proxy: CuttableProxy) -> None:
    proxy.cut()


def items(ids: range, seed: int) -> list[dict[str, Any]]:
    vectors = unit_vectors(len(ids), DIM, seed=seed)
    return [
        {"id": i, "vector": vector.tolist(), "attributes": {"dataset": "outage", "patient_id": f"p{i}"}}
        for i, vector in zip(ids, vectors, strict=True)
    ]


def seed_model(milvus_server: MilvusServer, model_id: str, stored: list[dict[str, Any]]) -> None:
    """The model's collection with `stored` in it, made straight on the server with a patient timeout.

    Seeded apart from the app under test, so that the outage tests start from known data.
    """
    app = create_app(
        search_settings(milvus_server.uri, milvus_token=milvus_server.token, milvus_timeout_s=30)
    )
    try:
        client = app.test_client()
        wait_until_ready(client)
        response = answer(lambda: upsert(client, model_id, stored))
        assert response.status_code == 200, response.json
    finally:
        close(app)


def close(app: Flask) -> None:
    app.extensions["medsearch_search"].store.close()


def assert_milvus_unavailable(response: TestResponse) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.json is not None
    assert "Milvus" in response.json["detail"]


def assert_not_ready_because_of_milvus(client: FlaskClient) -> None:
    ready = answer(lambda: client.get("/readyz"))
    assert ready.status_code == 503
    assert ready.mimetype == "application/problem+json"
    assert ready.json is not None
    reason = ready.json["checks"]["milvus"]
    assert reason != "ok"
    assert "Milvus" in reason


def test_milvus_outage_gives_503_naming_milvus_and_recovers_without_restart(
    milvus_server: MilvusServer, proxy: CuttableProxy
) -> None:
    model_id = new_model_id()
    first, second = items(range(1, 21), seed=1), items(range(21, 41), seed=2)
    seed_model(milvus_server, model_id, first)
    proxy.restore()
    app = create_app(
        search_settings(
            f"http://127.0.0.1:{proxy.port}", milvus_token=milvus_server.token, milvus_timeout_s=2
        )
    )
    client = app.test_client()
    try:
        wait_until_ready(client)
        assert answer(lambda: upsert(client, model_id, second)).status_code == 200
        probe = second[3]["vector"]
        assert answer(lambda: search_ids(client, model_id, probe, k=1)) == [24]

        cut(proxy)
        for request in (
            lambda: client.post(f"/v1/models/{model_id}/search", json={"vectors": [probe], "k": 5}),
            lambda: upsert(client, model_id, items(range(41, 43), seed=3)),
            lambda: client.get(f"/v1/models/{model_id}/vectors/24"),
            lambda: client.get("/v1/models"),
            lambda: client.get(f"/v1/models/{model_id}"),
            lambda: client.delete(f"/v1/models/{model_id}/vectors/1"),
        ):
            assert_milvus_unavailable(answer(request))
        assert_not_ready_because_of_milvus(client)
        assert answer(lambda: client.get("/healthz")).status_code == 200  # alive, just not ready

        proxy.restore()
        wait_until_ready(client)
        assert answer(lambda: search_ids(client, model_id, probe, k=1)) == [24]
        unchanged = first[0]["vector"]
        assert answer(lambda: search_ids(client, model_id, unchanged, k=1)) == [1]  # the delete never ran
        stored = answer(lambda: client.get(f"/v1/models/{model_id}/vectors/24"))
        assert stored.status_code == 200
        assert stored.json is not None and stored.json["attributes"]["patient_id"] == "p24"
        # The upsert cut off before it reached Milvus stored nothing; sent again, it is stored.
        assert answer(lambda: client.get(f"/v1/models/{model_id}/vectors/41")).status_code == 404
        assert answer(lambda: upsert(client, model_id, items(range(41, 43), seed=3))).status_code == 200
        listed = answer(lambda: client.get("/v1/models"))
        assert listed.status_code == 200 and listed.json is not None
        assert {"model_id": model_id, "count": 42} in [
            {"model_id": m["model_id"], "count": m["count"]} for m in listed.json["models"]
        ]
    finally:
        close(app)


def test_service_started_while_milvus_is_unreachable_serves_once_it_comes(
    milvus_server: MilvusServer, proxy: CuttableProxy
) -> None:
    model_id = new_model_id()
    stored = items(range(1, 11), seed=4)
    seed_model(milvus_server, model_id, stored)
    # The proxy is not listening yet: Milvus is unreachable while the app starts.
    app = create_app(
        search_settings(
            f"http://127.0.0.1:{proxy.port}", milvus_token=milvus_server.token, milvus_timeout_s=2
        )
    )
    client = app.test_client()
    try:
        assert answer(lambda: client.get("/healthz")).status_code == 200
        assert_not_ready_because_of_milvus(client)
        probe = stored[6]["vector"]
        assert_milvus_unavailable(
            answer(lambda: client.post(f"/v1/models/{model_id}/search", json={"vectors": [probe]}))
        )
        assert_milvus_unavailable(answer(lambda: client.get("/v1/models")))
        assert_milvus_unavailable(answer(lambda: upsert(client, model_id, items(range(11, 13), seed=5))))

        proxy.restore()
        wait_until_ready(client)
        assert answer(lambda: search_ids(client, model_id, probe, k=1)) == [7]
        assert answer(lambda: upsert(client, model_id, items(range(11, 13), seed=5))).status_code == 200
        model = answer(lambda: client.get(f"/v1/models/{model_id}"))
        assert model.status_code == 200 and model.json is not None
        assert (model.json["count"], model.json["backend"]) == (12, "milvus-server")
    finally:
        close(app)
