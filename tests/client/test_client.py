"""The gateway client's pure parts: which failures are retried, how long it waits, what an
error says. (The client against the real gateway is tested end to end with the stack.)"""

from __future__ import annotations

import pytest

from medsearch_client.client import GatewayClient, GatewayError, RetryPolicy, is_retryable, problem_of


@pytest.mark.parametrize("status", [None, 502, 503, 504])
def test_service_down_slow_or_no_answer_is_retried(status: int | None) -> None:
    assert is_retryable(status)
    assert GatewayError(status, {"detail": "down"}).retryable


@pytest.mark.parametrize("status", [400, 404, 409, 413, 415, 422, 500])
def test_a_request_the_gateway_refuses_is_not_retried(status: int) -> None:
    assert not is_retryable(status)
    assert not GatewayError(status, {"detail": "bad"}).retryable


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = RetryPolicy(attempts=6, backoff_s=1.0, max_backoff_s=5.0)

    assert [policy.delay(attempt) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_after_in_seconds_is_honored_but_bounded() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=30.0)

    assert policy.delay(1, "7") == 7.0
    assert policy.delay(1, "3600") == 30.0
    # An HTTP date is not worth parsing here: the exponential backoff applies.
    assert policy.delay(2, "Wed, 21 Oct 2026 07:28:00 GMT") == 2.0


def test_a_retry_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)


def test_problem_json_is_kept_whole() -> None:
    body = (
        b'{"type": "urn:medsearch:problem:ingest-incomplete", "title": "Ingest incomplete", "status": 503,'
        b' "detail": "search is down", "dependency": "search", "image_id": 12, "index_state": "pending"}'
    )

    error = GatewayError(503, problem_of(503, "application/problem+json", body))

    assert (error.status, error.detail, error.dependency, error.image_id) == (
        503,
        "search is down",
        "search",
        12,
    )
    assert error.retryable


def test_a_body_that_is_not_problem_json_becomes_a_short_detail() -> None:
    page = b"<html>\n<body>  <h1>502 Bad Gateway</h1>  </body></html>" + b" " * 1000

    problem = problem_of(502, "text/html", page)

    assert problem == {
        "status": 502,
        "title": "HTTP 502",
        "detail": "<html> <body> <h1>502 Bad Gateway</h1> </body></html>",
    }
    assert problem_of(504, "application/json", b"not json")["detail"] == "not json"
    assert problem_of(503, "", b"")["detail"] == "HTTP 503 with no body"


def test_error_without_detail_falls_back_to_title_then_status() -> None:
    assert GatewayError(418, {"title": "I'm a teapot"}).detail == "I'm a teapot"
    assert GatewayError(418, {}).detail == "HTTP 418"
    assert GatewayError(422, {"image_id": True}).image_id is None


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://", ""])
def test_a_gateway_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        GatewayClient(url)
