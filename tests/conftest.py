"""Fixtures every test level shares: the real test data and a throwaway PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.processes import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_data() -> Path:
    """`../shared/data` (or MEDSEARCH_TEST_DATA): real X-rays. Missing data fails, never skips."""
    folder = Path(os.environ.get("MEDSEARCH_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (folder / "manifest.csv").is_file():
        pytest.fail(f"test data not found at {folder}: set MEDSEARCH_TEST_DATA or provide ../shared/data")
    return folder


@pytest.fixture(scope="session", autouse=True)
def embedder_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MEDSEARCH_EMBEDDER_CACHE_DIR for every embedder the session starts (in process,
    as a service, under make run): the model is converted for ONNX Runtime once (~30 s),
    not at each start. A test of the cache itself uses a folder of its own."""
    folder = tmp_path_factory.mktemp("embedder-cache")
    saved = os.environ.get("MEDSEARCH_EMBEDDER_CACHE_DIR")
    os.environ["MEDSEARCH_EMBEDDER_CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("MEDSEARCH_EMBEDDER_CACHE_DIR", None)
    else:
        os.environ["MEDSEARCH_EMBEDDER_CACHE_DIR"] = saved


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE for every catalog the session starts as a process (as
    a service, under make run): the catalog makes its key there, not in the repository's var/."""
    path = tmp_path_factory.mktemp("catalog-key") / "pseudonym.key"
    saved = os.environ.get("MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE")
    os.environ["MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE", None)
    else:
        os.environ["MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE"] = saved


@dataclass(frozen=True)
class MilvusServer:
    """Where the tests' Milvus server listens, and the `user:password` it asks of clients."""

    host: str
    port: int
    token: str
    folder: Path

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """The default engine as `make run` starts it: a real Milvus server process (standalone,
    embedded etcd, local storage) in a temporary folder, shared by every test of the session;
    each test writes under model IDs or into databases of its own."""
    from medsearch_search.embedded import EmbeddedMilvus

    engine = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-server"), port=free_port())
    try:
        engine.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield MilvusServer("127.0.0.1", engine.port, engine.token, engine.folder)
    engine.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A PostgreSQL server the tests may create databases on. Unreachable fails, never skips."""
    url = os.environ.get("MEDSEARCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} (MEDSEARCH_TEST_POSTGRES_URL): {exc}")
    return url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A database made for the caller and dropped afterwards."""
    name = f"medsearch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    try:
        yield _url_of(info)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A database made for this test session and dropped at its end."""
    with fresh_database(postgres_admin_url) as url:
        yield url


def _url_of(info: dict[str, object]) -> str:
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    return f"postgresql://{user}{password}@{host}:{port}/{info['dbname']}"
