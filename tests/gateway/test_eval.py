"""`medsearch eval` end to end: the shared sets indexed in a real stack, measured through the
gateway's public API, with `random:42` weights (so the figures must look like chance)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import Indexed, Stack, medsearch


@pytest.fixture(scope="module")
def nih_report(
    stack: Stack, indexed: list[Indexed], test_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("eval-nih")
    nih = test_data / "nih_cxr14"
    result = medsearch(
        stack,
        "eval",
        str(nih / "Data_Entry_2017_v2020.csv"),
        "--images",
        str(nih / "images"),
        "--out",
        str(out),
        "--bootstrap",
        "300",
        "--near-duplicates",
        "10",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "any_finding: P@10" in result.stdout
    return out


def _report(folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folder / "eval.json").read_text())
    return report


def test_eval_writes_json_markdown_and_a_plot(nih_report: Path) -> None:
    report = _report(nih_report)
    assert report["metadata"]["images"] == 303
    assert report["metadata"]["queries"] == 303
    assert [rule["rule"] for rule in report["rules"]] == ["any_finding", "single_label"]
    markdown = (nih_report / "eval.md").read_text()
    assert "precision_at_k.png" in markdown
    assert "single_label" in markdown or "single label" in markdown.lower()
    assert (nih_report / "precision_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_weights_score_like_a_random_ranking(nih_report: Path) -> None:
    """Random weights know nothing of findings: every figure (2 rules x P and mAP x 4 cutoffs x
    micro and macro) lies within 3 standard errors (from its bootstrap interval) of what a random
    ranking gets. Not 95 % intervals: of 32 figures, ~1.6 would fall outside those by chance alone
    (one does here: any_finding micro P@10, 1.95 standard errors above)."""
    checked = 0
    for rule in _report(nih_report)["rules"]:
        for average in ("micro", "macro"):
            for metric in ("precision", "average_precision"):
                for k, figure in rule[average][metric].items():
                    standard_error = (figure["high"] - figure["low"]) / 3.92
                    distance = abs(figure["value"] - figure["baseline"])
                    assert distance <= 3 * standard_error, (rule["rule"], average, metric, k, figure)
                    checked += 1
    assert checked == 32


def test_near_duplicate_copies_find_their_original_first(nih_report: Path) -> None:
    near = _report(nih_report)["near_duplicate"]
    assert near["pairs"] == 10
    assert near["recall_at_1"] == 1.0


def test_same_patient_recall_on_a_set_with_several_images_per_patient(
    stack: Stack, indexed: list[Indexed], test_data: Path, tmp_path: Path
) -> None:
    result = medsearch(
        stack,
        "eval",
        str(test_data / "covid_hannover" / "labels.csv"),
        "--dataset",
        "hannover",
        "--out",
        str(tmp_path),
        "--bootstrap",
        "0",
        "--near-duplicates",
        "0",
        "--queries",
        "40",
        "--seed",
        "7",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(tmp_path)
    assert report["metadata"]["datasets"] == "hannover"
    same_patient = report["same_patient"]
    assert same_patient["queries_scored"] > 0
    assert 0.0 <= same_patient["recall"]["10"]["value"] <= 1.0
    assert report["metadata"]["queries"] == 40
    # seeded: the same command samples the same queries and gives the same figures
    again = medsearch(
        stack,
        *("eval", str(test_data / "covid_hannover" / "labels.csv"), "--dataset", "hannover"),
        *("--out", str(tmp_path / "again"), "--bootstrap", "0", "--near-duplicates", "0"),
        *("--queries", "40", "--seed", "7"),
    )
    assert again.returncode == 0, again.stderr
    assert _report(tmp_path / "again")["rules"] == report["rules"]


def test_a_set_where_no_two_images_share_a_finding_is_refused(
    stack: Stack, indexed: list[Indexed], test_data: Path, tmp_path: Path
) -> None:
    nih = test_data / "nih_cxr14"
    by_label: dict[str, dict[str, str]] = {}
    with open(nih / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            label = row["finding_labels"]
            if "|" not in label:
                by_label.setdefault(label, row)
    rows = list(by_label.values())[:3]
    labels = tmp_path / "three.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "dataset", "patient_id", "findings"])
        for row in rows:
            writer.writerow([str(nih / row["path"]), "nih", row["patient_id"], row["finding_labels"]])
    result = medsearch(stack, "eval", str(labels), "--out", str(tmp_path / "out"), "--near-duplicates", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no query has a relevant image" in result.stderr


def test_a_labels_file_without_a_path_column_is_a_usage_error(stack: Stack, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,findings\nx.png,Effusion\n")
    result = medsearch(stack, "eval", str(labels), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "path" in result.stderr


def test_a_set_not_indexed_says_to_ingest_it_first(stack: Stack, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (64, 64), 90).save(tmp_path / "never-added.png")
    (tmp_path / "labels.csv").write_text("path,findings\nnever-added.png,Effusion\n")
    result = medsearch(stack, "eval", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "ingest" in result.stderr


def test_a_gateway_that_is_down_fails_with_a_message(test_data: Path, tmp_path: Path) -> None:
    nih = test_data / "nih_cxr14"
    result = medsearch(
        "http://127.0.0.1:9", "eval", str(nih / "labels.csv"), "--out", str(tmp_path), "--timeout", "5"
    )
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
