"""ServiceClient against real HTTP servers on 127.0.0.1: retries, timeouts, typed errors, request IDs."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from medsearch_common.client import (
    RetryPolicy,
    ServiceClient,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from medsearch_common.context import set_request_id
from medsearch_common.httpapp import create_service_app
from tests.common.conftest import JsonLog

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests honours proxy variables; calls to 127.0.0.1 must go straight to the test server."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Upstream:
    """A real HTTP server on 127.0.0.1 whose answers the test controls."""

    url: str
    failures: int = 0  # /flaky answers 503 this many times before it succeeds
    slow_s: float = 5.0  # /slow waits this long, or until the test ends, before answering
    calls: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> int:
        with self.lock:
            self.calls[name] += 1
            return self.calls[name]


def problem(status: int, detail: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    body = {"type": "urn:test:problem", "title": "Test problem", "status": status, "detail": detail}
    return body, status, {"Content-Type": "application/problem+json"}


def upstream_app(upstream: Upstream) -> Flask:
    app = Flask("fake_upstream")

    @app.route("/flaky", methods=["GET", "POST", "PUT"])
    def flaky() -> Any:
        calls = upstream.count("flaky")
        if calls <= upstream.failures:
            return problem(503, f"warming up ({calls})")
        return {"calls": calls, "method": request.method}

    @app.route("/slow", methods=["GET", "POST"])
    def slow() -> dict[str, Any]:
        upstream.count("slow")
        upstream.release.wait(upstream.slow_s)
        return {"late": True}

    @app.route("/status/<int:status>", methods=["GET", "POST"])
    def status(status: int) -> Any:
        upstream.count(f"status/{status}")
        return problem(status, f"upstream said {status}")

    @app.get("/plain/<int:status>")
    def plain(status: int) -> tuple[str, int]:
        upstream.count(f"plain/{status}")
        return "not json", status

    @app.route("/echo", methods=["GET", "POST"])
    def echo() -> dict[str, Any]:
        upstream.count("echo")
        return {
            "request_id": request.headers.get("X-Request-ID"),
            "path": request.path,
            "args": request.args.to_dict(),
            "json": request.get_json(silent=True),
            "form": request.form.to_dict(),
            "files": {name: file.read().decode() for name, file in request.files.items()},
            "custom": request.headers.get("X-Custom"),
        }

    return app


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream(url="")
    server = make_server("127.0.0.1", 0, upstream_app(state), threaded=True)
    state.url = f"http://127.0.0.1:{server.server_port}"
    # A short poll interval lets shutdown() return at once instead of after up to 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def make_client() -> Iterator[Callable[..., ServiceClient]]:
    """ServiceClients named "embedder" with fast retries, closed after the test."""
    clients: list[ServiceClient] = []

    def make(base_url: str, **options: Any) -> ServiceClient:
        options.setdefault("retry", FAST_RETRY)
        client = ServiceClient("embedder", base_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(upstream: Upstream, make_client: Callable[..., ServiceClient]) -> ServiceClient:
    return make_client(upstream.url)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# Success and request building


def test_get_json_returns_the_parsed_body_and_sends_params(client: ServiceClient) -> None:
    body = client.get_json("/echo", params={"k": "5", "model": "densenet"})
    assert body["path"] == "/echo"
    assert body["args"] == {"k": "5", "model": "densenet"}


def test_base_url_and_path_join_with_exactly_one_slash(
    upstream: Upstream, make_client: Callable[..., ServiceClient]
) -> None:
    client = make_client(upstream.url + "/")
    assert client.get_json("echo")["path"] == "/echo"
    assert client.get_json("/echo")["path"] == "/echo"


def test_post_sends_json_form_files_and_headers(client: ServiceClient) -> None:
    assert client.request("POST", "/echo", json={"vector": [1, 2]}).json()["json"] == {"vector": [1, 2]}
    body = client.request(
        "post", "/echo", data={"dataset": "nih"}, files={"file": b"image bytes"}, headers={"X-Custom": "yes"}
    ).json()
    assert body["form"] == {"dataset": "nih"}
    assert body["files"] == {"file": "image bytes"}
    assert body["custom"] == "yes"


# Retries


def test_get_is_retried_on_503_then_succeeds(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 2
    response = client.request("GET", "/flaky")
    assert response.status_code == 200
    assert response.json() == {"calls": 3, "method": "GET"}
    assert upstream.calls["flaky"] == 3


def test_get_gives_up_after_the_policys_attempts(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 10
    with pytest.raises(UpstreamUnavailable) as caught:
        client.request("GET", "/flaky")
    assert upstream.calls["flaky"] == 3
    assert caught.value.service == "embedder"
    # Its words go to the log only: a server error's detail may name hosts behind it.
    assert str(caught.value) == "embedder is unavailable"
    assert caught.value.upstream_detail == "warming up (3)"


def test_put_is_idempotent_and_retried(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 1
    assert client.request("PUT", "/flaky").status_code == 200
    assert upstream.calls["flaky"] == 2


def test_post_is_not_retried_on_503(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 1
    with pytest.raises(UpstreamUnavailable):
        client.request("POST", "/flaky")
    assert upstream.calls["flaky"] == 1


def test_post_marked_idempotent_is_retried(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 2
    response = client.request("POST", "/flaky", idempotent=True)
    assert response.json() == {"calls": 3, "method": "POST"}
    assert upstream.calls["flaky"] == 3


def test_get_marked_not_idempotent_is_not_retried(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 1
    with pytest.raises(UpstreamUnavailable):
        client.request("GET", "/flaky", idempotent=False)
    assert upstream.calls["flaky"] == 1


def test_a_retried_post_resends_its_file_bytes(upstream: Upstream, client: ServiceClient) -> None:
    upstream.failures = 1
    response = client.request("POST", "/flaky", files={"file": b"xray"}, idempotent=True)
    assert response.status_code == 200
    assert upstream.calls["flaky"] == 2


def test_502_is_not_retried_and_raises_upstream_failed(upstream: Upstream, client: ServiceClient) -> None:
    # The work may have run: only a 503 (come back later) is sent again (tests/common/test_retries.py).
    with pytest.raises(UpstreamFailed) as caught:
        client.request("GET", "/status/502")
    assert upstream.calls["status/502"] == 1
    assert str(caught.value) == "embedder failed with HTTP 502"


def test_504_is_not_retried_and_raises_upstream_timeout(upstream: Upstream, client: ServiceClient) -> None:
    with pytest.raises(UpstreamTimeout) as caught:
        client.request("GET", "/status/504")
    assert upstream.calls["status/504"] == 1
    assert str(caught.value) == "embedder timed out"


# Errors that are not retried


def test_500_raises_upstream_failed_without_retry(upstream: Upstream, client: ServiceClient) -> None:
    with pytest.raises(UpstreamFailed) as caught:
        client.request("GET", "/status/500")
    assert upstream.calls["status/500"] == 1
    assert caught.value.service == "embedder"
    assert str(caught.value) == "embedder failed with HTTP 500"


def test_4xx_raises_upstream_rejected_with_status_and_problem_without_retry(
    upstream: Upstream, client: ServiceClient
) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        client.request("GET", "/status/422")
    assert upstream.calls["status/422"] == 1
    error = caught.value
    assert error.status == 422
    assert error.service == "embedder"
    assert error.problem == {
        "type": "urn:test:problem",
        "title": "Test problem",
        "status": 422,
        "detail": "upstream said 422",
    }
    assert str(error) == "embedder rejected the request: upstream said 422"


def test_4xx_without_json_body_gets_a_minimal_problem(upstream: Upstream, client: ServiceClient) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        client.request("GET", "/plain/400")
    assert caught.value.status == 400
    assert caught.value.problem["status"] == 400
    assert caught.value.problem["title"].upper() == "BAD REQUEST"


def test_5xx_without_json_body_names_the_status(upstream: Upstream, client: ServiceClient) -> None:
    with pytest.raises(UpstreamFailed, match="embedder failed with HTTP 500"):
        client.request("GET", "/plain/500")


def test_every_failure_is_an_upstream_error() -> None:
    for error_type in (UpstreamUnavailable, UpstreamTimeout, UpstreamFailed, UpstreamRejected):
        assert issubclass(error_type, UpstreamError)


# Timeouts and unreachable services


def test_read_timeout_raises_upstream_timeout_in_bounded_time(
    upstream: Upstream, make_client: Callable[..., ServiceClient]
) -> None:
    client = make_client(upstream.url, read_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        client.request("GET", "/slow")
    elapsed = time.monotonic() - started
    # One attempt of 0.2 s (a call that timed out is never sent again), not the server's 5 s answer.
    assert elapsed < 3.0
    assert upstream.calls["slow"] == 1
    assert caught.value.service == "embedder"
    assert str(caught.value) == "embedder did not answer within 0.2 s"


def test_a_per_call_read_timeout_overrides_the_clients(upstream: Upstream, client: ServiceClient) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"within 0\.1 s$"):
        client.request("POST", "/slow", read_timeout_s=0.1, idempotent=False)
    assert time.monotonic() - started < 3.0


def test_a_closed_port_raises_upstream_unavailable_naming_the_service(
    make_client: Callable[..., ServiceClient],
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UpstreamUnavailable) as caught:
        make_client(url).request("GET", "/anything")
    assert caught.value.service == "embedder"
    # The address is for the log, not for the caller (the gateway's public answers carry it).
    assert str(caught.value) == "embedder is unreachable" and url not in str(caught.value)


def test_failed_attempts_are_logged_as_warnings(
    make_client: Callable[..., ServiceClient], json_log: JsonLog
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UpstreamUnavailable):
        make_client(url).request("GET", "/x")
    entries = json_log.with_msg("upstream call failed")
    assert [entry["attempt"] for entry in entries] == [1, 2, 3]
    assert all(entry["upstream"] == "embedder" and entry["level"] == "warning" for entry in entries)
    assert all(entry["url"] == url for entry in entries)  # where it failed: in the log only


# Request ID forwarding


def test_the_current_request_id_is_forwarded(client: ServiceClient) -> None:
    set_request_id("req-forward-1")
    assert client.get_json("/echo")["request_id"] == "req-forward-1"


def test_no_request_id_is_sent_when_none_is_current(client: ServiceClient) -> None:
    assert client.get_json("/echo")["request_id"] is None


def test_the_request_id_replaces_a_caller_supplied_one_and_leaves_the_callers_headers_alone(
    client: ServiceClient,
) -> None:
    set_request_id("req-current")
    headers = {"X-Request-ID": "stale", "X-Custom": "kept"}
    body = client.request("GET", "/echo", headers=headers).json()
    assert (body["request_id"], body["custom"]) == ("req-current", "kept")
    assert headers == {"X-Request-ID": "stale", "X-Custom": "kept"}


def test_a_service_view_forwards_its_incoming_request_id_upstream(client: ServiceClient) -> None:
    gateway = create_service_app("gateway", readiness=dict)

    @gateway.get("/proxy")
    def proxy() -> Any:
        return client.get_json("/echo")

    response = gateway.test_client().get("/proxy", headers={"X-Request-ID": "req-end-to-end"})
    assert response.json is not None
    assert response.json["request_id"] == "req-end-to-end"


def test_an_unreachable_upstream_inside_a_view_is_a_503_problem(
    make_client: Callable[..., ServiceClient],
) -> None:
    embedder = make_client(f"http://127.0.0.1:{closed_port()}")
    gateway = create_service_app("gateway", readiness=dict)

    @gateway.get("/proxy")
    def proxy() -> Any:
        return embedder.get_json("/v1/embed")

    response = gateway.test_client().get("/proxy")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.json is not None
    assert response.json["type"] == "urn:medsearch:problem:upstream-unavailable"
    assert response.json["detail"] == "embedder is unreachable"


# RetryPolicy


def test_retry_delay_doubles_each_attempt_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=6, backoff_s=0.1, max_backoff_s=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.backoff_s, policy.max_backoff_s) == (3, 0.2, 2.0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0])


# Broken responses: a server that answers on a raw socket


@contextmanager
def raw_server(payload: bytes, *, hold_open: bool) -> Iterator[str]:
    """A server that answers one connection with `payload`, then closes it or holds it open (up to 1 s)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(2.0)  # a test that never connects must not hang the thread
    done = threading.Event()

    def answer_once() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(payload)
            if hold_open:
                done.wait(1.0)

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


def test_a_body_that_stalls_past_the_read_timeout_raises_upstream_timeout(
    make_client: Callable[..., ServiceClient],
) -> None:
    payload = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial":'
    with raw_server(payload, hold_open=True) as url:
        client = make_client(url, read_timeout_s=0.2, retry=RetryPolicy(attempts=1))
        with pytest.raises(UpstreamTimeout):
            client.request("GET", "/embed")


def test_a_truncated_response_raises_a_typed_upstream_error(
    make_client: Callable[..., ServiceClient],
) -> None:
    payload = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    with raw_server(payload, hold_open=False) as url:
        client = make_client(url, retry=RetryPolicy(attempts=1))
        with pytest.raises(UpstreamError) as caught:
            client.request("GET", "/embed")
    assert caught.value.service == "embedder"


def test_a_retry_policy_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)
