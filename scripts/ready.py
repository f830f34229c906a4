"""The readiness watcher `make run` starts beside the services (see the Procfile).

Once the catalog answers it makes sure the local user has an admin API token: the one in the
token file (MEDSEARCH_TOKEN_FILE, else $XDG_CONFIG_HOME/medsearch/token, ~/.config by
default) when the catalog still takes it as an admin's, else a new one made through the
catalog and written there (a new folder 0700, the file 0600, replaced at once). It waits
until every service answers /readyz, prints the UI's sign-in link (the token in the URL's
fragment, which a browser never sends to a server), ingests MEDSEARCH_SEED_DIR with that
token when one is given (what is indexed already is skipped), then stays up. When it fails
(exits non-zero), the supervisor stops everything: start-up failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from medsearch_client.client import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    default_token_file,
    read_token_file,
    write_token_file,
)

SERVICES = ("catalog", "search", "embedder", "gateway")
# Loading TensorFlow and building the model takes ~20 s on 2 cores; leave room for slow disks.
START_TIMEOUT_S = 600
TOKEN_NAME = "make run admin"  # noqa: S105 - the token's label, not a secret
CATALOG_TIMEOUT_S = 30


class TokenSetupFailed(Exception):
    """No admin token could be found or made: nobody could use the system."""


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the supervisor stopping everything
    urls = {name: f"http://127.0.0.1:{os.environ[f'MEDSEARCH_{name.upper()}_PORT']}" for name in SERVICES}
    catalog = os.environ.get("MEDSEARCH_CATALOG_URL") or urls["catalog"]
    token_file = default_token_file()
    token = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    for name, url in urls.items():
        while not ready(url):
            if time.monotonic() > deadline:
                print(f"ready: {name} was not ready within {START_TIMEOUT_S} s ({url}/readyz)", flush=True)
                return 1
            time.sleep(0.5)
        if name == "catalog":
            try:
                token = admin_token(catalog, token_file)
            except TokenSetupFailed as exc:
                print(f"ready: {exc}", flush=True)
                return 1
    gateway = urls["gateway"]
    print(f"ready: MedSearch is up: open {gateway}/signin#token={token}  (Ctrl-C stops it)", flush=True)
    print(f"ready: `medsearch` commands use the admin token in {token_file}", flush=True)
    if os.environ.get(TOKEN_ENV, "").strip():
        print(
            f"ready: note: {TOKEN_ENV} is set here; `medsearch` sends it rather than the file's", flush=True
        )
    seed = os.environ.get("MEDSEARCH_SEED_DIR", "").strip()
    if seed:
        print(f"ready: ingesting {seed} (already indexed images are skipped)", flush=True)
        medsearch = Path(sys.executable).parent / "medsearch"
        result = subprocess.run(
            [str(medsearch), "ingest", seed, "--url", gateway],
            env={**os.environ, TOKEN_ENV: token},
            check=False,
        )
        print(f"ready: seeding finished with exit code {result.returncode}", flush=True)
    signal.pause()
    return 0


def ready(url: str) -> bool:
    """Whether the service says ready: the gateway answers 200 "degraded" while another is not."""
    try:
        answer = requests.get(f"{url}/readyz", timeout=2)
        return answer.status_code == 200 and answer.json().get("status") == "ready"
    except (requests.RequestException, ValueError):
        return False


def admin_token(catalog: str, path: Path) -> str:
    """The admin token kept in `path` when the catalog still takes it as an admin's; else a
    new one, made through the catalog and kept in `path`."""
    try:
        kept = read_token_file(path)
    except ValueError as exc:
        raise TokenSetupFailed(f"{exc}: fix it, or set {TOKEN_FILE_ENV} to another file") from None
    if kept and is_admin_token(catalog, kept):
        print(f"ready: the admin token in {path} is still good", flush=True)
        return kept
    response = _post(catalog, "/v1/tokens", {"name": TOKEN_NAME, "role": "admin"})
    if response.status_code != 201:
        raise _unexpected(catalog, "/v1/tokens", response)
    secret = str(response.json()["secret"])
    try:
        write_token_file(path, secret)
    except OSError as exc:
        raise TokenSetupFailed(
            f"cannot write the token file {path}: {exc.strerror or exc}; "
            f"set {TOKEN_FILE_ENV} to a file this user may write"
        ) from None
    if kept:
        print(
            f"ready: the token in {path} is not an admin's this catalog takes (revoked, expired, "
            "another database's, or a weaker role): replaced it with a new admin token",
            flush=True,
        )
    else:
        print(f"ready: made an admin API token and kept it in {path}", flush=True)
    return secret


def is_admin_token(catalog: str, token: str) -> bool:
    """Whether the catalog takes `token` as a live admin's API token."""
    path = "/v1/tokens/verify"
    response = _post(catalog, path, {"secret": token})
    if response.status_code == 200:
        return bool(response.json()["identity"]["role"] == "admin")
    if 400 <= response.status_code < 500:
        return False  # unknown, revoked, expired, or not a token at all
    raise _unexpected(catalog, path, response)


def _post(catalog: str, path: str, body: dict[str, str]) -> requests.Response:
    try:
        return requests.post(f"{catalog}{path}", json=body, timeout=CATALOG_TIMEOUT_S)
    except requests.RequestException as exc:
        raise TokenSetupFailed(f"the catalog ({catalog}) did not answer POST {path}: {exc}") from None


def _unexpected(catalog: str, path: str, response: requests.Response) -> TokenSetupFailed:
    # The body is the catalog's problem+json: it never holds a secret that was sent.
    return TokenSetupFailed(
        f"the catalog ({catalog}) answered POST {path} with HTTP {response.status_code}: "
        f"{response.text[:300]}"
    )


if __name__ == "__main__":
    sys.exit(main())
