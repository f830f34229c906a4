"""Reading folders and labels CSVs into (file, metadata) items, on the real shared data."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import pytest

from medsearch_client.sources import (
    IngestItem,
    SourceError,
    SourceOptions,
    parse_mappings,
    read_csv,
    read_source,
    resolve_columns,
)
from tests.support.identified_dicoms import Patient, gray_of, identified_dicom

NIH_IMAGES = 303
HANNOVER_IMAGES = 104


def labels_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as file:
        return list(csv.DictReader(file))


def by_external_id(items: list[IngestItem]) -> dict[str, IngestItem]:
    return {item.metadata["external_id"]: item for item in items}


def test_nih_label_file_gives_every_image_with_its_labels(test_data: Path) -> None:
    source = read_source(test_data / "nih_cxr14" / "Data_Entry_2017_v2020.csv", SourceOptions())

    assert len(source.items) == NIH_IMAGES and not source.missing
    items = by_external_id(source.items)
    rows = labels_rows(test_data / "nih_cxr14" / "labels.csv")
    assert set(items) == {row["image_index"] for row in rows}
    for row in rows:
        item = items[row["image_index"]]
        assert item.path.is_file()
        assert item.path.resolve() == (test_data / "nih_cxr14" / row["path"]).resolve()
        labels = row["finding_labels"].split("|")
        assert item.metadata == {
            "dataset": "nih",
            "external_id": row["image_index"],
            "patient_id": row["patient_id"],
            "study": int(row["follow_up"]),
            "age": int(row["patient_age"]),
            "sex": row["patient_gender"],
            "view_position": row["view_position"],
            "findings": [] if labels == ["No Finding"] else labels,
        }


def test_nih_no_finding_is_an_empty_list_and_multi_findings_split(test_data: Path) -> None:
    items = read_source(test_data / "nih_cxr14" / "Data_Entry_2017_v2020.csv", SourceOptions()).items

    no_finding = [item for item in items if item.metadata["findings"] == []]
    assert len(no_finding) == 40
    assert by_external_id(items)["00000100_000.png"].metadata["findings"] == [
        "Atelectasis",
        "Effusion",
        "Infiltration",
    ]
    sexes = [item.metadata["sex"] for item in items]
    assert (sexes.count("F"), sexes.count("M")) == (152, 151)


def test_nih_generic_labels_csv_gives_the_same_metadata_as_nih_own_file(test_data: Path) -> None:
    """labels.csv's columns (image_index, finding_labels, follow_up, patient_age, ...) are
    recognised without --map."""
    folder = test_data / "nih_cxr14"
    nih = by_external_id(read_source(folder / "Data_Entry_2017_v2020.csv", SourceOptions()).items)
    generic = by_external_id(read_source(folder / "labels.csv", SourceOptions(dataset="nih")).items)

    assert generic == nih


def test_hannover_labels_csv_needs_no_mapping(test_data: Path) -> None:
    source = read_source(test_data / "covid_hannover" / "labels.csv", SourceOptions())

    assert len(source.items) == HANNOVER_IMAGES
    rows = {row["image_id"]: row for row in labels_rows(test_data / "covid_hannover" / "labels.csv")}
    items = by_external_id(source.items)
    assert set(items) == set(rows)
    for image_id, item in items.items():
        row = rows[image_id]
        assert item.path.is_file()
        # Empty columns (age, size, weight) are left out; m/f become M/F.
        assert item.metadata == {
            "dataset": "covid_hannover",
            "external_id": image_id,
            "patient_id": row["patient_id"],
            "sex": row["sex"].upper(),
            "view_position": row["view_position"],
            "findings": ["COVID-19"],
        }
    assert len({item.metadata["patient_id"] for item in source.items}) == 55
    sexes = [item.metadata["sex"] for item in source.items]
    assert (sexes.count("M"), sexes.count("F")) == (65, 39)


def test_a_folder_with_labels_csv_reads_the_csv(test_data: Path) -> None:
    from_folder = read_source(test_data / "covid_hannover", SourceOptions())
    from_csv = read_source(test_data / "covid_hannover" / "labels.csv", SourceOptions())

    assert from_folder == from_csv


def test_a_folder_without_labels_gives_every_image_in_it(test_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my scans"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(test_data / "negatives" / "images" / "retina.jpg", folder / "sub" / "retina.JPG")
    shutil.copy(test_data / "negatives" / "images" / "camera.png", folder / "camera.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._camera.png").write_bytes(b"macOS resource fork")

    items = read_source(folder, SourceOptions()).items

    assert items == [
        IngestItem(folder / "camera.png", {"dataset": "my scans", "external_id": "camera.png"}),
        IngestItem(folder / "sub" / "retina.JPG", {"dataset": "my scans", "external_id": "sub/retina.JPG"}),
    ]
    named = read_source(folder, SourceOptions(dataset="mine")).items
    assert {item.metadata["dataset"] for item in named} == {"mine"}


def test_a_folder_gives_its_dicom_files_by_content_with_only_the_dataset(
    test_data: Path, tmp_path: Path
) -> None:
    """`.dcm`, no extension, or named by UIDs (which pathlib takes for a suffix): DICOM by the
    DICM marker. Their paths are not sent: a DICOM's folder and name may name the patient."""
    folder = tmp_path / "SMITH_JOHN"
    (folder / "study").mkdir(parents=True)
    gray = gray_of(test_data / "nih_cxr14" / "images" / "00000075_000.png")[:64, :64]
    dicom = identified_dicom(gray, Patient("ZQXSRC")).data
    for name in ("a.dcm", "study/IM0001", "study/1.2.840.113619.2.55.3.604"):
        (folder / name).write_bytes(dicom)
    shutil.copy(test_data / "negatives" / "images" / "camera.png", folder / "camera.png")
    (folder / "study" / "NOTES").write_bytes(b"\x00" * 200)  # no extension, not a DICOM
    (folder / "study" / "DICOMDIR.txt").write_text("x" * 128 + "DICM")  # a text file that says DICM

    items = read_source(folder, SourceOptions()).items

    assert items == [
        IngestItem(folder / "a.dcm", {"dataset": "SMITH_JOHN"}),
        IngestItem(folder / "camera.png", {"dataset": "SMITH_JOHN", "external_id": "camera.png"}),
        IngestItem(folder / "study" / "1.2.840.113619.2.55.3.604", {"dataset": "SMITH_JOHN"}),
        IngestItem(folder / "study" / "DICOMDIR.txt", {"dataset": "SMITH_JOHN"}),
        IngestItem(folder / "study" / "IM0001", {"dataset": "SMITH_JOHN"}),
    ]
    assert {
        item.metadata["dataset"] for item in read_source(folder, SourceOptions(dataset="ward")).items
    } == {"ward"}
    with pytest.raises(SourceError, match="is an image: give its folder"):
        read_source(folder / "study" / "IM0001", SourceOptions())


def test_the_real_negatives_folder_gives_its_five_images(test_data: Path) -> None:
    items = read_source(test_data / "negatives" / "images", SourceOptions()).items

    assert sorted(item.path.name for item in items) == sorted(
        path.name for path in (test_data / "negatives" / "images").iterdir()
    )
    assert len(items) == 5


def test_map_fills_fields_and_extra_from_named_columns(test_data: Path) -> None:
    options = SourceOptions(
        mappings=("projection=view_position", "modality=extra.modality", "crp_val=extra.crp"),
        dataset="hannover",
    )
    items = by_external_id(read_source(test_data / "covid_hannover" / "labels.csv", options).items)

    item = items["fff13f3a"]
    assert item.metadata["view_position"] == "PA"  # `pa` in the projection column
    assert item.metadata["extra"] == {"modality": "CR", "crp": "3.0"}
    assert item.metadata["dataset"] == "hannover"


def test_a_csv_dataset_column_wins_over_the_default(tmp_path: Path, test_data: Path) -> None:
    shutil.copy(test_data / "negatives" / "images" / "camera.png", tmp_path / "a.png")
    (tmp_path / "list.csv").write_text(
        "file,dataset,Patient Age,Findings\na.png,mine,61.0,Mass; Nodule\na.png,,,No Finding\n"
    )

    items = read_csv(tmp_path / "list.csv", SourceOptions(path_column="file", dataset="other")).items

    assert [item.metadata for item in items] == [
        {"dataset": "mine", "age": 61, "findings": ["Mass", "Nodule"]},
        {"dataset": "other", "findings": []},
    ]


def test_images_option_moves_where_paths_are_relative_to(test_data: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,patient_id\ncamera.png,p1\n")

    source = read_csv(tmp_path / "labels.csv", SourceOptions(images=test_data / "negatives" / "images"))

    assert source.items == [
        IngestItem(
            test_data / "negatives" / "images" / "camera.png", {"dataset": tmp_path.name, "patient_id": "p1"}
        )
    ]


# -- bad input ----------------------------------------------------------------------------


def test_a_missing_path_column_names_the_columns_there_are(test_data: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,sex\na.png,F\n")

    with pytest.raises(SourceError, match=r"no column 'path'.*--path-column.*file, sex"):
        read_source(tmp_path / "labels.csv", SourceOptions())


def test_an_unknown_map_field_is_refused(test_data: Path) -> None:
    with pytest.raises(SourceError, match=r"unknown field 'gender'.*extra\.<key>"):
        read_source(test_data / "covid_hannover" / "labels.csv", SourceOptions(mappings=("sex=gender",)))


def test_a_map_of_a_column_the_csv_lacks_is_refused(test_data: Path) -> None:
    with pytest.raises(SourceError, match=r"column\(s\) the CSV does not have: Sex"):
        read_source(test_data / "covid_hannover" / "labels.csv", SourceOptions(mappings=("Sex=sex",)))


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["sex"], "COLUMN=FIELD"),
        (["=sex"], "COLUMN=FIELD"),
        (["a=extra."], "unknown field"),
        (["a=age", "b=age"], "mapped from both 'a' and 'b'"),
    ],
)
def test_malformed_maps_are_refused(specs: list[str], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_mappings(specs)


def test_explicit_map_replaces_the_default_column_for_that_field() -> None:
    header = ["path", "sex", "gender", "finding", "image_id"]

    assert resolve_columns(header, ["gender=sex"], "path") == {
        "sex": "gender",
        "findings": "finding",
        "external_id": "image_id",
    }


def test_missing_files_are_an_error_naming_their_lines(test_data: Path, tmp_path: Path) -> None:
    rows = labels_rows(test_data / "covid_hannover" / "labels.csv")[:3]
    with (tmp_path / "labels.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "patient_id"])
        writer.writerow([test_data / "covid_hannover" / rows[0]["path"], rows[0]["patient_id"]])
        writer.writerow(["images/gone.png", "p2"])

    with pytest.raises(SourceError, match=r"1 of 2 image files are missing \(line 3: .*gone\.png\).*--skip"):
        read_source(tmp_path / "labels.csv", SourceOptions())

    source = read_source(tmp_path / "labels.csv", SourceOptions(skip_missing=True))
    assert [item.metadata["patient_id"] for item in source.items] == [rows[0]["patient_id"]]
    assert source.missing == [tmp_path / "images" / "gone.png"]


def test_nih_full_label_file_without_its_images_refuses_or_skips(test_data: Path, tmp_path: Path) -> None:
    """NIH's whole file (112,120 rows) parses; only the 303 images here exist."""
    full = tmp_path / "Data_Entry_2017_v2020.csv"
    with gzip.open(test_data / "nih_cxr14" / "Data_Entry_2017_v2020_full.csv.gz", "rb") as packed:
        full.write_bytes(packed.read())
    images = test_data / "nih_cxr14" / "images"

    with pytest.raises(SourceError, match=r"111817 of 112120 image files are missing .* and 111812 more"):
        read_source(full, SourceOptions(images=images))

    source = read_source(full, SourceOptions(images=images, skip_missing=True))
    assert len(source.items) == NIH_IMAGES
    assert len(source.missing) == 112120 - NIH_IMAGES


def test_nih_format_forced_on_another_csv_says_what_it_expected(test_data: Path) -> None:
    with pytest.raises(SourceError, match=r"not in NIH's label-file format.*Image Index, Finding Labels"):
        read_source(test_data / "covid_hannover" / "labels.csv", SourceOptions(format="nih"))


def test_map_is_refused_for_nih_format(test_data: Path) -> None:
    with pytest.raises(SourceError, match="--map and --path-column apply to a generic CSV"):
        read_source(test_data / "nih_cxr14" / "Data_Entry_2017_v2020.csv", SourceOptions(mappings=("a=age",)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty: a CSV needs a header row"),
        ("path,age\na.png,sixty\n", r"labels\.csv:2: column 'age' should hold a whole number, got 'sixty'"),
        ("path,age\na.png,61.5\n", r"labels\.csv:2: column 'age' should hold a whole number"),
        ("path,age\na.png,61,extra\n", r"labels\.csv:2: 3 fields under 2 column names"),
        ("path,age\n,61\n", r"labels\.csv:2: the 'path' column is empty"),
    ],
)
def test_bad_csv_content_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(text)

    with pytest.raises(SourceError, match=message):
        read_source(tmp_path / "labels.csv", SourceOptions())


def test_a_csv_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_bytes(b"path,patient_id\na.png,M\xfcller\n")

    with pytest.raises(SourceError, match="not UTF-8"):
        read_source(tmp_path / "labels.csv", SourceOptions())


def test_a_folder_without_images_or_with_csv_options_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no image"):
        read_source(tmp_path, SourceOptions())
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SourceError, match="--map, --path-column apply to a CSV"):
        read_source(tmp_path, SourceOptions(mappings=("a=age",), path_column="file"))


def test_a_path_that_does_not_exist_or_is_an_image_is_refused(test_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a folder nor a file"):
        read_source(tmp_path / "nowhere", SourceOptions())
    with pytest.raises(SourceError, match="is an image: give its folder, or a labels CSV"):
        read_source(test_data / "negatives" / "images" / "retina.jpg", SourceOptions())
