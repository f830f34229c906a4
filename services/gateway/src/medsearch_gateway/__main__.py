"""`python -m medsearch_gateway`: serve the gateway under gunicorn."""

import sys

from medsearch_common.serving import WsgiApp, serve
from medsearch_common.settings import SettingsError
from medsearch_gateway.settings import GatewaySettings


def _load_app() -> WsgiApp:
    from medsearch_gateway.wsgi import app

    return app


def main() -> None:
    try:
        settings = GatewaySettings.from_environ()
    except SettingsError as exc:
        sys.exit(f"medsearch-gateway: {exc}")
    # Threads, not processes: the gateway only waits on the other services.
    serve("gateway", _load_app, settings.binding, workers=1, threads=settings.threads)


if __name__ == "__main__":
    main()
