"""`make run`'s script: the whole system up on embedded defaults, signed in with the admin
token it leaves for the local user, stopped, started again with the same data and token.

A temporary data folder, free ports, random weights, the embedded PostgreSQL (never the
test machine's server) and a token file of its own: what a new user gets, minus the ImageNet
download.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.make_run import SERVICES, MakeRun, ctrl_c, make_run, token_of
from tests.support.processes import free_port, wait_ready

pytestmark = pytest.mark.integration

START_GUARD_S = 300.0


def search(gateway: str, path: Path, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = requests.post(
        f"{gateway}/api/v1/search", files={"image": ("q.png", path.read_bytes())}, headers=auth, timeout=120
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def signed_in(gateway: str, run: MakeRun) -> dict[str, str]:
    """The sign-in link this start printed: its token is the token file's, it signs a browser
    in as an admin, and a request without it is refused. The token's Authorization header."""
    link = run.wait_for_sign_in_link(START_GUARD_S)
    assert link.startswith(f"{gateway}/signin#token=mst_"), link
    token = token_of(link)
    assert run.token_file.read_text().splitlines()[0] == token
    session = requests.post(f"{gateway}/api/v1/session", json={"token": token}, timeout=30)
    assert session.status_code == 201, session.text
    assert session.json()["role"] == "admin"
    assert requests.get(f"{gateway}/api/v1/stats", timeout=10).status_code == 401
    return {"Authorization": f"Bearer {token}"}


def test_run_seed_stop_and_start_again_with_the_same_data(tmp_path: Path, test_data: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    images = sorted((test_data / "nih_cxr14" / "images").glob("*.png"))[:4]
    for image in images:
        shutil.copy(image, seed / image.name)
    data, log = tmp_path / "data", tmp_path / "run.log"
    ports = {name: free_port() for name in (*SERVICES, "milvus")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"

    with make_run(data, ports, log, MEDSEARCH_SEED_DIR=str(seed)) as run:
        wait_ready(gateway, run.process, log, START_GUARD_S)
        auth = signed_in(gateway, run)
        assert "made an admin API token" in run.output()
        # The seeding ingest ran with the same token.
        deadline = time.monotonic() + START_GUARD_S
        while indexed(gateway, auth) < len(images):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        first = search(gateway, images[0], auth)
        assert first[0]["image"]["metadata"]["dataset"] == "seed"
        ctrl_c(run.process, log)
    assert (data / "postgres").is_dir() and (data / "milvus" / "data").is_dir()
    assert not list((data / "postgres").glob("postmaster.pid")), "the embedded PostgreSQL still runs"
    # Only the local user may read the token.
    assert stat.S_IMODE(run.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(run.token_file.parent.stat().st_mode) == 0o700

    # Started again (seeding again too): the same images, nothing added twice, the same token.
    with make_run(data, ports, log, MEDSEARCH_SEED_DIR=str(seed)) as run:
        wait_ready(gateway, run.process, log, START_GUARD_S)
        assert signed_in(gateway, run) == auth
        assert "is still good" in run.output()
        stats = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=10).json()
        assert stats["images"] == len(images) and stats["index"]["indexed"] == len(images)
        again = search(gateway, images[0], auth)
        assert [hit["image"]["id"] for hit in again] == [hit["image"]["id"] for hit in first]
        # A Milvus that lost a vector: `medsearch reindex --all` writes every one again.
        lost = again[0]["image"]["id"]
        model_id = stats["model"]["model_id"]
        search_url = f"http://127.0.0.1:{ports['search']}/v1/models/{model_id}/vectors/{lost}"
        assert requests.delete(search_url, timeout=30).status_code == 204
        assert lost not in [hit["image"]["id"] for hit in search(gateway, images[0], auth)]
        # `medsearch` signs in with the token file that `make run` left.
        medsearch = Path(sys.executable).parent / "medsearch"
        reindexed = subprocess.run(
            [str(medsearch), "--url", gateway, "reindex", "--all"],
            capture_output=True,
            text=True,
            check=False,
            env=run.medsearch_env(),
        )
        assert reindexed.returncode == 0, reindexed.stderr
        assert reindexed.stdout.strip().splitlines()[-1] == "0 new, 4 completed, 0 already indexed, 0 failed"
        assert search(gateway, images[0], auth)[0]["image"]["id"] == lost
        ctrl_c(run.process, log)
    assert f"`medsearch` commands use the admin token in {run.token_file}" in log.read_text()


def indexed(gateway: str, auth: dict[str, str]) -> int:
    response = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["index"]["indexed"])
