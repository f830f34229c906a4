"""`make bench-quality`: fine-tune here, serve the result, and measure both models with `medsearch eval`.

This machine has no GPU and no ImageNet weights, so the demonstration starts from `random:42`
and trains on the shared NIH images (`../shared/data/nih_cxr14`, 303 real 1024² PNGs):

1. a seeded patient-wise split: about a fifth of the patients are held back;
2. `medsearch-train` on the other patients' images, for as many epochs as fit in the time
   budget (`--train-minutes`), from `random:42`;
3. a stack as `make run` starts it, with `random:42`: `medsearch ingest` of the held-back
   images only, then `medsearch eval` on them;
4. the same stack restarted with the trained weights (a new `model_id`): `medsearch reindex`
   fills its collection, then `medsearch eval` again.

Both evaluations are on patients the training never saw. With 303 images, a few dozen held
back and a CPU's worth of training the figures are small and their intervals wide: they are
reported as they come, beside the random ranking's. Writes `bench-results/quality.json`, and
the two reports under `bench-results/quality/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import admin_token, free_port, machine, shared_data, start_stack, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "embedder", "search", "catalog", "milvus")
START_WEIGHTS = "random:42"
TRAINED_FILE = "resnet50-finetuned.weights.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared_data())
    parser.add_argument("--held-back", type=float, default=0.2, help="share of patients held back")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-minutes", type=float, default=18.0, help="training's time budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "quality.json")
    args = parser.parse_args()

    nih = args.data / "nih_cxr14"
    rows = read_rows(nih / "Data_Entry_2017_v2020.csv")
    train_rows, held_rows = patient_split(rows, args.held_back, args.seed)
    print(
        f"bench-quality: {len(rows)} images; training on {len(train_rows)} "
        f"({len({r['Patient ID'] for r in train_rows})} patients), holding back {len(held_rows)} "
        f"({len({r['Patient ID'] for r in held_rows})} patients)",
        flush=True,
    )
    reports = args.out.parent / "quality"
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder_name:
        folder = Path(folder_name)
        train_list, held_list = folder / "train_val_list.txt", folder / "test_list.txt"
        held_csv = folder / "held.csv"
        train_list.write_text("".join(f"{row['Image Index']}\n" for row in train_rows))
        held_list.write_text("".join(f"{row['Image Index']}\n" for row in held_rows))
        write_rows(held_csv, rows, held_rows)

        started = time.perf_counter()
        training = folder / "training"
        run(
            [
                bin_path("medsearch-train"),
                *("--labels", str(nih / "Data_Entry_2017_v2020.csv"), "--images", str(nih / "images")),
                *("--train-list", str(train_list), "--test-list", str(held_list)),
                *("--weights", START_WEIGHTS, "--out", str(training), "--seed", str(args.seed)),
                *("--batch-size", str(args.batch_size), "--epochs", "100"),
                *("--max-minutes", str(args.train_minutes)),
            ],
            "training",
        )
        train_s = time.perf_counter() - started
        weights = training / TRAINED_FILE
        card = json.loads(Path(f"{weights}.card.json").read_text())

        ports = {name: free_port() for name in SERVICES}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        evaluations: dict[str, Any] = {}
        with serving(folder, ports, START_WEIGHTS) as token:
            medsearch(gateway, token, "ingest", str(held_csv), "--images", str(nih / "images"))
            evaluations["random:42"] = evaluate(gateway, token, held_csv, nih, reports / "random42")
        with serving(folder, ports, str(weights)) as token:
            medsearch(gateway, token, "reindex")
            evaluations["fine-tuned"] = evaluate(gateway, token, held_csv, nih, reports / "finetuned")

    headlines = {name: headline(report) for name, report in evaluations.items()}
    result = {
        "benchmark": "quality",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "images": len(rows),
        "split": {
            "method": "patient-wise, seeded",
            "seed": args.seed,
            "train_images": len(train_rows),
            "held_back_images": len(held_rows),
            "held_back_patients": len({row["Patient ID"] for row in held_rows}),
        },
        "training": {"seconds": round(train_s, 1), "start_weights": START_WEIGHTS, "card": card},
        "evaluations": headlines,
        "reports": str(reports.relative_to(REPO_ROOT) if reports.is_relative_to(REPO_ROOT) else reports),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in headlines.items():
        print(f"bench-quality: {name}: {json.dumps(figures)}", flush=True)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, header_from: list[dict[str, str]], rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header_from[0]))
        writer.writeheader()
        writer.writerows(rows)


def patient_split(
    rows: list[dict[str, str]], held_back: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Whole patients to one side or the other, a seeded `held_back` share of them held back."""
    patients = sorted({row["Patient ID"] for row in rows})
    held = set(random.Random(seed).sample(patients, max(1, round(len(patients) * held_back))))
    return [r for r in rows if r["Patient ID"] not in held], [r for r in rows if r["Patient ID"] in held]


@contextmanager
def serving(folder: Path, ports: dict[str, int], weights: str) -> Iterator[str]:
    """A stack as `make run` starts it, on `folder`'s data, serving `weights`; an admin token
    to call it."""
    process = start_stack(folder, ports, weights=weights)
    try:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        wait_ready(f"{gateway}/readyz", process, "bench-quality: the stack", log=folder / "run.log")
        yield admin_token(ports, "bench-quality")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)


def evaluate(gateway: str, token: str, labels: Path, nih: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    medsearch(gateway, token, "eval", str(labels), "--images", str(nih / "images"), "--out", str(out))
    report: dict[str, Any] = json.loads((out / "eval.json").read_text())
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Per rule, P@k and mAP@k micro with intervals and the random ranking's figure."""
    figures: dict[str, Any] = {"model_id": report["metadata"]["model_id"]}
    for rule in report["rules"]:
        figures[rule["rule"]] = {
            "queries_scored": rule["queries_scored"],
            "micro": rule["micro"],
            "macro": rule["macro"],
        }
    figures["near_duplicate"] = report["near_duplicate"]
    return figures


def medsearch(gateway: str, token: str, *args: str) -> None:
    run([bin_path("medsearch"), "--url", gateway, *args], f"medsearch {args[0]}", {"MEDSEARCH_TOKEN": token})


def run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    print(f"bench-quality: {what}", flush=True)
    result = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        sys.exit(f"bench-quality: {what} failed (exit {result.returncode})\n{result.stdout[-3000:]}")


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


if __name__ == "__main__":
    main()
