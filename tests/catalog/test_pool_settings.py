"""The catalog's database pool is never smaller than the threads that share it: each request
thread holds at most one connection at a time, and one left without a connection would wait
MEDSEARCH_CATALOG_DB_TIMEOUT_S, then answer 503, with the database idle."""

from __future__ import annotations

from typing import Any

import pytest

import medsearch_catalog.__main__ as entry
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.settings import SettingsError

URL = {"MEDSEARCH_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/medsearch"}


def test_by_default_the_pool_has_one_connection_per_thread() -> None:
    settings = CatalogSettings.from_environ(URL)
    assert (settings.threads, settings.db_pool_size) == (8, 8)


def test_the_pool_follows_the_threads_when_only_they_are_set() -> None:
    settings = CatalogSettings.from_environ({**URL, "MEDSEARCH_CATALOG_THREADS": "16"})
    assert (settings.threads, settings.db_pool_size) == (16, 16)


def test_a_larger_pool_is_allowed() -> None:
    settings = CatalogSettings.from_environ({**URL, "MEDSEARCH_CATALOG_DB_POOL_SIZE": "20"})
    assert (settings.threads, settings.db_pool_size) == (8, 20)


@pytest.mark.parametrize(
    "environ",
    [
        {"MEDSEARCH_CATALOG_DB_POOL_SIZE": "4"},
        {"MEDSEARCH_CATALOG_THREADS": "12", "MEDSEARCH_CATALOG_DB_POOL_SIZE": "10"},
    ],
)
def test_a_pool_smaller_than_the_threads_is_a_settings_error_naming_both(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as refused:
        CatalogSettings.from_environ({**URL, **environ})
    message = str(refused.value)
    assert "MEDSEARCH_CATALOG_DB_POOL_SIZE" in message and "MEDSEARCH_CATALOG_THREADS" in message


def test_the_server_runs_the_threads_the_pool_was_sized_for(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(entry, "serve", lambda *args, **options: served.update(options))
    for name, value in {**URL, "MEDSEARCH_CATALOG_THREADS": "12"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MEDSEARCH_CATALOG_DB_POOL_SIZE", raising=False)
    entry.main([])
    assert served["threads"] == 12
