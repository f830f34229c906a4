"""`python -m medsearch_catalog`: the real gunicorn process, its logs and its settings errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from tests.catalog.conftest import png
from tests.support.processes import free_port, wait_ready

SECRET_PATIENT = "PATIENT-SECRET-4711"


@pytest.fixture
def catalog_process(catalog: FlaskClient, database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The catalog as a gunicorn process on the session's (emptied) database."""
    port = free_port()
    log_path = tmp_path / "catalog.log"
    env = {**os.environ, "MEDSEARCH_DATABASE_URL": database_url, "MEDSEARCH_PORT": str(port)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "medsearch_catalog"], env=env, stderr=log, stdout=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path, timeout_s=30)
        yield base, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()


def test_served_by_gunicorn_with_request_ids_and_json_logs_without_patient_ids(
    catalog_process: tuple[str, Path],
) -> None:
    base, log_path = catalog_process
    metadata = {"dataset": "proc", "patient_id": SECRET_PATIENT, "findings": ["Mass"]}
    created = requests.post(
        f"{base}/v1/images",
        files={"file": ("x.png", io.BytesIO(png(7)), "image/png")},
        data={"metadata": json.dumps(metadata)},
        headers={"X-Request-ID": "trace-abc-123"},
        timeout=10,
    )
    assert created.status_code == 201
    assert created.headers["X-Request-ID"] == "trace-abc-123"
    listed = requests.get(f"{base}/v1/images", params={"patient_id": SECRET_PATIENT}, timeout=10)
    assert [item["id"] for item in listed.json()["items"]] == [created.json()["id"]]
    generated = listed.headers["X-Request-ID"]
    assert len(generated) == 32

    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert 'http_requests_total{endpoint="/v1/images",method="POST",status="201"} 1.0' in metrics

    time.sleep(0.2)  # let the log lines reach the file
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    requests_logged = [line for line in lines if line.get("msg") == "request"]
    assert any(
        line.get("request_id") == "trace-abc-123" and line["status"] == 201 for line in requests_logged
    )
    assert any(line.get("request_id") == generated for line in requests_logged)
    assert all(line["service"] == "catalog" for line in lines)
    assert SECRET_PATIENT not in log_path.read_text()


def test_bad_setting_stops_the_start_with_a_message_naming_the_variable() -> None:
    env = {**os.environ, "MEDSEARCH_CATALOG_MAX_UPLOAD_BYTES": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "medsearch_catalog"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "MEDSEARCH_CATALOG_MAX_UPLOAD_BYTES must be an integer" in result.stderr


def test_create_token_makes_a_working_token_in_the_database(
    catalog_process: tuple[str, Path], database_url: str
) -> None:
    base, _ = catalog_process
    env = {**os.environ, "MEDSEARCH_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "medsearch_catalog", "create-token", "--name", "ops", "--role", "admin"]
    made = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mst_") and "shown only this once" in made.stderr and secret not in made.stderr
    verified = requests.post(f"{base}/v1/tokens/verify", json={"secret": secret}, timeout=10)
    assert verified.status_code == 200 and verified.json()["identity"]["role"] == "admin"
    wrong = subprocess.run(
        [*command[:-1], "superuser"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert wrong.returncode == 2 and "superuser" in wrong.stderr
    no_database = subprocess.run(
        command,
        env={
            **env,
            "MEDSEARCH_DATABASE_URL": "postgresql://127.0.0.1:1/none",
            "MEDSEARCH_CATALOG_DB_TIMEOUT_S": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_database.returncode == 1 and "not usable" in no_database.stderr
