"""`python -m medsearch_embedder`: check the weights, then serve the embedder under gunicorn."""

import sys

from medsearch_common.serving import WsgiApp, serve
from medsearch_common.settings import SettingsError
from medsearch_embedder.errors import WeightsUnavailable
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.weights import locate_weights


def _load_app() -> WsgiApp:
    from medsearch_embedder.wsgi import app

    return app


def main() -> None:
    try:
        settings = EmbedderSettings.from_environ()
        # Before serving: missing weights stop the start with instructions, never a fallback.
        # (This also downloads the ImageNet weights into Keras's cache where there is internet.)
        locate_weights(settings.weights)
    except (SettingsError, WeightsUnavailable) as exc:
        sys.exit(f"medsearch-embedder: {exc}")
    # One process holds one model (about 1 GB); its threads decode uploads in parallel and
    # share batches. Scale out with more replicas.
    serve("embedder", _load_app, settings.binding, workers=1, threads=settings.threads, timeout_s=120)


if __name__ == "__main__":
    main()
