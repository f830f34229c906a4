"""`python -m medsearch_search`: the real gunicorn process on Milvus Lite, its logs, restarts and errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.search.conftest import unit_vectors
from tests.support.processes import free_port, service_process, wait_ready

SECRET_PATIENT = "PATIENT-SECRET-4711"
SECRET_EXCLUDED = "EXCLUDED-SECRET-0815"
SECRET_DATASET = "DATASET-SECRET-2207"
MODEL_ID = "resnet50-proc"
# Generous: these guard against a hang, they do not measure speed.
START_GUARD_S = 60.0
STOP_GUARD_S = 30.0
HTTP_TIMEOUT_S = 30.0


def search_process(uri: str, log_path: Path) -> AbstractContextManager[tuple[subprocess.Popen[bytes], str]]:
    """The search service as a gunicorn process on `uri`; stopped at the end if the test did not."""
    return service_process("search", {"MEDSEARCH_MILVUS_URI": uri}, log_path, stop_guard_s=STOP_GUARD_S)


def stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM, then a clean exit within the guard."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_GUARD_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {STOP_GUARD_S} s after SIGTERM:\n{log_path.read_text()}"
        ) from None
    assert code == 0, log_path.read_text()


def json_lines(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


def items(count: int, patient_id: str | None = None) -> list[dict[str, Any]]:
    vectors = unit_vectors(count, 16, seed=21)
    return [
        {
            "id": i + 1,
            "vector": vector.tolist(),
            "attributes": {"dataset": SECRET_DATASET, "patient_id": patient_id or f"p{i + 1}", "age": 40 + i},
        }
        for i, vector in enumerate(vectors)
    ]


def hit_ids(base: str, vector: list[float], **body: Any) -> list[int]:
    response = requests.post(
        f"{base}/v1/models/{MODEL_ID}/search",
        json={"vectors": [vector], "k": 3, **body},
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"][0]]


@pytest.fixture
def lite_uri(tmp_path: Path) -> str:
    return str(tmp_path / "milvus" / "search.db")


def test_served_by_gunicorn_with_request_ids_and_json_logs_without_patient_ids_or_filter_values(
    lite_uri: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "search.log"
    stored = items(5, patient_id=SECRET_PATIENT)
    with search_process(lite_uri, log_path) as (process, base):
        wait_ready(base, process, log_path, timeout_s=START_GUARD_S)

        upserted = requests.put(
            f"{base}/v1/models/{MODEL_ID}/vectors",
            json={"items": stored},
            headers={"X-Request-ID": "trace-search-42"},
            timeout=HTTP_TIMEOUT_S,
        )
        assert upserted.status_code == 200, upserted.text
        assert upserted.json() == {"upserted": 5}
        assert upserted.headers["X-Request-ID"] == "trace-search-42"

        found = requests.post(
            f"{base}/v1/models/{MODEL_ID}/search",
            json={
                "vectors": [stored[2]["vector"]],
                "k": 3,
                "filter": {
                    "patient_id": [SECRET_PATIENT],
                    "dataset": [SECRET_DATASET],
                    "exclude_patients": [SECRET_EXCLUDED],
                    "age": {"min": 41, "max": 43},
                },
            },
            timeout=HTTP_TIMEOUT_S,
        )
        assert found.status_code == 200, found.text
        hits = [hit["id"] for hit in found.json()["results"][0]]
        assert hits[0] == 3 and sorted(hits) == [2, 3, 4]  # the three of age 41 to 43
        generated = found.headers["X-Request-ID"]
        assert len(generated) == 32

        refused = requests.post(
            f"{base}/v1/models/{MODEL_ID}/search",
            json={"vectors": [stored[0]["vector"]], "filter": {"sex": [SECRET_EXCLUDED]}},
            timeout=HTTP_TIMEOUT_S,
        )
        assert refused.status_code == 400
        assert refused.headers["Content-Type"] == "application/problem+json"

        stop(process, log_path)

    lines = json_lines(log_path)  # the process has exited: every line is written
    requests_logged = [line for line in lines if line.get("msg") == "request"]
    assert any(
        line.get("request_id") == "trace-search-42"
        and line["status"] == 200
        and line["endpoint"] == "/v1/models/<model_id>/vectors"
        for line in requests_logged
    ), requests_logged
    assert any(
        line.get("request_id") == generated and line["endpoint"] == "/v1/models/<model_id>/search"
        for line in requests_logged
    ), requests_logged
    assert any(line["status"] == 400 for line in requests_logged)
    assert all(line["service"] == "search" for line in lines)
    text = log_path.read_text()
    for secret in (SECRET_PATIENT, SECRET_EXCLUDED, SECRET_DATASET):
        assert secret not in text


def test_vectors_survive_a_restart_on_the_same_lite_folder(lite_uri: str, tmp_path: Path) -> None:
    stored = items(8)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with search_process(lite_uri, first_log) as (process, base):
        wait_ready(base, process, first_log, timeout_s=START_GUARD_S)
        upserted = requests.put(
            f"{base}/v1/models/{MODEL_ID}/vectors", json={"items": stored}, timeout=HTTP_TIMEOUT_S
        )
        assert upserted.status_code == 200, upserted.text
        stop(process, first_log)

    with search_process(lite_uri, second_log) as (process, base):
        wait_ready(base, process, second_log, timeout_s=START_GUARD_S)
        for item in stored:
            assert hit_ids(base, item["vector"])[0] == item["id"]
        kept = requests.get(f"{base}/v1/models/{MODEL_ID}/vectors/5", timeout=HTTP_TIMEOUT_S)
        assert kept.status_code == 200, kept.text
        assert kept.json()["attributes"]["patient_id"] == "p5"
        model = requests.get(f"{base}/v1/models/{MODEL_ID}", timeout=HTTP_TIMEOUT_S).json()
        assert (model["count"], model["backend"]) == (8, "milvus-lite")
        stop(process, second_log)


def test_a_second_process_on_a_locked_lite_folder_is_not_ready_until_the_first_stops(
    lite_uri: str, tmp_path: Path
) -> None:
    stored = items(3)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with search_process(lite_uri, first_log) as (first, first_base):
        wait_ready(first_base, first, first_log, timeout_s=START_GUARD_S)
        upserted = requests.put(
            f"{first_base}/v1/models/{MODEL_ID}/vectors", json={"items": stored}, timeout=HTTP_TIMEOUT_S
        )
        assert upserted.status_code == 200, upserted.text

        with search_process(lite_uri, second_log) as (second, second_base):
            ready = answer_when_listening(second_base, second, second_log)
            assert ready.status_code == 503
            assert ready.headers["Content-Type"] == "application/problem+json"
            reason = ready.json()["checks"]["milvus"]
            assert "Milvus" in reason and lite_uri not in reason, reason  # the path is for the log
            refused = requests.put(
                f"{second_base}/v1/models/{MODEL_ID}/vectors", json={"items": stored}, timeout=HTTP_TIMEOUT_S
            )
            assert refused.status_code == 503
            assert "Milvus" in refused.json()["detail"]
            # The log says why (another process holds the folder) and where.
            assert "lock" in second_log.read_text() and lite_uri in second_log.read_text()

            # The first process keeps its folder and its data.
            assert hit_ids(first_base, stored[1]["vector"])[0] == 2
            stop(first, first_log)

            # Once the lock is free, the second takes over without a restart.
            wait_ready(second_base, second, second_log, timeout_s=START_GUARD_S)
            assert hit_ids(second_base, stored[1]["vector"])[0] == 2
            stop(second, second_log)


def answer_when_listening(base: str, process: subprocess.Popen[bytes], log_path: Path) -> requests.Response:
    """The first answer of `/readyz` once the process listens; fails if it dies or never answers."""
    deadline = time.monotonic() + START_GUARD_S
    while True:
        try:
            return requests.get(f"{base}/readyz", timeout=HTTP_TIMEOUT_S)
        except requests.ConnectionError:
            pass  # not listening yet
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


@pytest.mark.parametrize("uri", ["no-suffix", "ftp://x"])
def test_a_uri_that_is_neither_a_db_path_nor_http_stops_the_start_naming_the_variable(
    uri: str, tmp_path: Path
) -> None:
    value = str(tmp_path / "x" / uri) if uri == "no-suffix" else uri
    env = {**os.environ, "MEDSEARCH_PORT": str(free_port()), "MEDSEARCH_MILVUS_URI": value}
    result = subprocess.run(
        [sys.executable, "-m", "medsearch_search"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_GUARD_S,
    )
    assert result.returncode != 0
    assert "MEDSEARCH_MILVUS_URI must be http(s)://host:port" in result.stderr
    assert repr(value) in result.stderr
    assert not (tmp_path / "x").exists()  # nothing was created on the way out
