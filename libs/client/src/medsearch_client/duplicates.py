"""`medsearch duplicates`' pure parts: the pairs of every range gathered, grouped into clusters
and flagged, the splits they may cross, and the CSV and JSON written from them.

A cluster is a set of images joined by pairs (a pair's images, and any image paired with
either, and so on). Its kinds: `same_patient` and `different_patients` when any pair is of
that kind (`unknown_patient` when a pair's patient is unknown), and `crosses_split` when its
members fall in more than one split (a leak between, say, NIH's training and test lists).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsearch_client.client import DuplicatePair, Duplicates, Image

CROSSES_SPLIT = "crosses_split"
# What `--split-field` may name: a metadata field, or extra.<key>.
METADATA_FIELDS = ("dataset", "external_id", "patient_id", "study", "age", "sex", "view_position")
CSV_HEADER = (
    "cluster", "cluster_kinds", "a", "b", "score", "kind",
    "a_dataset", "a_external_id", "a_patient_id", "a_split",
    "b_dataset", "b_external_id", "b_patient_id", "b_split",
)  # fmt: skip
# A spreadsheet runs a cell that starts with one of these as a formula (the catalog's audit
# CSV guards its cells the same way).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Names a refusal lists; the count says how many there are in all.
LISTED_NAMES = 5


class SplitError(ValueError):
    """A split file or field the command cannot use; the message says which and why."""


@dataclass
class Gathered:
    """The pairs of every range walked so far, each once (a pair whose two images lie in
    different ranges comes back from both), and the images they hold."""

    model_id: str = ""
    threshold: float = 0.0
    k: int = 0
    vectors: int = 0
    pairs: dict[tuple[int, int], DuplicatePair] = field(default_factory=dict)
    images: dict[int, Image] = field(default_factory=dict)

    def add(self, found: Duplicates) -> None:
        self.model_id, self.threshold, self.k = found["model_id"], found["threshold"], found["k"]
        self.vectors += found["vectors"]
        for pair in found["pairs"]:
            key = (pair["a"], pair["b"])
            if key not in self.pairs or pair["score"] > self.pairs[key]["score"]:
                self.pairs[key] = pair
        self.images.update((image["id"], image) for image in found["images"])


@dataclass(frozen=True)
class Cluster:
    number: int  # from 1, in the order of each cluster's lowest image ID
    members: list[int]  # image IDs, ascending
    pairs: list[DuplicatePair]  # by a, then b
    kinds: list[str]  # sorted
    splits: list[str]  # the splits its members fall in, sorted


def clusters(
    pairs: Iterable[DuplicatePair], images: Mapping[int, Image], split_of: Callable[[Image], str | None]
) -> list[Cluster]:
    """The pairs grouped into connected sets of images (union-find), each with its kinds."""
    parent: dict[int, int] = {}

    def root(image_id: int) -> int:
        parent.setdefault(image_id, image_id)
        while parent[image_id] != image_id:
            parent[image_id] = parent[parent[image_id]]  # halve the path as it is walked
            image_id = parent[image_id]
        return image_id

    ordered = sorted(pairs, key=lambda pair: (pair["a"], pair["b"]))
    for pair in ordered:
        first, second = root(pair["a"]), root(pair["b"])
        if first != second:
            parent[max(first, second)] = min(first, second)
    groups: dict[int, list[DuplicatePair]] = {}
    for pair in ordered:
        groups.setdefault(root(pair["a"]), []).append(pair)
    found = []
    for number, group_root in enumerate(sorted(groups), start=1):
        group = groups[group_root]
        members = sorted({image_id for pair in group for image_id in (pair["a"], pair["b"])})
        splits = sorted(
            {split for i in members if i in images and (split := split_of(images[i])) is not None}
        )
        kinds = {pair["kind"] for pair in group} | ({CROSSES_SPLIT} if len(splits) > 1 else set())
        found.append(Cluster(number, members, group, sorted(kinds), splits))
    return found


# -- splits -------------------------------------------------------------------------------


def parse_split_option(text: str) -> tuple[str, Path]:
    """`NAME=FILE` of `--split`."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise SplitError(f"expected NAME=FILE, e.g. test=test_list.txt; got {text!r}")
    return name.strip(), Path(path.strip())


def read_split_files(splits: Sequence[tuple[str, Path]]) -> dict[str, str]:
    """Each listed image's split, by external ID (an image file name, one a line, as NIH's
    train_val_list.txt and test_list.txt give them)."""
    names = [name for name, _ in splits]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SplitError(f"the split name(s) {', '.join(repeated)} come more than once")
    split_of: dict[str, str] = {}
    in_two: list[str] = []
    for name, path in splits:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise SplitError(f"cannot read the split file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SplitError(f"the split file {path} is not UTF-8 text") from None
        listed = {line.strip() for line in lines if line.strip()}
        if not listed:
            raise SplitError(f"the split file {path} lists no image")
        for external_id in sorted(listed):
            if split_of.setdefault(external_id, name) != name:
                in_two.append(external_id)
    if in_two:
        raise SplitError(
            f"{len(in_two)} image(s) are listed in more than one split file, e.g. {_some(in_two)}"
        )
    return split_of


def unknown_names(split_of: Mapping[str, str], known: set[str]) -> list[str]:
    """The external IDs the split files list that no stored image has, sorted."""
    return sorted(set(split_of) - known)


def refuse_unknown(unknown: Sequence[str]) -> None:
    if unknown:
        raise SplitError(
            f"the split files name {len(unknown)} image(s) the collection does not have "
            f"(by external ID), e.g. {_some(unknown)}: check the files, or ingest those images first"
        )


def check_split_field(text: str) -> str:
    """A `--split-field`: a metadata field or extra.<key>."""
    if text in METADATA_FIELDS or (text.startswith("extra.") and len(text) > len("extra.")):
        return text
    raise SplitError(f"expected one of {', '.join(METADATA_FIELDS)} or extra.KEY, got {text!r}")


def field_value(image: Image, name: str) -> str | None:
    """The metadata field `name` (extra.<key> for the extra fields) as text; None when unset."""
    metadata: Mapping[str, Any] = image["metadata"]
    if name.startswith("extra."):
        value = (metadata.get("extra") or {}).get(name.removeprefix("extra."))
    else:
        value = metadata.get(name)
    return None if value is None or value == "" else str(value)


# -- output -------------------------------------------------------------------------------


def csv_text(
    found: Sequence[Cluster], images: Mapping[int, Image], split_of: Callable[[Image], str | None]
) -> str:
    """One row per pair, with its cluster, each cell safe to open in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for cluster in found:
        for pair in cluster.pairs:
            cells = [str(cluster.number), " ".join(cluster.kinds), str(pair["a"]), str(pair["b"])]
            cells += [f"{pair['score']:.6f}", pair["kind"]]
            for image_id in (pair["a"], pair["b"]):
                cells += _image_cells(images.get(image_id), split_of)
            writer.writerow([_formula_safe(cell) for cell in cells])
    return out.getvalue()


def json_text(
    gathered: Gathered,
    found: Sequence[Cluster],
    split_of: Callable[[Image], str | None],
) -> str:
    def member(image_id: int) -> dict[str, Any]:
        image = gathered.images.get(image_id)
        metadata: Mapping[str, Any] = image["metadata"] if image else {}
        return {
            "id": image_id,
            "dataset": metadata.get("dataset"),
            "external_id": metadata.get("external_id"),
            "patient_id": metadata.get("patient_id"),
            "split": split_of(image) if image else None,
        }

    document = {
        "model_id": gathered.model_id,
        "threshold": gathered.threshold,
        "k": gathered.k,
        "vectors": gathered.vectors,
        "clusters": [
            {
                "cluster": cluster.number,
                "kinds": cluster.kinds,
                "members": [member(image_id) for image_id in cluster.members],
                "pairs": cluster.pairs,
            }
            for cluster in found
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def summary(found: Sequence[Cluster]) -> str:
    """`N pairs in C clusters: S same patient, D different patients, U unknown patient, X cross a split`."""
    pairs = [pair for cluster in found for pair in cluster.pairs]

    def count(kind: str) -> int:
        return sum(pair["kind"] == kind for pair in pairs)

    crossing = sum(CROSSES_SPLIT in cluster.kinds for cluster in found)
    return (
        f"{len(pairs)} pairs in {len(found)} clusters: {count('same_patient')} same patient, "
        f"{count('different_patients')} different patients, {count('unknown_patient')} unknown patient; "
        f"{crossing} clusters cross a split"
    )


def _image_cells(image: Image | None, split_of: Callable[[Image], str | None]) -> list[str]:
    if image is None:
        return ["", "", "", ""]
    metadata: Mapping[str, Any] = image["metadata"]
    return [
        str(metadata.get("dataset") or ""),
        str(metadata.get("external_id") or ""),
        str(metadata.get("patient_id") or ""),
        split_of(image) or "",
    ]


def _formula_safe(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")
