"""Settings read from an environment mapping: defaults, parsing, ranges, and errors that name the variable."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from medsearch_common.settings import (
    LOG_LEVELS,
    Binding,
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_str,
    env_url,
    redact_url,
)

# env_str


def test_env_str_returns_the_value_without_surrounding_whitespace() -> None:
    assert env_str({"NAME": "  catalog \n"}, "NAME") == "catalog"


@pytest.mark.parametrize("environ", [{}, {"NAME": ""}, {"NAME": "   "}])
def test_env_str_missing_or_blank_takes_the_default(environ: dict[str, str]) -> None:
    assert env_str(environ, "NAME", "fallback") == "fallback"


@pytest.mark.parametrize("environ", [{}, {"NAME": "  "}])
def test_env_str_missing_without_default_is_an_error_naming_the_variable(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="NAME is required"):
        env_str(environ, "NAME")


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


# env_int


def test_env_int_missing_or_blank_takes_the_default() -> None:
    assert env_int({}, "WORKERS", 4) == 4
    assert env_int({"WORKERS": " "}, "WORKERS", 4) == 4


def test_env_int_parses_the_value() -> None:
    assert env_int({"WORKERS": " 12 "}, "WORKERS", 4) == 12
    assert env_int({"WORKERS": "-3"}, "WORKERS", 4) == -3


@pytest.mark.parametrize("raw", ["ten", "1.5", "0x10", "12abc"])
def test_env_int_rejects_a_non_integer_naming_variable_and_value(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        env_int({"WORKERS": raw}, "WORKERS", 4)
    assert "WORKERS must be an integer" in str(caught.value)
    assert repr(raw) in str(caught.value)


def test_env_int_bounds_are_inclusive() -> None:
    environ = {"LOW": "1", "HIGH": "10"}
    assert env_int(environ, "LOW", 5, minimum=1, maximum=10) == 1
    assert env_int(environ, "HIGH", 5, minimum=1, maximum=10) == 10


def test_env_int_below_minimum_is_an_error_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^WORKERS must be at least 1, got 0$"):
        env_int({"WORKERS": "0"}, "WORKERS", 4, minimum=1)


def test_env_int_above_maximum_is_an_error_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^WORKERS must be at most 64, got 65$"):
        env_int({"WORKERS": "65"}, "WORKERS", 4, maximum=64)


# env_float


def test_env_float_missing_takes_the_default_and_a_value_is_parsed() -> None:
    assert env_float({}, "TIMEOUT_S", 2.5) == 2.5
    assert env_float({"TIMEOUT_S": "0.25"}, "TIMEOUT_S", 2.5) == 0.25
    assert env_float({"TIMEOUT_S": "3"}, "TIMEOUT_S", 2.5) == 3.0


def test_env_float_rejects_a_non_number_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^TIMEOUT_S must be a number, got 'soon'$"):
        env_float({"TIMEOUT_S": "soon"}, "TIMEOUT_S", 2.5)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_env_float_rejects_non_finite_numbers(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^TIMEOUT_S must be a finite number"):
        env_float({"TIMEOUT_S": raw}, "TIMEOUT_S", 2.5)


def test_env_float_range_errors_name_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^TIMEOUT_S must be at least 0.1, got 0.05$"):
        env_float({"TIMEOUT_S": "0.05"}, "TIMEOUT_S", 2.5, minimum=0.1)
    with pytest.raises(SettingsError, match=r"^TIMEOUT_S must be at most 60.0, got 61.0$"):
        env_float({"TIMEOUT_S": "61"}, "TIMEOUT_S", 2.5, maximum=60.0)
    assert env_float({"TIMEOUT_S": "60"}, "TIMEOUT_S", 2.5, minimum=0.1, maximum=60.0) == 60.0


# env_url


def test_env_url_accepts_an_allowed_scheme() -> None:
    url = "postgresql://medsearch:secret@db.internal:5432/catalog"
    assert env_url({"DB_URL": url}, "DB_URL", None, schemes=("postgresql", "postgres")) == url


def test_env_url_accepts_a_url_that_names_only_a_path() -> None:
    assert env_url({"STORE": "file:///var/lib/milvus.db"}, "STORE", None, schemes=("file",)) == (
        "file:///var/lib/milvus.db"
    )


def test_env_url_missing_takes_the_default() -> None:
    assert env_url({}, "EMBEDDER_URL", "http://127.0.0.1:8002", schemes=("http", "https")) == (
        "http://127.0.0.1:8002"
    )


def test_env_url_missing_without_default_is_an_error_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^EMBEDDER_URL is required"):
        env_url({}, "EMBEDDER_URL", None, schemes=("http",))


def test_env_url_wrong_scheme_lists_the_allowed_ones() -> None:
    with pytest.raises(SettingsError) as caught:
        env_url({"EMBEDDER_URL": "ftp://host/x"}, "EMBEDDER_URL", None, schemes=("http", "https"))
    assert str(caught.value) == "EMBEDDER_URL must start with one of http://, https://, got 'ftp://host/x'"


def test_env_url_without_scheme_is_rejected() -> None:
    with pytest.raises(SettingsError, match=r"^EMBEDDER_URL must start with one of http://"):
        env_url({"EMBEDDER_URL": "127.0.0.1:8002"}, "EMBEDDER_URL", None, schemes=("http",))


def test_env_url_without_host_or_path_is_rejected() -> None:
    with pytest.raises(SettingsError, match=r"^EMBEDDER_URL must name a host"):
        env_url({"EMBEDDER_URL": "http://"}, "EMBEDDER_URL", None, schemes=("http",))


def test_env_url_errors_never_show_the_password() -> None:
    with pytest.raises(SettingsError) as caught:
        env_url({"DB_URL": "mysql://admin:hunter2@db/catalog"}, "DB_URL", None, schemes=("postgresql",))
    message = str(caught.value)
    assert "hunter2" not in message
    assert "mysql://admin:***@db/catalog" in message


# redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:secret@db:5432/catalog", "postgresql://u:***@db:5432/catalog"),
        ("postgresql://:secret@db/catalog", "postgresql://:***@db/catalog"),
        ("postgresql://u:p%40ss@db/catalog", "postgresql://u:***@db/catalog"),
        ("postgresql://u:a@b@db/catalog", "postgresql://u:***@db/catalog"),
        # The user name equal to the password must stay readable; only the password goes.
        ("postgresql://same:same@db/catalog", "postgresql://same:***@db/catalog"),
    ],
)
def test_redact_url_hides_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url", ["postgresql://u@db/catalog", "http://127.0.0.1:8002/v1?q=1", "file:///var/lib/x.db"]
)
def test_redact_url_leaves_a_url_without_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


# env_choice


def test_env_choice_matches_case_insensitively_and_returns_the_choice_as_written() -> None:
    assert env_choice({"LOG_LEVEL": "debug"}, "LOG_LEVEL", "INFO", LOG_LEVELS) == "DEBUG"
    assert env_choice({"LOG_LEVEL": " Warning "}, "LOG_LEVEL", "INFO", LOG_LEVELS) == "WARNING"


def test_env_choice_missing_takes_the_default() -> None:
    assert env_choice({}, "LOG_LEVEL", "INFO", LOG_LEVELS) == "INFO"


def test_env_choice_rejects_an_unknown_value_listing_the_choices() -> None:
    with pytest.raises(SettingsError) as caught:
        env_choice({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "INFO", LOG_LEVELS)
    assert str(caught.value) == "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'"


# Every error names its variable


@pytest.mark.parametrize(
    "read",
    [
        lambda: env_str({}, "MEDSEARCH_X"),
        lambda: env_int({"MEDSEARCH_X": "x"}, "MEDSEARCH_X", 1),
        lambda: env_int({"MEDSEARCH_X": "0"}, "MEDSEARCH_X", 1, minimum=1),
        lambda: env_int({"MEDSEARCH_X": "9"}, "MEDSEARCH_X", 1, maximum=8),
        lambda: env_float({"MEDSEARCH_X": "x"}, "MEDSEARCH_X", 1.0),
        lambda: env_float({"MEDSEARCH_X": "nan"}, "MEDSEARCH_X", 1.0),
        lambda: env_float({"MEDSEARCH_X": "-1"}, "MEDSEARCH_X", 1.0, minimum=0.0),
        lambda: env_float({"MEDSEARCH_X": "2"}, "MEDSEARCH_X", 1.0, maximum=1.5),
        lambda: env_url({}, "MEDSEARCH_X", None, schemes=("http",)),
        lambda: env_url({"MEDSEARCH_X": "ftp://h"}, "MEDSEARCH_X", None, schemes=("http",)),
        lambda: env_url({"MEDSEARCH_X": "http://"}, "MEDSEARCH_X", None, schemes=("http",)),
        lambda: env_choice({"MEDSEARCH_X": "z"}, "MEDSEARCH_X", "a", ("a", "b")),
        lambda: env_choice({}, "MEDSEARCH_X", "c", ("a", "b")),
    ],
)
def test_every_settings_error_names_the_variable(read: Callable[[], object]) -> None:
    with pytest.raises(SettingsError) as caught:
        read()
    assert str(caught.value).startswith("MEDSEARCH_X ")


# Binding


def test_binding_defaults_to_loopback_and_the_service_port() -> None:
    assert Binding.from_environ({}, default_port=8001) == Binding(host="127.0.0.1", port=8001)


def test_binding_reads_host_and_port() -> None:
    binding = Binding.from_environ(
        {"MEDSEARCH_HOST": "10.0.0.5", "MEDSEARCH_PORT": "9000"}, default_port=8001
    )
    assert binding == Binding(host="10.0.0.5", port=9000)


@pytest.mark.parametrize(
    ("raw", "problem"), [("0", "at least 1"), ("65536", "at most 65535"), ("http", "integer")]
)
def test_binding_rejects_a_bad_port_naming_medsearch_port(raw: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Binding.from_environ({"MEDSEARCH_PORT": raw}, default_port=8001)
    assert str(caught.value).startswith("MEDSEARCH_PORT must")
    assert problem in str(caught.value)


def test_binding_is_immutable() -> None:
    binding = Binding(host="127.0.0.1", port=8001)
    with pytest.raises(dataclasses.FrozenInstanceError):
        binding.port = 1  # type: ignore[misc]
