"""Serving a service under gunicorn with its recommended settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from medsearch_common.settings import Binding

WsgiApp = Callable[..., Any]


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, load_app: Callable[[], WsgiApp], options: dict[str, Any]) -> None:
        self._load_app = load_app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        return self._load_app()


def serve(
    service: str,
    load_app: Callable[[], WsgiApp],
    binding: Binding,
    *,
    workers: int = 1,
    threads: int = 8,
    timeout_s: int = 60,
) -> None:
    """Run the app under gunicorn's threaded workers on `binding` until stopped."""
    _Gunicorn(
        load_app,
        {
            "bind": f"{binding.host}:{binding.port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": timeout_s,
            "graceful_timeout": 10,
            # Gunicorn's default of 2 s closes a caller's kept-alive connection between two
            # calls a moment apart, and a call sent as it closes meets the close: rarer with 30 s.
            "keepalive": 30,
            "accesslog": None,  # the app logs each request itself, as JSON
            # Twice gunicorn's default: a header up to 16 KiB reaches the app, which answers an
            # over-long credential with its own problem, not gunicorn's bare 400.
            "limit_request_field_size": 16384,
            "proc_name": f"medsearch-{service}",
            "logconfig_dict": _json_logging(service),
        },
    ).run()


def _json_logging(service: str) -> dict[str, Any]:
    """Gunicorn's own messages in the same JSON shape as the app's."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "medsearch_common.logs.JsonFormatter", "service": service}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True}},
    }
