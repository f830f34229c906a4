"""`python -m medsearch_embedder.train`: the split, the objective's parts, and real fine-tuning runs.

One run is shared by the module (`trained`): 12 NIH images, random:<seed> weights, batch 4,
2 steps an epoch; one epoch, then `--resume --epochs 2`. About 40 s on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medsearch_embedder import weights
from medsearch_embedder.model import build_model, forward_function, load_embedder, model_id
from medsearch_embedder.preprocessing import INPUT_SIZE, PREPROCESSING_VERSION, InputLimits, prepare
from medsearch_embedder.train import main
from medsearch_embedder.training.data import (
    CHESTXRAY14_FINDINGS,
    LabelledImage,
    encode_findings,
    read_labels,
    split_by_lists,
    split_by_patient,
)
from medsearch_embedder.training.errors import TrainingDataError
from medsearch_embedder.training.metrics import roc_auc
from medsearch_embedder.training.model import pooled_features, positive_weights, supervised_contrastive
from medsearch_embedder.training.outputs import CARD_FILE, CHECKPOINTS, HISTORY_FILE, SPLIT_FILE, WEIGHTS_FILE
from medsearch_embedder.training.pipeline import Augmentation, augment
from medsearch_embedder.weights import IMAGENET_FILE, WeightsSpec

SEED = 7
NIH_LABELS = "nih_cxr14/Data_Entry_2017_v2020.csv"
NIH_IMAGES = "nih_cxr14/images"
SMOKE_IMAGES = 12
LIMITS = InputLimits(max_bytes=10**8, max_pixels=10**8)
CARD_FIELDS = {
    "weights_file", "model_id", "architecture", "embedding", "input_size", "preprocessing",
    "starting_weights", "data", "split", "objective", "training", "validation", "tensorflow",
    "keras", "device", "precision", "date",
}  # fmt: skip


def run_train(args: Sequence[str]) -> tuple[int, str]:
    """The command in this process: its exit status and what it wrote on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
    return code, err.getvalue()


def smoke_args(labels: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--labels", str(labels), "--images", str(images), "--out", str(out),
        "--weights", f"random:{SEED}", "--batch-size", "4", "--steps-per-epoch", "2",
        "--validation-fraction", "0.25", *extra,
    ]  # fmt: skip


def nih_subset(test_data: Path, folder: Path, rows: int) -> Path:
    """The header and the first `rows` rows of the shared NIH label file, in NIH's own format."""
    lines = (test_data / NIH_LABELS).read_text(encoding="utf-8").splitlines()
    path = folder / "Data_Entry_2017_subset.csv"
    path.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return path


def write_generic(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass(frozen=True)
class TrainedRun:
    out: Path
    first_log: str
    resumed_log: str


@pytest.fixture(scope="module")
def trained(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    folder = tmp_path_factory.mktemp("train")
    labels = nih_subset(test_data, folder, SMOKE_IMAGES)
    out = folder / "out"
    code, first = run_train(smoke_args(labels, test_data / NIH_IMAGES, out, "--epochs", "1"))
    assert code == 0, first
    code, resumed = run_train(smoke_args(labels, test_data / NIH_IMAGES, out, "--epochs", "2", "--resume"))
    assert code == 0, resumed
    return TrainedRun(out, first, resumed)


def card_of(run: TrainedRun) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((run.out / CARD_FILE).read_text(encoding="utf-8"))
    return card


# -- the split --------------------------------------------------------------------------------


def many_patients(images: int = 60, patients: int = 17) -> list[LabelledImage]:
    """Several images per patient, as in NIH's full set (follow-ups)."""
    return [
        LabelledImage(f"{i:05d}.png", Path(f"{i:05d}.png"), f"p{i % patients}", ("Mass",) if i % 3 else ())
        for i in range(images)
    ]


def test_patient_split_never_puts_a_patient_on_both_sides() -> None:
    images = many_patients()
    for seed, fraction in itertools.product(range(150), (0.05, 0.2, 0.5, 0.95)):
        split = split_by_patient(images, fraction, seed)
        train = {images[i].patient for i in split.train}
        validation = {images[i].patient for i in split.validation}
        assert train and validation and not train & validation
        assert sorted(split.train + split.validation) == list(range(len(images)))


def test_patient_split_is_seeded() -> None:
    images = many_patients()
    assert split_by_patient(images, 0.2, 3) == split_by_patient(images, 0.2, 3)
    assert len({tuple(split_by_patient(images, 0.2, seed).validation) for seed in range(10)}) > 1


def test_official_lists_hold_back_the_test_list_and_refuse_a_patient_on_both_sides() -> None:
    images = many_patients(images=6, patients=3)  # patients p0: 0, 3; p1: 1, 4; p2: 2, 5
    split = split_by_lists(images, ["00000.png", "00003.png", "00001.png", "00004.png"], ["00002.png"])
    assert (split.train, split.validation, split.left_out) == ([0, 1, 3, 4], [2], 1)
    with pytest.raises(TrainingDataError, match=r"patient p2: 00005\.png in --train-list, 00002\.png"):
        split_by_lists(images, ["00000.png", "00005.png"], ["00002.png"])


def test_fewer_than_two_patients_cannot_be_split() -> None:
    images = many_patients(images=4, patients=1)
    with pytest.raises(TrainingDataError, match="at least 2"):
        split_by_patient(images, 0.2, 0)


def test_both_label_forms_of_the_shared_set_read_alike(test_data: Path) -> None:
    generic = read_labels(test_data / "nih_cxr14/labels.csv")
    nih = read_labels(test_data / NIH_LABELS, test_data / NIH_IMAGES)
    assert (generic.format, nih.format) == ("generic", "nih")
    assert len(generic.images) == len(nih.images) == 303
    assert [(i.path.resolve(), i.patient, i.findings) for i in generic.images] == [
        (i.path.resolve(), i.patient, i.findings) for i in nih.images
    ]
    matrix, unknown = encode_findings(nih.images, CHESTXRAY14_FINDINGS, ignore_unknown=False)
    assert unknown == {}
    # The shared README's "any" counts: 22 Cardiomegaly, 12 Hernia; 40 images have no finding.
    counts = dict(zip(CHESTXRAY14_FINDINGS, matrix.sum(axis=0), strict=True))
    assert (counts["Cardiomegaly"], counts["Hernia"], int((matrix.sum(axis=1) == 0).sum())) == (22, 12, 40)


# -- the objective and its measure -----------------------------------------------------------


def test_auc_is_exact_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 80).astype(np.float64)  # many ties
    positives = rng.random(80) < 0.3
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(scores[positives], scores[~positives])
    ]
    assert roc_auc(scores, positives) == pytest.approx(float(np.mean(pairs)), abs=1e-12)


def test_positive_weights_are_neg_over_pos_clipped() -> None:
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(positive_weights(labels), [3.0, 50.0, 1.0])


def test_supcon_pulls_images_that_share_a_finding_together() -> None:
    labels = tf.constant([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=tf.float32)  # the last: no finding
    together = tf.constant([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    apart = tf.constant([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0.1, 0], [0, 1.0, 0]])
    near, far = float(supervised_contrastive(together, labels)), float(supervised_contrastive(apart, labels))
    assert 0 < near < far
    assert float(supervised_contrastive(together, tf.zeros((4, 2)))) == 0.0  # no pair shares a finding


def test_augmentation_keeps_shape_and_dtype_and_never_flips() -> None:
    image = np.full((INPUT_SIZE, INPUT_SIZE), 40, dtype=np.uint8)
    image[:, : INPUT_SIZE // 2] = 200  # a bright left half
    run = tf.function(lambda x, seed: augment(x, seed, Augmentation()))
    changed = 0
    for seed in range(40):
        out = run(tf.constant(image), tf.constant([seed, 1], dtype=tf.int64)).numpy()
        assert out.shape == image.shape and out.dtype == np.uint8
        left, right = out[:, : INPUT_SIZE // 2].mean(), out[:, INPUT_SIZE // 2 :].mean()
        assert left > right + 80, f"seed {seed}: left {left:.0f}, right {right:.0f}"
        changed += not np.array_equal(out, image)
    assert changed == 40


# -- a real run --------------------------------------------------------------------------------


def test_trained_weights_load_in_the_embedder_and_moved_from_the_start(
    trained: TrainedRun, test_data: Path
) -> None:
    path = trained.out / WEIGHTS_FILE
    served = build_model(WeightsSpec("file", path=path))
    start = WeightsSpec("random", seed=SEED)
    started = build_model(start)
    assert model_id(WeightsSpec("file", path=path), served) != model_id(start, started)
    assert model_id(WeightsSpec("file", path=path), served) == card_of(trained)["model_id"]

    image = prepare((test_data / NIH_IMAGES / "00000075_000.png").read_bytes(), LIMITS)[np.newaxis]
    after = forward_function(served)(tf.constant(image)).numpy()[0]
    before = forward_function(started)(tf.constant(image)).numpy()[0]
    assert float(after @ before) < 0.9999
    # The graph trained is the graph served: the same vector, up to the L2 normalisation.
    pooled = pooled_features(served, tf.constant(image), training=False).numpy()[0]
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled), after, atol=1e-5)


def test_the_served_model_describes_itself_with_the_cards_headline(trained: TrainedRun) -> None:
    weights = WeightsSpec("file", path=trained.out / WEIGHTS_FILE)
    embedder = load_embedder(weights, device="cpu", precision="float32", max_batch=1, runtime="tensorflow")
    card = card_of(trained)
    described = embedder.info.to_json()["card"]
    assert described is not None
    assert described["validation_mean_auc"] == card["validation"]["mean_auc"]
    assert described["best_epoch"] == card["training"]["best_epoch"]
    assert described["training_images"] == card["data"]["train"]["images"]
    assert described["starting_weights"] == f"random:{SEED}"


def test_card_describes_the_run_and_names_no_folder(trained: TrainedRun, test_data: Path) -> None:
    card = card_of(trained)
    assert set(card) >= CARD_FIELDS
    assert card["starting_weights"] == f"random:{SEED}"
    assert card["preprocessing"] == PREPROCESSING_VERSION
    assert card["tensorflow"] == tf.__version__
    datetime.fromisoformat(card["date"])
    data = card["data"]
    assert (data["labels_file"], data["format"], data["images"], data["patients"]) == (
        "Data_Entry_2017_subset.csv", "nih", SMOKE_IMAGES, SMOKE_IMAGES,
    )  # fmt: skip
    assert data["train"]["images"] + data["validation"]["images"] == SMOKE_IMAGES
    assert set(data["train"]["positives"]) == set(CHESTXRAY14_FINDINGS)
    assert card["split"] == {
        "method": "by patient, seeded", "validation_fraction": 0.25, "seed": 0, "file": SPLIT_FILE,
    }  # fmt: skip
    training, validation = card["training"], card["validation"]
    assert (training["epochs_run"], training["resumed_at_epoch"]) == (2, 2)
    assert training["best_epoch"] in (1, 2) and training["seconds"] > 0
    assert set(validation["auc"]) == set(CHESTXRAY14_FINDINGS)
    scored = [auc for auc in validation["auc"].values() if auc is not None]
    assert scored and validation["mean_auc"] == pytest.approx(np.mean(scored))

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield key
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    folders = (str(trained.out.parent), str(test_data), str(Path.home()))
    assert not [t for t in strings(card) if t.startswith(("/", "~")) or any(f in t for f in folders)]


def test_split_file_keeps_each_patient_on_one_side(trained: TrainedRun) -> None:
    with (trained.out / SPLIT_FILE).open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == SMOKE_IMAGES
    sides: dict[str, set[str]] = {}
    for row in rows:
        sides.setdefault(row["patient_id"], set()).add(row["side"])
    assert all(len(side) == 1 for side in sides.values())
    assert sum(row["side"] == "validation" for row in rows) == 3


def test_resume_runs_only_the_epochs_left(trained: TrainedRun) -> None:
    assert "epoch 1/1" in trained.first_log
    assert "resuming at epoch 2" in trained.resumed_log
    assert "epoch 2/2" in trained.resumed_log and "epoch 1/" not in trained.resumed_log
    history = json.loads((trained.out / HISTORY_FILE).read_text(encoding="utf-8"))
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert {"train_loss", "validation_loss", "mean_auc", "auc", "seconds"} <= set(history[0])


# -- bad input: exit 2, and a message that says what ------------------------------------------


def test_existing_checkpoints_need_resume(trained: TrainedRun, test_data: Path, tmp_path: Path) -> None:
    labels = nih_subset(test_data, tmp_path, SMOKE_IMAGES)
    code, err = run_train(smoke_args(labels, test_data / NIH_IMAGES, trained.out))
    assert code == 2
    assert err.startswith("medsearch-train: error:") and "--resume" in err and CHECKPOINTS in err


def real_rows(test_data: Path, count: int) -> list[dict[str, str]]:
    with (test_data / "nih_cxr14/labels.csv").open(encoding="utf-8") as file:
        rows = list(itertools.islice(csv.DictReader(file), count))
    return [
        {
            "path": str(test_data / "nih_cxr14" / row["path"]),
            "patient_id": row["patient_id"],
            "findings": row["finding_labels"],
        }
        for row in rows
    ]


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no patient column", "no column 'patient_id'"),
        ("unknown finding", "COVID-19 (1 images)"),
        ("missing image", "1 of 4 image files are missing (/"),
        ("one patient", "1 patient(s)"),
    ],
)
def test_bad_labels_stop_before_training(test_data: Path, tmp_path: Path, problem: str, message: str) -> None:
    rows = real_rows(test_data, 4)
    columns = ["path", "patient_id", "findings"]
    if problem == "no patient column":
        columns.remove("patient_id")
        rows = [{k: v for k, v in row.items() if k != "patient_id"} for row in rows]
    elif problem == "unknown finding":
        rows[0]["findings"] = "Mass|COVID-19"
    elif problem == "missing image":
        rows[1]["path"] = "no-such-image.png"
    else:
        rows = [{**row, "patient_id": "1"} for row in rows]
    labels = write_generic(tmp_path / "labels.csv", rows, columns)
    code, err = run_train(["--labels", str(labels), "--out", str(tmp_path / "out"), "--weights", "random:1"])
    assert code == 2, err
    assert err.startswith("medsearch-train: error:") and message in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_findings_may_be_ignored() -> None:
    images = [LabelledImage("a.png", Path("a.png"), "1", ("Mass", "COVID-19"))]
    matrix, unknown = encode_findings(images, ["Mass", "Nodule"], ignore_unknown=True)
    assert matrix.tolist() == [[1.0, 0.0]] and unknown == {"COVID-19": 1}


def test_an_unreadable_image_stops_training_with_its_name(test_data: Path, tmp_path: Path) -> None:
    rows = real_rows(test_data, 6)
    broken = tmp_path / "broken.png"
    Image.new("L", (64, 64)).save(broken)
    broken.write_bytes(broken.read_bytes()[:40])  # a PNG cut off in its first chunk
    rows[0]["path"] = str(broken)
    rows[4]["findings"], rows[5]["findings"] = "Mass", "No Finding"
    labels = write_generic(tmp_path / "labels.csv", rows, ["path", "patient_id", "findings"])
    names = [Path(row["path"]).name for row in rows]
    (tmp_path / "train.txt").write_text("\n".join(names[:4]) + "\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("\n".join(names[4:]) + "\n", encoding="utf-8")
    lists = ["--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt")]
    out = ["--out", str(tmp_path / "out"), "--weights", "random:1", "--batch-size", "2"]
    code, err = run_train(["--labels", str(labels), *out, *lists])
    assert code == 2, err
    assert f"medsearch-train: error: cannot read image {broken}: the PNG" in err


def test_unavailable_imagenet_weights_stop_with_the_ways_to_provide_them(
    test_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "IMAGENET_URL", "http://127.0.0.1:9/" + IMAGENET_FILE)
    labels = nih_subset(test_data, tmp_path, SMOKE_IMAGES)
    data = ["--labels", str(labels), "--images", str(test_data / NIH_IMAGES)]
    code, err = run_train([*data, "--out", str(tmp_path / "out"), "--weights", "imagenet"])
    assert code == 2
    assert "medsearch-train: error: The ImageNet weights of ResNet-50 are not in Keras's cache" in err
    assert "--weights random:42" in err and not (tmp_path / "out").exists()


def test_runs_as_a_module_and_refuses_bad_options() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsearch_embedder.train",
            "--labels",
            "x.csv",
            "--out",
            "o",
            "--epochs",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "medsearch-train: error: argument --epochs: 0 must be at least 1" in result.stderr
