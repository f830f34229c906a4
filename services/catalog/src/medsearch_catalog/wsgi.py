"""WSGI entry: `medsearch_catalog.wsgi:app`."""

import logging

from medsearch_catalog.app import create_app
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.logs import configure_logging

settings = CatalogSettings.from_environ()
configure_logging("catalog", settings.log_level)
logging.getLogger("medsearch.catalog").info(
    "starting",
    extra={"database": settings.database_url_redacted, "max_upload_bytes": settings.max_upload_bytes},
)
app = create_app(settings)
