"""What a training run writes in its --out folder, and the checks that keep two runs apart.

    resnet50-finetuned.weights.h5            the best epoch's backbone (save_weights)
    resnet50-finetuned.weights.h5.card.json  its model card
    history.json                             one entry per epoch
    split.csv                                image, patient_id, side: eval scores held-back patients
    run.json                                 the settings --resume must not change
    checkpoints/                             one per epoch, the latest two kept

No TensorFlow here. The card names files, never folders: it travels with the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medsearch_embedder.preprocessing import INPUT_SIZE, PREPROCESSING_VERSION
from medsearch_embedder.training.data import LabelSet, Split, positive_counts
from medsearch_embedder.training.errors import TrainingDataError

if TYPE_CHECKING:
    from medsearch_embedder.training.loop import TrainingResult

WEIGHTS_FILE = "resnet50-finetuned.weights.h5"
CARD_FILE = WEIGHTS_FILE + ".card.json"
HISTORY_FILE = "history.json"
SPLIT_FILE = "split.csv"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


def check_out_folder(out: Path, *, resume: bool) -> None:
    """A new run never writes over another's checkpoints; --resume needs one to resume from."""
    checkpoints = out / CHECKPOINTS
    if not resume and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise TrainingDataError(
            f"{checkpoints} already holds checkpoints: pass --resume to continue that run, "
            "or choose another --out"
        )
    if resume and not (checkpoints / "checkpoint").is_file():
        raise TrainingDataError(f"--resume: {checkpoints} holds no checkpoint to resume from")


def record_run(out: Path, run: Mapping[str, Any], split: str, *, resume: bool) -> None:
    """Write the run's settings and split; on --resume, refuse settings or a split that differ from
    the first run's: a changed split would train on patients that validated before."""
    run_path, split_path = out / RUN_FILE, out / SPLIT_FILE
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        split_path.write_text(split, encoding="utf-8")
        return
    before = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
    changed = [name for name in run if before.get(name) != run[name]]
    if changed:
        was = ", ".join(f"{name} was {before.get(name)!r}" for name in changed)
        raise TrainingDataError(
            f"--resume: this command's {', '.join(changed)} differ from the run in {out} ({was}): "
            "resume with the same options, or choose another --out"
        )
    if not split_path.is_file() or split_path.read_text(encoding="utf-8") != split:
        raise TrainingDataError(f"--resume: the split differs from {split_path}: the labels changed")


def data_summary(
    labels_file: str,
    labels: LabelSet,
    matrix: NDArray[np.float32],
    split: Split,
    findings: Sequence[str],
    unknown: Mapping[str, int],
) -> dict[str, Any]:
    """The card's `data`: images, patients and each finding's positives, per side."""

    def side(indices: list[int]) -> dict[str, Any]:
        return {
            "images": len(indices),
            "patients": len({labels.images[i].patient for i in indices}),
            "positives": positive_counts(matrix[indices], findings),
        }

    used = [*split.train, *split.validation]
    return {
        "labels_file": labels_file,
        "format": labels.format,
        "images": len(used),
        "patients": len({labels.images[i].patient for i in used}),
        "images_left_out": split.left_out,
        "findings": list(findings),
        "unknown_findings_ignored": dict(unknown),
        "train": side(split.train),
        "validation": side(split.validation),
    }


def model_card(
    *,
    run: Mapping[str, Any],
    data: Mapping[str, Any],
    training: Mapping[str, Any],
    result: TrainingResult,
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """What the weights are and how they were made. `run` is what run.json holds, `training` the
    options a resume may change, `environment` what the training process found (model ID,
    device, versions, the objective's weights)."""
    best = result.best
    return {
        "weights_file": WEIGHTS_FILE,
        "model_id": environment["model_id"],
        "architecture": environment["architecture"],
        "embedding": f"the pooled {environment['dim']}-d vector, L2-normalised; the head is not saved",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "preprocessing": PREPROCESSING_VERSION,
        "starting_weights": run["starting_weights"],
        "data": dict(data),
        "split": {**run["split"], "file": SPLIT_FILE},
        "objective": {
            "loss": "multi-label binary cross-entropy, positives weighted neg/pos clipped to [1, 50]",
            "positive_weights": environment["positive_weights"],
            "retrieval_loss": run["retrieval_loss"],
            "retrieval_weight": run["retrieval_weight"],
        },
        "training": {
            **training,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "resumed_at_epoch": result.resumed_at,
            "augmentation": environment["augmentation"],
            "seconds": round(result.seconds, 1),
        },
        "validation": {
            "epoch": best.epoch,
            "mean_auc": best.mean_auc,
            "auc": best.auc,
            "auc_method": "exact ROC AUC (rank statistic, ties count half); the mean is over the "
            "findings with both positive and negative validation images",
        },
        "tensorflow": environment["tensorflow"],
        "keras": environment["keras"],
        "device": environment["device"],
        "precision": environment["precision"],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_card(out: Path, card: Mapping[str, Any]) -> Path:
    path = out / CARD_FILE
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path
