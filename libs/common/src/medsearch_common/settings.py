"""Reading settings from the environment once, with errors that name the variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A non-empty string; a missing variable takes `default`, and no default is an error."""
    value = environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise SettingsError(f"{name} is required but not set")
    return default


def env_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer within [minimum, maximum]."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(
    environ: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite number within [minimum, maximum]."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    _check_range(name, value, minimum, maximum)
    return value


def env_url(environ: Mapping[str, str], name: str, default: str | None, *, schemes: tuple[str, ...]) -> str:
    """A URL whose scheme is one of `schemes` and which names a host or a path."""
    value = env_str(environ, name, default)
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(f"{name} must start with one of {allowed}, got {_redact(value)!r}")
    if not (parts.netloc or parts.path):
        raise SettingsError(f"{name} must name a host, got {_redact(value)!r}")
    return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {value}")


def _redact(url: str) -> str:
    """The URL with any password replaced, so that errors and logs never show it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


redact_url = _redact


@dataclass(frozen=True)
class Binding:
    """Where a service listens: `MEDSEARCH_HOST` and `MEDSEARCH_PORT`."""

    host: str
    port: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], default_port: int) -> Binding:
        return cls(
            host=env_str(environ, "MEDSEARCH_HOST", "127.0.0.1"),
            port=env_int(environ, "MEDSEARCH_PORT", default_port, minimum=1, maximum=65535),
        )


def env_choice(environ: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, compared case-insensitively and returned as written in `choices`."""
    value = env_str(environ, name, default)
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """true/false (also 1/0, yes/no, on/off); anything else is an error, never a silent false."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")
