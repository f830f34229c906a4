"""WSGI entry: `medsearch_gateway.wsgi:app`."""

import logging

from medsearch_common.logs import configure_logging
from medsearch_common.settings import redact_url
from medsearch_gateway.app import create_app
from medsearch_gateway.settings import GatewaySettings

settings = GatewaySettings.from_environ()
configure_logging("gateway", settings.log_level)
logging.getLogger("medsearch.gateway").info(
    "starting",
    extra={u.name: redact_url(u.url) for u in (settings.embedder, settings.search, settings.catalog)},
)
app = create_app(settings)
