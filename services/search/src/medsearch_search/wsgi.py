"""WSGI entry: `medsearch_search.wsgi:app`."""

import logging

from medsearch_common.logs import configure_logging
from medsearch_search.app import create_app
from medsearch_search.settings import SearchSettings

settings = SearchSettings.from_environ()
configure_logging("search", settings.log_level)
# pymilvus logs a traceback for every failed call; the service logs each failure once, itself.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
logging.getLogger("medsearch.search").info(
    "starting", extra={"milvus": settings.milvus_uri_redacted, "index": settings.index}
)
app = create_app(settings)
