"""`make run`'s supervisor with real processes: a crashed one started again with a backoff, one
that keeps crashing given up while the others keep running, a failed start-up stopping
everything, watched things restarted, and a clean stop (SIGKILL for what ignores SIGTERM)."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from supervisor import Supervisor, Watch, backoff_s, read_procfile

PY = sys.executable
GUARD_S = 30.0


@contextmanager
def running(supervisor: Supervisor) -> Iterator[dict[str, int]]:
    """The supervisor on a thread; its exit code in the dict once it stopped."""
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=supervisor.run(handle_signals=False)))
    thread.start()
    try:
        yield result
    finally:
        supervisor.stop(0)
        thread.join(GUARD_S)
        assert not thread.is_alive()


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_procfile_is_read_in_order_and_a_bad_line_is_an_error(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("# comment\n\nweb: exec python -m web\nworker:   run  it\n")
    assert list(read_procfile(procfile).items()) == [("web", "exec python -m web"), ("worker", "run  it")]
    procfile.write_text("web exec python\n")
    with pytest.raises(ValueError, match="Procfile:1"):
        read_procfile(procfile)
    real = read_procfile(Path(__file__).resolve().parents[2] / "Procfile")
    assert list(real) == ["catalog", "embedder", "search", "gateway", "ready"]


def test_backoff_doubles_up_to_30_s() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crashed_process_starts_again_and_one_that_keeps_crashing_is_given_up(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    commands = {
        # Crashes at once, every time.
        "flaky": f"echo start >> {starts}; exit 3",
        "steady": f"exec {PY} -c 'import time; time.sleep(600)'",
    }
    out = io.StringIO()
    supervisor = Supervisor(commands, {}, tmp_path, max_restarts=2, window_s=60, out=out)
    with running(supervisor) as result:
        wait_for(lambda: "not restarting it" in out.getvalue(), out.getvalue())
        steady = next(c for c in supervisor.children if c.name == "steady")
        assert steady.process is not None and steady.process.poll() is None  # the others keep serving
    log = out.getvalue()
    assert starts.read_text().count("start") == 3  # the first start and two restarts
    assert "flaky exited with code 3; restarting it in 1 s (restart 1 of at most 2" in log
    assert "restarting it in 2 s (restart 2 of at most 2" in log
    assert "flaky exited with code 3, its 3th exit within 60 s: not restarting it" in log
    assert "steady stopped (rc=-15)" in log and result["code"] == 0


def test_a_process_killed_9_is_back_after_a_second(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor({"svc": f"exec {PY} -c 'import time; time.sleep(600)'"}, {}, tmp_path, out=out)
    with running(supervisor):
        wait_for(lambda: supervisor.children[0].process is not None, "never started")
        first = supervisor.children[0].process
        assert first is not None
        first.kill()
        wait_for(
            lambda: (
                supervisor.children[0].process is not first
                and supervisor.children[0].process is not None
                and supervisor.children[0].process.poll() is None
            ),
            out.getvalue(),
        )
    assert "svc exited with code -9; restarting it in 1 s" in out.getvalue()


def test_a_failed_start_up_stops_everything_with_its_code(tmp_path: Path) -> None:
    out = io.StringIO()
    commands = {"svc": f"exec {PY} -c 'import time; time.sleep(600)'", "ready": "echo no token; exit 4"}
    supervisor = Supervisor(commands, {}, tmp_path, out=out)
    assert supervisor.run(handle_signals=False) == 4
    log = out.getvalue()
    assert "ready      | no token" in log and "ready exited with code 4: start-up failed; stopping" in log
    assert "svc stopped (rc=-15)" in log


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('up', flush=True); time.sleep(600)"
    )
    stubborn = f'exec {PY} -c "{script}"'
    out = io.StringIO()
    supervisor = Supervisor({"stubborn": stubborn}, {}, tmp_path, stop_grace_s=1, out=out)
    with running(supervisor):
        wait_for(lambda: "stubborn   | up" in out.getvalue(), out.getvalue())
    assert "did not stop in 1 s: SIGKILL" in out.getvalue() and "stubborn stopped (rc=-9)" in out.getvalue()


def test_a_watched_thing_that_dies_is_started_again(tmp_path: Path) -> None:
    state = {"alive": True, "restarts": 0}

    def restart() -> None:
        state["restarts"] += 1
        state["alive"] = True

    out = io.StringIO()
    supervisor = Supervisor(
        {}, {}, tmp_path, watches=(Watch("engine", lambda: bool(state["alive"]), restart),), out=out
    )
    with running(supervisor):
        state["alive"] = False
        wait_for(lambda: state["restarts"] == 1, out.getvalue())
    assert "engine is gone; starting it again" in out.getvalue() and "engine is back" in out.getvalue()
