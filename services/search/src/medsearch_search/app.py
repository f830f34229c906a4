"""The search service's Flask app: `create_app(settings)` wires the Milvus store and the API."""

from __future__ import annotations

import atexit

from flask import Flask

from medsearch_common.httpapp import create_service_app
from medsearch_search.api import SEARCH_EXTENSION, blueprint
from medsearch_search.errors import ERROR_STATUSES
from medsearch_search.service import SearchService
from medsearch_search.settings import SearchSettings
from medsearch_search.store import MilvusStore


def create_app(settings: SearchSettings, store: MilvusStore | None = None) -> Flask:
    store = store or MilvusStore(settings)
    app = create_service_app(
        "search",
        readiness=lambda: {"milvus": store.check()},
        error_statuses=ERROR_STATUSES,
        max_content_length=settings.max_request_bytes,
    )
    app.extensions[SEARCH_EXTENSION] = SearchService(settings, store)
    app.register_blueprint(blueprint)
    atexit.register(store.close)
    return app
