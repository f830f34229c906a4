"""`make bench-ingest`: bulk ingest through the whole system against the raw model, in one run.

Ingest: `medsearch ingest` of NIH's label file for the 303 real 1024² PNGs of
`../shared/data/nih_cxr14`, into a fresh stack started as `make run` starts it (the
embedded Milvus server, the four services under `make run`'s supervisor) in a temporary folder, with the
command's defaults (batches through `POST /api/v1/images/batch`), then again one image per
request into another fresh stack, for the batch path's gain. Every image goes the whole
way: upload, catalog (sha256, full decode, thumbnail, PostgreSQL), embedder (decode,
letterbox, the model), Milvus upsert, catalog state.

Raw: the same model on the service's default runtime in this process, at the service's batch size, on the
same images already decoded and letterboxed: what the model alone can do on this machine.
It is measured just before and just after the ingest (the mean of the two), while the stack
sits idle. Both use random weights: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from machine import admin_token, cpu_by_process, free_port, machine, shared_data, start_stack, wait_ready
from numpy.typing import NDArray

from medsearch_client.cli import DEFAULT_BATCH_SIZE, DEFAULT_INGEST_CONCURRENCY
from medsearch_embedder.model import load_embedder
from medsearch_embedder.preprocessing import InputLimits, prepare
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.weights import WeightsSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "embedder", "search", "catalog")
FULL_DATASET = 112_120
TARGET = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=shared_data(),
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per request (medsearch ingest)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_INGEST_CONCURRENCY,
        help="requests in flight (medsearch ingest)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "ingest.json")
    args = parser.parse_args()

    nih = args.data / "nih_cxr14"
    paths = sorted((nih / "images").glob("*.png"))
    inputs = np.stack([prepare(path.read_bytes(), InputLimits(10**9, 10**9)) for path in paths])
    batch = EmbedderSettings.from_environ({}).max_batch
    # The service's default runtime, from the cache `make run` keeps (converted once if absent).
    raw = load_embedder(
        WeightsSpec("random", seed=42),
        device="auto",
        precision="float32",
        max_batch=batch,
        cache_dir=REPO_ROOT / "var" / "embedder",
    )
    raw.embed(inputs[:batch])  # warm, untimed

    raw_before = raw_rate(raw.embed, inputs, batch)
    print(f"bench-ingest: raw model {raw_before:.2f} img/s at batch {batch}", flush=True)
    runs = {}
    # The batch path first, then one image per request (as before batches), each into a
    # fresh stack: the same images, the same model, side by side in one run.
    for label, batch_size in (("batch", args.batch_size), ("one_per_request", 1)):
        runs[label] = ingest_run(nih, len(paths), batch_size, args.concurrency)
        print(f"bench-ingest: {label}: {runs[label]['images_per_s']} img/s", flush=True)
    raw_after = raw_rate(raw.embed, inputs, batch)
    model = runs["batch"].pop("model")
    runs["one_per_request"].pop("model")
    ingest_s = runs["batch"]["seconds"]
    summary = runs["batch"]["summary"]

    raw_mean = (raw_before + raw_after) / 2
    ingest_rate = len(paths) / ingest_s
    ratio = ingest_rate / raw_mean
    report: dict[str, Any] = {
        "benchmark": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": model,
        "images": len(paths),
        "settings": {
            "batch_size": args.batch_size,
            "concurrency": args.concurrency,
            "raw_batch": batch,
            "stack": "make run (scripts/run.py)",
        },
        "runs": runs,
        "batch_over_one_per_request": round(
            runs["batch"]["images_per_s"] / runs["one_per_request"]["images_per_s"], 2
        ),
        "summary": summary,
        "ingest_seconds": round(ingest_s, 1),
        "ingest_images_per_s": round(ingest_rate, 2),
        "raw_images_per_s": {
            "before": round(raw_before, 2),
            "after": round(raw_after, 2),
            "mean": round(raw_mean, 2),
        },
        "ratio_ingest_to_raw": round(ratio, 3),
        "target_ratio": TARGET,
        "full_dataset_hours_here": round(FULL_DATASET / ingest_rate / 3600, 1),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"bench-ingest: {len(paths)} images in {ingest_s:.0f} s = {ingest_rate:.2f} img/s; raw model "
        f"{raw_mean:.2f} img/s; ratio {ratio:.2f} (target {TARGET}); all of ChestX-ray14 here: "
        f"{report['full_dataset_hours_here']} h"
    )


def ingest_run(nih: Path, count: int, batch_size: int, concurrency: int) -> dict[str, Any]:
    """`medsearch ingest` of NIH's label file into a fresh stack started as `make run` does."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as folder:
        ports = {name: free_port() for name in SERVICES}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        stack = start_stack(Path(folder), ports)
        try:
            wait_ready(f"{gateway}/readyz", stack, "bench-ingest: the stack", log=Path(folder) / "run.log")
            token = admin_token(ports, "bench-ingest")
            stats = requests.get(
                f"{gateway}/api/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            model = stats.json()["model"]
            cpu_before, children_before = cpu_by_process(), resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            result = subprocess.run(
                [
                    str(Path(sys.executable).parent / "medsearch"),
                    "--url",
                    gateway,
                    "ingest",
                    str(nih / "Data_Entry_2017_v2020.csv"),
                    "--images",
                    str(nih / "images"),
                    "--batch-size",
                    str(batch_size),
                    "--concurrency",
                    str(concurrency),
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "MEDSEARCH_TOKEN": token},
            )
            seconds = time.perf_counter() - started
            cpu_after, children_after = cpu_by_process(), resource.getrusage(resource.RUSAGE_CHILDREN)
            summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
            if result.returncode != 0 or not summary.startswith(f"{count} new"):
                sys.exit(f"bench-ingest: the ingest failed: {summary}\n{result.stderr[-3000:]}")
        finally:
            os.killpg(stack.pid, signal.SIGINT)
            stack.wait(timeout=120)
    # CPU per image by program while the ingest ran; the command's own from its rusage, as it
    # has exited by the second reading.
    cpu_ms = {
        key.removeprefix("cpu:"): round(1000 * (value - cpu_before.get(key, 0.0)) / count, 1)
        for key, value in cpu_after.items()
        if value - cpu_before.get(key, 0.0) > 0
    }
    cpu_ms["medsearch ingest (the command)"] = round(
        1000
        * (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        / count,
        1,
    )
    return {
        "model": model,
        "cpu_ms_per_image": dict(sorted(cpu_ms.items(), key=lambda item: -item[1])),
        "batch_size": batch_size,
        "concurrency": concurrency,
        "summary": summary,
        "seconds": round(seconds, 1),
        "images_per_s": round(count / seconds, 2),
    }


def raw_rate(embed: Any, inputs: NDArray[np.uint8], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        embed(inputs[start : start + batch])
    return len(inputs) / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
