"""Where the services' dependencies live stays inside: with Milvus unreachable for the search
service and PostgreSQL for the catalog, no 5xx body of the gateway (nor the readiness details
its admins see) carries an address, a URI or a port; they name the service, and the dependency
that failed when the service says which.

The search service and the catalog are the real apps served over HTTP on 127.0.0.1, each pointed
at a closed port; the embedder is a small stand-in that answers with one vector.
"""

from __future__ import annotations

import io
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask, Response, jsonify
from PIL import Image
from werkzeug.serving import make_server

from medsearch_catalog.app import create_app as create_catalog
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.settings import Binding
from medsearch_common.vectors import pack_vector
from medsearch_gateway.api import GATEWAY_EXTENSION
from medsearch_gateway.app import create_app
from medsearch_gateway.settings import GatewaySettings, Upstream
from medsearch_search.app import create_app as create_search
from medsearch_search.settings import SearchSettings
from tests.support.processes import free_port

# An IP address, a host:port pair, a URL.
ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+|[\w.-]+:\d{2,5}\b|\w+://|localhost|port \d+")


def fake_embedder() -> Flask:
    app = Flask("fake_embedder")
    model = {"model_id": "fake-model", "dim": 8}

    @app.post("/v1/embeddings")
    def embeddings() -> Response:
        return jsonify(model=model, data=[{"index": 0, "embedding": pack_vector([1.0] * 8)}], errors=[])

    @app.get("/v1/model")
    def described() -> Response:
        return jsonify(model)

    @app.get("/readyz")
    def ready() -> Response:
        return jsonify(status="ready")

    return app


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def dead_ports() -> dict[str, int]:
    return {"milvus": free_port(), "postgresql": free_port()}


@pytest.fixture(scope="module")
def gateway(dead_ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    search = create_search(
        SearchSettings(
            binding=Binding("127.0.0.1", 0),
            milvus_uri=f"http://127.0.0.1:{dead_ports['milvus']}",
            milvus_timeout_s=1.0,
        )
    )
    catalog = create_catalog(
        CatalogSettings.from_environ(
            {
                "MEDSEARCH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead_ports['postgresql']}/medsearch",
                "MEDSEARCH_CATALOG_DB_TIMEOUT_S": "1",
                "MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE": str(tmp_path_factory.mktemp("catalog") / "key"),
            }
        )
    )
    try:
        with (
            serving(fake_embedder()) as embedder_url,
            serving(search) as search_url,
            serving(catalog) as catalog_url,
        ):
            settings = GatewaySettings(
                binding=Binding("127.0.0.1", 0),
                embedder=Upstream("embedder", embedder_url, 10),
                search=Upstream("search", search_url, 10),
                catalog=Upstream("catalog", catalog_url, 10),
                attempts=1,
                anonymous_readers=True,  # the catalog cannot verify a token without its database
            )
            yield create_app(settings)
    finally:
        search.extensions["medsearch_search"].store.close()
        catalog.extensions["medsearch_catalog"].repository.pool.close()


def png() -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (32, 32), secrets.token_bytes(32 * 32)).save(out, format="PNG")
    return out.getvalue()


def assert_no_address(text: str, ports: dict[str, int]) -> None:
    assert not ADDRESS.search(text), text
    assert not any(str(port) in text for port in ports.values()), text


def test_the_gateway_s_5xx_answers_name_the_service_not_its_dependency_s_address(
    gateway: Flask, dead_ports: dict[str, int]
) -> None:
    client = gateway.test_client()
    answers: dict[str, Any] = {
        "search": client.post(
            "/api/v1/search", data={"image": (io.BytesIO(png()), "q.png")}, content_type="multipart/form-data"
        ),
        "catalog": client.get("/api/v1/images/1"),
    }
    for service, response in answers.items():
        text = response.get_data(as_text=True)
        assert response.status_code == 503, text
        assert response.json["dependency"] == service
        assert response.json["detail"].startswith(f"{service} is unavailable")
        assert_no_address(text, dead_ports)


def test_the_readiness_an_admin_sees_names_the_failing_dependency_without_its_address(
    gateway: Flask, dead_ports: dict[str, int]
) -> None:
    checks = gateway.extensions[GATEWAY_EXTENSION].readiness()
    assert checks["embedder"] is None
    assert checks["search"] == "search is unavailable (milvus not ready)"
    assert checks["catalog"] == "catalog is unavailable (postgresql not ready)"
    assert_no_address(str(checks), dead_ports)
    # The catalog's database down does not take the gateway out of service: the UI and the
    # sign-in page stay up, and /readyz says degraded (which part is for an admin).
    public = gateway.test_client().get("/readyz")
    assert public.status_code == 200 and public.json == {"status": "degraded", "service": "gateway"}
    assert_no_address(public.get_data(as_text=True), dead_ports)
    assert gateway.test_client().get("/signin").status_code == 200
