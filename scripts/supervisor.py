"""`make run`'s processes (the Procfile's), each started again when it crashes.

honcho, which ran them before, ended every process when one exited, so one crashed service
took the whole stack down. Here a process that exits by itself is started again after a
backoff (1, 2, 4 … s, at most 30 s), up to `max_restarts` times within `window_s`; the others
keep serving meanwhile (the gateway answers 503 naming the one that is missing). A process
that crashes more often than that stays down, and the log says so. The readiness watcher is
not restarted: when it fails, start-up failed, and everything stops. Ctrl-C or SIGTERM stops
everything: SIGTERM to each process, SIGKILL to any still there after `stop_grace_s`.

Things that are not Procfile processes (the embedded Milvus engine) are watched the same way
through a `Watch`: how to tell it is alive, and how to start it again.

Each output line is relayed with the time and the process's name, as honcho did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Processes whose exit means start-up failed, not a crash to repair.
ONE_SHOT = ("ready",)
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


@dataclass
class Watch:
    """Something the supervisor keeps alive that it did not start itself."""

    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]


@dataclass
class _Child:
    name: str
    command: str
    process: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    given_up: bool = False


def read_procfile(path: Path) -> dict[str, str]:
    """name -> shell command, in the file's order; comments and blank lines skipped."""
    commands: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected 'name: command', got {line!r}")
        commands[match[1]] = match[2]
    return commands


def backoff_s(restarts: int) -> float:
    """The wait before restart number `restarts` (1-based): 1, 2, 4 … 30 s."""
    return float(min(30, 2 ** (restarts - 1)))


class Supervisor:
    def __init__(
        self,
        commands: Mapping[str, str],
        env: Mapping[str, str],
        cwd: Path,
        *,
        watches: tuple[Watch, ...] = (),
        max_restarts: int = 5,
        window_s: float = 600.0,
        stop_grace_s: float = 10.0,
        out: IO[str] = sys.stdout,
    ) -> None:
        self.children = [_Child(name, command) for name, command in commands.items()]
        self.env = dict(env)
        self.cwd = cwd
        self.watches = watches
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.stop_grace_s = stop_grace_s
        self._out = out
        self._print_lock = threading.Lock()
        self._stopping = threading.Event()
        self._exit_code = 0

    def run(self, *, handle_signals: bool = True) -> int:
        """Start everything and keep it up until stopped; the exit code (130 after Ctrl-C).
        `handle_signals`: Ctrl-C and SIGTERM stop it (only possible on the main thread)."""
        if handle_signals:
            signal.signal(signal.SIGINT, lambda *_: self.stop(130))
            signal.signal(signal.SIGTERM, lambda *_: self.stop(0))
        for child in self.children:
            self._start(child)
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            for child in self.children:
                self._tend(child, now)
            for watch in self.watches:
                self._tend_watch(watch)
        self._stop_all()
        return self._exit_code

    def stop(self, code: int) -> None:
        if not self._stopping.is_set():
            self._exit_code = code
            self._stopping.set()

    def say(self, name: str, line: str) -> None:
        with self._print_lock:
            self._out.write(f"{time.strftime('%H:%M:%S')} {name:<10} | {line}\n")
            self._out.flush()

    # -- one process --------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        # A session of its own: a Ctrl-C in the terminal reaches only us, and we stop each
        # process in order rather than all at once.
        child.process = subprocess.Popen(
            ["/bin/sh", "-c", child.command],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.restart_at = None
        self.say("supervisor", f"{child.name} started (pid {child.process.pid})")
        threading.Thread(target=self._relay, args=(child.name, child.process), daemon=True).start()

    def _relay(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def _tend(self, child: _Child, now: float) -> None:
        if child.given_up or child.process is None:
            return
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._start(child)
            return
        code = child.process.poll()
        if code is None:
            return
        if child.name in ONE_SHOT:
            child.given_up = True  # done, either way
            if code != 0:
                self.say(
                    "supervisor",
                    f"{child.name} exited with code {code}: start-up failed; stopping everything",
                )
                self.stop(code)
            return
        while child.crashes and now - child.crashes[0] > self.window_s:
            child.crashes.popleft()
        child.crashes.append(now)
        if len(child.crashes) > self.max_restarts:
            child.given_up = True
            self.say(
                "supervisor",
                f"{child.name} exited with code {code}, its {len(child.crashes)}th exit within"
                f" {self.window_s:.0f} s: not restarting it; the others keep serving",
            )
            return
        wait_s = backoff_s(len(child.crashes))
        child.restart_at = now + wait_s
        self.say(
            "supervisor",
            f"{child.name} exited with code {code}; restarting it in {wait_s:.0f} s"
            f" (restart {len(child.crashes)} of at most {self.max_restarts} in {self.window_s:.0f} s)",
        )

    def _tend_watch(self, watch: Watch) -> None:
        if watch.alive():
            return
        self.say("supervisor", f"{watch.name} is gone; starting it again")
        try:
            watch.restart()
        except Exception as exc:
            self.say("supervisor", f"{watch.name} could not be started again: {exc}")
        else:
            self.say("supervisor", f"{watch.name} is back")

    def _stop_all(self) -> None:
        self.say("supervisor", "sending SIGTERM to all processes")
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            try:
                os.killpg(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_grace_s
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("supervisor", f"{child.name} did not stop in {self.stop_grace_s:.0f} s: SIGKILL")
                os.killpg(child.process.pid, signal.SIGKILL)
                code = child.process.wait()
            self.say("supervisor", f"{child.name} stopped (rc={code})")
