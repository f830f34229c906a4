"""Which images train and which validate: labels read from a CSV, then split by patient.

No TensorFlow here, so a wrong CSV, an unknown finding or a bad split list is reported in a
second, before the model is built.

The two CSV forms `medsearch ingest` reads (medsearch_client.sources; that library is not in
the embedder's GPU image, so the few rules training needs are read here):
- NIH's own `Data_Entry_2017*.csv`, recognised by its header (`Image Index`, `Finding Labels`,
  ..., `Patient ID`); its images are in `--images` (default: `images/` beside the CSV);
- a generic CSV with a `path` column (relative to the CSV, or to `--images`), `patient_id`,
  and the findings in `findings`, `finding` or `finding_labels`.
Findings are separated by `|` or `;`; NIH's `No Finding` is no finding.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from medsearch_embedder.training.errors import TrainingDataError

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

# ChestX-ray14's findings, in the order of Wang et al. (CVPR 2017), as NIH spells them.
CHESTXRAY14_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NIH_IMAGE, NIH_FINDINGS, NIH_PATIENT = "Image Index", "Finding Labels", "Patient ID"
PATH_COLUMN, PATIENT_COLUMN = "path", "patient_id"
FINDINGS_COLUMNS = ("findings", "finding", "finding_labels")  # the first one a CSV has is read
NO_FINDING = "no finding"
_SEPARATORS = re.compile(r"[|;]")
_SHOWN = 5  # examples named in an error message

LabelsFormat = Literal["nih", "generic"]
Side = Literal["train", "validation"]


@dataclass(frozen=True)
class LabelledImage:
    name: str  # as the CSV names it: NIH's Image Index, or the generic CSV's path
    path: Path
    patient: str
    findings: tuple[str, ...]  # as written, before they are matched to the vocabulary


@dataclass(frozen=True)
class LabelSet:
    format: LabelsFormat
    images: list[LabelledImage]

    @property
    def patients(self) -> int:
        return len({image.patient for image in self.images})


@dataclass(frozen=True)
class Split:
    """Indices into the label set's images; a patient is on one side only."""

    method: Literal["patient", "lists"]
    train: list[int]
    validation: list[int]
    left_out: int = 0  # images in neither official list


def parse_findings(text: str) -> tuple[str, ...]:
    """`--findings a,b,c` as a vocabulary: names kept as written, none empty or repeated."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise TrainingDataError(f"--findings {text!r}: a finding name is empty; write them as A,B,C")
    repeated = sorted({name for name in names if [n.lower() for n in names].count(name.lower()) > 1})
    if repeated:
        raise TrainingDataError(f"--findings names {', '.join(repeated)} more than once")
    return names


def read_labels(csv_path: Path, images: Path | None = None) -> LabelSet:
    """Every row of a labels CSV, NIH's or the generic form, its image file checked to exist."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as file:
            rows = csv.reader(file)
            header = [name.strip() for name in next(rows, [])]
            if not any(header):
                raise TrainingDataError(f"{csv_path} is empty: a labels CSV needs a header row")
            if header[:2] == [NIH_IMAGE, NIH_FINDINGS]:
                labels = LabelSet("nih", list(_nih_rows(csv_path, header, rows, images)))
            else:
                labels = LabelSet("generic", list(_generic_rows(csv_path, header, rows, images)))
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{csv_path} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise TrainingDataError(f"{csv_path} is not a readable CSV: {exc}") from None
    except OSError as exc:
        raise TrainingDataError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
    if not labels.images:
        raise TrainingDataError(f"{csv_path} has a header but no image rows")
    _check_unique(csv_path, labels.images)
    _check_files(csv_path, labels.images)
    return labels


def _nih_rows(path: Path, header: list[str], rows: CsvReader, images: Path | None) -> Iterator[LabelledImage]:
    if NIH_PATIENT not in header:
        raise TrainingDataError(
            f"{path} looks like NIH's label file but has no {NIH_PATIENT!r} column; its columns: "
            f"{', '.join(header)}"
        )
    # NIH's last two headers hold a comma, so only the columns before them are found by name.
    name_at, findings_at, patient_at = (header.index(c) for c in (NIH_IMAGE, NIH_FINDINGS, NIH_PATIENT))
    folder = images or path.parent / "images"
    for row in rows:
        if any(cell.strip() for cell in row):
            line = f"{path}:{rows.line_num}"
            name = _cell(row, name_at, line, NIH_IMAGE)
            patient = _cell(row, patient_at, line, NIH_PATIENT)
            yield LabelledImage(name, folder / name, patient, split_findings(row[findings_at]))


def _generic_rows(
    path: Path, header: list[str], rows: CsvReader, images: Path | None
) -> Iterator[LabelledImage]:
    lowered = [name.lower() for name in header]
    findings_column = next((c for c in FINDINGS_COLUMNS if c in lowered), None)
    missing = [c for c in (PATH_COLUMN, PATIENT_COLUMN) if c not in lowered]
    if findings_column is None:
        missing.append(" or ".join(FINDINGS_COLUMNS))
    if missing:
        raise TrainingDataError(
            f"{path} has no column {', '.join(repr(c) for c in missing)}; a labels CSV needs "
            f"{PATH_COLUMN!r} (image files relative to the CSV), {PATIENT_COLUMN!r} and the findings "
            f"(or NIH's own label file); its columns: {', '.join(header)}"
        )
    assert findings_column is not None
    path_at, patient_at, findings_at = (
        lowered.index(c) for c in (PATH_COLUMN, PATIENT_COLUMN, findings_column)
    )
    folder = images or path.parent
    for row in rows:
        if any(cell.strip() for cell in row):
            line = f"{path}:{rows.line_num}"
            if len(row) != len(header):
                raise TrainingDataError(f"{line}: {len(row)} fields under {len(header)} column names")
            name = _cell(row, path_at, line, PATH_COLUMN)
            patient = _cell(row, patient_at, line, PATIENT_COLUMN)
            yield LabelledImage(name, folder / name, patient, split_findings(row[findings_at]))


def _cell(row: list[str], position: int, line: str, column: str) -> str:
    value = row[position].strip() if position < len(row) else ""
    if not value:
        raise TrainingDataError(f"{line}: the {column!r} column is empty")
    return value


def split_findings(text: str) -> tuple[str, ...]:
    """`A|B` or `A;B` as a tuple; `No Finding` is the empty tuple."""
    names = (part.strip() for part in _SEPARATORS.split(text))
    return tuple(dict.fromkeys(n for n in names if n and n.lower() != NO_FINDING))


def _check_unique(csv_path: Path, images: list[LabelledImage]) -> None:
    repeated = [name for name, count in Counter(image.name for image in images).items() if count > 1]
    if repeated:
        raise TrainingDataError(
            f"{csv_path} lists {len(repeated)} image(s) more than once, e.g. {', '.join(repeated[:_SHOWN])}"
        )


def _check_files(csv_path: Path, images: list[LabelledImage]) -> None:
    missing = [image.path for image in images if not image.path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise TrainingDataError(
            f"{csv_path}: {len(missing)} of {len(images)} image files are missing ({shown}{more}); "
            "check --images (NIH's label file) or the CSV's path column"
        )


def encode_findings(
    images: Sequence[LabelledImage], vocabulary: Sequence[str], *, ignore_unknown: bool
) -> tuple[NDArray[np.float32], dict[str, int]]:
    """The (images, findings) 0/1 matrix, names matched without case, and the unknown findings'
    image counts. An unknown finding is an error unless `ignore_unknown`: then it is dropped."""
    columns = {name.lower(): column for column, name in enumerate(vocabulary)}
    matrix = np.zeros((len(images), len(vocabulary)), dtype=np.float32)
    unknown: Counter[str] = Counter()
    for row, image in enumerate(images):
        for finding in image.findings:
            column = columns.get(finding.lower())
            if column is None:
                unknown[finding] += 1
            else:
                matrix[row, column] = 1.0
    if unknown and not ignore_unknown:
        listed = ", ".join(f"{name} ({count} images)" for name, count in unknown.most_common())
        raise TrainingDataError(
            f"findings outside the vocabulary: {listed}; the vocabulary is {', '.join(vocabulary)}. "
            "Name the findings to learn with --findings, or pass --ignore-unknown-findings to drop these"
        )
    return matrix, dict(unknown.most_common())


def split_by_patient(images: Sequence[LabelledImage], validation_fraction: float, seed: int) -> Split:
    """Hold back `validation_fraction` of the patients (at least one, never all), chosen by `seed`."""
    patients = _patients(images)
    order = np.random.default_rng(seed).permutation(len(patients))
    count = min(max(round(validation_fraction * len(patients)), 1), len(patients) - 1)
    held_back = {patients[i] for i in order[:count]}
    return Split(
        "patient",
        train=[i for i, image in enumerate(images) if image.patient not in held_back],
        validation=[i for i, image in enumerate(images) if image.patient in held_back],
    )


def read_image_list(path: Path, option: str) -> list[str]:
    """An official list such as NIH's `train_val_list.txt`: image file names, one a line."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise TrainingDataError(f"{option} {path}: cannot read it: {reason or exc}") from None
    listed = [name for name in names if name]
    if not listed:
        raise TrainingDataError(f"{option} {path} names no image")
    return listed


def split_by_lists(
    images: Sequence[LabelledImage], train_list: Sequence[str], test_list: Sequence[str]
) -> Split:
    """The test list becomes the validation side; images in neither list are left out. Lists
    name files, so an image is matched by its file name."""
    _patients(images)
    on_both = sorted(set(train_list) & set(test_list))
    if on_both:
        raise TrainingDataError(
            f"--train-list and --test-list both name {len(on_both)} image(s), e.g. {on_both[0]}"
        )
    by_file: dict[str, int] = {}
    for index, image in enumerate(images):
        file = PurePosixPath(image.name).name
        if file in by_file:
            raise TrainingDataError(
                f"two images share the file name {file} ({images[by_file[file]].name}, {image.name}): "
                "the lists name files, so each file name must be unique"
            )
        by_file[file] = index
    train = sorted({by_file[name] for name in train_list if name in by_file})
    validation = sorted({by_file[name] for name in test_list if name in by_file})
    for side, option in ((train, "--train-list"), (validation, "--test-list")):
        if not side:
            raise TrainingDataError(f"no image of the labels is in {option}: that side of the split is empty")
    trained = {images[i].patient: images[i].name for i in train}
    crossing = [i for i in validation if images[i].patient in trained]
    if crossing:
        example = images[crossing[0]]
        raise TrainingDataError(
            f"the lists put {len({images[i].patient for i in crossing})} patient(s) on both sides, e.g. "
            f"patient {example.patient}: {trained[example.patient]} in --train-list, {example.name} in "
            "--test-list; validation must hold patients the model never saw"
        )
    return Split("lists", train, validation, left_out=len(images) - len(train) - len(validation))


def _patients(images: Sequence[LabelledImage]) -> list[str]:
    patients = sorted({image.patient for image in images})
    if len(patients) < 2:
        raise TrainingDataError(
            f"the labels name {len(patients)} patient(s): validation needs patients that training never "
            "sees, so at least 2 are needed"
        )
    return patients


def split_csv(images: Sequence[LabelledImage], split: Split) -> str:
    """The split as `image,patient_id,side` rows, in the CSV's order: what eval needs to score
    only held-back patients."""
    sides: dict[int, Side] = {}
    sides.update(dict.fromkeys(split.train, "train"))
    sides.update(dict.fromkeys(split.validation, "validation"))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "patient_id", "side"])
    writer.writerows([images[i].name, images[i].patient, side] for i, side in sorted(sides.items()))
    return out.getvalue()


def positive_counts(labels: NDArray[np.float32], vocabulary: Sequence[str]) -> dict[str, int]:
    """Images carrying each finding."""
    return {name: int(count) for name, count in zip(vocabulary, labels.sum(axis=0), strict=True)}
