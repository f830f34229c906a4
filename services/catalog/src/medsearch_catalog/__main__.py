"""`python -m medsearch_catalog`: serve the catalog under gunicorn.

`python -m medsearch_catalog create-token --name NAME --role admin` makes an API token straight
in the database (the secret on stdout, once): how a deployment gets its first admin, since
every token endpoint of the gateway already needs one. Run it where the catalog runs
(`docker compose exec catalog …`, `kubectl exec deploy/catalog -- …`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medsearch_catalog.errors import InvalidIdentityRequest
from medsearch_catalog.identity import ROLES
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.serving import WsgiApp, serve
from medsearch_common.settings import SettingsError


def _load_app() -> WsgiApp:
    from medsearch_catalog.wsgi import app

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medsearch_catalog", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    create = commands.add_parser("create-token", help="make an API token in the database; print its secret")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument("--role", required=True, choices=ROLES)
    args = parser.parse_args(argv)
    try:
        settings = CatalogSettings.from_environ()
    except SettingsError as exc:
        sys.exit(f"medsearch-catalog: {exc}")
    if args.command == "create-token":
        sys.exit(create_token(settings, args.name, args.role))
    # Threads, one process: the work is PostgreSQL I/O and Pillow, which release the GIL,
    # and one process keeps /metrics whole. Scale out with more replicas.
    serve("catalog", _load_app, settings.binding, workers=1, threads=settings.threads)


def create_token(settings: CatalogSettings, name: str, role: str) -> int:
    from medsearch_catalog.app import create_pool
    from medsearch_catalog.identity import IdentityStore
    from medsearch_catalog.repository import ImageRepository

    pool = create_pool(settings)
    try:
        repository = ImageRepository(pool, connection_timeout_s=settings.db_timeout_s)
        problem = repository.check()  # also applies the migrations
        if problem is not None:
            print(f"medsearch-catalog: the database is not usable: {problem}", file=sys.stderr)
            return 1
        record, secret = IdentityStore(repository).create_token(name, role)
    except InvalidIdentityRequest as exc:
        print(f"medsearch-catalog: {exc}", file=sys.stderr)
        return 2
    finally:
        pool.close()
    print(secret)
    print(f"token {record.id} ({record.role}) created; its secret is shown only this once", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
