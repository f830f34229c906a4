"""`python -m medsearch_catalog`: serve the catalog under gunicorn."""

import sys

from medsearch_catalog.settings import CatalogSettings
from medsearch_common.serving import WsgiApp, serve
from medsearch_common.settings import SettingsError


def _load_app() -> WsgiApp:
    from medsearch_catalog.wsgi import app

    return app


def main() -> None:
    try:
        settings = CatalogSettings.from_environ()
    except SettingsError as exc:
        sys.exit(f"medsearch-catalog: {exc}")
    # Threads, one process: the work is PostgreSQL I/O and Pillow, which release the GIL,
    # and one process keeps /metrics whole. Scale out with more replicas.
    serve("catalog", _load_app, settings.binding, workers=1, threads=8)


if __name__ == "__main__":
    main()
