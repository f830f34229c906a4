"""`make bench-embedder`: the embedder service against the raw model it serves, in one run.

Raw: the compiled TensorFlow model in this process, on inputs already preprocessed, at batch
1, 8 and 32. Service: `python -m medsearch_embedder` (gunicorn, default settings) with 1, 4
and 16 concurrent clients, each sending one real 1024² X-ray per request. The two are
interleaved round by round, so both see the same machine load; medians are reported.
Both use random weights: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from machine import free_port, machine, shared_data, wait_ready

from medsearch_embedder.model import load_embedder
from medsearch_embedder.preprocessing import InputLimits, prepare
from medsearch_embedder.weights import WeightsSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
RAW_BATCHES = (1, 8, 32)
CLIENTS = (1, 4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=shared_data(),
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "embedder.json")
    args = parser.parse_args()

    paths = sorted((args.data / "nih_cxr14" / "images").glob("*.png"))[: args.images]
    if len(paths) < args.images:
        sys.exit(f"bench-embedder: need {args.images} X-rays in {args.data}/nih_cxr14/images")
    files = [path.read_bytes() for path in paths]
    inputs = np.stack([prepare(data, InputLimits(10**9, 10**9)) for data in files])

    port = free_port()
    log_path = REPO_ROOT / "bench-results" / "embedder-service.log.tmp"
    log_path.parent.mkdir(exist_ok=True)
    env = {**os.environ, "MEDSEARCH_PORT": str(port), "MEDSEARCH_EMBEDDER_WEIGHTS": "random:42"}
    with open(log_path, "wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "medsearch_embedder"], env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        raw = load_embedder(
            WeightsSpec("random", seed=42), device="auto", precision="float32", max_batch=max(RAW_BATCHES)
        )
        wait_ready(f"{base}/readyz", service, "bench-embedder: the service", 300, log_path)
        model = requests.get(f"{base}/v1/model", timeout=10).json()
        worker = _worker_pid(service.pid)
        raw_rates: dict[int, list[float]] = {b: [] for b in RAW_BATCHES}
        raw_latency_b1: list[float] = []
        service_rates: dict[int, list[float]] = {c: [] for c in CLIENTS}
        service_latency_c1: list[float] = []
        # Warm both once, untimed.
        raw.embed(inputs[:8])
        _run_clients(base, files[:8], 4)
        for _ in range(args.rounds):
            for batch in RAW_BATCHES:
                rate, latencies = _measure_raw(raw.embed, inputs, batch)
                raw_rates[batch].append(rate)
                if batch == 1:
                    raw_latency_b1.extend(latencies)
            for clients in CLIENTS:
                rate, latencies = _run_clients(base, files, clients)
                service_rates[clients].append(rate)
                if clients == 1:
                    service_latency_c1.extend(latencies)
        peak_rss_mb = _peak_rss_mb(worker)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    log_path.unlink(missing_ok=True)

    raw_median = {b: statistics.median(r) for b, r in raw_rates.items()}
    service_median = {c: statistics.median(r) for c, r in service_rates.items()}
    raw_best = max(raw_median.values())
    p50_raw = statistics.median(raw_latency_b1)
    p50_service = statistics.median(service_latency_c1)
    result: dict[str, Any] = {
        "benchmark": "embedder",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "model": model,
        "settings": {"rounds": args.rounds, "images_per_measurement": args.images, "service": "defaults"},
        "raw_images_per_s": {str(b): round(v, 2) for b, v in raw_median.items()},
        "service_images_per_s": {str(c): round(v, 2) for c, v in service_median.items()},
        "ratio_service16_to_raw_best": round(service_median[16] / raw_best, 3),
        "p50_ms": {"raw_batch1": round(p50_raw * 1000, 1), "service_1_client": round(p50_service * 1000, 1)},
        "p99_ms_service_1_client": round(float(np.percentile(service_latency_c1, 99)) * 1000, 1),
        "p50_ratio_service_to_raw": round(p50_service / p50_raw, 3),
        "service_peak_rss_mb": peak_rss_mb,
        "targets": {"ratio": ">= 0.9", "p50_ratio": "<= 1.2", "peak_rss_mb": "< 1536"},
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    raw_text = "/".join(f"{raw_median[b]:.1f}" for b in RAW_BATCHES)
    service_text = "/".join(f"{service_median[c]:.1f}" for c in CLIENTS)
    print(
        f"bench-embedder: raw {raw_text} img/s (batch 1/8/32); service {service_text} img/s "
        f"(1/4/16 clients); ratio {result['ratio_service16_to_raw_best']}; p50 {p50_service * 1000:.0f} ms "
        f"vs raw {p50_raw * 1000:.0f} ms ({result['p50_ratio_service_to_raw']}x); peak RSS {peak_rss_mb} MB"
    )


def _measure_raw(
    embed: Callable[[Any], Any], inputs: np.ndarray[Any, Any], batch: int
) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for start in range(0, len(inputs) - batch + 1, batch):
        t0 = time.perf_counter()
        embed(inputs[start : start + batch])
        latencies.append(time.perf_counter() - t0)
    done = (len(inputs) // batch) * batch
    return done / (time.perf_counter() - started), latencies


def _run_clients(base: str, files: list[bytes], clients: int) -> tuple[float, list[float]]:
    """`clients` threads share `files`, one image per request; images/s and request latencies."""
    lock = threading.Lock()
    queue = list(range(len(files)))
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                index = queue.pop()
            t0 = time.perf_counter()
            response = session.post(
                f"{base}/v1/embeddings", files=[("images", ("x.png", files[index]))], timeout=120
            )
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"bench-embedder: {len(failures)} requests failed, e.g. {failures[0]}")
    return len(files) / elapsed, latencies


def _worker_pid(arbiter: int) -> int:
    """gunicorn's worker, the process that holds the model."""
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return int(children[0]) if children else arbiter


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _machine() -> dict[str, Any]:
    import tensorflow as tf

    return machine(tensorflow=tf.__version__)


if __name__ == "__main__":
    main()
