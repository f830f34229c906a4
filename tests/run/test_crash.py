"""Crashes under `make run`: kill -9 of the search service and of the Milvus engine in the
middle of an ingest, and of each service in turn in another. The supervisor starts each one
again by itself; ingesting again completes the collection, and the two stores agree: every
image the catalog calls indexed has its vector, and no vector is left without its row.

The failure this first guarded against was silent: the catalog said "indexed", the second
ingest said "already indexed", and the image never appeared in any result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.make_run import SERVICES, MakeRun, descendants, make_run
from tests.support.processes import free_port, wait_ready

pytestmark = pytest.mark.integration

START_GUARD_S = 300.0
STOP_GUARD_S = 60.0
# Killed once this many images are indexed: writes before the kill are acknowledged ones.
KILL_AFTER_INDEXED = 15


def ingest(gateway: str, source: Path, run: MakeRun) -> subprocess.Popen[str]:
    """`medsearch ingest` as the local user runs it: signed in by `make run`'s token file."""
    medsearch = Path(sys.executable).parent / "medsearch"
    return subprocess.Popen(
        [str(medsearch), "--url", gateway, "ingest", str(source), "--concurrency", "8", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run.medsearch_env(),
    )


def bearer(run: MakeRun) -> dict[str, str]:
    """The admin token `make run` printed once up, as an Authorization header."""
    run.wait_for_sign_in_link(START_GUARD_S)
    return {"Authorization": f"Bearer {run.token_file.read_text().strip()}"}


def catalog_images(gateway: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        response = requests.get(f"{gateway}/api/v1/images", params=params, headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        page = response.json()
        images.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return images


def indexed_count(gateway: str, auth: dict[str, str]) -> int:
    try:
        response = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=10)
    except requests.RequestException:
        return 0
    assert response.status_code != 401, response.text
    return int((response.json().get("index") or {}).get("indexed", 0))


@pytest.mark.parametrize("engine", ["server", "lite"])
def test_kill_9_of_search_and_engine_during_ingest_loses_no_acknowledged_vector(
    tmp_path: Path, test_data: Path, engine: str
) -> None:
    source = test_data / "covid_hannover"
    expected = len((source / "labels.csv").read_text().strip().splitlines()) - 1
    data, log = tmp_path / "data", tmp_path / "run.log"
    ports = {name: free_port() for name in (*SERVICES, "milvus")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    # The default engine is a process of its own; Milvus Lite runs inside the search service.
    lite = {"MEDSEARCH_MILVUS_URI": str(data / "milvus.db")} if engine == "lite" else {}

    with make_run(data, ports, log, **lite) as run:
        process = run.process
        wait_ready(gateway, process, log, START_GUARD_S)
        auth = bearer(run)
        first = ingest(gateway, source, run)
        deadline = time.monotonic() + START_GUARD_S
        while indexed_count(gateway, auth) < KILL_AFTER_INDEXED:
            assert first.poll() is None, f"the ingest ended before the crash: {first.communicate()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # The crash: the engine and every search-service process at once, with no warning.
        victims = descendants(process.pid, "medsearch_search")
        assert victims, "no search service process found"
        if engine == "server":
            victims.append(int((data / "milvus" / "milvus.pid").read_text()))
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        # The supervisor starts them again; the others kept serving meanwhile.
        wait_for_restart(run, "search", ports["search"])
        if engine == "server":
            wait_for_log(run, "milvus is back")
        first.communicate(timeout=START_GUARD_S)  # it may have given up on what was in flight
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_GUARD_S)

    with make_run(data, ports, log, **lite) as run:
        process = run.process
        wait_ready(gateway, process, log, START_GUARD_S)
        # The same token after the crash: the file was written whole, and the catalog kept it.
        assert bearer(run) == auth
        model_id = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=10).json()["model"][
            "model_id"
        ]
        search = f"http://127.0.0.1:{ports['search']}/v1/models/{model_id}"
        # What the catalog called indexed when the crash came was acknowledged by the search
        # service first: every one must have its vector now, before anything is re-sent.
        acknowledged = indexed_ids(catalog_images(gateway, auth))
        assert len(acknowledged) >= KILL_AFTER_INDEXED
        assert without_vector(search, acknowledged) == []

        again = ingest(gateway, source, run)
        out, err = again.communicate(timeout=START_GUARD_S)
        assert again.returncode == 0, f"{out}\n{err}"
        images = catalog_images(gateway, auth)
        assert len(images) == expected
        assert len(indexed_ids(images)) == expected
        assert without_vector(search, indexed_ids(images)) == []
        assert requests.get(search, timeout=30).json()["count"] == expected
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_GUARD_S)


def test_each_service_killed_in_turn_during_an_ingest_comes_back_and_both_stores_agree(
    tmp_path: Path, test_data: Path
) -> None:
    source = test_data / "nih_cxr14"
    expected = len((source / "labels.csv").read_text().strip().splitlines()) - 1
    data, log = tmp_path / "data", tmp_path / "run.log"
    ports = {name: free_port() for name in (*SERVICES, "milvus")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    with make_run(data, ports, log) as run:
        wait_ready(gateway, run.process, log, START_GUARD_S)
        auth = bearer(run)
        first = ingest(gateway, source, run)
        for victim in ("catalog", "embedder", "search", "gateway"):
            target = indexed_count(gateway, auth) + 20
            deadline = time.monotonic() + START_GUARD_S
            while indexed_count(gateway, auth) < target and first.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            victims = descendants(run.process.pid, f"medsearch_{victim}")
            assert victims, f"no {victim} process found"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            wait_for_restart(run, victim, ports[victim])
        first.communicate(timeout=START_GUARD_S)  # it may have given up on what was in flight

        again = ingest(gateway, source, run)
        out, err = again.communicate(timeout=START_GUARD_S)
        assert again.returncode == 0, f"{out}\n{err}"
        images = catalog_images(gateway, auth)
        stats = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=10).json()
        search = f"http://127.0.0.1:{ports['search']}/v1/models/{stats['model']['model_id']}"
        # Every image once, every one indexed with its vector, and no vector beyond them.
        assert len(images) == expected and len({image["sha256"] for image in images}) == expected
        assert len(indexed_ids(images)) == expected
        assert without_vector(search, indexed_ids(images)) == []
        assert requests.get(search, timeout=30).json()["count"] == expected
        os.killpg(run.process.pid, signal.SIGINT)
        run.process.wait(timeout=STOP_GUARD_S)


def wait_for_log(run: MakeRun, text: str) -> None:
    deadline = time.monotonic() + START_GUARD_S
    while text not in run.output():
        assert run.process.poll() is None, run.output()
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{run.output()}"
        time.sleep(0.2)


def wait_for_restart(run: MakeRun, service: str, port: int) -> None:
    """The supervisor saw `service` die and started it again, and it is ready."""
    wait_for_log(run, f"{service} exited with code -9; restarting it in")
    wait_ready(f"http://127.0.0.1:{port}", run.process, run.log, START_GUARD_S)


def indexed_ids(images: list[dict[str, Any]]) -> list[int]:
    return [image["id"] for image in images if image["index_state"] == "indexed"]


def without_vector(search: str, image_ids: list[int]) -> list[int]:
    """The images the search service has no vector for."""
    return [
        image_id
        for image_id in image_ids
        if requests.get(f"{search}/vectors/{image_id}", timeout=30).status_code != 200
    ]
