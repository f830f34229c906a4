"""The embedder's Flask app: `create_app(settings)` starts loading the model and serves the API."""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING

from flask import Flask

from medsearch_common.httpapp import create_service_app, metrics_registry
from medsearch_embedder.api import EMBEDDER_EXTENSION, blueprint
from medsearch_embedder.errors import ERROR_STATUSES
from medsearch_embedder.service import EmbeddingService
from medsearch_embedder.settings import EmbedderSettings

if TYPE_CHECKING:
    from medsearch_embedder.model import Embedder  # imports TensorFlow: only the loader thread does

# Room for the multipart framing around the images.
_FORM_OVERHEAD_BYTES = 1024 * 1024


def create_app(settings: EmbedderSettings, embedder: Embedder | None = None) -> Flask:
    """The app; without `embedder` the model loads in the background and /readyz waits for it."""
    app = create_service_app(
        "embedder",
        readiness=lambda: {"model": service.readiness()},
        error_statuses=ERROR_STATUSES,
        max_content_length=settings.max_request_bytes + _FORM_OVERHEAD_BYTES,
    )
    app.config["MAX_FORM_MEMORY_SIZE"] = _FORM_OVERHEAD_BYTES
    service = EmbeddingService(settings, metrics_registry(app), embedder)
    app.extensions[EMBEDDER_EXTENSION] = service
    app.register_blueprint(blueprint)
    atexit.register(service.close)
    return app
