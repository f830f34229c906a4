"""The model card beside a weights file: what the model's description shows of it, and when not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medsearch_embedder.model import card_headline
from medsearch_embedder.weights import WeightsSpec

IDENTITY = "resnet50-file-0123456789"


def card(model_id: str = IDENTITY) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "starting_weights": "random:42",
        "data": {"labels_file": "Data_Entry_2017_v2020.csv", "images": 300, "train": {"images": 240}},
        "split": {"method": "official lists", "seed": 0},
        "training": {"epochs_run": 6, "best_epoch": 4, "seconds": 900.0},
        "validation": {"epoch": 4, "mean_auc": 0.5625, "auc": {"Effusion": 0.61, "Mass": 0.515}},
        "date": "2026-12-02T19:00:00+00:00",
    }


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "resnet50-finetuned.weights.h5"
    path.write_bytes(b"weights")
    return path


def write_card(weights_file: Path, content: str) -> None:
    (weights_file.parent / (weights_file.name + ".card.json")).write_text(content)


def test_a_card_for_these_weights_gives_its_headline(weights_file: Path) -> None:
    write_card(weights_file, json.dumps(card()))
    headline = card_headline(WeightsSpec("file", path=weights_file), IDENTITY)
    assert headline == {
        "starting_weights": "random:42",
        "training_images": 240,
        "split": "official lists",
        "epochs_run": 6,
        "best_epoch": 4,
        "validation_mean_auc": 0.5625,
        "validation_auc": {"Effusion": 0.61, "Mass": 0.515},
        "date": "2026-12-02T19:00:00+00:00",
    }


def test_a_card_written_for_other_weights_is_not_shown(weights_file: Path) -> None:
    write_card(weights_file, json.dumps(card(model_id="resnet50-file-ffffffffff")))
    assert card_headline(WeightsSpec("file", path=weights_file), IDENTITY) is None


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"model_id": IDENTITY})])
def test_an_unreadable_or_incomplete_card_is_not_shown(weights_file: Path, content: str) -> None:
    write_card(weights_file, content)
    assert card_headline(WeightsSpec("file", path=weights_file), IDENTITY) is None


def test_weights_without_a_card_have_none(weights_file: Path) -> None:
    assert card_headline(WeightsSpec("file", path=weights_file), IDENTITY) is None
    assert card_headline(WeightsSpec("random", seed=42), "resnet50-random42-0123456789") is None
