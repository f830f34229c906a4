"""`make bench-soak`: 16 clients for 10 minutes of mixed work through the real stack.

MedSearch runs as `make run` starts it (embedded PostgreSQL and Milvus server, the services
under the supervisor, `random:42`) with the 303 NIH images ingested. Each client loops, until
the time is up, over a mix of what users do: a search with an uploaded X-ray (50 %), more like
this of an indexed image (25 %), adding a new image (12.5 %: a shared PNG with a few random
pixels changed, so its bytes are new) and deleting one this soak added (12.5 %; an add when
there is none yet). Adds and deletes balance so that the data held stays level: with the
collection growing, the Milvus engine's memory grows with the rows written, which is data, not
a leak (a 30-minute run of that kind: bench-results/soak_growing.json, README).

Pass: no error but clean 503s with `Retry-After` (the embedder's queue full); the memory of
every program flat (the mean resident size of the last third of the run within 10 % of the
middle third's: the first third is warm-up, and thirds are long enough to span the Milvus
engine's cycles of filling a growing segment and releasing it when sealed); and
the counts consistent at the end: the catalog holds the 303 plus what was added and not
deleted, every one indexed, the search service holds exactly that many vectors, every image
still there has its vector and every deleted one has neither row nor vector.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from bench_query import ingest
from machine import admin_token, free_port, machine, shared_data, stack_processes, start_stack, wait_ready
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "embedder", "search", "catalog")
MIX: dict[str, float] = {"search": 0.50, "similar": 0.25, "add": 0.125, "delete": 0.125}
MEMORY_PROGRAMS = (
    "medsearch_gateway", "medsearch_embedder", "medsearch_search", "medsearch_catalog",
    "milvus engine", "postgres",
)  # fmt: skip
FLAT_WITHIN = 0.10
HTTP_TIMEOUT_S = 120


@dataclass
class Tally:
    """What the clients did, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)

    def note(self, op: str, seconds: float, outcome: str, problem: str | None = None) -> None:
        with self.lock:
            self.latencies.setdefault(op, []).append(seconds)
            self.outcomes[f"{op} {outcome}"] += 1
            if problem is not None and len(self.unexpected) < 50:
                self.unexpected.append(f"{op}: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "soak.json")
    args = parser.parse_args()

    nih = args.data / "nih_cxr14"
    paths = sorted((nih / "images").glob("*.png"))
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder_name:
        folder = Path(folder_name)
        ports = {name: free_port() for name in (*SERVICES, "milvus")}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        stack = start_stack(folder, ports)
        try:
            wait_ready(f"{gateway}/readyz", stack, "bench-soak: MedSearch", log=folder / "run.log")
            token = admin_token(ports, "bench-soak")
            auth = {"Authorization": f"Bearer {token}"}
            ingest(gateway, nih, token)
            base_ids = image_ids(gateway, auth)
            uploads = [path.read_bytes() for path in paths]
            seeds = [Image.open(path).convert("L").resize((512, 512)) for path in paths[:24]]
            tally = Tally()
            memory: list[dict[str, float]] = []
            deadline = time.monotonic() + args.duration_s
            print(f"bench-soak: {args.clients} clients for {args.duration_s:.0f} s", flush=True)
            sampler = threading.Thread(
                target=sample_memory, args=(memory, deadline, args.sample_s, stack.pid, folder), daemon=True
            )
            sampler.start()
            workers = [
                threading.Thread(
                    target=client,
                    args=(gateway, auth, random.Random(n), uploads, seeds, base_ids, tally, deadline),
                )
                for n in range(args.clients)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            sampler.join()
            consistency = check_counts(gateway, ports, auth, base_ids, tally)
            report = summarize(args, tally, memory, consistency)
        finally:
            os.killpg(stack.pid, signal.SIGINT)
            stack.wait(timeout=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["verdict"], indent=2), flush=True)


def client(
    gateway: str,
    auth: dict[str, str],
    rng: random.Random,
    uploads: list[bytes],
    seeds: list[Image.Image],
    base_ids: list[int],
    tally: Tally,
    deadline: float,
) -> None:
    session = requests.Session()
    session.headers.update(auth)
    ops, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        op = rng.choices(ops, weights)[0]
        if op == "delete":
            with tally.lock:
                victim = tally.added.pop(rng.randrange(len(tally.added))) if tally.added else None
            if victim is None:
                op = "add"
        started = time.perf_counter()
        try:
            if op == "search":
                response = session.post(
                    f"{gateway}/api/v1/search",
                    files={"image": ("q.png", rng.choice(uploads), "image/png")},
                    data={"k": "10"},
                    timeout=HTTP_TIMEOUT_S,
                )
            elif op == "similar":
                response = session.get(
                    f"{gateway}/api/v1/images/{rng.choice(base_ids)}/similar", timeout=HTTP_TIMEOUT_S
                )
            elif op == "add":
                response = session.post(
                    f"{gateway}/api/v1/images",
                    files={"image": ("new.png", fresh_png(rng, rng.choice(seeds)), "image/png")},
                    data={"metadata": json.dumps({"dataset": "soak"})},
                    timeout=HTTP_TIMEOUT_S,
                )
            else:
                response = session.delete(f"{gateway}/api/v1/images/{victim}", timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as exc:
            tally.note(op, time.perf_counter() - started, "no answer", type(exc).__name__)
            if op == "delete" and victim is not None:
                with tally.lock:
                    tally.added.append(victim)  # still there as far as we know
            continue
        seconds = time.perf_counter() - started
        status = response.status_code
        if status < 300:
            tally.note(op, seconds, "ok")
            with tally.lock:
                if op == "add":
                    tally.added.append(int(response.json()["image"]["id"]))
                elif op == "delete":
                    tally.deleted.append(int(victim))  # type: ignore[arg-type]
        elif status == 503 and response.headers.get("Retry-After"):
            tally.note(op, seconds, "clean 503")
            if op == "delete":
                with tally.lock:
                    tally.added.append(int(victim))  # type: ignore[arg-type]
            time.sleep(min(5.0, float(response.headers["Retry-After"])))
        else:
            tally.note(op, seconds, f"HTTP {status}", f"HTTP {status}: {response.text[:200]}")
            if op == "delete":
                with tally.lock:
                    tally.added.append(int(victim))  # type: ignore[arg-type]


def fresh_png(rng: random.Random, seed: Image.Image) -> bytes:
    """A shared X-ray with a few pixels changed: new bytes, the same kind of image."""
    pixels = np.array(seed)
    for _ in range(8):
        pixels[rng.randrange(pixels.shape[0]), rng.randrange(pixels.shape[1])] = rng.randrange(256)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def sample_memory(
    samples: list[dict[str, float]], deadline: float, every_s: float, session: int, folder: Path
) -> None:
    """Every `every_s`, the memory of each program of this stack (`stack_processes`), summed over
    its processes as their proportional set size: a page shared by several processes (the shared
    buffers every PostgreSQL backend maps) counts once in all, not once per process."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        sample: dict[str, float] = {"t_s": round(time.monotonic() - started, 1)}
        for pid, name in stack_processes(session, folder).items():
            if name not in MEMORY_PROGRAMS:
                continue
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in rollup.splitlines():
                if line.startswith("Pss:"):
                    sample[name] = round(sample.get(name, 0.0) + int(line.split()[1]) / 1024, 1)
        samples.append(sample)
        time.sleep(every_s)


def image_ids(gateway: str, auth: dict[str, str]) -> list[int]:
    ids: list[int] = []
    cursor = ""
    while True:
        page = requests.get(
            f"{gateway}/api/v1/images", params={"limit": "500", "cursor": cursor}, headers=auth, timeout=60
        ).json()
        ids.extend(int(item["id"]) for item in page["items"])
        if not page["next_cursor"]:
            return ids
        cursor = page["next_cursor"]


def check_counts(
    gateway: str, ports: dict[str, int], auth: dict[str, str], base_ids: list[int], tally: Tally
) -> dict[str, Any]:
    """Both stores against what the clients were answered."""
    stats = requests.get(f"{gateway}/api/v1/stats", headers=auth, timeout=60).json()
    model_id = stats["model"]["model_id"]
    search = f"http://127.0.0.1:{ports['search']}/v1/models/{model_id}"
    vectors = int(requests.get(search, timeout=60).json()["count"])
    kept = set(base_ids) | set(tally.added)
    present = set(image_ids(gateway, auth))

    def has_vector(image_id: int) -> bool:
        return requests.get(f"{search}/vectors/{image_id}", timeout=60).status_code == 200

    deleted_with_vector = [i for i in tally.deleted if has_vector(i)]
    kept_without_vector = [i for i in sorted(kept) if not has_vector(i)]
    checks = {
        "catalog_images": stats["images"],
        "expected_images": len(kept),
        "indexed": (stats["index"] or {}).get("indexed"),
        "search_vectors": vectors,
        "missing_from_catalog": sorted(kept - present)[:20],
        "unexpected_in_catalog": sorted(present - kept)[:20],
        "deleted_still_with_vector": deleted_with_vector[:20],
        "kept_without_vector": kept_without_vector[:20],
    }
    checks["consistent"] = (
        stats["images"] == len(kept) == checks["indexed"] == vectors
        and present == kept
        and not deleted_with_vector
        and not kept_without_vector
    )
    return checks


def summarize(
    args: argparse.Namespace, tally: Tally, memory: list[dict[str, float]], consistency: dict[str, Any]
) -> dict[str, Any]:
    per_op = {
        op: {
            "count": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1),
        }
        for op, values in sorted(tally.latencies.items())
    }
    errors = sum(n for key, n in tally.outcomes.items() if not key.endswith((" ok", " clean 503")))
    clean_503 = sum(n for key, n in tally.outcomes.items() if key.endswith(" clean 503"))
    growth = memory_growth(memory)
    flat = all(abs(g["growth"]) <= FLAT_WITHIN for g in growth.values())
    requests_total = sum(tally.outcomes.values())
    return {
        "benchmark": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"clients": args.clients, "duration_s": args.duration_s, "mix": MIX},
        "requests": requests_total,
        "requests_per_s": round(requests_total / args.duration_s, 2),
        "per_operation": per_op,
        "outcomes": dict(sorted(tally.outcomes.items())),
        "unexpected": tally.unexpected,
        "memory_mb": growth,
        "memory_samples": memory,
        "consistency": consistency,
        "verdict": {
            "errors_other_than_clean_503": errors,
            "clean_503": clean_503,
            "memory_flat": flat,
            "counts_consistent": consistency["consistent"],
            "passed": errors == 0 and flat and consistency["consistent"],
        },
    }


def memory_growth(memory: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per program: the mean and peak resident MB of the middle and last thirds of the run,
    and the growth of the mean between them as a fraction."""
    third = max(1, len(memory) // 3)
    middle, last = memory[third : 2 * third], memory[2 * third :]
    growth = {}
    for name in MEMORY_PROGRAMS:
        early = [s[name] for s in middle if name in s]
        late = [s[name] for s in last if name in s]
        if early and late:
            before, after = statistics.mean(early), statistics.mean(late)
            growth[name] = {
                "middle_third_mb": round(before, 1),
                "last_third_mb": round(after, 1),
                "middle_third_peak_mb": round(max(early), 1),
                "last_third_peak_mb": round(max(late), 1),
                "growth": round((after - before) / before, 3),
            }
    return growth


if __name__ == "__main__":
    main()
