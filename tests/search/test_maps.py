"""The collection map: exact PCA from streamed sums, the background job on both real backends
(UMAP in its child process), its refusals, staleness, and what a failed or cut-short job
leaves behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from numpy.typing import NDArray

from medsearch_search.map_jobs import MapJob, MapJobs
from medsearch_search.mapping import MIN_MAP_VECTORS, Covariance, PointAttributes, project, unit_square
from tests.search.conftest import new_model_id, upsert
from tests.support.proxy import CuttableProxy

CLUSTERS = 3
PER_CLUSTER = 20
DIM = 64


# -- pure logic --------------------------------------------------------------------------------


def test_streamed_pca_equals_the_whole_matrix_svd() -> None:
    rng = np.random.default_rng(3)
    data = (rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40))).astype(np.float32)
    covariance = Covariance(40)
    for start in range(0, 500, 70):  # uneven batches
        covariance.add(data[start : start + 70])
    mean, axes, kept = covariance.principal_axes(5)
    centred = data.astype(np.float64) - data.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    assert np.allclose(mean, data.mean(axis=0), atol=1e-5)
    for i in range(5):  # the same axes up to sign
        assert abs(abs(float(axes[:, i] @ rows[i])) - 1) < 1e-6
    assert kept == pytest.approx(float((singular[:5] ** 2).sum() / (singular**2).sum()), rel=1e-6)
    reduced = project(data, mean, axes)
    assert reduced.shape == (500, 5)
    assert np.allclose(reduced.var(axis=0), singular[:5] ** 2 / 500, rtol=1e-4)


def test_principal_axes_have_a_deterministic_sign() -> None:
    data = np.random.default_rng(5).normal(size=(100, 8)).astype(np.float32)
    first, second = Covariance(8), Covariance(8)
    first.add(data)
    second.add(-data)  # the same axes, any eigensolver sign
    assert np.allclose(first.principal_axes(3)[1], second.principal_axes(3)[1])


def test_principal_axes_need_two_vectors() -> None:
    with pytest.raises(ValueError, match="two vectors"):
        Covariance(4).principal_axes(2)


def test_unit_square_keeps_the_aspect() -> None:
    xy = unit_square(np.array([[0.0, 0.0], [4.0, 1.0], [2.0, 2.0]]))
    assert xy.min() == 0 and xy.max() == 1
    assert np.allclose(xy[1], [1.0, 0.25])


def test_point_attributes_as_coded_columns() -> None:
    attributes = PointAttributes(
        dataset=["nih", "nih", ""],
        sex=["F", "M", "F"],
        view_position=["PA", "AP", ""],
        age=[40, None, 7],
        findings=[["Effusion"], [], ["Mass", "Effusion"]],
    )
    coded = attributes.to_json()
    assert coded["dataset"] == {"values": [None, "nih"], "codes": [1, 1, 0]}
    assert coded["findings"] == {"values": ["Effusion", "Mass"], "codes": [[0], [], [1, 0]]}
    assert coded["age"] == [40, None, 7]


# -- the job on the real backends ----------------------------------------------------------------


def clustered(seed: int) -> tuple[NDArray[np.float32], list[int]]:
    """Unit vectors around three far-apart centres, and each one's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM)) * 4
    labels = [i // PER_CLUSTER for i in range(CLUSTERS * PER_CLUSTER)]
    vectors = centres[labels] + rng.normal(size=(len(labels), DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def items(vectors: NDArray[np.float32], labels: list[int], first_id: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + i,
            "vector": vector.tolist(),
            "attributes": {
                "dataset": "nih",
                "sex": "F" if i % 2 else "M",
                "age": 30 + label,
                "view_position": "PA",
                "findings": [f"Finding {label}"],
            },
        }
        for i, (vector, label) in enumerate(zip(vectors, labels, strict=True))
    ]


def wait_for_job(client: FlaskClient, model_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/models/{model_id}/map-jobs/current")
        assert response.status_code == 200, response.get_data(as_text=True)
        job: dict[str, Any] = response.json  # type: ignore[assignment]
        if job["state"] != "running":
            return job
        assert time.monotonic() < deadline, f"the map job still runs: {job}"
        time.sleep(0.5)


def get_map(client: FlaskClient, model_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/models/{model_id}/map")
    assert response.status_code == 200, response.get_data(as_text=True)
    found: dict[str, Any] = response.json  # type: ignore[assignment]
    return found


@pytest.fixture(scope="module")
def mapped(search: FlaskClient) -> tuple[str, NDArray[np.float32], list[int], dict[str, Any]]:
    """A model of three clusters, mapped once per backend."""
    model_id = new_model_id()
    vectors, labels = clustered(seed=11)
    assert upsert(search, model_id, items(vectors, labels)).status_code == 200
    started = search.post(f"/v1/models/{model_id}/map-jobs")
    assert started.status_code == 202, started.get_data(as_text=True)
    job = started.json
    assert job is not None and job["state"] == "running" and job["vectors"] == len(labels)
    # One job at a time: a second start while it runs is a conflict.
    again = search.post(f"/v1/models/{model_id}/map-jobs")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert "already running" in again.json["detail"]  # type: ignore[index]
    done = wait_for_job(search, model_id)
    assert done["state"] == "done" and done["progress"] == 1.0 and done["id"] == job["id"], done
    return model_id, vectors, labels, get_map(search, model_id)


def test_the_map_places_every_vector_and_keeps_clusters_apart(
    mapped: tuple[str, NDArray[np.float32], list[int], dict[str, Any]],
) -> None:
    _, _, labels, found = mapped
    points = found["points"]
    assert sorted(points["id"]) == list(range(1, len(labels) + 1))
    xy = np.column_stack([points["x"], points["y"]])
    assert xy.min() >= 0 and xy.max() <= 1
    order = np.argsort(points["id"])
    xy, mapped_labels = xy[order], np.asarray(labels)
    centres = np.array([xy[mapped_labels == c].mean(axis=0) for c in range(CLUSTERS)])
    spread = max(
        float(np.linalg.norm(xy[mapped_labels == c] - centres[c], axis=1).max()) for c in range(CLUSTERS)
    )
    apart = min(
        float(np.linalg.norm(centres[a] - centres[b]))
        for a in range(CLUSTERS)
        for b in range(a + 1, CLUSTERS)
    )
    assert apart > 2 * spread, (apart, spread)
    assert found["explained_variance"] > 0.3 and found["parameters"]["pca_dimensions"] == 50
    assert found["changes"] == {"added": 0, "deleted": 0, "stale": False, "stale_fraction": 0.1}


def test_the_map_carries_each_points_attributes(
    mapped: tuple[str, NDArray[np.float32], list[int], dict[str, Any]],
) -> None:
    _, _, labels, found = mapped
    fields = found["fields"]
    for position, image_id in enumerate(found["points"]["id"]):
        label = labels[image_id - 1]
        assert fields["age"][position] == 30 + label
        assert [fields["findings"]["values"][c] for c in fields["findings"]["codes"][position]] == [
            f"Finding {label}"
        ]
        assert fields["sex"]["values"][fields["sex"]["codes"][position]] == (
            "F" if (image_id - 1) % 2 else "M"
        )


def test_a_stale_map_starts_its_own_job_and_is_served_meanwhile(server_app: Flask) -> None:
    """On the server only: the counting is the same on Lite (the mapped fixture's first map
    shows no changes there), and each job costs a UMAP child's compiling."""
    search = server_app.test_client()
    model_id = new_model_id()
    vectors, labels = clustered(seed=12)
    assert upsert(search, model_id, items(vectors, labels)).status_code == 200
    assert search.post(f"/v1/models/{model_id}/map-jobs").status_code == 202
    wait_for_job(search, model_id)
    first = get_map(search, model_id)
    # Under 10 % changed: not stale, nothing started.
    assert upsert(search, model_id, items(vectors[:4], labels[:4], first_id=1000)).status_code == 200
    assert search.delete(f"/v1/models/{model_id}/vectors/1").status_code == 204
    unchanged = get_map(search, model_id)
    assert unchanged["changes"]["added"] == 4 and unchanged["changes"]["deleted"] == 1
    assert not unchanged["changes"]["stale"] and unchanged["made_by_job"] == first["made_by_job"]
    # 10 % and more: the read starts a job and still answers with the old map.
    assert upsert(search, model_id, items(vectors[:3], labels[:3], first_id=2000)).status_code == 200
    stale = get_map(search, model_id)
    assert stale["changes"]["stale"] and stale["made_by_job"] == first["made_by_job"]
    assert stale["job"]["automatic"] and stale["job"]["id"] != first["made_by_job"]
    assert wait_for_job(search, model_id)["state"] == "done"
    fresh = get_map(search, model_id)
    assert fresh["made_by_job"] == stale["job"]["id"]
    assert len(fresh["points"]["id"]) == len(labels) - 1 + 4 + 3
    assert fresh["changes"] == {"added": 0, "deleted": 0, "stale": False, "stale_fraction": 0.1}


def test_refusals(search: FlaskClient) -> None:
    never = new_model_id()
    for method, path in (
        ("POST", f"/v1/models/{never}/map-jobs"),
        ("GET", f"/v1/models/{never}/map-jobs/current"),
        ("GET", f"/v1/models/{never}/map"),
    ):
        response = search.open(path, method=method)
        assert response.status_code == 404 and "no vectors were ever stored" in response.json["detail"]  # type: ignore[index]
    few = new_model_id()
    vectors, labels = clustered(seed=13)
    count = MIN_MAP_VECTORS - 1
    assert upsert(search, few, items(vectors[:count], labels[:count])).status_code == 200
    refused = search.post(f"/v1/models/{few}/map-jobs")
    assert refused.status_code == 422 and f"at least {MIN_MAP_VECTORS}" in refused.json["detail"]  # type: ignore[index]
    assert search.get(f"/v1/models/{few}/map-jobs/current").status_code == 404
    missing = search.get(f"/v1/models/{few}/map")
    assert missing.status_code == 404 and "start a map job" in missing.json["detail"]  # type: ignore[index]
    bad = search.post("/v1/models/bad%20model/map-jobs")
    assert bad.status_code == 400


def test_a_failed_job_leaves_the_previous_map_whole(
    search: FlaskClient,
    backend: str,
    request: pytest.FixtureRequest,
    mapped: tuple[str, NDArray[np.float32], list[int], dict[str, Any]],
) -> None:
    """A layout that runs out of time fails the job, says why, and writes no map over the last."""
    model_id, _, _, before = mapped
    app: Flask = request.getfixturevalue(f"{backend}_app")
    service = app.extensions["medsearch_search"]
    hurried = MapJobs(service.store, service.maps.folder, layout_timeout_s=0.01)
    collection = service.store.collection(model_id)
    hurried.start(collection)
    hurried.wait(model_id, 120)
    job = search.get(f"/v1/models/{model_id}/map-jobs/current").json
    assert job is not None and job["state"] == "failed" and "ran past" in job["error"]
    assert job["stage"] == "laying out"
    assert get_map(search, model_id)["made_by_job"] == before["made_by_job"]
    assert not list(Path(service.maps.folder).glob("*.partial"))


def test_a_job_cut_short_by_a_restart_reads_as_interrupted(
    search: FlaskClient,
    backend: str,
    request: pytest.FixtureRequest,
    mapped: tuple[str, NDArray[np.float32], list[int], dict[str, Any]],
) -> None:
    """A job file left "running" by a process that is gone (the service killed mid-job) reads
    as interrupted, and a new start runs anew over it (here one that stops at its layout)."""
    model_id = mapped[0]
    app: Flask = request.getfixturevalue(f"{backend}_app")
    service = app.extensions["medsearch_search"]
    collection = service.store.collection(model_id)
    restarted = MapJobs(service.store, service.maps.folder, layout_timeout_s=0.01)
    left = MapJob(
        id="gone",
        model_id=model_id,
        state="running",
        stage="laying out",
        progress=0.5,
        started_at="2026-12-03T10:00:00+00:00",
        vectors=60,
    )
    restarted._write_job(collection, left)
    seen = search.get(f"/v1/models/{model_id}/map-jobs/current").json
    assert seen is not None and seen["state"] == "interrupted" and "stopped" in seen["error"]
    again = restarted.start(collection)
    assert again.id != "gone" and again.state == "running"
    restarted.wait(model_id, 120)
    assert search.get(f"/v1/models/{model_id}/map-jobs/current").json["id"] == again.id  # type: ignore[index]
    assert get_map(search, model_id)["made_by_job"] == mapped[3]["made_by_job"]  # the last map whole


def test_milvus_down_refuses_a_job_with_503_and_a_later_job_completes(
    server_app: Flask, milvus_proxy: CuttableProxy
) -> None:
    client = server_app.test_client()
    model_id = new_model_id()
    vectors, labels = clustered(seed=14)
    assert upsert(client, model_id, items(vectors, labels)).status_code == 200
    milvus_proxy.cut()
    try:
        refused = client.post(f"/v1/models/{model_id}/map-jobs")
    finally:
        milvus_proxy.restore()
    assert refused.status_code == 503 and "Milvus" in refused.json["detail"]  # type: ignore[index]
    assert "127.0.0.1" not in refused.get_data(as_text=True)
    assert client.get(f"/v1/models/{model_id}/map-jobs/current").status_code == 404  # nothing written
    assert client.post(f"/v1/models/{model_id}/map-jobs").status_code == 202
    assert wait_for_job(client, model_id)["state"] == "done"
    # The map is a file: with Milvus gone it is still served, without what changed since.
    milvus_proxy.cut()
    try:
        served = client.get(f"/v1/models/{model_id}/map")
    finally:
        milvus_proxy.restore()
    assert served.status_code == 200 and served.json["changes"] is None  # type: ignore[index]
    assert len(served.json["points"]["id"]) == len(labels)  # type: ignore[index]
