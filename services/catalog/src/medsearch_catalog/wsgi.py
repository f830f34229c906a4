"""WSGI entry: `medsearch_catalog.wsgi:app`."""

from medsearch_catalog.app import create_app
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.logs import configure_logging

settings = CatalogSettings.from_environ()
configure_logging("catalog", settings.log_level)
app = create_app(settings)
