"""One validation contract: a value one service takes, every service takes. Before it, the
catalog stored a tab in a text field that the search service refused: the image could never
be indexed, the gateway answered 502, and `medsearch ingest` retried it as an outage."""

from __future__ import annotations

import io
import json
import secrets
from typing import Any

import psycopg
import pytest
import requests
from PIL import Image

from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, medsearch

pytestmark = pytest.mark.integration
PROBLEM = "urn:medsearch:problem:"


def fresh_png() -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (40, 40), secrets.token_bytes(40 * 40)).save(out, format="PNG")
    return out.getvalue()


def add(stack: Stack, metadata: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("x.png", fresh_png())},
        data={"metadata": json.dumps(metadata)},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )


def image_count(stack: Stack) -> int:
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    count: int = stats.json()["images"]
    return count


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("patient_id", "P\t17", "a tab"),
        ("external_id", "scan\n2", "a line break"),
        ("view_position", "P\rA", "a carriage return"),
        ("dataset", "ward\x0b3", "U+000B"),
    ],
)
def test_a_control_character_in_any_text_field_is_refused_at_once_and_nothing_is_stored(
    stack: Stack, indexed: list[Indexed], field: str, value: str, named: str
) -> None:
    before = image_count(stack)
    response = add(stack, {"dataset": "contract", field: value})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == PROBLEM + "image-rejected"
    assert f"metadata.{field}" in problem["detail"] and named in problem["detail"]
    assert image_count(stack) == before


def test_a_finding_with_a_line_break_is_refused_too(stack: Stack, indexed: list[Indexed]) -> None:
    response = add(stack, {"dataset": "contract", "findings": ["Mass\nEffusion"]})
    assert response.status_code == 422 and "metadata.findings" in response.json()["detail"]


def test_an_image_stored_before_the_contract_that_search_refuses_is_marked_failed_not_a_502(
    stack: Stack, indexed: list[Indexed]
) -> None:
    added = add(stack, {"dataset": "contract", "patient_id": "legacy"})
    assert added.status_code == 201
    image_id = added.json()["image"]["id"]
    try:
        # A row from before the one contract: written behind the catalog's back.
        with psycopg.connect(stack.catalog_database) as conn:
            conn.execute("UPDATE images SET patient_id = %s WHERE id = %s", ("legacy\tP", image_id))
        reindexed = requests.post(
            f"{stack.gateway}/api/v1/images/{image_id}/index",
            params={"force": "true"},
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        )
        assert reindexed.status_code == 422, reindexed.text
        problem = reindexed.json()
        assert problem["type"] == PROBLEM + "stored-but-rejected" and problem["index_state"] == "failed"
        assert "search service refuses it" in problem["detail"]
        record = requests.get(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        ).json()
        assert record["index_state"] == "failed"
        # `medsearch reindex` reports it as a failure of that image, not an outage to retry.
        result = medsearch(stack, "reindex", "--include-failed")
        assert result.returncode == 1 and "search service refuses it" in result.stdout + result.stderr
    finally:
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )
