"""`make run`'s script: the whole system up on embedded defaults, stopped, started again.

A temporary data folder, free ports, random weights and the embedded PostgreSQL (never the
test machine's server): what a new user gets, minus the ImageNet download.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.make_run import SERVICES, ctrl_c, make_run
from tests.support.processes import free_port, wait_ready

pytestmark = pytest.mark.integration

START_GUARD_S = 300.0


def search(gateway: str, path: Path) -> list[dict[str, Any]]:
    response = requests.post(
        f"{gateway}/api/v1/search", files={"image": ("q.png", path.read_bytes())}, timeout=120
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_run_seed_stop_and_start_again_with_the_same_data(tmp_path: Path, test_data: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    images = sorted((test_data / "nih_cxr14" / "images").glob("*.png"))[:4]
    for image in images:
        shutil.copy(image, seed / image.name)
    data, log = tmp_path / "data", tmp_path / "run.log"
    ports = {name: free_port() for name in (*SERVICES, "milvus")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"

    with make_run(data, ports, log, MEDSEARCH_SEED_DIR=str(seed)) as process:
        wait_ready(gateway, process, log, START_GUARD_S)
        deadline = time.monotonic() + START_GUARD_S
        while requests.get(f"{gateway}/api/v1/stats", timeout=10).json()["index"]["indexed"] < len(images):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        first = search(gateway, images[0])
        assert first[0]["image"]["metadata"]["dataset"] == "seed"
        ctrl_c(process, log)
    assert (data / "postgres").is_dir() and (data / "milvus" / "data").is_dir()
    assert not list((data / "postgres").glob("postmaster.pid")), "the embedded PostgreSQL still runs"

    # Started again (seeding again too): the same images, nothing added twice.
    with make_run(data, ports, log, MEDSEARCH_SEED_DIR=str(seed)) as process:
        wait_ready(gateway, process, log, START_GUARD_S)
        stats = requests.get(f"{gateway}/api/v1/stats", timeout=10).json()
        assert stats["images"] == len(images) and stats["index"]["indexed"] == len(images)
        again = search(gateway, images[0])
        assert [hit["image"]["id"] for hit in again] == [hit["image"]["id"] for hit in first]
        # A Milvus that lost a vector: `medsearch reindex --all` writes every one again.
        lost = again[0]["image"]["id"]
        model_id = stats["model"]["model_id"]
        search_url = f"http://127.0.0.1:{ports['search']}/v1/models/{model_id}/vectors/{lost}"
        assert requests.delete(search_url, timeout=30).status_code == 204
        assert lost not in [hit["image"]["id"] for hit in search(gateway, images[0])]
        medsearch = Path(sys.executable).parent / "medsearch"
        reindexed = subprocess.run(
            [str(medsearch), "--url", gateway, "reindex", "--all"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert reindexed.returncode == 0, reindexed.stderr
        assert reindexed.stdout.strip().splitlines()[-1] == "0 new, 4 completed, 0 already indexed, 0 failed"
        assert search(gateway, images[0])[0]["image"]["id"] == lost
        ctrl_c(process, log)
    assert "ready: MedSearch is up at" in log.read_text()
