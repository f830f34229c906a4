"""What the `medsearch` commands share: exit statuses, usage errors, text tables, times in UTC,
and files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

# Exit statuses: see the `medsearch` command's docstring (cli.py).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line asks for something that cannot be done; nothing was sent."""


def write_whole(path: Path, write: Callable[[IO[bytes]], int]) -> int:
    """What `write` writes, into `path`, whole or not at all: into a temporary file beside it,
    renamed when the last byte is in (a failure midway leaves no file, or the old one). Made
    0600: an audit trail or a list of duplicates names patients' images. What `write` returned."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder: name the file to write")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "wb") as out:
            written = write(out)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return written


def aligned(rows: Sequence[Sequence[str]], *, right: int) -> str:
    """Rows of cells as text columns two spaces apart: the first `right` columns (numbers)
    right-aligned, the others left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i < right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def utc_time(text: str | None) -> str:
    """An ISO 8601 time from the gateway, in UTC to the second; as sent when it is not one."""
    if not text:
        return "-"
    parsed = parse_time(text)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if parsed else text
