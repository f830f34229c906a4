"""A TCP proxy a test can cut, slow down and restore, to take a real server away from a service
and back, or make it answer late."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter

# The request line at the start of what a client sends: "POST /v1/embeddings?x=1 HTTP/1.1".
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[^ ?]*)[^ ]* HTTP/1\.[01]\r\n")


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` drops every connection and refuses new ones.

    `delay(s)` holds each piece of the server's answers for `s` seconds before passing it on:
    the server does the work at once, its answer comes late. `requests` counts the HTTP requests
    that went through, by "METHOD /path" (a request line at the start of what a client sent).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._delay_s = 0.0
        self.requests: Counter[str] = Counter()

    def delay(self, seconds: float) -> None:
        """Hold every later piece of an answer this long (0: pass answers on at once)."""
        self._delay_s = seconds

    def count(self, request: str) -> int:
        """How many requests "METHOD /path" went through."""
        with self._lock:
            return self.requests[request]

    def restore(self) -> None:
        """Listen again; nothing to do when it already does."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(), so the port is free at once.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if answers and self._delay_s:
                    time.sleep(self._delay_s)
                elif not answers and (line := _REQUEST_LINE.match(chunk)):
                    with self._lock:
                        self.requests[f"{line[1].decode()} {line[2].decode()}"] += 1
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
