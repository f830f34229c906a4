"""`python -m medsearch_embedder.train`: fine-tune the embedder's ResNet-50 on labelled chest X-rays.

    python -m medsearch_embedder.train --labels ../shared/data/nih_cxr14/labels.csv \\
        --weights imagenet --out var/training/run1 [--epochs 10] [--resume]

Each image goes through the embedder's own preprocessing and forward graph; a head of one
sigmoid unit per finding is trained on the pooled 2048-d vector and then dropped, so the
weights file serves as it is (MEDSEARCH_EMBEDDER_WEIGHTS=<out>/resnet50-finetuned.weights.h5)
and the search contract does not change. The objective is multi-label binary cross-entropy
with per-finding positive weights (CheXNet's baseline, stable at batch 16);
`--retrieval-loss supcon` adds a supervised-contrastive term, off by default because it
wants larger batches (see training/model.py).

What it writes in --out is listed in training/outputs.py: the best epoch's backbone, its
model card, the history, the split (for evaluating on held-back patients) and checkpoints.

Exit status: 0 trained (or nothing left to train); 1 training failed (the loss diverged);
2 the command line, the data or the weights are wrong (nothing was trained); 130 interrupted
(the last finished epoch is checkpointed: continue with --resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medsearch_common.settings import SettingsError
from medsearch_embedder.errors import WeightsUnavailable
from medsearch_embedder.preprocessing import InputLimits
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.training.data import (
    CHESTXRAY14_FINDINGS,
    LabelSet,
    Split,
    encode_findings,
    parse_findings,
    read_image_list,
    read_labels,
    split_by_lists,
    split_by_patient,
    split_csv,
)
from medsearch_embedder.training.errors import TrainingDataError, TrainingDiverged
from medsearch_embedder.training.metrics import scorable_findings
from medsearch_embedder.training.outputs import (
    WEIGHTS_FILE,
    check_out_folder,
    data_summary,
    model_card,
    record_run,
    write_card,
)
from medsearch_embedder.weights import WEIGHTS_VARIABLE, WeightsSpec, locate_weights, parse_weights

if TYPE_CHECKING:
    from medsearch_embedder.training.loop import TrainingResult

PROG = "medsearch-train"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_VALIDATION_FRACTION = 0.2
DEFAULT_RETRIEVAL_WEIGHT = 0.1
# The service's default limits: an image the embedder would refuse is not trained on either.
LIMITS = InputLimits(max_bytes=EmbedderSettings.max_image_bytes, max_pixels=EmbedderSettings.max_image_pixels)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except (TrainingDataError, SettingsError, WeightsUnavailable) as exc:
        return _usage_error(_as_option(str(exc)))
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("interrupted: the last finished epoch is checkpointed; continue with --resume")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune the embedder's ResNet-50 on labelled chest X-rays (multi-label findings).",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="NIH's Data_Entry_2017*.csv, or a labels.csv with path, patient_id and findings columns",
    )
    data.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="the image files' folder (default: images/ beside NIH's file, or the CSV's own folder)",
    )
    data.add_argument(
        "--findings", metavar="A,B,C", help="the findings to learn (default: ChestX-ray14's 14)"
    )
    data.add_argument(
        "--ignore-unknown-findings",
        action="store_true",
        help="drop findings outside the vocabulary instead of refusing the CSV",
    )
    data.add_argument(
        "--validation-fraction",
        type=_fraction,
        metavar="F",
        help=f"the patients held back for validation (default {DEFAULT_VALIDATION_FRACTION})",
    )
    data.add_argument(
        "--seed",
        type=_count(0),
        default=0,
        help="chooses the split, the shuffling, the augmentation and the head (default 0)",
    )
    data.add_argument(
        "--train-list", type=Path, metavar="TXT", help="NIH's train_val_list.txt, with --test-list"
    )
    data.add_argument(
        "--test-list", type=Path, metavar="TXT", help="NIH's test_list.txt: these images validate"
    )
    model = parser.add_argument_group("model and training")
    model.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|FILE|random:SEED",
        help="starting weights of ResNet-50 without top (default imagenet)",
    )
    model.add_argument("--out", type=Path, required=True, metavar="DIR", help="the output folder")
    model.add_argument("--epochs", type=_count(1), default=10, help="(default 10)")
    model.add_argument("--batch-size", type=_count(1), default=16, help="(default 16)")
    model.add_argument("--learning-rate", type=_positive, default=1e-4, help="Adam's (default 1e-4)")
    model.add_argument(
        "--steps-per-epoch", type=_count(1), metavar="N", help="at most N batches an epoch (smoke runs)"
    )
    model.add_argument(
        "--max-minutes", type=_positive, metavar="M", help="start no epoch after this run trained M minutes"
    )
    model.add_argument(
        "--patience",
        type=_count(1),
        default=3,
        help="stop after this many epochs without a better validation mean AUC (default 3)",
    )
    model.add_argument(
        "--retrieval-loss",
        choices=("none", "supcon"),
        default="none",
        help="add a supervised-contrastive term on the embedding (default none)",
    )
    model.add_argument(
        "--retrieval-weight",
        type=_positive,
        metavar="W",
        help=f"its weight (default {DEFAULT_RETRIEVAL_WEIGHT})",
    )
    model.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    return parser


def train(args: argparse.Namespace) -> int:
    """Check everything that can be checked without TensorFlow, then train and write the card."""
    findings = list(parse_findings(args.findings) if args.findings else CHESTXRAY14_FINDINGS)
    weights = parse_weights(args.weights)
    _check_options(args)
    check_out_folder(args.out, resume=args.resume)
    labels = read_labels(args.labels, args.images)
    matrix, unknown = encode_findings(labels.images, findings, ignore_unknown=args.ignore_unknown_findings)
    split = _split(labels, args)
    if not scorable_findings(matrix[split.validation]):
        raise TrainingDataError(
            f"no finding has both positive and negative images among the {len(split.validation)} validation "
            "images, so validation AUC cannot be computed: hold back more patients"
        )
    retrieval_loss = None if args.retrieval_loss == "none" else str(args.retrieval_loss)
    run = {
        "labels": args.labels.name,
        "findings": findings,
        "split": _split_settings(args, split),
        "starting_weights": weights.describe(),
        "retrieval_loss": retrieval_loss,
        "retrieval_weight": (args.retrieval_weight or DEFAULT_RETRIEVAL_WEIGHT) if retrieval_loss else None,
    }
    located = locate_weights(weights)  # before anything is written: imagenet may be unavailable
    record_run(args.out, run, split_csv(labels.images, split), resume=args.resume)
    result, environment = _fit(args, located, labels, matrix, split, run)
    training = {
        "epochs_requested": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "optimizer": "Adam",
        "learning_rate": args.learning_rate,
        "patience": args.patience,
        "max_minutes": args.max_minutes,
    }
    data = data_summary(args.labels.name, labels, matrix, split, findings, unknown)
    write_card(
        args.out,
        model_card(run=run, data=data, training=training, result=result, environment=environment),
    )
    say(
        f"best epoch {result.best_epoch}: validation mean AUC {result.best.mean_auc:.4f}; "
        f"weights in {args.out / WEIGHTS_FILE}"
    )
    return EXIT_OK


def _fit(
    args: argparse.Namespace,
    weights: WeightsSpec,
    labels: LabelSet,
    matrix: NDArray[np.float32],
    split: Split,
    run: dict[str, Any],
) -> tuple[TrainingResult, dict[str, Any]]:
    """Train (or resume) on the split: the result, and what the card says of where and how."""
    # Here, not at the top: TensorFlow takes seconds to load, and a wrong CSV must not wait for it.
    import keras
    import tensorflow as tf

    from medsearch_embedder.model import ARCHITECTURE, DIM, build_model, model_id
    from medsearch_embedder.training.loop import Schedule, Trainer, training_device
    from medsearch_embedder.training.model import FindingClassifier, Objective, positive_weights
    from medsearch_embedder.training.pipeline import (
        Augmentation,
        ImageDecoder,
        training_batches,
        validation_batches,
    )

    device = training_device()
    # float16 compute pays on a GPU's tensor cores only; on a CPU it is slower.
    precision = "mixed_float16" if device.startswith("GPU") else "float32"
    paths = [image.path for image in labels.images]
    train_labels, validation_labels = matrix[split.train], matrix[split.validation]
    augmentation = Augmentation()
    decoder = ImageDecoder(LIMITS)
    weighting = positive_weights(train_labels)
    objective = Objective(weighting, run["retrieval_loss"], run["retrieval_weight"] or 0.0)
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(precision)
    try:
        try:
            backbone = build_model(weights)
        except (OSError, ValueError) as exc:
            raise TrainingDataError(
                f"the weights ({weights.describe()}) do not fit ResNet-50 without top: {exc}"
            ) from exc
        optimizer = keras.optimizers.Adam(args.learning_rate)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        classifier = FindingClassifier(backbone, len(run["findings"]))
        trainer = Trainer(classifier, objective, optimizer, decoder, args.out, say)
        if args.resume:
            trainer.resume()
        result = trainer.fit(
            training_batches(
                [paths[i] for i in split.train],
                train_labels,
                batch_size=args.batch_size,
                seed=args.seed,
                decoder=decoder,
                augmentation=augmentation,
            ),
            validation_batches(
                [paths[i] for i in split.validation],
                validation_labels,
                batch_size=args.batch_size,
                decoder=decoder,
            ),
            validation_labels,
            run["findings"],
            Schedule(args.epochs, args.steps_per_epoch, args.patience, args.max_minutes),
            resumed=args.resume,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    served = WeightsSpec("file", path=args.out / WEIGHTS_FILE)
    environment = {
        # Loaded as the embedder will load it: the ID the service will report for this file.
        "model_id": model_id(served, build_model(served)),
        "architecture": ARCHITECTURE,
        "dim": DIM,
        "positive_weights": dict(zip(run["findings"], weighting.round(3).tolist(), strict=True)),
        "augmentation": augmentation.to_json(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "device": device,
        "precision": precision,
    }
    return result, environment


def say(line: str) -> None:
    """Progress on stderr, one line at a time, as it happens."""
    print(line, file=sys.stderr, flush=True)


def _check_options(args: argparse.Namespace) -> None:
    if (args.train_list is None) != (args.test_list is None):
        raise TrainingDataError("--train-list and --test-list go together: give both, or neither")
    if args.train_list is not None and args.validation_fraction is not None:
        raise TrainingDataError("--validation-fraction applies to the patient-wise split, not to the lists")
    if args.retrieval_weight is not None and args.retrieval_loss == "none":
        raise TrainingDataError("--retrieval-weight applies with --retrieval-loss supcon")


def _split(labels: LabelSet, args: argparse.Namespace) -> Split:
    if args.train_list is not None:
        return split_by_lists(
            labels.images,
            read_image_list(args.train_list, "--train-list"),
            read_image_list(args.test_list, "--test-list"),
        )
    fraction = args.validation_fraction or DEFAULT_VALIDATION_FRACTION
    return split_by_patient(labels.images, fraction, args.seed)


def _split_settings(args: argparse.Namespace, split: Split) -> dict[str, Any]:
    if split.method == "lists":
        return {
            "method": "official lists",
            "train_list": args.train_list.name,
            "test_list": args.test_list.name,
        }
    return {
        "method": "by patient, seeded",
        "validation_fraction": args.validation_fraction or DEFAULT_VALIDATION_FRACTION,
        "seed": args.seed,
    }


def _as_option(message: str) -> str:
    """The weights module's advice names the service's variable; here it is the --weights option."""
    for variable, option in (
        (f"set {WEIGHTS_VARIABLE}=", "pass --weights "),
        (WEIGHTS_VARIABLE, "--weights"),
    ):
        message = message.replace(variable, option)
    return message


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _fraction(text: str) -> float:
    value = _positive(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
