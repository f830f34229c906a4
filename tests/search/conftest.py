"""Search fixtures: the service on both real backends, Milvus Lite and a Milvus server.

The server is the embedded Milvus 2.3 engine (tests/conftest.py's `milvus_server`, shared by
every test level) reached through a TCP proxy that outage tests can cut.
Each test writes under its own model_id, so tests never see each other's vectors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from numpy.typing import NDArray
from werkzeug.test import TestResponse

from medsearch_common.settings import Binding
from medsearch_search.app import create_app
from medsearch_search.settings import SearchSettings
from tests.conftest import MilvusServer
from tests.support.proxy import CuttableProxy

BACKENDS = ("lite", "server")


@pytest.fixture(scope="session")
def milvus_proxy(milvus_server: MilvusServer) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(milvus_server.host, milvus_server.port)
    proxy.restore()
    yield proxy
    proxy.cut()


def search_settings(uri: str, **changes: Any) -> SearchSettings:
    base: dict[str, Any] = {"binding": Binding("127.0.0.1", 0), "milvus_uri": uri, "milvus_timeout_s": 5.0}
    return SearchSettings(**{**base, **changes})


@pytest.fixture(scope="session")
def lite_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    folder: Path = tmp_path_factory.mktemp("milvus-lite")
    app = create_app(search_settings(str(folder / "search.db"), map_dir=str(folder / "maps")))
    yield app
    app.extensions["medsearch_search"].store.close()


@pytest.fixture(scope="session")
def server_app(
    milvus_server: MilvusServer, milvus_proxy: CuttableProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    maps = tmp_path_factory.mktemp("server-maps")
    uri = f"http://127.0.0.1:{milvus_proxy.port}"
    app = create_app(search_settings(uri, milvus_token=milvus_server.token, map_dir=str(maps)))
    yield app
    app.extensions["medsearch_search"].store.close()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def search(backend: str, request: pytest.FixtureRequest) -> FlaskClient:
    """The search service's test client on the backend under test."""
    app: Flask = request.getfixturevalue(f"{backend}_app")
    return app.test_client()


def new_model_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def model_id() -> str:
    return new_model_id()


def unit_vectors(count: int, dim: int = 32, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim))
    unit: NDArray[np.float32] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return unit


def upsert(client: FlaskClient, model_id: str, items: list[dict[str, Any]]) -> TestResponse:
    return client.put(f"/v1/models/{model_id}/vectors", json={"items": items})


def search_ids(
    client: FlaskClient,
    model_id: str,
    vector: NDArray[np.float32] | list[float] | str,
    k: int = 10,
    **body: Any,
) -> list[int]:
    """The hit IDs of one query, best first; fails on anything but 200."""
    query = vector.tolist() if isinstance(vector, np.ndarray) else vector
    response = client.post(f"/v1/models/{model_id}/search", json={"vectors": [query], "k": k, **body})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None
    return [hit["id"] for hit in response.json["results"][0]]
