"""`make bench-map`: the collection map at ChestX-ray14's size, beside its two reference points.

1. The service: one made-up vector per image of NIH's label file (112,120 by default, `--rows`),
   built as bench-search builds them (benchmarks/embeddings.py: each image's real metadata gives
   its vector's view, findings, patient, age and sex), stored in the default engine (the embedded
   Milvus server) through a real search service. A map job is started over HTTP and followed to
   its end: the time of each stage, and the peak resident memory of the search service and of
   its UMAP child, sampled every 0.5 s. Then the time and size of reading the map.
2. Raw: the same PCA and UMAP on the same vectors already in this process's memory: what the
   job costs without reading Milvus twice and without its child process.
3. Naive: what a user would write first, umap-learn straight on the 2048-d vectors without PCA,
   on the first `--naive-rows` vectors, beside our PCA + UMAP on the same rows.

Each map's quality is how well it keeps neighbourhoods: for 1,000 sampled points, the share of
each one's 10 nearest neighbours by cosine in 2048-d that are also among its 10 nearest on the
map. Writes bench-results/map.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from bench_search import packed, read_metadata
from embeddings import EmbeddingModel
from machine import free_port, machine, shared_data, stack_processes, wait_ready
from numpy.typing import NDArray

from medsearch_search.embedded import EmbeddedMilvus
from medsearch_search.mapping import PCA_DIMENSIONS, Covariance, layout, project

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "bench-map-2048"
SAMPLE = 1000
NEIGHBOURS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--rows", type=int, default=0, help="0: every row of NIH's label file")
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "map.json")
    args = parser.parse_args()

    attributes = read_metadata(args.data / "nih_cxr14" / "Data_Entry_2017_v2020_full.csv.gz", args.rows)
    vectors = EmbeddingModel(2048, seed=1).embed(attributes, [a.patient_id or "" for a in attributes], seed=1)
    print(f"bench-map: {len(vectors)} made-up vectors", flush=True)
    sample = np.random.default_rng(0).choice(len(vectors), size=min(SAMPLE, len(vectors)), replace=False)

    service = through_the_service(vectors, attributes)
    service["neighbourhoods_kept"] = kept_neighbourhoods(vectors, service.pop("xy"), sample)
    print(f"bench-map: service {service['job_seconds']} s", flush=True)

    raw = in_memory(vectors)
    raw["neighbourhoods_kept"] = kept_neighbourhoods(vectors, raw.pop("xy"), sample)
    print(f"bench-map: raw {raw['seconds']} s", flush=True)

    few = vectors[: args.naive_rows]
    few_sample = np.random.default_rng(1).choice(len(few), size=min(SAMPLE, len(few)), replace=False)
    ours_few = in_memory(few)
    ours_few["neighbourhoods_kept"] = kept_neighbourhoods(few, ours_few.pop("xy"), few_sample)
    naive = naive_umap(few)
    naive["neighbourhoods_kept"] = kept_neighbourhoods(few, naive.pop("xy"), few_sample)
    print(
        f"bench-map: at {len(few)} rows, ours {ours_few['seconds']} s, naive {naive['seconds']} s", flush=True
    )

    report = {
        "benchmark": "map",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": len(vectors),
        "vectors": "benchmarks/embeddings.py (as bench-search), from NIH's label file",
        "engine": "embedded Milvus server (the make run default)",
        "service": service,
        "raw_in_memory": raw,
        "service_vs_raw": round(service["job_seconds"] / raw["seconds"], 2),
        "at_naive_rows": {
            "rows": len(few),
            "ours_pca_umap": ours_few,
            "naive_umap_2048": naive,
            "ours_vs_naive_time": round(ours_few["seconds"] / naive["seconds"], 3),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def through_the_service(vectors: NDArray[np.float32], attributes: list[Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-map-") as folder:
        engine = EmbeddedMilvus(Path(folder) / "milvus", port=free_port())
        uri = engine.start()
        port = free_port()
        env = {
            **os.environ,
            "MEDSEARCH_PORT": str(port),
            "MEDSEARCH_MILVUS_URI": uri,
            "MEDSEARCH_MILVUS_TOKEN": engine.token,
            "MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S": "600",
            "MEDSEARCH_SEARCH_MAP_DIR": str(Path(folder) / "maps"),
        }
        # The service's log stays with the run's files; a failure prints its end.
        log = open(Path(folder) / "search.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "medsearch_search"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its session holds it and its UMAP child, for their memory
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{base}/readyz", process, "bench-map: the search service", 120)
            session = requests.Session()
            started = time.perf_counter()
            for start in range(0, len(vectors), 1000):
                items = [
                    {"id": i + 1, "vector": packed(vectors[i]), "attributes": attributes[i].to_json()}
                    for i in range(start, min(start + 1000, len(vectors)))
                ]
                session.put(
                    f"{base}/v1/models/{MODEL_ID}/vectors", json={"items": items}, timeout=600
                ).raise_for_status()
            load_s = time.perf_counter() - started
            print(f"bench-map: {len(vectors)} vectors stored in {load_s:.0f} s; mapping", flush=True)
            peaks: dict[str, float] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=sample_memory, args=(process.pid, Path(folder), peaks, stop))
            sampler.start()
            stages: dict[str, float] = {}
            started = time.perf_counter()
            session.post(f"{base}/v1/models/{MODEL_ID}/map-jobs", timeout=600).raise_for_status()
            while True:
                job = session.get(f"{base}/v1/models/{MODEL_ID}/map-jobs/current", timeout=600).json()
                stages.setdefault(job["stage"], round(time.perf_counter() - started, 1))
                if job["state"] != "running":
                    break
                time.sleep(0.5)
            job_s = time.perf_counter() - started
            stop.set()
            sampler.join()
            if job["state"] != "done":
                raise SystemExit(f"bench-map: the map job ended {job['state']}: {job['error']}")
            started = time.perf_counter()
            answer = session.get(f"{base}/v1/models/{MODEL_ID}/map", timeout=600)
            read_s = time.perf_counter() - started
            answer.raise_for_status()
            body = answer.json()
        except Exception:
            print((Path(folder) / "search.log").read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            log.close()
            engine.stop()
    order = np.argsort(body["points"]["id"])
    xy = np.column_stack([body["points"]["x"], body["points"]["y"]])[order]
    return {
        "load_s": round(load_s, 1),
        "job_seconds": round(job_s, 1),
        "stage_started_at_s": stages,
        "job_reported_seconds": body["seconds"],
        "points": len(order),
        "explained_variance": body["explained_variance"],
        "peak_rss_mb": peaks,
        "map_read_s": round(read_s, 2),
        "map_bytes": len(answer.content),
        "xy": xy,
    }


def sample_memory(session: int, folder: Path, peaks: dict[str, float], stop: threading.Event) -> None:
    """The peak resident MB of the search service and of its UMAP child, every 0.5 s."""
    roles = {"medsearch_search": "search_service", "medsearch_search.mapping": "umap_child"}
    while not stop.is_set():
        for pid, name in stack_processes(session, folder).items():
            if name in roles:
                peaks[roles[name]] = max(peaks.get(roles[name], 0.0), rss_mb(pid))
        stop.wait(0.5)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def in_memory(vectors: NDArray[np.float32]) -> dict[str, Any]:
    """PCA (the job's own streamed covariance) and UMAP, on vectors already in memory."""
    started = time.perf_counter()
    covariance = Covariance(vectors.shape[1])
    for start in range(0, len(vectors), 2000):
        covariance.add(vectors[start : start + 2000])
    mean, axes, kept = covariance.principal_axes(PCA_DIMENSIONS)
    reduced = np.concatenate(
        [project(vectors[s : s + 2000], mean, axes) for s in range(0, len(vectors), 2000)]
    )
    pca_s = time.perf_counter() - started
    xy = layout(reduced)
    total = time.perf_counter() - started
    return {
        "seconds": round(total, 1),
        "pca_s": round(pca_s, 1),
        "explained_variance": round(kept, 4),
        "xy": xy,
    }


def naive_umap(vectors: NDArray[np.float32]) -> dict[str, Any]:
    import umap

    started = time.perf_counter()
    xy = umap.UMAP(n_components=2, metric="cosine", random_state=42).fit_transform(vectors)
    return {"seconds": round(time.perf_counter() - started, 1), "xy": np.asarray(xy)}


def kept_neighbourhoods(vectors: NDArray[np.float32], xy: NDArray[Any], sample: NDArray[np.int64]) -> float:
    """The mean share of each sampled point's 10 nearest neighbours by cosine that are among
    its 10 nearest on the map."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    shares = []
    for start in range(0, len(sample), 100):
        rows = sample[start : start + 100]
        scores = unit[rows] @ unit.T
        scores[np.arange(len(rows)), rows] = -np.inf
        near = np.argpartition(-scores, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        distances = np.linalg.norm(xy[rows][:, None, :] - xy[None, :, :], axis=2)
        distances[np.arange(len(rows)), rows] = np.inf
        on_map = np.argpartition(distances, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        shares += [len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(near, on_map, strict=True)]
    return round(float(np.mean(shares)), 3)


if __name__ == "__main__":
    main()
