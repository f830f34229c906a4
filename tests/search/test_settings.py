"""The search service's settings from an environment mapping: defaults, each variable, secrets, errors."""

from __future__ import annotations

from typing import Any

import pytest

from medsearch_common.settings import Binding, SettingsError
from medsearch_search.settings import SearchSettings


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = SearchSettings.from_environ({})

    assert settings.binding == Binding("127.0.0.1", 8082)
    assert settings.milvus_uri == "var/milvus.db"
    assert settings.is_lite
    assert settings.milvus_token is None
    assert settings.milvus_timeout_s == 10.0
    assert settings.index == "auto"
    assert (settings.max_queries, settings.max_items) == (100, 1000)
    assert settings.max_request_bytes == 64 * 1024 * 1024
    assert (settings.threads, settings.log_level) == (8, "INFO")


def test_from_environ_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEARCH_MILVUS_URI", "http://elsewhere:19530")
    monkeypatch.setenv("MEDSEARCH_SEARCH_THREADS", "99")

    settings = SearchSettings.from_environ({})

    assert (settings.milvus_uri, settings.threads) == ("var/milvus.db", 8)


def test_blank_variables_take_the_defaults() -> None:
    names = (
        "MEDSEARCH_MILVUS_URI",
        "MEDSEARCH_MILVUS_TOKEN",
        "MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S",
        "MEDSEARCH_SEARCH_INDEX",
        "MEDSEARCH_SEARCH_THREADS",
    )
    assert SearchSettings.from_environ(dict.fromkeys(names, "")) == SearchSettings.from_environ({})


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("MEDSEARCH_HOST", "10.1.2.3", "binding", Binding("10.1.2.3", 8082)),
        ("MEDSEARCH_PORT", "9999", "binding", Binding("127.0.0.1", 9999)),
        ("MEDSEARCH_MILVUS_URI", "/data/milvus/search.db", "milvus_uri", "/data/milvus/search.db"),
        ("MEDSEARCH_MILVUS_URI", "http://milvus:19530", "milvus_uri", "http://milvus:19530"),
        ("MEDSEARCH_MILVUS_URI", "https://milvus.example:443", "milvus_uri", "https://milvus.example:443"),
        ("MEDSEARCH_MILVUS_TOKEN", "root:Milvus", "milvus_token", "root:Milvus"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "2.5", "milvus_timeout_s", 2.5),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "0.1", "milvus_timeout_s", 0.1),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "600", "milvus_timeout_s", 600.0),
        ("MEDSEARCH_SEARCH_INDEX", "FLAT", "index", "FLAT"),
        ("MEDSEARCH_SEARCH_INDEX", "hnsw", "index", "HNSW"),
        ("MEDSEARCH_SEARCH_INDEX", "Auto", "index", "auto"),
        ("MEDSEARCH_SEARCH_MAX_QUERIES", "1", "max_queries", 1),
        ("MEDSEARCH_SEARCH_MAX_QUERIES", "10000", "max_queries", 10_000),
        ("MEDSEARCH_SEARCH_MAX_ITEMS", "5", "max_items", 5),
        ("MEDSEARCH_SEARCH_MAX_ITEMS", "100000", "max_items", 100_000),
        ("MEDSEARCH_SEARCH_MAX_REQUEST_BYTES", "1024", "max_request_bytes", 1024),
        ("MEDSEARCH_SEARCH_MAX_REQUEST_BYTES", " 2048 ", "max_request_bytes", 2048),
        ("MEDSEARCH_SEARCH_THREADS", "1", "threads", 1),
        ("MEDSEARCH_SEARCH_THREADS", "256", "threads", 256),
        ("MEDSEARCH_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("MEDSEARCH_LOG_LEVEL", "WARNING", "log_level", "WARNING"),
        ("MEDSEARCH_SEARCH_MAP_DIR", "/srv/maps", "map_dir", "/srv/maps"),
        ("MEDSEARCH_SEARCH_MAP_TIMEOUT_S", "10", "map_timeout_s", 10.0),
        ("MEDSEARCH_SEARCH_MAP_TIMEOUT_S", "86400", "map_timeout_s", 86_400.0),
    ],
)
def test_each_variable_sets_its_field(variable: str, raw: str, field: str, expected: Any) -> None:
    settings = SearchSettings.from_environ({variable: raw})

    assert getattr(settings, field) == expected
    changed = {name for name in vars(settings) if getattr(settings, name) != getattr(_defaults(), name)}
    assert changed <= {field}  # no other field moved


@pytest.mark.parametrize(
    ("uri", "lite"),
    [
        ("var/milvus.db", True),
        ("/srv/medsearch/milvus/search.db", True),
        ("search.db", True),
        ("http://127.0.0.1:19530", False),
        ("https://milvus.example:443", False),
        ("http://milvus:19530/search.db", False),  # a URL is a server, whatever its path
    ],
)
def test_a_db_path_is_milvus_lite_and_a_url_is_a_server(uri: str, lite: bool) -> None:
    assert SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": uri}).is_lite is lite


def test_the_token_never_shows_in_the_settings_repr() -> None:
    settings = SearchSettings.from_environ(
        {"MEDSEARCH_MILVUS_URI": "http://milvus:19530", "MEDSEARCH_MILVUS_TOKEN": "root:tok-SECRET-913"}
    )

    assert settings.milvus_token == "root:tok-SECRET-913"
    assert "tok-SECRET-913" not in repr(settings)
    assert "tok-SECRET-913" not in str(settings)


def test_a_password_in_the_uri_is_redacted_for_logs() -> None:
    settings = SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": "http://root:pw-SECRET-27@milvus:19530"})

    assert settings.milvus_uri == "http://root:pw-SECRET-27@milvus:19530"  # pymilvus gets it as given
    assert settings.milvus_uri_redacted == "http://root:***@milvus:19530"


def test_a_uri_without_a_password_and_a_lite_path_are_shown_as_they_are() -> None:
    server = SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": "http://milvus:19530"})
    lite = SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": "/srv/milvus/search.db"})

    assert server.milvus_uri_redacted == "http://milvus:19530"
    assert lite.milvus_uri_redacted == "/srv/milvus/search.db"


def test_a_password_in_the_uri_never_shows_in_the_settings_repr() -> None:
    settings = SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": "http://root:pw-SECRET-27@milvus:19530"})

    assert "pw-SECRET-27" not in repr(settings)


def test_a_rejected_uri_does_not_echo_its_password() -> None:
    with pytest.raises(SettingsError, match="MEDSEARCH_MILVUS_URI") as raised:
        SearchSettings.from_environ({"MEDSEARCH_MILVUS_URI": "htp://root:pw-SECRET-27@milvus:19530"})

    assert "pw-SECRET-27" not in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "raw", "says"),
    [
        ("MEDSEARCH_MILVUS_URI", "/tmp/x/no-suffix", "local path ending in .db"),
        ("MEDSEARCH_MILVUS_URI", "ftp://x", "http(s)://host:port"),
        ("MEDSEARCH_MILVUS_URI", "milvus:19530", "http(s)://host:port"),
        ("MEDSEARCH_MILVUS_URI", "grpc://milvus:19530", "http(s)://host:port"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "soon", "must be a number"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "nan", "must be a finite number"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "inf", "must be a finite number"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "0", "must be at least 0.1"),
        ("MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", "601", "must be at most 600"),
        ("MEDSEARCH_SEARCH_INDEX", "IVF_PQ", "must be one of auto, FLAT, HNSW"),
        ("MEDSEARCH_SEARCH_MAX_QUERIES", "lots", "must be an integer"),
        ("MEDSEARCH_SEARCH_MAX_QUERIES", "0", "must be at least 1"),
        ("MEDSEARCH_SEARCH_MAX_QUERIES", "10001", "must be at most 10000"),
        ("MEDSEARCH_SEARCH_MAX_ITEMS", "2.5", "must be an integer"),
        ("MEDSEARCH_SEARCH_MAX_ITEMS", "100001", "must be at most 100000"),
        ("MEDSEARCH_SEARCH_MAX_REQUEST_BYTES", "1023", "must be at least 1024"),
        ("MEDSEARCH_SEARCH_THREADS", "0", "must be at least 1"),
        ("MEDSEARCH_SEARCH_THREADS", "257", "must be at most 256"),
        ("MEDSEARCH_SEARCH_MAP_TIMEOUT_S", "9", "must be at least 10"),
        ("MEDSEARCH_SEARCH_MAP_TIMEOUT_S", "86401", "must be at most 86400"),
        ("MEDSEARCH_LOG_LEVEL", "chatty", "must be one of DEBUG, INFO, WARNING, ERROR"),
        ("MEDSEARCH_PORT", "http", "must be an integer"),
        ("MEDSEARCH_PORT", "65536", "must be at most 65535"),
    ],
)
def test_a_bad_value_raises_an_error_naming_the_variable(variable: str, raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:
        SearchSettings.from_environ({variable: raw})

    message = str(raised.value)
    assert message.startswith(variable), message
    assert says in message


def _defaults() -> SearchSettings:
    return SearchSettings.from_environ({})
