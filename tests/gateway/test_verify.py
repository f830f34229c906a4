"""`medsearch verify` against the real stack: drift made behind the gateway's back (a vector lost
from Milvus, a vector whose image the catalog no longer has) is found, left alone under
--dry-run, and repaired so that both stores agree again; and `POST /api/v1/verify` refuses a bad
range or a reader.

The stack is the session's: each test leaves it as consistent as it found it.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from PIL import Image

from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, medsearch, search
from tests.support.id_ranges import BAD_JSON_RANGES

pytestmark = pytest.mark.integration

VERIFY = "/api/v1/verify"


@dataclass(frozen=True)
class Drift:
    model_id: str
    lost: Indexed  # indexed in the catalog, its vector deleted from Milvus
    stray_id: int  # a vector for an image ID the catalog gave and took back


def active_model(stack: Stack) -> str:
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    model_id: str = stats.json()["model"]["model_id"]
    return model_id


def vector_url(stack: Stack, model_id: str, image_id: int) -> str:
    return f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}"


def has_vector(stack: Stack, model_id: str, image_id: int) -> bool:
    return requests.get(vector_url(stack, model_id, image_id), timeout=HTTP_TIMEOUT_S).status_code == 200


def state_of(stack: Stack, image_id: int) -> str:
    image = requests.get(
        f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    )
    assert image.status_code == 200, image.text
    state: str = image.json()["index_state"]
    return state


def verify(stack: Stack, body: Any, role: str = "editor") -> requests.Response:
    return requests.post(
        f"{stack.gateway}{VERIFY}", json=body, headers=stack.auth_as(role), timeout=HTTP_TIMEOUT_S
    )


def upsert(
    stack: Stack, model_id: str, image_id: int, vector: list[float], attributes: dict[str, Any]
) -> None:
    stored = requests.put(
        f"{stack.urls['search']}/v1/models/{model_id}/vectors",
        json={"items": [{"id": image_id, "vector": vector, "attributes": attributes}]},
        timeout=HTTP_TIMEOUT_S,
    )
    assert stored.status_code == 200, stored.text


def taken_back_image_id(stack: Stack) -> int:
    """An ID the catalog gave an image that is gone again, as a delete leaves it."""
    out = io.BytesIO()
    Image.frombytes("L", (40, 40), secrets.token_bytes(40 * 40)).save(out, format="PNG")
    added = requests.post(
        f"{stack.urls['catalog']}/v1/images",
        files={"file": ("x.png", out.getvalue())},
        data={"metadata": '{"dataset": "verify"}'},
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201, added.text
    image_id: int = added.json()["id"]
    assert requests.delete(f"{stack.urls['catalog']}/v1/images/{image_id}", timeout=HTTP_TIMEOUT_S).ok
    return image_id


@pytest.fixture
def drift(stack: Stack, indexed: list[Indexed]) -> Iterator[Drift]:
    """Both kinds of drift, made directly on the search service; undone afterwards whatever the test did."""
    model_id = active_model(stack)
    lost = indexed[7]
    stored = requests.get(vector_url(stack, model_id, lost.image_id), timeout=HTTP_TIMEOUT_S)
    assert stored.status_code == 200, stored.text
    stray_id = taken_back_image_id(stack)
    assert requests.delete(vector_url(stack, model_id, lost.image_id), timeout=HTTP_TIMEOUT_S).ok
    upsert(stack, model_id, stray_id, stored.json()["vector"], {"dataset": "verify"})
    try:
        yield Drift(model_id, lost, stray_id)
    finally:
        if not has_vector(stack, model_id, lost.image_id):
            upsert(stack, model_id, lost.image_id, stored.json()["vector"], stored.json()["attributes"])
        requests.put(
            f"{stack.urls['catalog']}/v1/images/{lost.image_id}/index-state/{model_id}",
            json={"state": "indexed"},
            timeout=HTTP_TIMEOUT_S,
        )
        requests.delete(vector_url(stack, model_id, stray_id), timeout=HTTP_TIMEOUT_S)


def test_verify_reports_drift_under_dry_run_then_repairs_it(stack: Stack, drift: Drift) -> None:
    lost, stray_id, model_id = drift.lost, drift.stray_id, drift.model_id

    dry = medsearch(stack, "verify", "--dry-run", role="editor")
    assert dry.returncode == 3, dry.stdout + dry.stderr
    assert "nothing changed (--dry-run)" in dry.stdout
    assert f"indexed without a vector: image {lost.image_id}\n" in dry.stderr
    assert f"vector without an image: image {stray_id}\n" in dry.stderr
    assert not has_vector(stack, model_id, lost.image_id) and state_of(stack, lost.image_id) == "indexed"
    assert has_vector(stack, model_id, stray_id)

    fixed = medsearch(stack, "verify", "--batch", "100", role="editor")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    summary, reindexed = fixed.stdout.strip().splitlines()
    assert summary.endswith("; repaired")
    assert reindexed == "0 new, 1 completed, 0 already indexed, 0 failed"
    assert has_vector(stack, model_id, lost.image_id) and state_of(stack, lost.image_id) == "indexed"
    assert not has_vector(stack, model_id, stray_id)
    found = search(stack, lost.path.read_bytes(), k=1)
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["image"]["id"] == lost.image_id

    again = medsearch(stack, "verify", "--dry-run", role="editor")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().endswith("0 indexed without a vector, 0 vectors without an image")


def test_the_api_names_the_drift_of_a_range_and_repairs_only_when_asked(stack: Stack, drift: Drift) -> None:
    lost, stray_id = drift.lost, drift.stray_id
    first, end = min(lost.image_id, stray_id), max(lost.image_id, stray_id) + 1
    dry = verify(stack, {"from": first, "to": end})
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["model_id"] == drift.model_id and body["repaired"] is False
    assert body["indexed_without_vector"] == [lost.image_id]
    assert body["vector_without_image"] == [stray_id]
    assert body["max_image_id"] >= stray_id and body["checked"] >= 1

    # A range without either is clean, whatever lies around it.
    assert (
        verify(stack, {"from": lost.image_id + 1, "to": lost.image_id + 2}).json()["indexed_without_vector"]
        == []
    )

    repaired = verify(stack, {"from": first, "to": end, "repair": True}).json()
    assert repaired["repaired"] is True and repaired["indexed_without_vector"] == [lost.image_id]
    assert state_of(stack, lost.image_id) == "pending" and not has_vector(stack, drift.model_id, stray_id)
    after = verify(stack, {"from": first, "to": end}).json()
    assert after["indexed_without_vector"] == after["vector_without_image"] == []
    # Pending, not drift: what `medsearch verify` and `reindex` index again.
    reindexed = medsearch(stack, "reindex", role="editor")
    assert reindexed.returncode == 0, reindexed.stderr
    assert state_of(stack, lost.image_id) == "indexed" and has_vector(stack, drift.model_id, lost.image_id)


def test_verify_is_audited_as_a_reindex(stack: Stack, indexed: list[Indexed]) -> None:
    assert verify(stack, {"from": 0, "to": 10}).status_code == 200
    events = requests.get(
        f"{stack.gateway}/api/v1/audit",
        params={"action": "reindex", "limit": 5},
        headers=stack.auth,
        timeout=30,
    ).json()["items"]
    assert any(event["detail"].startswith("verify of image IDs 0-9: ") for event in events if event["detail"])


@pytest.mark.parametrize(("body", "words"), BAD_JSON_RANGES, ids=lambda v: repr(v)[:40])
def test_a_bad_verify_request_is_400_and_says_what_is_wrong(
    stack: Stack, indexed: list[Indexed], body: Any, words: str
) -> None:
    response = verify(stack, body)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:medsearch:problem:invalid-request"
    assert words in problem["detail"], problem["detail"]


def test_an_empty_or_broken_body_is_400(stack: Stack) -> None:
    for data in (b"", b"{"):
        response = requests.post(
            f"{stack.gateway}{VERIFY}", data=data, headers=stack.auth_as("editor"), timeout=HTTP_TIMEOUT_S
        )
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["detail"]


def test_a_reader_may_not_verify(stack: Stack, indexed: list[Indexed]) -> None:
    refused = verify(stack, {"from": 0, "to": 10, "repair": True}, role="reader")
    assert refused.status_code == 403, refused.text
    assert "needs the editor role" in refused.json()["detail"]
    by_cli = medsearch(stack, "verify", role="reader")
    assert by_cli.returncode == 1 and "editor" in by_cli.stderr


def test_an_unreachable_gateway_is_exit_1() -> None:
    result = medsearch("http://127.0.0.1:9", "verify", "--timeout", "2")
    assert result.returncode == 1 and "cannot reach" in result.stderr
