"""What every benchmark needs besides its subject: a free port, a description of the machine,
and the whole system started as `make run` starts it, with an admin token to call it."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


def shared_data() -> Path:
    """The real X-rays: MEDSEARCH_TEST_DATA, else ../shared/data beside the repository."""
    return Path(
        os.environ.get("MEDSEARCH_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What ONNX Runtime and TensorFlow use when present (VNNI, BF16 and AMX on recent Xeons).
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine(**versions: str) -> dict[str, Any]:
    """CPU, cores, Python and platform, plus the versions a benchmark names."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    return {
        "cpu": cpu,
        # Machines of one kind differ here, and TensorFlow's speed with them.
        "simd": [flag for flag in SIMD_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def start_stack(folder: Path, ports: dict[str, int], weights: str = "random:42") -> subprocess.Popen[bytes]:
    """scripts/run.py serving `weights` with the embedded stores in `folder`; its log in run.log.
    Its admin token file is in `folder` too, never the user's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MEDSEARCH_DATABASE_URL", "MEDSEARCH_MILVUS_URI", "MEDSEARCH_TOKEN")
    }
    env.update({f"MEDSEARCH_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(
        MEDSEARCH_DATA_DIR=str(folder / "data"),
        MEDSEARCH_EMBEDDER_WEIGHTS=weights,
        MEDSEARCH_TOKEN_FILE=str(folder / "token"),
    )
    # The converted model from `make run`'s own data folder: converted once, not per stack.
    env.setdefault(
        "MEDSEARCH_EMBEDDER_CACHE_DIR", str(Path(__file__).resolve().parent.parent / "var" / "embedder")
    )
    log = open(folder / "run.log", "wb")  # open for the stack's whole life
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "run.py")],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group, so that SIGINT reaches every service
    )


def admin_token(ports: dict[str, int], name: str) -> str:
    """A new admin API token, made through the catalog as `make run` makes its own: every
    gateway endpoint but the health checks needs one (and /metrics an admin's)."""
    response = requests.post(
        f"http://127.0.0.1:{ports['catalog']}/v1/tokens", json={"name": name, "role": "admin"}, timeout=30
    )
    if response.status_code != 201:
        sys.exit(
            f"{name}: the catalog made no admin token: HTTP {response.status_code} {response.text[:300]}"
        )
    return str(response.json()["secret"])


def wait_ready(
    url: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 600, log: Path | None = None
) -> None:
    """Poll `url` until it says ready (the gateway answers 200 "degraded" while a service it
    needs still starts); exit the benchmark, with the tail of `log`, if `process` stops or the
    time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if says_ready(requests.get(url, timeout=2)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    state = (
        "stopped while starting" if process.poll() is not None else f"was not ready within {timeout_s:.0f} s"
    )
    sys.exit(f"{what} {state}\n{tail}")


def says_ready(response: requests.Response) -> bool:
    """A /readyz answer of "ready": 200 alone may be the gateway's "degraded"."""
    if response.status_code != 200:
        return False
    try:
        return bool(response.json().get("status") == "ready")
    except ValueError:
        return False


def _processes() -> dict[int, tuple[list[str], list[bytes]]]:
    """Every process on the machine: its /proc stat fields after the command name, and argv."""
    found: dict[int, tuple[list[str], list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found[int(entry.name)] = (fields, argv)
    return found


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of every process on the machine, summed by program ("cpu:<name>")."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for fields, argv in _processes().values():
        name = f"cpu:{program(argv)}"
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def stack_processes(session: int, folder: Path) -> dict[int, str]:
    """The processes of one stack, by PID, with their program: those of its session (`session`,
    the PID of the stack started with `start_stack`), those whose command line names its
    `folder` (embedded PostgreSQL leaves the session), and every descendant of either. Other
    stacks on the machine (a test run's) stay out of its figures."""
    table = {  # pid -> ppid, session, argv
        pid: (int(fields[1]), int(fields[3]), argv) for pid, (fields, argv) in _processes().items()
    }
    marker = str(folder).encode()
    members = {
        pid for pid, (_, sid, argv) in table.items() if sid == session or any(marker in part for part in argv)
    }
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in members} - members
        members |= children
        grew = bool(children)
    return {pid: program(table[pid][2]) for pid in members}


def program(argv: list[bytes]) -> str:
    words = [part.decode(errors="replace") for part in argv if part]
    for word in words:
        for known in ("medsearch_", "naive_app", "bench_", "honcho", "run.py", "chromium"):
            if known in word:
                return word.rsplit("/", 1)[-1]
    if words and "milvus" in words[0]:
        return "milvus engine"
    if words and "postgres" in words[0]:
        return "postgres"
    return "other"
