"""`make bench-embedder`: both model runtimes, and the embedder service against the raw one it serves.

Raw: ResNet-50 in this process on inputs already preprocessed, on TensorFlow (the compiled
`tf.function`s) and on ONNX Runtime (converted from it), at batch 1 and 8. Service:
`python -m medsearch_embedder` (gunicorn, default settings, so ONNX Runtime on a CPU) with 1 and
16 concurrent clients, each sending one real 1024² X-ray per request. Raw and service are
interleaved round by round, so both see the same machine load; medians are reported. At 1
client the service's own metrics split a request's time into decoding and the model call.
Also: the conversion and cached-load times, and the cosine between the two runtimes' vectors.
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
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from machine import free_port, machine, shared_data, wait_ready
from prometheus_client.parser import text_string_to_metric_families

from medsearch_embedder.model import Embedder, load_embedder
from medsearch_embedder.preprocessing import InputLimits, prepare
from medsearch_embedder.weights import WeightsSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("tensorflow", "onnxruntime")
RAW_BATCHES = (1, 8)
CLIENTS = (1, 16)
WEIGHTS = WeightsSpec("random", seed=42)
THREAD_VARIABLES = ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")


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

    with tempfile.TemporaryDirectory(prefix="bench-embedder-") as folder:
        cache = Path(folder)
        # Converted once here; the service then loads it from the same cache, as a restart would.
        load_s = {}
        raw: dict[str, Embedder] = {}
        for runtime, label in (("onnxruntime", "onnxruntime_converting"), ("tensorflow", "tensorflow")):
            started = time.perf_counter()
            raw[runtime] = _load(runtime, cache)
            load_s[label] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        _load("onnxruntime", cache)
        load_s["onnxruntime_cached"] = round(time.perf_counter() - started, 1)
        cosine = _min_cosine(raw["tensorflow"], raw["onnxruntime"], inputs)

        port = free_port()
        log_path = REPO_ROOT / "bench-results" / "embedder-service.log.tmp"
        log_path.parent.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "MEDSEARCH_PORT": str(port),
            "MEDSEARCH_EMBEDDER_WEIGHTS": "random:42",
            "MEDSEARCH_EMBEDDER_CACHE_DIR": str(cache),
        }
        with open(log_path, "wb") as log:
            service = subprocess.Popen(
                [sys.executable, "-m", "medsearch_embedder"], env=env, stdout=log, stderr=log
            )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{base}/readyz", service, "bench-embedder: the service", 300, log_path)
            model = requests.get(f"{base}/v1/model", timeout=10).json()
            served = next(runtime for runtime in RUNTIMES if model["runtime"].startswith(runtime))
            worker = _worker_pid(service.pid)
            raw_rates: dict[str, dict[int, list[float]]] = {r: {b: [] for b in RAW_BATCHES} for r in RUNTIMES}
            raw_latency_b1: dict[str, list[float]] = {r: [] for r in RUNTIMES}
            service_rates: dict[int, list[float]] = {c: [] for c in CLIENTS}
            service_latency_c1: list[float] = []
            service_split_c1: dict[str, list[float]] = {"model_call": [], "preprocessing": []}
            # Warm each once, untimed.
            for embedder in raw.values():
                embedder.embed(inputs[:8])
            _run_clients(base, files[:8], 4)
            for _ in range(args.rounds):
                for runtime in RUNTIMES:
                    for batch in RAW_BATCHES:
                        rate, latencies = _measure_raw(raw[runtime].embed, inputs, batch)
                        raw_rates[runtime][batch].append(rate)
                        if batch == 1:
                            raw_latency_b1[runtime].extend(latencies)
                for clients in CLIENTS:
                    before = _service_seconds(base)
                    rate, latencies = _run_clients(base, files, clients)
                    service_rates[clients].append(rate)
                    if clients == 1:
                        service_latency_c1.extend(latencies)
                        after = _service_seconds(base)
                        for name in service_split_c1:
                            total, count = (a - b for a, b in zip(after[name], before[name], strict=True))
                            service_split_c1[name].append(total / count)
            peak_rss_mb = _peak_rss_mb(worker)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
    log_path.unlink(missing_ok=True)

    raw_median = {r: {b: statistics.median(v) for b, v in rates.items()} for r, rates in raw_rates.items()}
    service_median = {c: statistics.median(r) for c, r in service_rates.items()}
    raw_best = max(raw_median[served].values())
    p50_raw = {r: statistics.median(v) for r, v in raw_latency_b1.items()}
    p50_service = statistics.median(service_latency_c1)
    split = {name: statistics.median(v) for name, v in service_split_c1.items()}
    result: dict[str, Any] = {
        "benchmark": "embedder",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "model": model,
        "settings": {
            "rounds": args.rounds,
            "images_per_measurement": args.images,
            # Service settings changed through the environment, if any.
            "service": {
                k: v
                for k, v in os.environ.items()
                if k.startswith("MEDSEARCH_EMBEDDER_") or k in THREAD_VARIABLES
            }
            or "defaults",
        },
        # Others share this machine's cores: the load over the last 1, 5 and 15 minutes, at the end.
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "raw_images_per_s": {
            r: {str(b): round(v, 2) for b, v in medians.items()} for r, medians in raw_median.items()
        },
        "service_runtime": served,
        "service_images_per_s": {str(c): round(v, 2) for c, v in service_median.items()},
        "ratio_service16_to_raw_best": round(service_median[16] / raw_best, 3),
        "p50_ms": {
            **{f"raw_batch1_{r}": round(v * 1000, 1) for r, v in p50_raw.items()},
            "service_1_client": round(p50_service * 1000, 1),
        },
        # Means, as the service's histograms give them: its model call against the same call
        # raw (a mean against a median would blame the service for the machine's outliers).
        "mean_ms_1_client": {
            "service_model_call": round(split["model_call"] * 1000, 1),
            "service_preprocessing": round(split["preprocessing"] * 1000, 1),
            "raw_batch1": round(statistics.mean(raw_latency_b1[served]) * 1000, 1),
        },
        "p99_ms_service_1_client": round(float(np.percentile(service_latency_c1, 99)) * 1000, 1),
        "p50_ratio_service_to_raw": round(p50_service / p50_raw[served], 3),
        "service_peak_rss_mb": peak_rss_mb,
        "load_s": load_s,
        "min_cosine_onnxruntime_to_tensorflow": round(cosine, 8),
        "targets": {"ratio": ">= 0.9", "p50_ratio": "<= 1.2", "peak_rss_mb": "< 1536"},
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    raw_text = "; ".join(f"{r} " + "/".join(f"{raw_median[r][b]:.1f}" for b in RAW_BATCHES) for r in RUNTIMES)
    service_text = "/".join(f"{service_median[c]:.1f}" for c in CLIENTS)
    means = result["mean_ms_1_client"]
    print(
        f"bench-embedder: raw {raw_text} img/s (batch 1/8); service on {served} {service_text} img/s "
        f"(1/16 clients); ratio {result['ratio_service16_to_raw_best']}; p50 {p50_service * 1000:.0f} ms "
        f"vs raw {p50_raw[served] * 1000:.0f} ms ({result['p50_ratio_service_to_raw']}x); means: model call "
        f"{means['service_model_call']} ms in the service, {means['raw_batch1']} ms raw, decoding "
        f"{means['service_preprocessing']} ms; "
        f"peak RSS {peak_rss_mb} MB; min cosine {cosine:.7f}; load {load_s} s"
    )


def _load(runtime: str, cache: Path) -> Embedder:
    return load_embedder(
        WEIGHTS,
        device="cpu",
        precision="float32",
        max_batch=max(RAW_BATCHES),
        runtime=runtime,
        cache_dir=cache,
    )


def _min_cosine(a: Embedder, b: Embedder, inputs: np.ndarray[Any, Any]) -> float:
    """The lowest cosine between the runtimes' vectors of the same inputs, alone and in batches."""
    pairs = [(a.embed(inputs[:1]), b.embed(inputs[:1])), (a.embed(inputs), b.embed(inputs))]
    return min(float(np.min(np.sum(x.astype(np.float64) * y, axis=1))) for x, y in pairs)


def _service_seconds(base: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the service's model-call and decoding histograms."""
    names = {"embedder_inference_seconds": "model_call", "embedder_preprocessing_seconds": "preprocessing"}
    found: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(requests.get(f"{base}/metrics", timeout=10).text):
        if family.name in names:
            values = {sample.name.removeprefix(family.name): sample.value for sample in family.samples}
            found[names[family.name]] = (values["_sum"], values["_count"])
    return found


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
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return machine(
        tensorflow=tf.__version__, onnxruntime=onnxruntime.__version__, tf2onnx=tf2onnx.__version__
    )


if __name__ == "__main__":
    main()
