"""`medsearch duplicates`' pure parts: pairs gathered over ranges, clusters and their kinds,
splits, the CSV (safe in a spreadsheet) and JSON; and command lines refused before anything
is sent."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, cast

import pytest

from medsearch_client import duplicates as near
from medsearch_client.cli import main
from medsearch_client.client import DuplicatePair, Duplicates, Image, ImageMetadata
from medsearch_client.terminal import EXIT_USAGE

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a test that reached the network would fail


def image(image_id: int, **metadata: Any) -> Image:
    return cast(
        Image,
        {"id": image_id, "metadata": cast(ImageMetadata, {"dataset": "nih", **metadata})},
    )


def pair(a: int, b: int, score: float = 0.9995, kind: str = "same_patient") -> DuplicatePair:
    return {"a": a, "b": b, "score": score, "kind": kind}


def answer(pairs: list[DuplicatePair], images: list[Image], vectors: int = 10) -> Duplicates:
    return {
        "model_id": "m",
        "threshold": 0.999,
        "k": 10,
        "pairs": pairs,
        "images": images,
        "vectors": vectors,
        "max_image_id": 20,
    }


def no_split(image: Image) -> str | None:
    return None


def test_a_pair_seen_from_two_ranges_is_kept_once_with_its_best_score() -> None:
    gathered = near.Gathered()
    gathered.add(answer([pair(1, 15, 0.9991)], [image(1), image(15)]))
    gathered.add(answer([pair(1, 15, 0.9993), pair(12, 13)], [image(1), image(12), image(13), image(15)]))
    assert sorted(gathered.pairs) == [(1, 15), (12, 13)]
    assert gathered.pairs[(1, 15)]["score"] == 0.9993
    assert gathered.vectors == 20 and sorted(gathered.images) == [1, 12, 13, 15]


def test_pairs_that_share_an_image_form_one_cluster_flagged_by_every_kind_in_it() -> None:
    pairs = [
        pair(5, 9, kind="different_patients"),
        pair(1, 2),
        pair(2, 9),
        pair(20, 30, kind="unknown_patient"),
    ]
    images = {i: image(i) for i in (1, 2, 5, 9, 20, 30)}
    found = near.clusters(pairs, images, no_split)
    assert [(c.number, c.members, c.kinds) for c in found] == [
        (1, [1, 2, 5, 9], ["different_patients", "same_patient"]),
        (2, [20, 30], ["unknown_patient"]),
    ]
    assert [(p["a"], p["b"]) for p in found[0].pairs] == [(1, 2), (2, 9), (5, 9)]


def test_a_cluster_crosses_a_split_only_when_its_members_fall_in_two() -> None:
    images = {
        1: image(1, external_id="a.png"),
        2: image(2, external_id="b.png"),
        3: image(3, external_id="c.png"),
        4: image(4, external_id="d.png"),
        5: image(5, external_id="e.png"),
    }
    split_by_name = {"a.png": "train", "b.png": "test", "c.png": "train", "d.png": "train"}

    def split_of(found: Image) -> str | None:
        return split_by_name.get(str(found["metadata"].get("external_id")))

    found = near.clusters([pair(1, 2), pair(3, 4), pair(4, 5)], images, split_of)
    assert [(c.members, c.kinds, c.splits) for c in found] == [
        ([1, 2], ["crosses_split", "same_patient"], ["test", "train"]),
        ([3, 4, 5], ["same_patient"], ["train"]),  # 5 is in no split: no crossing
    ]


def test_split_files_give_each_listed_image_its_split(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.png\nb.png\n\n")
    (tmp_path / "test.txt").write_text("\ufeffc.png\r\n")
    splits = [near.parse_split_option(f"train={tmp_path / 'train.txt'}"), ("test", tmp_path / "test.txt")]
    assert near.read_split_files(splits) == {"a.png": "train", "b.png": "train", "c.png": "test"}
    assert near.unknown_names({"a.png": "train", "z.png": "test"}, {"a.png"}) == ["z.png"]


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (
            {"train": "a.png\n", "test": "a.png\n"},
            "1 image(s) are listed in more than one split file, e.g. a.png",
        ),
        ({"train": "\n \n"}, "lists no image"),
        ({"train": b"\xff\xfe\x00"}, "is not UTF-8 text"),
    ],
)
def test_split_files_that_cannot_be_used_are_refused(
    tmp_path: Path, files: dict[str, Any], words: str
) -> None:
    splits = []
    for name, content in files.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        splits.append((name, path))
    with pytest.raises(near.SplitError, match=words.replace("(", r"\(").replace(")", r"\)")):
        near.read_split_files(splits)


def test_unknown_images_are_counted_and_the_first_few_named() -> None:
    names = [f"x{i}.png" for i in range(8)]
    with pytest.raises(near.SplitError) as refused:
        near.refuse_unknown(names)
    assert "8 image(s) the collection does not have" in str(refused.value)
    assert "x0.png, x1.png, x2.png, x3.png, x4.png and 3 more" in str(refused.value)
    near.refuse_unknown([])


def test_a_split_field_is_a_metadata_field_or_an_extra_key() -> None:
    assert near.check_split_field("extra.split") == "extra.split"
    assert near.check_split_field("dataset") == "dataset"
    for bad in ("extra.", "colour", "metadata.split"):
        with pytest.raises(near.SplitError):
            near.check_split_field(bad)
    found = image(1, extra={"split": "test"}, study=0)
    assert near.field_value(found, "extra.split") == "test"
    assert near.field_value(found, "study") == "0"
    assert (
        near.field_value(found, "extra.other") is None and near.field_value(image(2), "extra.split") is None
    )


def test_the_csv_has_a_row_per_pair_and_no_cell_a_spreadsheet_would_run() -> None:
    images = {
        1: image(1, external_id="=HYPERLINK(1)", patient_id="+1"),
        2: image(2, external_id="@sum", patient_id="-2"),
    }
    found = near.clusters([pair(1, 2, kind="different_patients")], images, no_split)
    rows = list(csv.reader(io.StringIO(near.csv_text(found, images, no_split))))
    assert rows[0] == list(near.CSV_HEADER)
    assert rows[1] == [
        "1", "different_patients", "1", "2", "0.999500", "different_patients",
        "nih", "'=HYPERLINK(1)", "'+1", "", "nih", "'@sum", "'-2", "",
    ]  # fmt: skip


def test_the_json_lists_each_cluster_with_its_members_and_pairs() -> None:
    gathered = near.Gathered()
    gathered.add(
        answer([pair(1, 2)], [image(1, external_id="a.png", patient_id="p"), image(2, patient_id="p")])
    )
    found = near.clusters(gathered.pairs.values(), gathered.images, no_split)
    document = json.loads(near.json_text(gathered, found, no_split))
    assert document["threshold"] == 0.999 and document["model_id"] == "m" and document["vectors"] == 10
    [cluster] = document["clusters"]
    assert cluster["kinds"] == ["same_patient"] and cluster["pairs"] == [pair(1, 2)]
    assert cluster["members"][0] == {
        "id": 1,
        "dataset": "nih",
        "external_id": "a.png",
        "patient_id": "p",
        "split": None,
    }
    assert near.summary(found) == (
        "1 pairs in 1 clusters: 1 same patient, 0 different patients, 0 unknown patient; "
        "0 clusters cross a split"
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--threshold", "0"], "expected a number greater than 0 and at most 1, got 0"),
        (["--threshold", "1.5"], "got 1.5"),
        (["--threshold", "x"], "got 'x'"),
        (["--threshold", "nan"], "got nan"),
        (["--k", "51"], "at most 50 neighbours"),
        (["--batch", "16001"], "at most 16000 image IDs"),
        (["--split", "test_list.txt"], "expected NAME=FILE"),
        (["--split-field", "colour"], "extra.KEY"),
        (["--split", "a=b.txt", "--split-field", "dataset"], "not allowed with argument"),
        (["--format", "xml"], "invalid choice"),
    ],
)
def test_a_bad_command_line_is_refused_before_anything_is_sent(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["duplicates", *args, "--url", NOWHERE])
    assert exit_info.value.code == EXIT_USAGE
    assert words in capsys.readouterr().err


def test_an_unreadable_split_file_or_a_folder_as_output_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["duplicates", "--split", f"test={missing}", "--url", NOWHERE]) == EXIT_USAGE
    assert f"cannot read the split file {missing}" in capsys.readouterr().err
    assert main(["duplicates", "--out", str(tmp_path), "--url", NOWHERE]) == EXIT_USAGE
    assert f"cannot write {tmp_path}" in capsys.readouterr().err
