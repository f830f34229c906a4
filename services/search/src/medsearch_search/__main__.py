"""`python -m medsearch_search`: serve the search service under gunicorn."""

import sys

from medsearch_common.serving import WsgiApp, serve
from medsearch_common.settings import SettingsError
from medsearch_search.settings import SearchSettings


def _load_app() -> WsgiApp:
    from medsearch_search.wsgi import app

    return app


def main() -> None:
    try:
        settings = SearchSettings.from_environ()
    except SettingsError as exc:
        sys.exit(f"medsearch-search: {exc}")
    # One process, many threads: Milvus Lite's data folder is locked to one process, and
    # the work is waiting on Milvus. Scale out with replicas against a Milvus server.
    serve("search", _load_app, settings.binding, workers=1, threads=settings.threads)


if __name__ == "__main__":
    main()
