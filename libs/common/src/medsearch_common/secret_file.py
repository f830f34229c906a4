"""A secret kept in a file of its own: made once, readable by its owner only, never seen half
written (the catalog's pseudonym key, the embedded Milvus engine's root password)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_secret_file(path: Path, secret: str) -> str:
    """`secret` in a new file at `path` (mode 0600), written whole before it appears; when
    another process made the file first, the secret in theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secret + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip()
    finally:
        temporary.unlink(missing_ok=True)
    return secret
