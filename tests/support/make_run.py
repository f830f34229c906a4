"""`make run`'s script as a test starts it: its own process group, a data folder, free ports,
and a token file of its own (never the user's)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from medsearch_client.client import TOKEN_ENV, TOKEN_FILE_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GUARD_S = 60.0
SERVICES = ("gateway", "embedder", "search", "catalog")
# What scripts/ready.py prints once everything is up (the supervisor puts its own prefix before it).
SIGN_IN_LINE = re.compile(r"ready: MedSearch is up: open (\S+)")


@dataclass(frozen=True)
class MakeRun:
    """A started `make run`: the process, its log (shared by every start of a test) and where
    this start's output begins in it, and the admin token file it was given."""

    process: subprocess.Popen[bytes]
    log: Path
    log_start: int
    token_file: Path

    def output(self) -> str:
        """What this start has written to the log so far."""
        with open(self.log, "rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode("utf-8", "replace")

    def wait_for_sign_in_link(self, timeout_s: float) -> str:
        """The sign-in link this start prints once everything is up; fails with the log if the
        process ends or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while not (found := SIGN_IN_LINE.search(self.output())):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)
        return found.group(1)

    def medsearch_env(self) -> dict[str, str]:
        """The environment of a `medsearch` command the local user runs: the token file, no
        MEDSEARCH_TOKEN of the test runner's."""
        env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
        env[TOKEN_FILE_ENV] = str(self.token_file)
        return env


def token_of(link: str) -> str:
    """The token in a sign-in link's fragment (`…/signin#token=mst_…`)."""
    return parse_qs(urlsplit(link).fragment)["token"][0]


@contextmanager
def make_run(data: Path, ports: dict[str, int], log: Path, **extra: str) -> Iterator[MakeRun]:
    """scripts/run.py with random weights and the embedded stores; killed at the end if still up.
    Its token file is `config/medsearch/token` beside `data` unless `extra` names one: the same
    for every start on the same data, as a user's is."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MEDSEARCH_DATABASE_URL", "MEDSEARCH_MILVUS_URI", TOKEN_ENV)
    }
    env.update({f"MEDSEARCH_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(MEDSEARCH_DATA_DIR=str(data), MEDSEARCH_EMBEDDER_WEIGHTS="random:42")
    env[TOKEN_FILE_ENV] = str(data.parent / "config" / "medsearch" / "token")
    env.update(extra)
    log_start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        # Its own process group, as a terminal would give it: Ctrl-C goes to the whole group.
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts" / "run.py")],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield MakeRun(process, log, log_start, Path(env[TOKEN_FILE_ENV]))
    finally:
        if process.poll() is None:
            stop_everything(process)


def stop_everything(process: subprocess.Popen[bytes]) -> None:
    """After a failed test: Ctrl-C first, so that the stores stop cleanly; then SIGKILL to every
    process below it (the supervisor starts each service in a session of its own, out of our group)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_GUARD_S)
    except subprocess.TimeoutExpired:
        for pid in descendants(process.pid, ""):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_GUARD_S)


def ctrl_c(process: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C, as a terminal sends it: every service must stop cleanly."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        code = process.wait(timeout=STOP_GUARD_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {STOP_GUARD_S} s after Ctrl-C:\n{log.read_text()}") from None
    # 130: interrupted, as a shell reports Ctrl-C; every service must have stopped cleanly.
    assert code == 130, log.read_text()
    stops = log.read_text().split("sending SIGTERM")[-1]
    for name in SERVICES:
        assert f"{name} stopped (rc=0)" in stops, log.read_text()


def descendants(pid: int, argv_part: str) -> list[int]:
    """Every process below `pid` whose command line contains `argv_part`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], list(children.get(pid, []))
    while pending:
        candidate = pending.pop(0)
        try:
            cmdline = (Path("/proc") / str(candidate) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if argv_part.encode() in cmdline:
            found.append(candidate)
        pending.extend(children.get(candidate, []))
    return found
