"""A delete cut short at each of its steps ends in a state that a retry of the delete, or
`reindex`, repairs: never a catalog row that says "indexed" with no vector behind it.

The gateway runs in-process over the session's real services; one step of the delete is made
to fail by a client that refuses that one call (the services themselves are real and up).
"""

from __future__ import annotations

import io
import json
import secrets
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from PIL import Image

from medsearch_common.client import UpstreamUnavailable
from medsearch_common.settings import Binding
from medsearch_gateway.app import create_app
from medsearch_gateway.clients import CatalogClient, SearchClient, Services
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack

pytestmark = pytest.mark.integration


class CatalogThatCannotDelete(CatalogClient):
    def delete(self, image_id: int) -> None:
        raise UpstreamUnavailable("catalog", "catalog is unreachable")


class SearchThatCannotDelete(SearchClient):
    def delete(self, model_id: str, image_id: int) -> None:
        raise UpstreamUnavailable("search", "search is unreachable")


def settings_for(stack: Stack) -> GatewaySettings:
    return GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", stack.urls["embedder"], 30),
        search=Upstream("search", stack.urls["search"], 30),
        catalog=Upstream("catalog", stack.urls["catalog"], 30),
    )


def app_with(
    stack: Stack, *, catalog: type[CatalogClient] = CatalogClient, search: type[SearchClient] = SearchClient
) -> FlaskClient:
    real = Services.from_settings(settings_for(stack))
    services = Services(real.embedder, search(real.search.client), catalog(real.catalog.client))
    client = create_app(settings_for(stack), services).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = stack.auth["Authorization"]
    return client


def add_fresh_image(gateway: FlaskClient) -> dict[str, Any]:
    out = io.BytesIO()
    Image.frombytes("L", (48, 48), secrets.token_bytes(48 * 48)).save(out, format="PNG")
    added = gateway.post(
        "/api/v1/images",
        data={"image": (io.BytesIO(out.getvalue()), "x.png"), "metadata": json.dumps({"dataset": "deletes"})},
        content_type="multipart/form-data",
    )
    assert added.status_code == 201, added.get_data(as_text=True)
    body: dict[str, Any] = added.json  # type: ignore[assignment]
    return body


def has_vector(stack: Stack, model_id: str, image_id: int) -> bool:
    url = f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}"
    return requests.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200


def state_of(gateway: FlaskClient, image_id: int) -> str:
    record = gateway.get(f"/api/v1/images/{image_id}")
    assert record.status_code == 200
    state: str = record.json["index_state"]  # type: ignore[index]
    return state


def test_a_delete_cut_before_the_row_goes_leaves_it_pending_and_reindex_or_a_retry_repairs_it(
    stack: Stack, indexed: list[Indexed]
) -> None:
    healthy = app_with(stack)
    added = add_fresh_image(healthy)
    image_id, model_id = added["image"]["id"], added["model_id"]

    cut = app_with(stack, catalog=CatalogThatCannotDelete).delete(f"/api/v1/images/{image_id}")
    assert cut.status_code == 503 and cut.json["dependency"] == "catalog"  # type: ignore[index]
    # The vector went; the row stayed, and says so: pending, not "indexed" with nothing behind it.
    assert not has_vector(stack, model_id, image_id)
    assert state_of(healthy, image_id) == "pending"
    pending = healthy.get("/api/v1/pending", query_string={"limit": 500}).json
    assert image_id in {item["id"] for item in pending["items"]}  # type: ignore[index]

    # `reindex` (what `medsearch reindex` calls for pending images) makes it whole again ...
    assert healthy.post(f"/api/v1/images/{image_id}/index").status_code == 200
    assert state_of(healthy, image_id) == "indexed" and has_vector(stack, model_id, image_id)
    # ... and a retry of the delete completes it.
    assert healthy.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert healthy.get(f"/api/v1/images/{image_id}").status_code == 404
    assert not has_vector(stack, model_id, image_id)


def test_a_delete_cut_before_the_vectors_go_leaves_it_pending_and_a_retry_completes_it(
    stack: Stack, indexed: list[Indexed]
) -> None:
    healthy = app_with(stack)
    added = add_fresh_image(healthy)
    image_id, model_id = added["image"]["id"], added["model_id"]

    cut = app_with(stack, search=SearchThatCannotDelete).delete(f"/api/v1/images/{image_id}")
    assert cut.status_code == 503 and cut.json["dependency"] == "search"  # type: ignore[index]
    assert has_vector(stack, model_id, image_id) and state_of(healthy, image_id) == "pending"
    # Searches still find it meanwhile (it exists); the retry deletes both.
    assert healthy.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert healthy.get(f"/api/v1/images/{image_id}").status_code == 404
    assert not has_vector(stack, model_id, image_id)
