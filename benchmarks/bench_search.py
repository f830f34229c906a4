"""`make bench-search`: the search service against raw pymilvus calls, on Milvus Lite and a server.

Data: one random unit 2048-d vector per ChestX-ray14 image (112,120), each carrying that
image's real metadata (patients, ages, sexes, views, findings) from the dataset's CSV.
The vectors are loaded through the service's own store code; then, round by round and
interleaved, the same queries go (a) to the service over HTTP (`python -m medsearch_search`)
and (b) straight to Milvus with pymilvus, single and batched, with and without a filter.
Recall@10 of each backend's index is measured against exact search done with numpy.

Milvus Lite locks its folder to one process, so here it runs as `milvus-lite server` and
both the service and the raw client reach it over gRPC; the engine is the same one the
service embeds by default.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import requests
from machine import free_port, machine, shared_data
from numpy.typing import NDArray
from pymilvus import MilvusClient

from medsearch_common.settings import Binding
from medsearch_search.filters import Attributes, parse_filter
from medsearch_search.settings import SearchSettings
from medsearch_search.store import MilvusStore, collection_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DIM = 2048
MODEL_ID = "bench-random-2048"
FILTER = {"sex": ["F"], "age": {"min": 40, "max": 70}, "findings": {"any": ["Effusion", "Infiltration"]}}
BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=shared_data(),
    )
    parser.add_argument("--rows", type=int, default=0, help="use only the first N images (0 = all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=20, help="single queries per mode and round")
    parser.add_argument("--backends", default="lite,server")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "search.json")
    args = parser.parse_args()

    attributes = read_metadata(args.data / "nih_cxr14" / "Data_Entry_2017_v2020_full.csv.gz", args.rows)
    vectors = random_unit_vectors(len(attributes), DIM, seed=1)
    queries = random_unit_vectors(args.queries + BATCH, DIM, seed=2)
    print(f"bench-search: {len(attributes)} rows of real metadata, {DIM}-d random vectors", flush=True)
    exact = exact_top10(vectors, queries[:BATCH])

    results: dict[str, Any] = {}
    for backend in args.backends.split(","):
        with milvus(backend) as uri:
            results[backend] = run_backend(backend, uri, vectors, attributes, queries, exact, args)
        print(f"bench-search: {backend}: {json.dumps(results[backend])}", flush=True)

    report = {
        "benchmark": "search",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": versions(),
        "rows": len(attributes),
        "dim": DIM,
        "filter": FILTER,
        "filter_admits_rows": int(sum(admitted(a) for a in attributes)),
        "settings": {"rounds": args.rounds, "single_queries": args.queries, "batch": BATCH},
        "backends": results,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = "; ".join(
        f"{name}: single p50 {r['single']['service_p50_ms']} vs raw {r['single']['raw_p50_ms']} ms "
        f"({r['single']['ratio_p50']}x), batch/query {r['batch']['service_p50_ms_per_query']} vs "
        f"{r['batch']['raw_p50_ms_per_query']} ms, recall@10 {r['recall_at_10']} ({r['index']})"
        for name, r in results.items()
    )
    print(f"bench-search: {len(attributes)} rows; {summary}")


def run_backend(
    backend: str,
    uri: str,
    vectors: NDArray[np.float32],
    attributes: list[Attributes],
    queries: NDArray[np.float32],
    exact: list[set[int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    settings = SearchSettings(Binding("127.0.0.1", 0), milvus_uri=uri, milvus_timeout_s=600)
    store = MilvusStore(settings)
    started = time.perf_counter()
    collection = store.ensure_collection(MODEL_ID, DIM)
    index = collection.index  # the service's own choice for this engine
    expression = store.expression(parse_filter(FILTER))  # what the service sends this engine
    for start in range(0, len(vectors), 2000):
        end = min(start + 2000, len(vectors))
        store.upsert(collection, list(range(start + 1, end + 1)), vectors[start:end], attributes[start:end])
    load_s = time.perf_counter() - started
    print(f"bench-search: {backend}: {len(vectors)} rows loaded in {load_s:.0f} s", flush=True)
    raw = MilvusClient(uri=uri, timeout=600)
    name = collection_name(MODEL_ID)
    started = time.perf_counter()
    raw.flush(name)
    wait_for_index(raw, name, len(vectors))
    index_s = time.perf_counter() - started
    print(f"bench-search: {backend}: flushed and indexed ({index}) in {index_s:.0f} s", flush=True)
    store.close()

    with search_service(uri) as base:
        session = requests.Session()
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if index == "HNSW":
            params["params"] = {
                "ef": SearchSettings(Binding("127.0.0.1", 0)).hnsw_ef
            }  # the service's default

        def raw_search(batch: NDArray[np.float32], flt: str) -> None:
            raw.search(
                name,
                data=batch.tolist(),
                limit=10,
                filter=flt,
                output_fields=["patient_key"],
                search_params=params,
                consistency_level="Bounded",
            )

        def service_search(batch: NDArray[np.float32], flt: dict[str, Any] | None) -> None:
            # Bounded, as an interactive search asks: strong waits for the server's time tick.
            body: dict[str, Any] = {"vectors": batch.tolist(), "k": 10, "consistency": "bounded"}
            if flt:
                body["filter"] = flt
            response = session.post(f"{base}/v1/models/{MODEL_ID}/search", json=body, timeout=600)
            response.raise_for_status()

        singles = queries[BATCH:]
        batch = queries[:BATCH]
        timings: dict[str, list[float]] = {}
        raw_search(batch[:1], "")  # warm both
        service_search(batch[:1], None)
        for _ in range(args.rounds):
            for label, flt_raw, flt in (("", "", None), ("filtered_", expression, FILTER)):
                runs: dict[str, Callable[[NDArray[np.float32]], None]] = {
                    "raw": partial(raw_search, flt=flt_raw),
                    "service": partial(service_search, flt=flt),
                }
                for who, run in runs.items():
                    timings.setdefault(f"{who}_{label}single", []).extend(
                        time_calls(run, [query[np.newaxis] for query in singles])
                    )
                    timings.setdefault(f"{who}_{label}batch", []).extend(time_calls(run, [batch] * 3))
        found = raw.search(name, data=batch.tolist(), limit=10, search_params=params)
        recall = statistics.mean(
            len({int(hit["id"]) for hit in hits} & want) / 10 for hits, want in zip(found, exact, strict=True)
        )
    raw.close()

    def summary(label: str) -> dict[str, float]:
        service, raw_times = timings[f"service_{label}single"], timings[f"raw_{label}single"]
        return {
            "service_p50_ms": ms(statistics.median(service)),
            "service_p99_ms": ms(float(np.percentile(service, 99))),
            "raw_p50_ms": ms(statistics.median(raw_times)),
            "raw_p99_ms": ms(float(np.percentile(raw_times, 99))),
            "ratio_p50": round(statistics.median(service) / statistics.median(raw_times), 2),
        }

    def batch_summary(label: str) -> dict[str, float]:
        service, raw_times = timings[f"service_{label}batch"], timings[f"raw_{label}batch"]
        return {
            "service_p50_ms_per_query": ms(statistics.median(service) / BATCH),
            "raw_p50_ms_per_query": ms(statistics.median(raw_times) / BATCH),
            "ratio": round(statistics.median(service) / statistics.median(raw_times), 2),
        }

    return {
        "uri_kind": "milvus-lite server (gRPC)" if backend == "lite" else "embedded Milvus 2.3 standalone",
        "index": index,
        "load_seconds": round(load_s, 1),
        "flush_and_index_seconds": round(index_s, 1),
        "single": summary(""),
        "single_filtered": summary("filtered_"),
        "batch": batch_summary(""),
        "batch_filtered": batch_summary("filtered_"),
        "recall_at_10": round(recall, 4),
    }


def time_calls(call: Callable[[NDArray[np.float32]], None], items: list[NDArray[np.float32]]) -> list[float]:
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - started)
    return times


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def wait_for_index(client: MilvusClient, name: str, rows: int) -> None:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        info = client.describe_index(name, "vector")
        if int(info.get("indexed_rows", 0)) >= rows or info.get("index_type") == "FLAT":
            return
        time.sleep(2)
    raise SystemExit("bench-search: the index was not built within an hour")


def read_metadata(path: Path, limit: int) -> list[Attributes]:
    rows = []
    with gzip.open(path, "rt", newline="") as handle:
        for record in csv.DictReader(handle):
            labels = record["Finding Labels"].split("|")
            age = int(record["Patient Age"])
            rows.append(
                Attributes(
                    dataset="nih",
                    patient_id=record["Patient ID"],
                    sex=record["Patient Gender"].upper(),
                    age=age if 0 <= age <= 130 else -1,
                    view_position=record["View Position"].upper(),
                    findings=tuple(label for label in labels if label != "No Finding"),
                )
            )
            if limit and len(rows) >= limit:
                break
    return rows


def admitted(a: Attributes) -> bool:
    return a.sex == "F" and 40 <= a.age <= 70 and bool({"Effusion", "Infiltration"} & set(a.findings))


def random_unit_vectors(count: int, dim: int, seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_top10(vectors: NDArray[np.float32], queries: NDArray[np.float32]) -> list[set[int]]:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return [{int(i) + 1 for i in row} for row in top]


@contextmanager
def milvus(backend: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as folder:
        if backend == "lite":
            port = free_port()
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "milvus-lite"),
                    "server",
                    "--data-dir",
                    folder,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(port)
                yield f"http://127.0.0.1:{port}"
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        else:
            from milvus import MilvusServer

            server = MilvusServer()
            server.set_base_dir(folder)
            server.start()
            try:
                yield f"http://127.0.0.1:{server.listen_port}"
            finally:
                server.stop()


@contextmanager
def search_service(uri: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "MEDSEARCH_PORT": str(port),
        "MEDSEARCH_MILVUS_URI": uri,
        "MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S": "600",  # exact search over 112k rows, 100 queries at once
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "medsearch_search"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("bench-search: the search service did not become ready")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise SystemExit(f"bench-search: nothing listens on {port}")


def versions() -> dict[str, Any]:
    import pymilvus

    return machine(pymilvus=pymilvus.__version__)


if __name__ == "__main__":
    main()
