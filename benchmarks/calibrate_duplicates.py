"""The near-duplicate threshold, measured; and what a duplicates scan costs, measured.

1. The threshold. MedSearch runs as `make run` starts it (`--weights`, default `random:42`, the
   test suite's model). The shared sets are ingested (NIH's 303 images and Hannover's 104),
   and two re-encoded copies of each image beside them: a half-size JPEG (quality 90, as the
   tests plant them) and a full-size JPEG (quality 75). Then `POST /api/v1/duplicates` walks
   the whole collection at a low threshold, 10 neighbours an image, and gives the scores of
   (a) every copy pair (an image and its copies, the copies among themselves) and (b) each
   image's best neighbour outside its own family (same-patient follow-ups included: they are
   other images, not copies). Where every (a) scores above every (b), the threshold is the middle
   of the gap (rounded down to 5 decimals); where they overlap (as with random weights), no pair
   of different images may be found: it is 1e-5 above the highest (b), rounded up to 5 decimals,
   and the copy pairs below it are listed as missed. A scan at the threshold then counts what
   it finds. Another model needs its own run: `--weights`.
2. The cost through the gateway: that scan's time per image on the same stack.
3. The cost at ChestX-ray14's size (`--rows`, default 112,120; 0 skips it): the search service's
   `neighbors` walked over every range of `--batch` IDs, on the default engine (the embedded
   Milvus server, HNSW) holding one made-up vector per image of NIH's label file, built as
   bench-search builds them (benchmarks/embeddings.py). The catalog's part (one lookup of the
   range's index states, one of the few images paired) is small and measured in 2.

Writes bench-results/duplicates_threshold.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from bench_query import SERVICES
from bench_search import packed, read_metadata, search_service, wait_for_index, wait_for_loaded_index
from embeddings import EmbeddingModel
from machine import admin_token, free_port, machine, shared_data, start_stack, wait_ready
from PIL import Image

from medsearch_client.client import GatewayClient
from medsearch_search.embedded import EmbeddedMilvus
from medsearch_search.store import collection_name

REPO_ROOT = Path(__file__).resolve().parent.parent
COPIES = {"half-jpeg": (0.5, 90), "jpeg-q75": (1.0, 75)}  # name: (scale, JPEG quality)
SCAN_THRESHOLD = 0.5  # low enough that every image's 10 neighbours come back
K = 10
# Where copies and other pairs overlap, the threshold stays this far above the highest other pair.
MARGIN = 1e-5
BATCH = 1000
UPLOAD_BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--weights", default="random:42")
    parser.add_argument("--rows", type=int, default=112_120, help="vectors for the cost at scale (0 skips)")
    parser.add_argument("--batch", type=int, default=BATCH, help="image IDs per request")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "duplicates_threshold.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "benchmark": "duplicates_threshold",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "weights": args.weights,
        "copies": {
            name: {"scale": scale, "jpeg_quality": quality} for name, (scale, quality) in COPIES.items()
        },
        "k": K,
        "batch": args.batch,
    }
    report.update(calibrate(args))
    print(f"calibrate-duplicates: threshold {report['threshold']}", flush=True)
    if args.rows:
        report["at_scale"] = cost_at_scale(args, report["threshold"])
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in report if key not in ("machine",)}, indent=2))


# -- 1 and 2: the threshold, and the cost through the gateway ---------------------------------


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    originals = [
        *read_set(args.data / "nih_cxr14", "image_index", "nih"),
        *read_set(args.data / "covid_hannover", "image_id", "hannover"),
    ]
    with tempfile.TemporaryDirectory(prefix="calibrate-duplicates-") as folder_name:
        folder = Path(folder_name)
        ports = {name: free_port() for name in (*SERVICES, "milvus")}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        stack = start_stack(folder, ports, weights=args.weights)
        try:
            wait_ready(f"{gateway}/readyz", stack, "calibrate-duplicates: MedSearch", log=folder / "run.log")
            token = admin_token(ports, "calibrate-duplicates")
            ingest_sets(gateway, token, args.data)
            copies = ingest_copies(gateway, token, originals)
            with GatewayClient(gateway, token=token, read_timeout_s=600) as client:
                family = families(client)
                print("calibrate-duplicates: scanning at a low threshold", flush=True)
                scan, _ = walk(client, SCAN_THRESHOLD, args.batch)
                measured = distributions(scan, family)
                threshold = choose(measured["copy_pairs"]["min"], measured["best_other"]["max"])
                measured["separable"] = measured["copy_pairs"]["min"] > measured["best_other"]["max"]
                measured["copies_at_threshold"] = recall(scan, family, threshold)
                print(f"calibrate-duplicates: scanning at {threshold}", flush=True)
                found, seconds = walk(client, threshold, args.batch)
                check = judge(found, family)
                vectors = sum(part["vectors"] for part in found["parts"])
                direct = walk_search_service(
                    f"http://127.0.0.1:{ports['search']}", found["parts"], threshold, args.batch
                )
        finally:
            os.killpg(stack.pid, signal.SIGINT)
            stack.wait(timeout=120)
    return {
        "images": {"originals": len(originals), "copies": copies},
        **measured,
        "threshold": threshold,
        "at_threshold": check,
        "through_gateway": {
            "vectors": vectors,
            "requests": len(found["parts"]),
            "seconds": round(seconds, 2),
            "ms_per_vector": round(seconds / vectors * 1000, 3),
            "search_service_alone_seconds": round(direct, 2),
            "gateway_and_catalog_ms_per_request": round((seconds - direct) / len(found["parts"]) * 1000, 1),
            "note": "the whole walk at the chosen threshold (search service, catalog, gateway), and "
            "the same ranges asked of the search service alone",
        },
    }


def walk_search_service(base: str, parts: list[dict[str, Any]], threshold: float, batch: int) -> float:
    """The seconds the search service alone takes for the ranges of a walk."""
    session = requests.Session()
    started = time.perf_counter()
    for index, part in enumerate(parts):
        body = {"from": index * batch, "to": (index + 1) * batch, "threshold": threshold, "k": K}
        response = session.post(f"{base}/v1/models/{part['model_id']}/neighbors", json=body, timeout=600)
        response.raise_for_status()
    return time.perf_counter() - started


def read_set(folder: Path, id_column: str, dataset: str) -> list[dict[str, Any]]:
    with open(folder / "labels.csv", newline="") as handle:
        return [
            {
                "path": folder / row["path"],
                "external_id": row[id_column],
                "patient_id": row["patient_id"],
                "dataset": dataset,
            }
            for row in csv.DictReader(handle)
        ]


def medsearch(gateway: str, token: str, *args: str) -> None:
    command = [str(Path(sys.executable).parent / "medsearch"), "--url", gateway, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "MEDSEARCH_TOKEN": token}
    )
    if result.returncode != 0:
        sys.exit(
            f"calibrate-duplicates: {' '.join(args[:2])} failed:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )


def ingest_sets(gateway: str, token: str, data: Path) -> None:
    print("calibrate-duplicates: ingesting the NIH and Hannover sets", flush=True)
    nih = data / "nih_cxr14"
    medsearch(
        gateway, token, "ingest", str(nih / "Data_Entry_2017_v2020.csv"), "--images", str(nih / "images")
    )
    medsearch(gateway, token, "ingest", str(data / "covid_hannover" / "labels.csv"), "--dataset", "hannover")


def reencoded(path: Path, scale: float, quality: int) -> bytes:
    with Image.open(path) as image:
        gray = image.convert("L")
        if scale != 1.0:
            size = (int(gray.width * scale), int(gray.height * scale))
            gray = gray.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    gray.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def ingest_copies(gateway: str, token: str, originals: list[dict[str, Any]]) -> int:
    """Each original's copies, under the original's dataset and patient, named `<copy>:<external id>`."""
    print(f"calibrate-duplicates: ingesting {len(COPIES)} copies of {len(originals)} images", flush=True)
    items = [
        (reencoded(item["path"], scale, quality), {
            "dataset": item["dataset"],
            "external_id": f"{name}:{item['external_id']}",
            "patient_id": item["patient_id"],
        })
        for item in originals
        for name, (scale, quality) in COPIES.items()
    ]  # fmt: skip
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    for start in range(0, len(items), UPLOAD_BATCH):
        batch = items[start : start + UPLOAD_BATCH]
        response = session.post(
            f"{gateway}/api/v1/images/batch",
            files=[("image", (f"copy{i}.jpg", data)) for i, (data, _) in enumerate(batch)],
            data={"metadata": json.dumps([metadata for _, metadata in batch])},
            timeout=600,
        )
        response.raise_for_status()
        refused = [item for item in response.json()["items"] if item.get("status") not in (200, 201)]
        if refused:
            sys.exit(f"calibrate-duplicates: copies refused: {refused[:3]}")
    return len(items)


def families(client: GatewayClient) -> dict[int, str]:
    """Each stored image's family: the original's external ID, shared by its copies."""
    return {
        image["id"]: str(image["metadata"].get("external_id")).split(":", 1)[-1]
        for image in client.iter_images()
    }


def walk(client: GatewayClient, threshold: float, batch: int) -> tuple[dict[str, Any], float]:
    """Every range's answer, and the seconds the walk took."""
    parts = []
    started = time.perf_counter()
    first = 0
    while True:
        part = client.duplicates(first, first + batch, threshold=threshold, k=K)
        parts.append(part)
        end = (part["max_image_id"] or 0) + 1
        first += batch
        if first >= end:
            break
    seconds = time.perf_counter() - started
    pairs: dict[tuple[int, int], float] = {}
    for part in parts:
        for pair in part["pairs"]:
            key = (pair["a"], pair["b"])
            pairs[key] = max(pairs.get(key, pair["score"]), pair["score"])
    images = {image["id"]: image for part in parts for image in part["images"]}
    return {"parts": parts, "pairs": pairs, "images": images}, seconds


def distributions(scan: dict[str, Any], family: dict[int, str]) -> dict[str, Any]:
    copy_scores = [score for (a, b), score in scan["pairs"].items() if family[a] == family[b]]
    best_other: dict[int, float] = {}
    best_same_patient: dict[int, float] = {}
    patient = {
        i: (image["metadata"]["dataset"], image["metadata"].get("patient_id"))
        for i, image in scan["images"].items()
    }
    for (a, b), score in scan["pairs"].items():
        if family[a] == family[b]:
            continue
        for one in (a, b):
            best_other[one] = max(best_other.get(one, score), score)
            if patient[a] == patient[b]:
                best_same_patient[one] = max(best_same_patient.get(one, score), score)
    by_copy: dict[str, list[float]] = {}
    for (a, b), score in scan["pairs"].items():
        if family[a] == family[b]:
            names = sorted(copy_name(scan["images"][i]) for i in (a, b))
            by_copy.setdefault(" vs ".join(names), []).append(score)
    others = sorted(
        ((score, a, b) for (a, b), score in scan["pairs"].items() if family[a] != family[b]), reverse=True
    )
    top_others = [
        {
            "score": round(score, 6),
            "a": scan["images"][a]["metadata"].get("external_id"),
            "b": scan["images"][b]["metadata"].get("external_id"),
            "same_patient": patient[a] == patient[b],
        }
        for score, a, b in others[:15]
    ]
    families_count = len(set(family.values()))
    expected_copy_pairs = families_count * (len(COPIES) + 1) * len(COPIES) // 2
    return {
        "copy_pairs": {
            "expected": expected_copy_pairs,
            "found_at_scan_threshold": len(copy_scores),
            **summary(copy_scores),
        },
        "copy_pairs_by_copy": {name: summary(scores) for name, scores in sorted(by_copy.items())},
        "best_other": {"images": len(best_other), **summary(list(best_other.values()))},
        "highest_other_pairs": top_others,
        "best_other_same_patient": {
            "images": len(best_same_patient),
            **summary(list(best_same_patient.values())),
        },
    }


def copy_name(image: dict[str, Any]) -> str:
    """ "original", or the copy's name (what its external ID starts with)."""
    external_id = str(image["metadata"].get("external_id"))
    return external_id.split(":", 1)[0] if ":" in external_id else "original"


def summary(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {}
    values = np.asarray(scores)
    return {
        "min": round(float(values.min()), 6),
        "p01": round(float(np.percentile(values, 1)), 6),
        "median": round(float(statistics.median(scores)), 6),
        "p99": round(float(np.percentile(values, 99)), 6),
        "max": round(float(values.max()), 6),
    }


def choose(lowest_copy: float, highest_other: float) -> float:
    """The middle of the gap between copies and other pairs, rounded down to 5 decimals; where
    the two overlap, no pair of different images may be found: MARGIN above the highest."""
    if lowest_copy > highest_other + 2 * MARGIN:
        return float(np.floor((lowest_copy + highest_other) / 2 * 100_000) / 100_000)
    return float(np.ceil((highest_other + MARGIN) * 100_000) / 100_000)


def recall(scan: dict[str, Any], family: dict[int, str], threshold: float) -> dict[str, Any]:
    """Of the copy pairs the low-threshold scan found, those at or above `threshold`, by kind of
    copy, and the ones missed."""
    by_copy: dict[str, list[int]] = {}
    missed = []
    for (a, b), score in sorted(scan["pairs"].items()):
        if family[a] != family[b]:
            continue
        name = " vs ".join(sorted(copy_name(scan["images"][i]) for i in (a, b)))
        counts = by_copy.setdefault(name, [0, 0])
        counts[1] += 1
        if score >= threshold:
            counts[0] += 1
        else:
            missed.append({"family": family[a], "pair": name, "score": round(score, 6)})
    return {
        "found": sum(found for found, _ in by_copy.values()),
        "of": sum(total for _, total in by_copy.values()),
        "by_copy": {name: f"{found} of {total}" for name, (found, total) in sorted(by_copy.items())},
        "missed": missed,
    }


def judge(found: dict[str, Any], family: dict[int, str]) -> dict[str, Any]:
    copies = [key for key in found["pairs"] if family[key[0]] == family[key[1]]]
    false = [key for key in found["pairs"] if family[key[0]] != family[key[1]]]
    names = {image_id: image["metadata"].get("external_id") for image_id, image in found["images"].items()}
    kind_of = {(pair["a"], pair["b"]): pair["kind"] for part in found["parts"] for pair in part["pairs"]}
    kinds: dict[str, int] = {}
    for kind in kind_of.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "copy_pairs_found": len(copies),
        "other_pairs_found": len(false),
        "other_pairs": [[names[a], names[b], round(found["pairs"][(a, b)], 6)] for a, b in false[:10]],
        "kinds_reported": kinds,
    }


# -- 3: the cost at ChestX-ray14's size --------------------------------------------------------


def cost_at_scale(args: argparse.Namespace, threshold: float) -> dict[str, Any]:
    attributes = read_metadata(args.data / "nih_cxr14" / "Data_Entry_2017_v2020_full.csv.gz", args.rows)
    vectors = EmbeddingModel(2048, seed=1).embed(attributes, [a.patient_id or "" for a in attributes], seed=1)
    model_id = "calibrate-duplicates-2048"
    print(f"calibrate-duplicates: {len(vectors)} made-up vectors for the cost at scale", flush=True)
    with tempfile.TemporaryDirectory(prefix="calibrate-duplicates-scale-") as folder:
        engine = EmbeddedMilvus(Path(folder) / "milvus", port=free_port())
        uri = engine.start()
        try:
            with search_service(uri, engine.token) as base:
                session = requests.Session()
                for start in range(0, len(vectors), 1000):
                    items = [
                        {"id": i + 1, "vector": packed(vectors[i]), "attributes": attributes[i].to_json()}
                        for i in range(start, min(start + 1000, len(vectors)))
                    ]
                    response = session.put(
                        f"{base}/v1/models/{model_id}/vectors", json={"items": items}, timeout=600
                    )
                    response.raise_for_status()
                from pymilvus import MilvusClient

                raw = MilvusClient(uri=uri, token=engine.token, timeout=600)
                name = collection_name(model_id)
                raw.flush(name)
                wait_for_index(raw, name, len(vectors))
                wait_for_loaded_index(uri, engine.token, name, len(vectors))
                raw.close()
                print("calibrate-duplicates: loaded and indexed; walking", flush=True)
                times, pairs, scanned = [], 0, 0
                for first in range(0, len(vectors) + 1, args.batch):
                    started = time.perf_counter()
                    response = session.post(
                        f"{base}/v1/models/{model_id}/neighbors",
                        json={"from": first, "to": first + args.batch, "threshold": threshold, "k": K},
                        timeout=600,
                    )
                    times.append(time.perf_counter() - started)
                    response.raise_for_status()
                    pairs += len(response.json()["pairs"])
                    scanned += response.json()["vectors"]
        finally:
            engine.stop()
    total = sum(times)
    return {
        "rows": len(vectors),
        "vectors_scanned": scanned,
        "engine": "embedded Milvus server (the make run default), HNSW",
        "vectors": "benchmarks/embeddings.py (as bench-search); its pairs say nothing of real duplicates",
        "requests": len(times),
        "seconds": round(total, 1),
        "minutes": round(total / 60, 2),
        "ms_per_vector": round(total / scanned * 1000, 3),
        "vectors_per_second": round(scanned / total, 1),
        "request_first_s": round(times[0], 3),
        "request_p50_s": round(statistics.median(times), 3),
        "request_p90_s": round(float(np.percentile(times, 90)), 3),
        "request_max_s": round(max(times), 3),
        "slowest_requests": [
            {"from": i * args.batch, "seconds": round(times[i], 3)}
            for i in sorted(range(len(times)), key=lambda i: -times[i])[:3]
        ],
        "pairs_at_threshold": pairs,
    }


if __name__ == "__main__":
    main()
