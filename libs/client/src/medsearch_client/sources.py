"""What to ingest: a folder of images or a labels CSV read into (file, metadata) items.

A folder gives its PNG and JPEG files by name and its DICOM files by content (the `DICM` marker
after the 128-byte preamble: `.dcm`, no extension, or a name made of UIDs); the catalog takes a
DICOM's patient, age, sex and view position from its header, de-identified, so only the
dataset is sent with it, never its path, which may name the patient.

Two CSV formats: NIH ChestX-ray14's own `Data_Entry_2017*.csv`, recognised by its header,
and a generic one with a path column and columns named like the metadata fields (or mapped
to them with `column=field`). Everything is checked before anything is sent: a CSV that
names a missing column, an unknown field, a bad number or a file that is not there is an
error that says where.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

Format = Literal["auto", "nih", "generic"]
FORMATS: tuple[Format, ...] = ("auto", "nih", "generic")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
LABELS_FILE = "labels.csv"
DEFAULT_PATH_COLUMN = "path"
FIELDS = ("dataset", "external_id", "patient_id", "study", "age", "sex", "view_position", "findings")
EXTRA_PREFIX = "extra."
# The first 7 columns of NIH's label file. Its last two headers hold a comma
# (`OriginalImage[Width,Height]`), so the columns after these are not matched by name.
NIH_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID",
    "Patient Age", "Patient Gender", "View Position",
)  # fmt: skip
NIH_DATASET = "nih"
NO_FINDING = "no finding"  # NIH's label for an image without findings: an empty list here
# Columns that fill a field when --map does not name it (compared without case, spaces or
# dashes); the first one a CSV has wins.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset",),
    "external_id": ("external_id", "image_id", "image_index"),
    "patient_id": ("patient_id",),
    "study": ("study", "follow_up"),
    "age": ("age", "patient_age"),
    "sex": ("sex", "patient_sex", "gender", "patient_gender"),
    "view_position": ("view_position", "view"),
    "findings": ("findings", "finding", "finding_labels"),
}
_SEXES = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
_FINDING_SEPARATORS = re.compile(r"[|;]")
_MISSING_SHOWN = 5


class SourceError(ValueError):
    """The folder or CSV cannot be read as asked; the message says what and where."""


@dataclass(frozen=True)
class IngestItem:
    """One image file and the metadata to store it with."""

    path: Path
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source; each is a command-line option of `medsearch ingest`."""

    format: Format = "auto"
    images: Path | None = None  # where image paths are relative to
    path_column: str | None = None  # generic CSV only; None = DEFAULT_PATH_COLUMN
    mappings: Sequence[str] = ()  # "column=field", generic CSV only
    dataset: str | None = None  # for rows that name none
    skip_missing: bool = False  # leave out rows whose file is not there, rather than refuse the CSV


@dataclass(frozen=True)
class Source:
    """What a folder or CSV holds: the items to send, and the files it named that are missing
    (only ever non-empty with `skip_missing`)."""

    items: list[IngestItem]
    missing: list[Path] = field(default_factory=list)


def read_source(target: Path, options: SourceOptions) -> Source:
    """A folder (its labels.csv when it has one, else its images) or a CSV file."""
    if target.is_dir():
        if (target / LABELS_FILE).is_file():
            return read_csv(target / LABELS_FILE, options)
        return read_folder(target, options)
    if target.is_file():
        if target.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES or is_dicom_file(target):
            raise SourceError(f"{target} is an image: give its folder, or a labels CSV that names it")
        return read_csv(target, options)
    raise SourceError(f"{target} is neither a folder nor a file")


def read_folder(folder: Path, options: SourceOptions) -> Source:
    """Every PNG, JPEG and DICOM under `folder`; dataset: the folder's name. A PNG or JPEG is named
    by its path inside the folder; a DICOM's metadata comes from its header."""
    unused = [
        name
        for name, given in (
            ("--map", bool(options.mappings)),
            ("--path-column", options.path_column is not None),
            ("--images", options.images is not None),
            ("--format", options.format != "auto"),
        )
        if given
    ]
    if unused:
        raise SourceError(f"{', '.join(unused)} apply to a CSV, and {folder} has no {LABELS_FILE}")
    dataset = options.dataset or _folder_name(folder)
    items = [
        IngestItem(
            path,
            {"dataset": dataset}
            if dicom
            else {"dataset": dataset, "external_id": path.relative_to(folder).as_posix()},
        )
        for path, dicom in _image_files(folder)
    ]
    if not items:
        raise SourceError(f"{folder} holds no image (*.png, *.jpg, *.jpeg, DICOM) and no {LABELS_FILE}")
    return Source(items)


def read_csv(path: Path, options: SourceOptions) -> Source:
    """A labels CSV, NIH's format or the generic one (`options.format`, auto-detected by default)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = csv.reader(file)
            header = [name.strip() for name in next(rows, [])]
            if not any(header):
                raise SourceError(f"{path} is empty: a CSV needs a header row")
            fmt = options.format
            if fmt == "auto":
                fmt = "nih" if _is_nih_header(header) else "generic"
            reader = _nih_items if fmt == "nih" else _generic_items
            numbered = list(reader(path, header, rows, options))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise SourceError(f"{path} is not a readable CSV: {exc}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _check_files(path, numbered, options.skip_missing)


# -- NIH ChestX-ray14 -----------------------------------------------------------------------


def _is_nih_header(header: Sequence[str]) -> bool:
    return tuple(header[:2]) == NIH_COLUMNS[:2]


def _nih_items(
    path: Path, header: list[str], rows: CsvReader, options: SourceOptions
) -> Iterator[tuple[int, IngestItem]]:
    if tuple(header[: len(NIH_COLUMNS)]) != NIH_COLUMNS:
        raise SourceError(
            f"{path} is not in NIH's label-file format: its header should start with "
            f"{', '.join(NIH_COLUMNS)}; it starts with {', '.join(header[: len(NIH_COLUMNS)])}"
        )
    if options.mappings or options.path_column is not None:
        raise SourceError("--map and --path-column apply to a generic CSV, not to NIH's label file")
    images = options.images or path.parent / "images"
    dataset = options.dataset or NIH_DATASET
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        line = f"{path}:{rows.line_num}"
        if len(row) < len(NIH_COLUMNS):
            raise SourceError(f"{line}: {len(row)} fields; NIH's format has at least {len(NIH_COLUMNS)}")
        index, labels, follow_up, patient, age, sex, view = (cell.strip() for cell in row[: len(NIH_COLUMNS)])
        if not index:
            raise SourceError(f"{line}: 'Image Index' is empty")
        metadata: dict[str, Any] = {
            "dataset": dataset,
            "external_id": index,
            "patient_id": patient,
            "study": _whole_number(follow_up, line, "Follow-up #"),
            "age": _whole_number(age, line, "Patient Age"),
            "sex": _sex(sex),
            "view_position": view.upper(),
            "findings": _findings(labels),
        }
        yield rows.line_num, IngestItem(images / index, _without_empty(metadata))


# -- generic CSV --------------------------------------------------------------------------


def parse_mappings(specs: Sequence[str]) -> dict[str, str]:
    """`column=field` specs as {field: column}; a field is one of FIELDS or `extra.<key>`."""
    mapping: dict[str, str] = {}
    for spec in specs:
        column, sep, target = (part.strip() for part in spec.partition("="))
        if not sep or not column or not target:
            raise SourceError(f"--map {spec!r}: write it as COLUMN=FIELD, e.g. --map 'Patient Sex=sex'")
        if target not in FIELDS and not (target.startswith(EXTRA_PREFIX) and target != EXTRA_PREFIX):
            raise SourceError(
                f"--map {spec!r}: unknown field {target!r}; fields are {', '.join(FIELDS)} and extra.<key>"
            )
        if target in mapping:
            raise SourceError(
                f"--map: field {target!r} is mapped from both {mapping[target]!r} and {column!r}"
            )
        mapping[target] = column
    return mapping


def resolve_columns(header: Sequence[str], specs: Sequence[str], path_column: str) -> dict[str, str]:
    """{field: column} for a generic CSV: the explicit mappings, then the default column names."""
    explicit = parse_mappings(specs)
    unknown = [column for column in explicit.values() if column not in header]
    if unknown:
        raise SourceError(
            f"--map names column(s) the CSV does not have: {', '.join(unknown)}; "
            f"its columns: {', '.join(header)}"
        )
    mapping = dict(explicit)
    taken = {path_column, *explicit.values()}
    by_name = {_normalized(column): column for column in reversed(header) if column not in taken}
    for name, aliases in DEFAULT_COLUMNS.items():
        if name in mapping:
            continue
        column = next((by_name[alias] for alias in aliases if alias in by_name), None)
        if column is not None:
            mapping[name] = column
            taken.add(column)
            by_name = {key: value for key, value in by_name.items() if value != column}
    return mapping


def _generic_items(
    path: Path, header: list[str], rows: CsvReader, options: SourceOptions
) -> Iterator[tuple[int, IngestItem]]:
    path_column = options.path_column or DEFAULT_PATH_COLUMN
    if path_column not in header:
        raise SourceError(
            f"{path} has no column {path_column!r} for the image files (choose one with --path-column); "
            f"its columns: {', '.join(header)}"
        )
    mapping = resolve_columns(header, options.mappings, path_column)
    positions = {name: header.index(column) for name, column in mapping.items()}
    path_position = header.index(path_column)
    base = options.images or path.parent
    default_dataset = options.dataset or _folder_name(path.parent)
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        line = f"{path}:{rows.line_num}"
        if len(row) != len(header):
            raise SourceError(f"{line}: {len(row)} fields under {len(header)} column names")
        file = row[path_position].strip()
        if not file:
            raise SourceError(f"{line}: the {path_column!r} column is empty")
        fields: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for name, position in positions.items():
            value = row[position].strip()
            if name.startswith(EXTRA_PREFIX):
                if value:
                    extra[name.removeprefix(EXTRA_PREFIX)] = value
            else:
                fields[name] = _field_value(name, value, line, mapping[name])
        metadata = {"dataset": default_dataset, **_without_empty(fields)}
        if extra:
            metadata["extra"] = extra
        yield rows.line_num, IngestItem(base / file, metadata)


def _field_value(name: str, value: str, line: str, column: str) -> Any:
    if name in ("study", "age"):
        return _whole_number(value, line, column)
    if name == "sex":
        return _sex(value)
    if name == "view_position":
        return value.upper()
    if name == "findings":
        return _findings(value)
    return value


# -- values -------------------------------------------------------------------------------


def _findings(text: str) -> list[str]:
    """`A|B` or `A;B` as a list; NIH's `No Finding` is the empty list."""
    findings: list[str] = []
    for part in _FINDING_SEPARATORS.split(text):
        finding = part.strip()
        if finding and finding.lower() != NO_FINDING and finding not in findings:
            findings.append(finding)
    return findings


def _sex(text: str) -> str:
    """m/male/f/female/o/other in any case as M/F/O; anything else as written, for the
    gateway to refuse by name."""
    return _SEXES.get(text.strip().lower(), text.strip())


def _whole_number(text: str, line: str, column: str) -> int | None:
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    # A spreadsheet or pandas writes 61 as 61.0 in a column with gaps.
    if not number.is_integer():
        raise SourceError(f"{line}: column {column!r} should hold a whole number, got {text!r}")
    return int(number)


def _without_empty(metadata: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in metadata.items() if value not in ("", None)}


def _normalized(column: str) -> str:
    return re.sub(r"[\s\-]+", "_", column.strip().lower())


# -- files --------------------------------------------------------------------------------


def _check_files(csv_path: Path, numbered: list[tuple[int, IngestItem]], skip_missing: bool) -> Source:
    present: list[IngestItem] = []
    missing: list[tuple[int, IngestItem]] = []
    for line, item in numbered:
        if item.path.is_file():
            present.append(item)
        else:
            missing.append((line, item))
    if missing and not skip_missing:
        shown = "; ".join(f"line {line}: {item.path}" for line, item in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise SourceError(
            f"{csv_path}: {len(missing)} of {len(numbered)} image files are missing ({shown}{more}); "
            "check --images, or pass --skip-missing to ingest the others"
        )
    return Source(present, [item.path for _, item in missing])


def _image_files(folder: Path) -> list[tuple[Path, bool]]:
    """The images under `folder`, sorted, each with whether it is a DICOM: PNG and JPEG files by
    name, DICOM files by content. Hidden files and folders (such as macOS's `._name.png`
    companions) are left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append((path, False))
        elif is_dicom_file(path):
            found.append((path, True))
    return found


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file, by its content: `DICM` after the 128-byte preamble."""
    try:
        with path.open("rb") as file:
            head = file.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def _folder_name(folder: Path) -> str:
    return folder.resolve().name or "images"
