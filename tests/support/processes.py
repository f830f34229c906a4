"""Services as real processes: a free port, and waiting until one is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def service_process(
    name: str, env: Mapping[str, str], log_path: Path, *, stop_guard_s: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m medsearch_<name>` on a free port, `env` added to ours, its output in `log_path`;
    yields the process and its base URL, and stops it at the end if the test did not."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"medsearch_{name}"],
            env={**os.environ, **env, "MEDSEARCH_PORT": str(port)},
            stdout=log,
            stderr=log,
        )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=stop_guard_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=stop_guard_s)


def wait_ready(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> list[int]:
    """Poll `/readyz` until it says ready (the gateway answers 200 "degraded" while a service
    it needs is not); fail with the process's log if it dies or the time runs out.

    Returns the statuses seen before ready, to show what the service said while it started.
    """
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    while True:
        try:
            answer = requests.get(f"{base_url}/readyz", timeout=2)
            if answer.status_code == 200 and answer.json().get("status") == "ready":
                return seen
            seen.append(answer.status_code)
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or busy starting
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
