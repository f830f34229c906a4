"""Problem details (RFC 9457): slugs from error types, body fields, and the problem+json response."""

from __future__ import annotations

import json

import pytest

from medsearch_common.problems import PROBLEM_MIME, problem_body, problem_response, problem_type, slug_of


class ImageNotFound(Exception):
    pass


class DatabaseUnavailable(Exception):
    pass


class Rejected(Exception):
    pass


@pytest.mark.parametrize(
    ("exc_type", "slug"),
    [
        (ImageNotFound, "image-not-found"),
        (DatabaseUnavailable, "database-unavailable"),
        (Rejected, "rejected"),
        (ValueError, "value-error"),
        (ConnectionError, "connection-error"),
        (type("HTTPError", (Exception,), {}), "http-error"),
        (type("DICOMRejected", (Exception,), {}), "dicom-rejected"),
    ],
)
def test_slug_of_turns_the_class_name_into_kebab_case(exc_type: type[Exception], slug: str) -> None:
    assert slug_of(exc_type) == slug


def test_problem_type_is_a_medsearch_urn() -> None:
    assert problem_type("image-not-found") == "urn:medsearch:problem:image-not-found"


def test_problem_body_with_a_slug_has_its_urn_and_a_title_made_from_it() -> None:
    assert problem_body(404, "No image has ID 7.", slug="image-not-found") == {
        "type": "urn:medsearch:problem:image-not-found",
        "title": "Image not found",
        "status": 404,
        "detail": "No image has ID 7.",
    }


def test_problem_body_without_a_slug_is_about_blank_titled_with_the_http_phrase() -> None:
    assert problem_body(503, "Try later.") == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "Try later.",
    }


def test_problem_body_keeps_an_explicit_title() -> None:
    body = problem_body(422, "Not an X-ray.", slug="image-rejected", title="Image rejected by checks")
    assert body["title"] == "Image rejected by checks"
    assert body["type"] == "urn:medsearch:problem:image-rejected"


def test_problem_body_adds_extension_members_after_the_standard_ones() -> None:
    body = problem_body(422, "Bad metadata.", slug="invalid-metadata", errors=[{"field": "age"}], image_id=3)
    assert list(body) == ["type", "title", "status", "detail", "errors", "image_id"]
    assert body["errors"] == [{"field": "age"}]
    assert body["image_id"] == 3


def test_problem_response_is_problem_json_with_the_status_and_body() -> None:
    response = problem_response(409, "Image 3 exists.", slug="image-exists", image_id=3)
    assert response.status_code == 409
    assert response.mimetype == PROBLEM_MIME == "application/problem+json"
    assert json.loads(response.get_data(as_text=True)) == {
        "type": "urn:medsearch:problem:image-exists",
        "title": "Image exists",
        "status": 409,
        "detail": "Image 3 exists.",
        "image_id": 3,
    }
