"""The embedded Milvus server (the `make run` default) asks every client for its own root
password: Milvus 2.3 listens on every network interface, and its collections hold patient IDs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medsearch_search.embedded import MILVUS_DEFAULT_PASSWORD, PASSWORD_FILE, EmbeddedMilvus, accepts
from tests.conftest import MilvusServer
from tests.support.processes import free_port


def test_only_the_folders_own_password_opens_the_engine(milvus_server: MilvusServer) -> None:
    assert accepts(milvus_server.uri, milvus_server.token)
    assert not accepts(milvus_server.uri, "")
    assert not accepts(milvus_server.uri, f"root:{MILVUS_DEFAULT_PASSWORD}")
    password_file = milvus_server.folder / PASSWORD_FILE
    assert milvus_server.token == f"root:{password_file.read_text().strip()}"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(milvus_server.token) > len("root:") + 30  # 24 random bytes, base64


def test_a_password_written_before_a_crash_is_set_at_the_next_start(tmp_path: Path) -> None:
    """The file is written before Milvus is changed: a start that finds Milvus still on its
    default finishes the change, and the next start keeps the password."""
    folder = tmp_path / "milvus"
    folder.mkdir()
    (folder / PASSWORD_FILE).write_text("chosen-before-the-crash-0123456789\n")
    engine = EmbeddedMilvus(folder, port=free_port())
    try:
        engine.start()
        assert engine.token == "root:chosen-before-the-crash-0123456789"
        assert not accepts(engine.uri, f"root:{MILVUS_DEFAULT_PASSWORD}")
        engine.stop()
        engine.start()
        assert engine.token == "root:chosen-before-the-crash-0123456789"
        assert accepts(engine.uri, engine.token)
        engine.stop()

        # A password changed by hand and not written down: a clear refusal, nothing running.
        (folder / PASSWORD_FILE).write_text("not-the-password-any-more\n")
        with pytest.raises(RuntimeError, match=r"accepts neither the password in .*root-password") as refused:
            engine.start()
        assert "not-the-password-any-more" not in str(refused.value)
        assert engine.pid is None
    finally:
        engine.stop()
