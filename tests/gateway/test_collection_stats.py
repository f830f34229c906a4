"""The collection's statistics through the gateway: counts by finding, age band, sex, view
position and index state per model, from one snapshot, checked against the labels the shared
sets were ingested with and against the OpenAPI document."""

from __future__ import annotations

from collections import Counter

import pytest
from flask.testing import FlaskClient

from medsearch_gateway.app import create_app
from tests.gateway.conftest import Indexed, Stack
from tests.gateway.test_openapi import OPENAPI, gateway_settings, problem, signed_in

pytestmark = pytest.mark.integration
STATS = "/api/v1/stats"


@pytest.fixture(scope="module")
def gateway(stack: Stack, indexed: list[Indexed]) -> FlaskClient:
    return signed_in(create_app(gateway_settings(stack.urls)).test_client(), stack)


def test_the_breakdown_adds_up_and_matches_the_labels(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    answer = gateway.get(STATS, query_string={"breakdown": "true"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    stats = OPENAPI.check(answer, STATS, "get")
    breakdown, images = stats["breakdown"], stats["images"]
    for name in ("findings_only", "age_bands", "sexes", "view_positions"):
        assert sum(breakdown[name].values()) == images, name
    assert stats["models"][stats["model"]["model_id"]] == stats["index"]
    # The shared sets' own labels, for the images this session indexed (others may be there too).
    labelled = Counter(finding for item in indexed for finding in item.metadata.get("findings") or [])
    for finding, count in labelled.items():
        assert breakdown["findings_any"][finding] >= count, finding
    assert "breakdown" not in gateway.get(STATS).json  # type: ignore[operator]


def test_a_bad_breakdown_flag_is_refused(gateway: FlaskClient) -> None:
    body = problem(
        gateway.get(STATS, query_string={"breakdown": "sometimes"}), STATS, "get", 400, "invalid-request"
    )
    assert "breakdown must be true or false" in body["detail"]
    body = problem(gateway.get(STATS, query_string={"colour": "red"}), STATS, "get", 400, "invalid-request")
    assert "unknown parameter" in body["detail"]
