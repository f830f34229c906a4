"""When ServiceClient sends a call again: only when the call surely did not run (no connection
was made) or the service said 503, come back later. A call whose answer timed out may still be
running (an embedding behind a busy queue): sending it again would only double the work, so it
is never re-sent, nor after a 502 or 504, whatever the method.

Each test counts the requests a real server on 127.0.0.1 received.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from medsearch_common.client import (
    RetryPolicy,
    ServiceClient,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.common.conftest import JsonLog
from tests.support.counting import counting_service

THREE_TRIES = RetryPolicy(attempts=3, backoff_s=0.01)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clients() -> Iterator[list[ServiceClient]]:
    made: list[ServiceClient] = []
    yield made
    for client in made:
        client.close()


def embedder_client(clients: list[ServiceClient], url: str, **options: object) -> ServiceClient:
    client = ServiceClient("embedder", url, retry=THREE_TRIES, **options)  # type: ignore[arg-type]
    clients.append(client)
    return client


def test_an_embedding_whose_answer_timed_out_is_sent_exactly_once(clients: list[ServiceClient]) -> None:
    with counting_service(delay_s=5.0) as service:
        client = embedder_client(clients, service.url, read_timeout_s=0.3)
        with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s"):
            client.request("POST", "/v1/embeddings", files=[("images", ("x.png", b"png"))], idempotent=True)
        assert service.count("POST /v1/embeddings") == 1


def test_a_get_whose_answer_timed_out_is_sent_exactly_once(clients: list[ServiceClient]) -> None:
    with counting_service(delay_s=5.0) as service:
        client = embedder_client(clients, service.url, read_timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            client.request("GET", "/v1/model")
        assert service.count("GET /v1/model") == 1


@pytest.mark.parametrize(("status", "error"), [(504, UpstreamTimeout), (502, UpstreamFailed)])
def test_a_502_or_504_is_not_sent_again(
    clients: list[ServiceClient], status: int, error: type[Exception]
) -> None:
    with counting_service(statuses={"/v1/embeddings": status}) as service:
        client = embedder_client(clients, service.url)
        with pytest.raises(error):
            client.request("POST", "/v1/embeddings", files={"images": b"png"}, idempotent=True)
        assert service.count("POST /v1/embeddings") == 1


def test_a_503_come_back_later_is_retried(clients: list[ServiceClient]) -> None:
    with counting_service(statuses={"/v1/embeddings": 503}) as service:
        client = embedder_client(clients, service.url)
        with pytest.raises(UpstreamUnavailable):
            client.request("POST", "/v1/embeddings", files={"images": b"png"}, idempotent=True)
        assert service.count("POST /v1/embeddings") == 3


def test_a_refused_connection_is_retried(clients: list[ServiceClient], json_log: JsonLog) -> None:
    with socket.socket() as holder:  # bound, never listening: every connection is refused
        holder.bind(("127.0.0.1", 0))
        client = embedder_client(clients, f"http://127.0.0.1:{holder.getsockname()[1]}")
        with pytest.raises(UpstreamUnavailable, match=r"^embedder is unreachable$"):
            client.request("GET", "/v1/model")
    assert [entry["attempt"] for entry in json_log.with_msg("upstream call failed")] == [1, 2, 3]


def test_a_body_that_stalls_is_not_sent_again(clients: list[ServiceClient]) -> None:
    """Headers came, then the body stopped: the service ran the call."""
    received: list[bytes] = []
    done = threading.Event()

    def answer_half(conn: socket.socket) -> None:
        with conn:
            received.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            done.wait(5.0)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)

        def serve() -> None:
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                threading.Thread(target=answer_half, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = embedder_client(clients, f"http://127.0.0.1:{listener.getsockname()[1]}", read_timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            client.request("GET", "/v1/model")
        sent = len(received)
        done.set()
        thread.join(timeout=5)
    assert sent == 1


def _keep_alive_then_close(close_on_second: bool) -> tuple[socket.socket, list[bytes], threading.Event]:
    """A service whose first connection answers one request, then closes as the second arrives
    (a kept-alive connection closed for idleness just as a call was sent on it); any later
    connection answers every request."""
    received: list[bytes] = []
    done = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)

    def talk(conn: socket.socket, first: bool) -> None:
        with conn:
            conn.settimeout(5.0)
            while not done.is_set():
                try:
                    request = conn.recv(65536)
                except OSError:
                    return
                if not request:
                    return
                received.append(request)
                if first and close_on_second and len(received) == 2:
                    return  # closed without a word
                conn.sendall(answer)

    def serve() -> None:
        first = True
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=talk, args=(conn, first), daemon=True).start()
            first = False

    threading.Thread(target=serve, daemon=True).start()
    return listener, received, done


@pytest.mark.parametrize(("method", "sent"), [("GET", 3), ("POST", 2)])
def test_a_kept_alive_connection_closed_unanswered_is_resent_only_when_idempotent(
    clients: list[ServiceClient], method: str, sent: int
) -> None:
    """Gunicorn closes connections idle past its keep-alive time: a call that meets the close
    was not answered, and an idempotent one goes again on a new connection."""
    listener, received, done = _keep_alive_then_close(close_on_second=True)
    try:
        client = embedder_client(clients, f"http://127.0.0.1:{listener.getsockname()[1]}")
        client.request(method, "/v1/model")
        if method == "GET":
            assert client.request(method, "/v1/model").json() == {}
        else:
            with pytest.raises(UpstreamUnavailable, match=r"^embedder is unreachable$"):
                client.request(method, "/v1/model")
        assert len(received) == sent
    finally:
        done.set()
        listener.close()
