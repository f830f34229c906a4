"""`make bench-search`: the search service on the default engine at ChestX-ray14's full size.

Data: one vector for each of the 112,120 ChestX-ray14 images, carrying that image's real
metadata (patients, ages, sexes, views, findings) from NIH's label file, made by
`embeddings.py` to behave like CNN embeddings of chest X-rays (clustered by patient, view
and finding; random vectors are the worst case for a graph index and say nothing of real
recall). Queries are new images made the same way: follow-ups of indexed patients and
patients not indexed.

The engine is the one `make run` starts (the embedded Milvus server, in a temporary folder)
and the vectors are loaded through the search service over HTTP in its compact form (base64
float32, 1,000 a request), as the gateway sends them. Then, round by round and interleaved,
the same queries go (a) to the service over HTTP (`python -m medsearch_search`) and (b)
straight to Milvus with pymilvus: single, filtered, one per patient, and batches of 100.
The exact answers come from numpy (a full scan of the matrix, timed too: the naive way);
recall@10 is the service's own answers against them. Before the rounds, the HNSW search
breadth `ef` is swept on the raw client.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from embeddings import EmbeddingModel
from machine import free_port, machine, shared_data, wait_ready
from numpy.typing import NDArray
from pymilvus import MilvusClient

from medsearch_search.embedded import EmbeddedMilvus
from medsearch_search.filters import Attributes, parse_filter
from medsearch_search.settings import SearchSettings
from medsearch_search.store import collection_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DIM = 2048
K = 10
MODEL_ID = "bench-realistic-2048"
FILTER = {"sex": ["F"], "age": {"min": 40, "max": 70}, "findings": {"any": ["Effusion", "Infiltration"]}}
BATCH = 100
UPSERT_ITEMS = 1000  # the service's default limit per upsert
DEFAULT_EF = SearchSettings.hnsw_ef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--rows", type=int, default=0, help="use only the first N images (0 = all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50, help="single queries per mode and round")
    parser.add_argument("--ef", default="32,48,64,96,128,192", help="HNSW ef values to sweep")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "search.json")
    args = parser.parse_args()

    attributes = read_metadata(args.data / "nih_cxr14" / "Data_Entry_2017_v2020_full.csv.gz", args.rows)
    model = EmbeddingModel(DIM, seed=1)
    vectors = model.embed(attributes, [a.patient_id or "" for a in attributes], seed=1)
    queries = make_queries(model, attributes, args.queries + BATCH)
    singles, batch = queries[BATCH:], queries[:BATCH]
    print(f"bench-search: {len(attributes)} rows of real metadata, {DIM}-d realistic vectors", flush=True)

    admitted = np.array([admits(a) for a in attributes])
    exact, numpy_single = exact_top(vectors, singles, None)
    exact_filtered, _ = exact_top(vectors, singles, admitted)
    exact_batch, _ = exact_top(vectors, batch, None)

    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        engine = EmbeddedMilvus(Path(folder) / "milvus", port=free_port())
        started = time.perf_counter()
        uri = engine.start()
        engine_start_s = time.perf_counter() - started
        try:
            with search_service(uri, engine.token) as base:
                result = run(base, uri, engine, vectors, attributes, singles, batch, exact, args)
        finally:
            engine.stop()

    service_hits = result.pop("_service_hits")
    filtered_hits = result.pop("_filtered_hits")
    batch_hits = result.pop("_batch_hits")
    result["recall_at_10"] = {
        "single": recall(service_hits, exact),
        "filtered": recall(filtered_hits, exact_filtered),
        "batch": recall(batch_hits, exact_batch),
    }
    result["numpy_exact_scan_p50_ms"] = ms(statistics.median(numpy_single))
    result["engine_start_seconds"] = round(engine_start_s, 1)
    report = {
        "benchmark": "search",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": versions(),
        "rows": len(attributes),
        "dim": DIM,
        "vectors": "benchmarks/embeddings.py (clustered by patient, view, finding; non-negative)",
        "filter": FILTER,
        "filter_admits_rows": int(admitted.sum()),
        "settings": {"rounds": args.rounds, "single_queries": len(singles), "batch": BATCH, "k": K},
        "engine": "embedded Milvus server (the make run default)",
        **result,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    s, f, p = result["single"], result["filtered"], result["one_per_patient"]
    print(
        f"bench-search: {len(attributes)} rows loaded in {result['load_seconds']} s "
        f"(+{result['seal_and_index_seconds']} s to seal and index); service p50/p99 "
        f"{s['service_p50_ms']}/{s['service_p99_ms']} ms (raw {s['raw_p50_ms']}), filtered "
        f"{f['service_p50_ms']}/{f['service_p99_ms']} ms, one per patient {p['service_p50_ms']}/"
        f"{p['service_p99_ms']} ms; recall@10 {result['recall_at_10']['single']}; numpy exact scan "
        f"{result['numpy_exact_scan_p50_ms']} ms"
    )


def run(
    base: str,
    uri: str,
    engine: EmbeddedMilvus,
    vectors: NDArray[np.float32],
    attributes: list[Attributes],
    singles: NDArray[np.float32],
    batch: NDArray[np.float32],
    exact: list[list[int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    session = requests.Session()
    started = time.perf_counter()
    for start in range(0, len(vectors), UPSERT_ITEMS):
        end = min(start + UPSERT_ITEMS, len(vectors))
        items = [
            {"id": i + 1, "vector": packed(vectors[i]), "attributes": attributes[i].to_json()}
            for i in range(start, end)
        ]
        response = session.put(f"{base}/v1/models/{MODEL_ID}/vectors", json={"items": items}, timeout=600)
        response.raise_for_status()
    load_s = time.perf_counter() - started
    print(f"bench-search: {len(vectors)} rows acknowledged in {load_s:.0f} s", flush=True)
    raw = MilvusClient(uri=uri, token=engine.token, timeout=600)
    name = collection_name(MODEL_ID)
    started = time.perf_counter()
    raw.flush(name)
    wait_for_index(raw, name, len(vectors))
    segments = wait_for_loaded_index(uri, engine.token, name, len(vectors))
    index_s = time.perf_counter() - started
    index = str(raw.describe_index(name, "vector").get("index_type"))
    print(f"bench-search: sealed and indexed ({index}) in {index_s:.0f} s", flush=True)
    expression = parse_filter(FILTER).expression("array")  # what the service sends a 2.3 server

    def raw_search(queries: NDArray[np.float32], flt: str = "", limit: int = K, ef: int = DEFAULT_EF) -> Any:
        return raw.search(
            name,
            data=queries.tolist(),
            limit=limit,
            filter=flt,
            output_fields=["patient_key"],
            search_params={"metric_type": "COSINE", "params": {"ef": max(ef, limit)}},
            consistency_level="Bounded",
        )

    def service_search(queries: NDArray[np.float32], **body: Any) -> list[list[int]]:
        response = session.post(
            f"{base}/v1/models/{MODEL_ID}/search",
            json={"vectors": [packed(query) for query in queries], "k": K, **body},
            timeout=600,
        )
        response.raise_for_status()
        return [[hit["id"] for hit in hits] for hits in response.json()["results"]]

    raw_search(batch[:1])  # warm both
    service_search(batch[:1])
    sweep = {}
    for ef in (int(value) for value in args.ef.split(",")):
        times, hits = [], []
        for query in singles:
            started = time.perf_counter()
            found = raw_search(query[np.newaxis], ef=ef)
            times.append(time.perf_counter() - started)
            hits.append([int(hit["id"]) for hit in found[0]])
        sweep[str(ef)] = {"raw_p50_ms": ms(statistics.median(times)), "recall_at_10": recall(hits, exact)}
        print(f"bench-search: ef {ef}: {sweep[str(ef)]}", flush=True)

    timings: dict[str, list[float]] = {}
    service_hits: list[list[int]] = []
    filtered_hits: list[list[int]] = []
    batch_hits: list[list[int]] = []
    modes: dict[str, tuple[Callable[[NDArray[np.float32]], Any], Callable[[NDArray[np.float32]], Any]]] = {
        "single": (service_search, raw_search),
        "filtered": (lambda q: service_search(q, filter=FILTER), lambda q: raw_search(q, expression)),
        # The raw side does what the service does on a 2.3 server: fetch 4k, keep each patient's best.
        "one_per_patient": (
            lambda q: service_search(q, one_per_patient=True),
            lambda q: raw_search(q, limit=4 * K),
        ),
    }
    for round_ in range(args.rounds):
        for mode, (service, raw_call) in modes.items():
            for query in singles:
                query_2d = query[np.newaxis]
                for who, call in (("service", service), ("raw", raw_call)):
                    started = time.perf_counter()
                    found = call(query_2d)
                    timings.setdefault(f"{who}_{mode}", []).append(time.perf_counter() - started)
                    if round_ == 0 and who == "service" and mode == "single":
                        service_hits.append(found[0])
                    if round_ == 0 and who == "service" and mode == "filtered":
                        filtered_hits.append(found[0])
        for who, call in (("service", service_search), ("raw", raw_search)):
            for _ in range(3):
                started = time.perf_counter()
                found = call(batch)
                timings.setdefault(f"{who}_batch", []).append(time.perf_counter() - started)
                if who == "service" and not batch_hits:
                    batch_hits = found
        print(f"bench-search: round {round_ + 1} of {args.rounds} done", flush=True)
    session.close()
    raw.close()

    def summary(mode: str) -> dict[str, float]:
        service, raw_times = timings[f"service_{mode}"], timings[f"raw_{mode}"]
        return {
            "service_p50_ms": ms(statistics.median(service)),
            "service_p99_ms": ms(float(np.percentile(service, 99))),
            "raw_p50_ms": ms(statistics.median(raw_times)),
            "raw_p99_ms": ms(float(np.percentile(raw_times, 99))),
            "ratio_p50": round(statistics.median(service) / statistics.median(raw_times), 2),
        }

    service_b, raw_b = timings["service_batch"], timings["raw_batch"]
    return {
        "index": index,
        "hnsw_ef": DEFAULT_EF,
        "load_seconds": round(load_s, 1),
        "seal_and_index_seconds": round(index_s, 1),
        "segments": segments,
        "engine_rss_mib": rss_mib(engine.pid),
        "ef_sweep": sweep,
        "single": summary("single"),
        "filtered": summary("filtered"),
        "one_per_patient": summary("one_per_patient"),
        "batch": {
            "service_p50_ms_per_query": ms(statistics.median(service_b) / BATCH),
            "raw_p50_ms_per_query": ms(statistics.median(raw_b) / BATCH),
            "ratio": round(statistics.median(service_b) / statistics.median(raw_b), 2),
        },
        "_service_hits": service_hits,
        "_filtered_hits": filtered_hits,
        "_batch_hits": batch_hits,
    }


def packed(vector: NDArray[np.float32]) -> str:
    """medsearch_common.vectors' packed form, made from the numpy row at once (the client side
    of loading 112,120 rows should not weigh in the load time)."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def make_queries(model: EmbeddingModel, attributes: list[Attributes], count: int) -> NDArray[np.float32]:
    """Half follow-ups of indexed patients, half patients not indexed, with real metadata."""
    rng = np.random.default_rng(3)
    picked = [attributes[i] for i in rng.choice(len(attributes), size=count, replace=False)]
    keys = [(a.patient_id or "") if i % 2 == 0 else f"new:{i}" for i, a in enumerate(picked)]
    return model.embed(picked, keys, seed=2)


def exact_top(
    vectors: NDArray[np.float32], queries: NDArray[np.float32], admitted: NDArray[np.bool_] | None
) -> tuple[list[list[int]], list[float]]:
    """The exact top k of each query (IDs are row + 1), and the time each full scan took."""
    tops, times = [], []
    for query in queries:
        started = time.perf_counter()
        scores = vectors @ query
        if admitted is not None:
            scores = np.where(admitted, scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        times.append(time.perf_counter() - started)
        tops.append([int(i) + 1 for i in top[np.argsort(-scores[top])]])
    return tops, times


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return round(statistics.mean(len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)), 4)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def wait_for_index(client: MilvusClient, name: str, rows: int) -> None:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        info = client.describe_index(name, "vector")
        if int(info.get("indexed_rows", 0)) >= rows or info.get("index_type") == "FLAT":
            return
        time.sleep(1)
    raise SystemExit("bench-search: the index was not built within an hour")


def wait_for_loaded_index(uri: str, token: str, name: str, rows: int) -> int:
    """Until the query node serves every row from an indexed segment: right after the index is
    built it may still search a sealed segment by its interim index (lower recall, slower)."""
    import warnings

    from pymilvus import connections, utility

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the ORM: its only segment view
    connections.connect(alias="bench-search", uri=uri, token=token)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            segments = utility.get_query_segment_info(name, using="bench-search")
            if sum(s.num_rows for s in segments) >= rows and all(s.index_name for s in segments):
                print(f"bench-search: {len(segments)} segments served indexed", flush=True)
                return len(segments)
            time.sleep(1)
        raise SystemExit("bench-search: the query node did not load the indexed segments in 10 minutes")
    finally:
        connections.disconnect("bench-search")


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


def admits(a: Attributes) -> bool:
    return a.sex == "F" and 40 <= a.age <= 70 and bool({"Effusion", "Infiltration"} & set(a.findings))


@contextmanager
def search_service(uri: str, token: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "MEDSEARCH_PORT": str(port),
        "MEDSEARCH_MILVUS_URI": uri,
        "MEDSEARCH_MILVUS_TOKEN": token,
        "MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S": "600",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "medsearch_search"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", process, "bench-search: the search service", 120)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def versions() -> dict[str, Any]:
    import milvus
    import pymilvus

    return machine(pymilvus=pymilvus.__version__, milvus=str(getattr(milvus, "__version__", "2.3")))


if __name__ == "__main__":
    main()
