"""The search service's server errors name Milvus, never where it is: no URI, host, port or
path in a 5xx body (its /readyz included); the address is for the log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from medsearch_search.app import create_app
from tests.conftest import MilvusServer
from tests.search.conftest import new_model_id, search_settings, unit_vectors, upsert
from tests.support.processes import free_port
from tests.support.proxy import CuttableProxy

# An IP address, a host:port pair, a URL or a file path.
ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+|[\w.-]+:\d{2,5}\b|\w+://|localhost|/tmp/|\.db\b")
DIM = 8


@pytest.fixture
def proxy(milvus_server: MilvusServer) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(milvus_server.host, milvus_server.port)
    yield proxy
    proxy.cut()


def answers(client: FlaskClient, model_id: str) -> list[Any]:
    vector = unit_vectors(1, DIM, seed=9)[0].tolist()
    item = {"id": 1, "vector": vector, "attributes": {"dataset": "details"}}
    return [
        client.get("/readyz"),
        client.post(f"/v1/models/{model_id}/search", json={"vectors": [vector], "k": 3}),
        upsert(client, model_id, [item]),
        client.get(f"/v1/models/{model_id}/vectors/1"),
        client.delete(f"/v1/models/{model_id}/vectors/1"),
        client.get(f"/v1/models/{model_id}"),
        client.get("/v1/models"),
    ]


def assert_named_without_address(response: Any, *secrets: str) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 503, text
    assert "Milvus" in text
    assert not ADDRESS.search(text), text
    assert not any(secret in text for secret in secrets), text


def close(app: Flask) -> None:
    app.extensions["medsearch_search"].store.close()


def test_milvus_gone_is_named_without_its_address(proxy: CuttableProxy, milvus_server: MilvusServer) -> None:
    proxy.restore()
    uri = f"http://127.0.0.1:{proxy.port}"
    app = create_app(search_settings(uri, milvus_token=milvus_server.token, milvus_timeout_s=2))
    client = app.test_client()
    model_id = new_model_id()
    try:
        stored = upsert(client, model_id, [{"id": 1, "vector": [1.0] * DIM, "attributes": {}}])
        assert stored.status_code == 200, stored.get_data(as_text=True)
        proxy.cut()
        for response in answers(client, model_id):
            assert_named_without_address(response, str(proxy.port))
    finally:
        close(app)


def test_milvus_never_reached_is_named_without_its_address() -> None:
    port = free_port()
    app = create_app(search_settings(f"http://user:secret@127.0.0.1:{port}", milvus_timeout_s=1))
    try:
        for response in answers(app.test_client(), new_model_id()):
            assert_named_without_address(response, str(port), "secret")
    finally:
        close(app)


def test_milvus_lite_that_cannot_open_is_named_without_its_path(tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("a file where Milvus Lite's folder should be\n")
    app = create_app(search_settings(str(in_the_way / "search.db"), milvus_timeout_s=1))
    try:
        for response in answers(app.test_client(), new_model_id()):
            assert_named_without_address(response, str(tmp_path))
    finally:
        close(app)
