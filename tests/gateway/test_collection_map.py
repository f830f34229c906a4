"""The collection map through the gateway, on the real stack with the shared sets' real
vectors: an editor starts the job, a reader follows it and reads the map, each checked against
the OpenAPI document; the map separates what the embedding separates; refusals by role, a
job started twice, and the search service down."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient

from medsearch_gateway.app import create_app
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack
from tests.gateway.test_openapi import OPENAPI, gateway_settings, signed_in

pytestmark = pytest.mark.integration
JOBS, CURRENT, MAP = "/api/v1/map/jobs", "/api/v1/map/jobs/current", "/api/v1/map"


@pytest.fixture(scope="module")
def gateway(stack: Stack, indexed: list[Indexed]) -> FlaskClient:
    return signed_in(create_app(gateway_settings(stack.urls)).test_client(), stack)


def as_role(stack: Stack, role: str) -> dict[str, str]:
    return {"Authorization": stack.auth_as(role)["Authorization"]}


@pytest.fixture(scope="module")
def collection_map(gateway: FlaskClient, stack: Stack) -> dict[str, Any]:
    started = gateway.post(JOBS, headers=as_role(stack, "editor"))
    job = OPENAPI.check(started, JOBS, "post")
    assert started.status_code == 202 and job["state"] == "running"
    twice = gateway.post(JOBS, headers=as_role(stack, "editor"))
    assert twice.status_code == 409 and "already running" in OPENAPI.check(twice, JOBS, "post")["detail"]
    deadline = time.monotonic() + 600
    while True:
        current = gateway.get(CURRENT, headers=as_role(stack, "reader"))
        job = OPENAPI.check(current, CURRENT, "get")
        if job["state"] != "running":
            break
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["state"] == "done", job
    answer = gateway.get(MAP, headers=as_role(stack, "reader"))
    found: dict[str, Any] = OPENAPI.check(answer, MAP, "get")
    return found


def test_every_indexed_image_is_on_the_map_with_its_labels(
    collection_map: dict[str, Any], indexed: list[Indexed]
) -> None:
    points, fields = collection_map["points"], collection_map["fields"]
    position = {image_id: i for i, image_id in enumerate(points["id"])}
    assert len(position) == len(points["id"]) == len(points["x"]) == len(points["y"])
    for item in indexed:
        i = position[item.image_id]
        dataset = fields["dataset"]["values"][fields["dataset"]["codes"][i]]
        assert dataset == item.metadata.get("dataset"), item
        findings = {fields["findings"]["values"][c] for c in fields["findings"]["codes"][i]}
        assert findings == set(item.metadata.get("findings") or []), item
        assert fields["age"][i] == item.metadata.get("age")
    assert 0 <= min(points["x"]) and max(points["x"]) <= 1 and max(points["y"]) <= 1


def test_the_map_keeps_the_embeddings_neighbourhoods(collection_map: dict[str, Any]) -> None:
    """The two shared sets differ as images (sources, processing); the embedding tells them
    apart, and so must the map: nearly every point's nearest map neighbours share its dataset."""
    points, fields = collection_map["points"], collection_map["fields"]
    xy = np.column_stack([points["x"], points["y"]])
    datasets = np.asarray(fields["dataset"]["codes"])
    distances = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :5]
    agreement = float((datasets[nearest] == datasets[:, None]).mean())
    assert agreement > 0.9, agreement


def test_roles(gateway: FlaskClient, stack: Stack, collection_map: dict[str, Any]) -> None:
    reader = gateway.post(JOBS, headers=as_role(stack, "reader"))
    assert reader.status_code == 403
    for method, path in (("POST", JOBS), ("GET", CURRENT), ("GET", MAP)):
        anonymous = requests.request(method, f"{stack.gateway}{path}", timeout=HTTP_TIMEOUT_S)
        assert anonymous.status_code == 401, (method, path)


def test_the_search_service_down_is_a_503_naming_it(
    stack: Stack, collection_map: dict[str, Any], restore_proxies: None
) -> None:
    stack.proxies["search"].cut()
    for method, path, role in (("POST", JOBS, "editor"), ("GET", CURRENT, "reader"), ("GET", MAP, "reader")):
        down = requests.request(
            method, f"{stack.gateway}{path}", headers=stack.auth_as(role), timeout=HTTP_TIMEOUT_S
        )
        assert down.status_code == 503, (path, down.text)
        assert down.json()["dependency"] == "search" and "Retry-After" in down.headers
    stack.proxies["search"].restore()
    assert (
        requests.get(f"{stack.gateway}{MAP}", headers=stack.auth, timeout=HTTP_TIMEOUT_S).status_code == 200
    )
