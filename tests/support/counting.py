"""A fake service on a real socket that counts the requests it gets and answers as a test says.

For checking how often a client sends a call: slow answers (a read timeout on the client's
side), chosen statuses, or an answer that never comes, each request counted as it arrives.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Longest a slow answer waits for the test to release it: a hang guard, not a measure.
HANG_GUARD_S = 30.0


@dataclass
class CountingService:
    """Each request is counted by "METHOD /path" (without the query). A path in `statuses` is
    answered with that status as problem+json (with `problem`'s members added); any other path
    waits `delay_s` (or until `release` is set), then answers 200 with `{"ok": true}`."""

    url: str = ""
    delay_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    problem: dict[str, object] = field(default_factory=dict)
    retry_after_s: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    requests: Counter[str] = field(default_factory=Counter)
    connections: set[tuple[str, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> int:
        with self._lock:
            return self.requests[what]

    def _seen(self, what: str, peer: tuple[str, int]) -> None:
        with self._lock:
            self.requests[what] += 1
            self.connections.add(peer)


def _handler(service: CountingService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's reused connections show as one peer

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            service._seen(f"{self.command} {path}", self.client_address)
            status = service.statuses.get(path)
            if status is None:
                service.release.wait(min(service.delay_s, HANG_GUARD_S))
                self._send(200, "application/json", {"ok": True})
                return
            headers = {"Retry-After": str(service.retry_after_s)} if service.retry_after_s else {}
            problem = {"type": "about:blank", "title": "Test", "status": status, "detail": f"said {status}"}
            problem.update(service.problem)
            self._send(status, "application/problem+json", problem, headers)

        def _send(self, status: int, mime: str, body: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up waiting: what this service is for

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def counting_service(**options: object) -> Iterator[CountingService]:
    """A CountingService listening on 127.0.0.1 until the block ends."""
    service = CountingService(**options)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = True
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
