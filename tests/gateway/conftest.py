"""The whole system for gateway tests: four real services as processes talking HTTP.

PostgreSQL (a throwaway database), the embedded Milvus server (the session's), TensorFlow with
`random:42` weights, and the gateway under gunicorn. The gateway reaches each service
through a TCP proxy that a test can cut, so "a service is down" is real without stopping
the process. The NIH and Hannover sets of the shared data are ingested once, through the
gateway's public API, for every test that reads them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import MilvusServer, fresh_database
from tests.support.oidc import provider  # noqa: F401 - a fixture, for this folder's tests
from tests.support.processes import service_process, wait_ready
from tests.support.proxy import CuttableProxy

SEED = 42
# Generous: these guard against a hang, they do not measure speed.
START_GUARD_S = 180.0
HTTP_TIMEOUT_S = 120.0
SETS = ("nih_cxr14", "covid_hannover")
EMBEDDER_MAX_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class Stack:
    gateway: str  # the gateway's base URL
    proxies: dict[str, CuttableProxy]  # by service name, between the gateway and each service
    urls: dict[str, str]  # each service's own URL, behind its proxy
    logs: Path
    tokens: dict[str, str]  # an API token's secret per role, made through the catalog
    catalog_database: str  # the catalog's PostgreSQL, for tests that must reach behind it

    @property
    def auth(self) -> dict[str, str]:
        """The admin's Authorization header: what the suites that test other things send."""
        return self.auth_as("admin")

    def auth_as(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_tokens(catalog_url: str) -> dict[str, str]:
    """One API token per role, made as `make run` makes its first: through the catalog."""
    tokens = {}
    for role in ("reader", "editor", "admin"):
        response = requests.post(
            f"{catalog_url}/v1/tokens", json={"name": f"tests {role}", "role": role}, timeout=HTTP_TIMEOUT_S
        )
        assert response.status_code == 201, response.text
        tokens[role] = response.json()["secret"]
    return tokens


@dataclass(frozen=True)
class Indexed:
    """One ingested image: where its file is and what the gateway answered."""

    path: Path
    image_id: int
    metadata: dict[str, Any]


@pytest.fixture(scope="session")
def stack(
    postgres_admin_url: str, milvus_server: MilvusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack")
    logs = folder / "logs"
    logs.mkdir()
    envs = {
        "catalog": {},
        # Below the catalog's pixel limit: an image the catalog keeps but the model refuses.
        "embedder": {
            "MEDSEARCH_EMBEDDER_WEIGHTS": f"random:{SEED}",
            "MEDSEARCH_EMBEDDER_MAX_IMAGE_PIXELS": str(EMBEDDER_MAX_PIXELS),
        },
        "search": {
            "MEDSEARCH_MILVUS_URI": milvus_server.uri,
            "MEDSEARCH_MILVUS_TOKEN": milvus_server.token,
            "MEDSEARCH_SEARCH_MAP_DIR": str(folder / "maps"),
        },
    }
    with ExitStack() as stack_of:
        # A database of its own: the catalog's tests leave images in the session's database.
        envs["catalog"]["MEDSEARCH_DATABASE_URL"] = stack_of.enter_context(fresh_database(postgres_admin_url))
        started = {
            name: stack_of.enter_context(service_process(name, env, logs / f"{name}.log"))
            for name, env in envs.items()
        }
        for name, (process, url) in started.items():
            wait_ready(url, process, logs / f"{name}.log", START_GUARD_S)
        urls = {name: url for name, (_, url) in started.items()}
        proxies = {}
        for name, url in urls.items():
            host, port = url.removeprefix("http://").split(":")
            proxies[name] = CuttableProxy(host, int(port))
            proxies[name].restore()
            stack_of.callback(proxies[name].cut)
        gateway_env = {
            f"MEDSEARCH_{name.upper()}_URL": f"http://127.0.0.1:{proxy.port}"
            for name, proxy in proxies.items()
        }
        # Longer than the defaults: on a loaded 2-core machine a slow answer must not become a 504.
        gateway_env["MEDSEARCH_GATEWAY_SEARCH_TIMEOUT_S"] = "30"
        gateway_env["MEDSEARCH_GATEWAY_CATALOG_TIMEOUT_S"] = "30"
        gateway_log = logs / "gateway.log"
        process, gateway = stack_of.enter_context(service_process("gateway", gateway_env, gateway_log))
        wait_ready(gateway, process, gateway_log, START_GUARD_S)
        yield Stack(
            gateway,
            proxies,
            urls,
            logs,
            make_tokens(urls["catalog"]),
            envs["catalog"]["MEDSEARCH_DATABASE_URL"],
        )


@pytest.fixture
def restore_proxies(stack: Stack) -> Iterator[None]:
    """For tests that cut a service: every proxy is back afterwards, even when one fails."""
    yield
    for proxy in stack.proxies.values():
        proxy.restore()


def ingest(stack: Stack, path: Path, metadata: dict[str, Any]) -> requests.Response:
    with open(path, "rb") as handle:
        return requests.post(
            f"{stack.gateway}/api/v1/images",
            files={"image": (path.name, handle.read())},
            data={"metadata": json.dumps(metadata)},
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        )


def search(stack: Stack, data: bytes, **form: Any) -> requests.Response:
    fields = {
        key: json.dumps(value) if isinstance(value, dict) else str(value) for key, value in form.items()
    }
    return requests.post(
        f"{stack.gateway}/api/v1/search",
        files={"image": ("query", data)},
        data=fields,
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )


def medsearch(stack: Stack | str, *args: str, role: str = "admin") -> subprocess.CompletedProcess[str]:
    """The `medsearch` command line, as a user runs it, with the role's token in MEDSEARCH_TOKEN
    (`stack` may be a bare URL: a gateway with no token for it)."""
    url = stack if isinstance(stack, str) else stack.gateway
    command = [str(Path(sys.executable).parent / "medsearch"), "--url", url, *args]
    if isinstance(stack, str):
        env = {**os.environ, "MEDSEARCH_TOKEN": "", "MEDSEARCH_TOKEN_FILE": os.devnull}
    else:
        env = {**os.environ, "MEDSEARCH_TOKEN": stack.tokens[role]}
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, env=env)


def ingest_shared_sets(stack: Stack, test_data: Path) -> list[str]:
    """NIH's own label file and the Hannover set's generic labels.csv, through the CLI;
    the summary line of each run."""
    nih = test_data / "nih_cxr14"
    runs = [
        ("ingest", str(nih / "Data_Entry_2017_v2020.csv"), "--images", str(nih / "images")),
        ("ingest", str(test_data / "covid_hannover" / "labels.csv"), "--dataset", "hannover"),
    ]
    summaries = []
    for args in runs:
        result = medsearch(stack, *args, "--concurrency", "4")
        assert result.returncode == 0, result.stdout + result.stderr
        summaries.append(result.stdout.strip().splitlines()[-1])
    return summaries


@pytest.fixture(scope="session")
def indexed(stack: Stack, test_data: Path) -> list[Indexed]:
    """The NIH and Hannover sets, ingested with `medsearch ingest` through the gateway; in
    the order of their labels.csv, each with the ID and metadata the gateway gives back."""
    summaries = ingest_shared_sets(stack, test_data)
    assert summaries == [
        "303 new, 0 completed, 0 already indexed, 0 failed",
        "104 new, 0 completed, 0 already indexed, 0 failed",
    ]
    by_external_id = {}
    cursor: str | None = ""
    while cursor is not None:
        page = requests.get(
            f"{stack.gateway}/api/v1/images",
            params={"limit": 500, "cursor": cursor},
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        ).json()
        by_external_id.update({image["metadata"]["external_id"]: image for image in page["items"]})
        cursor = page["next_cursor"]
    items = []
    for folder, id_column in (("nih_cxr14", "image_index"), ("covid_hannover", "image_id")):
        with open(test_data / folder / "labels.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                image = by_external_id[row[id_column]]
                assert image["index_state"] == "indexed"
                items.append(Indexed(test_data / folder / row["path"], int(image["id"]), image["metadata"]))
    return items


def jpeg_half_size(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        half = image.convert("L").resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    half.save(out, format="JPEG", quality=90)
    return out.getvalue()
