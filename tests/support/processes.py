"""Services as real processes: a free port, and waiting until one is ready."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> list[int]:
    """Poll `/readyz` until 200; fail with the process's log if it dies or the time runs out.

    Returns the statuses seen before ready, to show what the service said while it started.
    """
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    while True:
        try:
            status = requests.get(f"{base_url}/readyz", timeout=2).status_code
            if status == 200:
                return seen
            seen.append(status)
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or busy starting
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
