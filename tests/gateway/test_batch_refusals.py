"""What one refused item of a batch becomes in the gateway's answer: the service's 4xx as the
same public 4xx, and a 5xx (say, the catalog without its pseudonym key for a DICOM) as a 503
naming the service, never a 422 that would blame the image."""

from __future__ import annotations

import pytest

from medsearch_common.client import UpstreamUnavailable
from medsearch_common.httpapp import error_problem
from medsearch_gateway.clients import Refused
from medsearch_gateway.errors import ERROR_STATUSES, ImageRejected, UnsupportedUpload


@pytest.mark.parametrize(("status", "error"), [(415, UnsupportedUpload), (422, ImageRejected)])
def test_a_refusal_keeps_its_status_and_words(status: int, error: type[Exception]) -> None:
    refused = Refused("catalog", status, "the DICOM has 2 frames")
    problem = error_problem(refused.error(), ERROR_STATUSES)
    assert isinstance(refused.error(), error)
    assert problem is not None and problem["status"] == status
    assert problem["detail"] == "the DICOM has 2 frames"


def test_a_service_that_cannot_take_an_item_now_is_a_503_naming_it() -> None:
    refused = Refused("catalog", 503, "no pseudonym key at /var/lib/medsearch/key on 10.0.0.7")
    error = refused.error()
    assert isinstance(error, UpstreamUnavailable)
    problem = error_problem(error, ERROR_STATUSES)
    assert problem is not None and problem["status"] == 503
    assert problem["dependency"] == "catalog" and problem["detail"] == "catalog is unavailable"
