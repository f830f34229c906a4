"""Metadata validation: pure logic, no database."""

from __future__ import annotations

import pytest

from medsearch_catalog.errors import InvalidMetadata, MalformedRequest
from medsearch_catalog.metadata import (
    ImageMetadata,
    load_metadata_json,
    parse_metadata,
    parse_metadata_changes,
)


def test_full_metadata_is_normalized() -> None:
    metadata = parse_metadata(
        {
            "dataset": " nih ",
            "external_id": "00000001_000.png",
            "patient_id": "1",
            "study": 0,
            "age": 58,
            "sex": "m",
            "view_position": "pa",
            "findings": ["Cardiomegaly", "Effusion", "Cardiomegaly"],
            "extra": {"spacing": [0.143, 0.143]},
        }
    )
    assert metadata == ImageMetadata(
        dataset="nih",
        external_id="00000001_000.png",
        patient_id="1",
        study=0,
        age=58,
        sex="M",
        view_position="PA",
        findings=("Cardiomegaly", "Effusion"),
        extra={"spacing": [0.143, 0.143]},
    )


def test_only_dataset_is_required() -> None:
    assert parse_metadata({"dataset": "x"}) == ImageMetadata(dataset="x")
    with pytest.raises(InvalidMetadata, match="dataset is required"):
        parse_metadata({})


@pytest.mark.parametrize("age", [0, 130])
def test_age_bounds_are_inclusive(age: int) -> None:
    assert parse_metadata({"dataset": "x", "age": age}).age == age


def test_unicode_text_is_kept() -> None:
    assert (
        parse_metadata({"dataset": "Hannover", "patient_id": "Müller-ß-患者"}).patient_id == "Müller-ß-患者"
    )


def test_changes_keep_nulls_to_clear_fields() -> None:
    assert parse_metadata_changes({"age": None, "findings": ["Mass"]}) == {"age": None, "findings": ("Mass",)}


def test_json_loading_bounds_size_depth_and_refuses_nan() -> None:
    assert load_metadata_json('{"dataset": "x"}') == {"dataset": "x"}
    with pytest.raises(InvalidMetadata, match="limit is 65536"):
        load_metadata_json('{"dataset": "' + "x" * 70000 + '"}')
    with pytest.raises(InvalidMetadata, match="nested too deeply"):
        load_metadata_json("[" * 20000 + "]" * 20000)
    with pytest.raises(MalformedRequest, match="NaN is not a JSON value"):
        load_metadata_json('{"age": NaN}')
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        load_metadata_json(b"\xff\xfe{")


def test_to_json_gives_every_field() -> None:
    assert ImageMetadata(dataset="x", findings=("A",)).to_json() == {
        "dataset": "x",
        "external_id": None,
        "patient_id": None,
        "study": None,
        "age": None,
        "sex": None,
        "view_position": None,
        "findings": ["A"],
        "extra": {},
    }
