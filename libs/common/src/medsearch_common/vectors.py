"""The compact wire form of a vector, shared by the services that send and read it: base64
(standard alphabet, padded) of its little-endian float32 values. A third of the bytes of
2048 numbers in JSON, and nothing to print or parse number by number."""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence


class BadPackedVector(ValueError):
    """The text is not a packed vector; the message says why."""


def pack_vector(values: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def unpack_vector(text: str, where: str = "the vector") -> bytes:
    """The little-endian float32 bytes of a packed vector (4 a dimension, at least one);
    `where` names it in the error."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadPackedVector(f"{where} is not valid base64 (standard alphabet, padded)") from None
    if not data or len(data) % 4:
        raise BadPackedVector(
            f"{where}: {len(data)} bytes is not a whole number of float32 values (4 bytes each)"
        )
    return data
