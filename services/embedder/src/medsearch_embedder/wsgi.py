"""WSGI entry: `medsearch_embedder.wsgi:app`."""

import logging

from medsearch_common.logs import configure_logging
from medsearch_embedder.app import create_app
from medsearch_embedder.settings import EmbedderSettings

settings = EmbedderSettings.from_environ()
configure_logging("embedder", settings.log_level)
logging.getLogger("medsearch.embedder").info(
    "starting",
    extra={
        "weights": settings.weights.describe(),
        "device": settings.device,
        "max_batch": settings.max_batch,
    },
)
app = create_app(settings)
