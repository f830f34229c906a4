"""One retry layer: a search whose embedding timed out sends the embedder one request, not one
per gateway attempt. The work may still be running when the gateway gives up (a busy queue):
the `medsearch` CLI, which sees the 504, is the layer that sends the search again.

An in-process gateway app; its embedder is a counting fake on a real socket, or the session's
real embedder behind a proxy that makes its answers late.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from PIL import Image

from medsearch_common.settings import Binding
from medsearch_gateway.app import create_app
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.gateway.conftest import Stack
from tests.support.counting import counting_service
from tests.support.processes import free_port
from tests.support.proxy import CuttableProxy

ATTEMPTS = 3  # more than the default 2: a retry would show clearly in the counts
EMBEDDINGS = "POST /v1/embeddings"


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def gateway(embedder_url: str, *, search: str, catalog: str, timeout_s: float) -> FlaskClient:
    settings = GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", embedder_url, timeout_s),
        search=Upstream("search", search, 10),
        catalog=Upstream("catalog", catalog, 10),
        attempts=ATTEMPTS,
        anonymous_readers=True,  # no catalog to verify a token in the fake's tests
    )
    return create_app(settings).test_client()


def png() -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (64, 64), secrets.token_bytes(64 * 64)).save(out, format="PNG")
    return out.getvalue()


def search(client: FlaskClient) -> tuple[int, dict[str, object]]:
    response = client.post(
        "/api/v1/search", data={"image": (io.BytesIO(png()), "q.png")}, content_type="multipart/form-data"
    )
    return response.status_code, response.get_json()


def test_a_search_whose_embedding_timed_out_sends_one_embedding_request() -> None:
    with counting_service(delay_s=10.0) as embedder:
        client = gateway(embedder.url, search=closed_url(), catalog=closed_url(), timeout_s=0.5)
        status, body = search(client)
        assert status == 504, body
        assert body["dependency"] == "embedder"
        assert embedder.count(EMBEDDINGS) == 1


def test_a_busy_embedder_s_503_is_asked_again_by_the_gateway() -> None:
    """A 503 says the work was not done: sending it again cannot double it."""
    with counting_service(statuses={"/v1/embeddings": 503}, retry_after_s=1) as embedder:
        client = gateway(embedder.url, search=closed_url(), catalog=closed_url(), timeout_s=5)
        status, body = search(client)
        assert status == 503, body
        assert embedder.count(EMBEDDINGS) == ATTEMPTS


@pytest.fixture
def late_embedder(stack: Stack) -> Iterator[CuttableProxy]:
    """The session's real embedder, behind a proxy of this test's own."""
    host, port = stack.urls["embedder"].removeprefix("http://").split(":")
    proxy = CuttableProxy(host, int(port))
    proxy.restore()
    yield proxy
    proxy.cut()


@pytest.mark.integration
def test_through_the_real_embedder_a_late_answer_means_one_embedding(
    stack: Stack, late_embedder: CuttableProxy
) -> None:
    client = gateway(
        f"http://127.0.0.1:{late_embedder.port}",
        search=stack.urls["search"],
        catalog=stack.urls["catalog"],
        timeout_s=1.0,
    )
    client.environ_base["HTTP_AUTHORIZATION"] = stack.auth["Authorization"]
    status, _ = search(client)
    assert status == 200  # answered in time: one request, as ever
    assert late_embedder.count(EMBEDDINGS) == 1

    late_embedder.delay(3.0)  # the model's answer comes after the gateway's 1 s
    status, body = search(client)
    assert status == 504, body
    assert body["dependency"] == "embedder"
    assert late_embedder.count(EMBEDDINGS) == 2  # the second search's one request


def test_the_embedder_s_retry_after_reaches_the_caller() -> None:
    """The CLI, the layer that retries, waits as long as the busy embedder asked."""
    with counting_service(statuses={"/v1/embeddings": 503}, retry_after_s=7) as embedder:
        client = gateway(embedder.url, search=closed_url(), catalog=closed_url(), timeout_s=5)
        response = client.post(
            "/api/v1/search", data={"image": (io.BytesIO(png()), "q.png")}, content_type="multipart/form-data"
        )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
