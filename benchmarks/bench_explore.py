"""`make bench-explore`: what a similarity map pair and a refined search cost, in one run.

MedSearch runs as `make run` starts it (`random:42`, the 303 NIH images ingested). Measured
side by side, round after round, each figure the median of its calls:

- the embedder's own calls: one embedding (`/v1/embeddings`, one image) against one map pair
  (`/v1/similarity-maps`, a query and one result, neither seen before: two forward passes),
  and a pair whose query was just mapped against another result (the UI's case: one query,
  a page of results; its features come from the embedder's cache);
- through the gateway: a plain search (an upload) against a refined one (the same upload,
  two images marked more like it and one less), and a stored image's maps against 10 results.

Targets (issue 15): a map pair at most 2x one embedding; a refined search at most 1.2x a
plain search.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from bench_query import SERVICES, ingest
from machine import admin_token, free_port, machine, shared_data, start_stack, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"map_pair_vs_embedding": 2.0, "refined_vs_plain_search": 1.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=10, help="calls of each kind per round")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "explore.json")
    args = parser.parse_args()

    nih = args.data / "nih_cxr14"
    paths = sorted((nih / "images").glob("*.png"))
    images: list[bytes] = [path.read_bytes() for path in paths]
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as folder_name:
        folder = Path(folder_name)
        ports = {name: free_port() for name in (*SERVICES, "milvus")}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        embedder = f"http://127.0.0.1:{ports['embedder']}"
        stack = start_stack(folder, ports)
        try:
            wait_ready(f"{gateway}/readyz", stack, "bench-explore: MedSearch", log=folder / "run.log")
            token = admin_token(ports, "bench-explore")
            auth = {"Authorization": f"Bearer {token}"}
            ingest(gateway, nih, token)
            ids = stored_ids(gateway, auth)
            times: dict[str, list[float]] = {}
            fresh = iter(range(10**9))  # each map pair takes images the embedder has not seen lately

            def image(i: int) -> bytes:
                return images[i % len(images)]

            calls: dict[str, Callable[[int], Any]] = {
                "embedding": lambda i: embed(embedder, image(i)),
                "map_pair": lambda i: maps(embedder, image(next(fresh) * 7), [image(next(fresh) * 7 + 3)]),
                "map_pair_query_cached": lambda i: maps(embedder, image(5), [image(i * 11 + 1)]),
                "plain_search": lambda i: search(gateway, auth, image(i)),
                "refined_search": lambda i: search(
                    gateway,
                    auth,
                    image(i),
                    positive=(ids[(i + 1) % len(ids)], ids[(i + 2) % len(ids)]),
                    negative=(ids[(i + 3) % len(ids)],),
                ),
                "gateway_maps_10_results": lambda i: gateway_maps(
                    gateway, auth, ids[i % len(ids)], [ids[(i + j) % len(ids)] for j in range(1, 11)]
                ),
            }
            for call in calls.values():  # warm each path once
                call(0)
            for round_ in range(args.rounds):
                order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
                for name in order:
                    for i in range(args.per_round):
                        started = time.perf_counter()
                        calls[name](round_ * args.per_round + i + 1)
                        times.setdefault(name, []).append(time.perf_counter() - started)
                print(f"bench-explore: round {round_ + 1} done", flush=True)
        finally:
            os.killpg(stack.pid, signal.SIGINT)
            stack.wait(timeout=120)

    medians = {name: round(statistics.median(values) * 1000, 1) for name, values in times.items()}
    ratios = {
        "map_pair_vs_embedding": round(medians["map_pair"] / medians["embedding"], 3),
        "map_pair_query_cached_vs_embedding": round(
            medians["map_pair_query_cached"] / medians["embedding"], 3
        ),
        "refined_vs_plain_search": round(medians["refined_search"] / medians["plain_search"], 3),
    }
    report = {
        "benchmark": "explore",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "images": len(images),
        "settings": {"rounds": args.rounds, "per_round": args.per_round, "weights": "random:42"},
        "median_ms": medians,
        "ratios": ratios,
        "targets": TARGETS,
        "met": {name: ratios[name] <= target for name, target in TARGETS.items()},
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench-explore: medians (ms) {medians}; ratios {ratios}; targets {TARGETS}")


def stored_ids(gateway: str, auth: dict[str, str]) -> list[int]:
    page = requests.get(f"{gateway}/api/v1/images", params={"limit": 500}, headers=auth, timeout=30)
    page.raise_for_status()
    return [item["id"] for item in page.json()["items"]]


def embed(embedder: str, image: bytes) -> None:
    response = requests.post(
        f"{embedder}/v1/embeddings",
        params={"encoding": "base64"},
        files={"images": ("q.png", image)},
        timeout=60,
    )
    response.raise_for_status()


def maps(embedder: str, query: bytes, results: list[bytes]) -> None:
    files = [("query", ("q.png", query)), *(("results", (f"r{i}.png", r)) for i, r in enumerate(results))]
    response = requests.post(f"{embedder}/v1/similarity-maps", files=files, timeout=60)
    response.raise_for_status()


def search(
    gateway: str,
    auth: dict[str, str],
    image: bytes,
    positive: tuple[int, ...] = (),
    negative: tuple[int, ...] = (),
) -> None:
    form = {"k": "10"}
    if positive:
        form["positive"] = ",".join(map(str, positive))
    if negative:
        form["negative"] = ",".join(map(str, negative))
    response = requests.post(
        f"{gateway}/api/v1/search", files={"image": ("q.png", image)}, data=form, headers=auth, timeout=60
    )
    response.raise_for_status()


def gateway_maps(gateway: str, auth: dict[str, str], query_id: int, result_ids: list[int]) -> None:
    form = {"query_id": str(query_id), "result_id": ",".join(map(str, result_ids))}
    response = requests.post(f"{gateway}/api/v1/similarity-maps", data=form, headers=auth, timeout=60)
    response.raise_for_status()


if __name__ == "__main__":
    main()
