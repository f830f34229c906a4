"""The packed vector form: exact float32 round trip, and clear refusals."""

from __future__ import annotations

import struct

import pytest

from medsearch_common.vectors import BadPackedVector, pack_vector, unpack_vector


def test_a_packed_vector_unpacks_to_its_float32_values() -> None:
    values = [0.5, -1.25, 3.0e-8, 1.0e30]
    data = unpack_vector(pack_vector(values))
    assert struct.unpack(f"<{len(values)}f", data) == tuple(struct.unpack("<4f", struct.pack("<4f", *values)))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not base64!", "is not valid base64"),
        ("AAAA", "3 bytes is not a whole number"),
        ("", "0 bytes is not a whole number"),
        ("AAAAAA", "is not valid base64"),  # unpadded
    ],
)
def test_text_that_is_not_a_packed_vector_is_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(BadPackedVector, match=words):
        unpack_vector(text)
