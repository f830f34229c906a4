"""A secret's own file: owner-only, whole, and the first one made wins."""

from __future__ import annotations

import stat
from pathlib import Path

from medsearch_common.secret_file import create_secret_file


def test_a_new_secret_file_is_owner_only_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "folder" / "secret"
    assert create_secret_file(path, "first-secret") == "first-secret"
    assert path.read_text(encoding="utf-8") == "first-secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_file_made_first_wins_and_nothing_is_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    create_secret_file(path, "made-first")
    assert create_secret_file(path, "made-second") == "made-first"
    assert path.read_text(encoding="utf-8") == "made-first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]
