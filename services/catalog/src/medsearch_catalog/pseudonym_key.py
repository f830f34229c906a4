"""The site's pseudonym key: given in the environment, else read from its file, which is made
with a new random key at the first start.

Every catalog process of a site must use the same key, or one patient gets several pseudonyms:
replicas share it through the variable (or one file), never each making its own.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from medsearch_catalog.settings import MIN_PSEUDONYM_KEY_CHARS
from medsearch_common.secret_file import create_secret_file

log = logging.getLogger(__name__)


def load_pseudonym_key(given: str | None, path: Path) -> tuple[bytes | None, str]:
    """The key, or None and why there is none (DICOM ingest then answers 503 saying so)."""
    if given:
        return given.encode(), ""
    try:
        text = path.read_text(encoding="utf-8").strip() if path.exists() else _make(path)
    except (OSError, UnicodeDecodeError) as exc:
        problem = (
            f"the pseudonym key file {path} cannot be read or made ({getattr(exc, 'strerror', None) or exc});"
            " set MEDSEARCH_CATALOG_PSEUDONYM_KEY, or a writable MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE"
        )
        log.error("DICOM ingest is off: %s", problem)
        return None, problem
    if len(text) < MIN_PSEUDONYM_KEY_CHARS:
        problem = f"the pseudonym key in {path} is shorter than {MIN_PSEUDONYM_KEY_CHARS} characters"
        log.error("DICOM ingest is off: %s", problem)
        return None, problem
    return text.encode(), ""


def _make(path: Path) -> str:
    """A new key in a new file (mode 0600); when another process made it first, theirs."""
    key = secrets.token_hex(32)
    made = create_secret_file(path, key)
    if made != key:
        return made
    log.warning(
        "made a new pseudonym key for DICOM patient IDs; keep it (a new key gives every patient a new"
        " pseudonym) and give every catalog process the same one",
        extra={"path": str(path)},
    )
    return key
