"""`medsearch tokens` and `medsearch audit` against the real stack: an admin makes a reader
token, the reader searches but may not add, the search is in the audit trail with its
result IDs, a revoked token is refused, and a caller without a token is told how to sign in.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from medsearch_client.client import TOKEN_ENV, TOKEN_FILE_ENV
from medsearch_client.terminal import EXIT_FAILED, EXIT_OK
from tests.gateway.conftest import HTTP_TIMEOUT_S, Stack, medsearch

pytestmark = pytest.mark.integration

DATASET = "cli-accounts"
# How long the gateway may keep using a verified token for reads (5 s by default), and a margin.
READ_CACHE_S = 6.0
CSV_HEADER = [
    "id",
    "at",
    "actor",
    "role",
    "action",
    "outcome",
    "image_id",
    "result_ids",
    "request_id",
    "detail",
]


def medsearch_with(
    stack: Stack, token: str | None, folder: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The command line signed in with `token`, or with nothing at all: no MEDSEARCH_TOKEN and
    a token file that does not exist (never the developer's own)."""
    env = {key: value for key, value in os.environ.items() if key not in (TOKEN_ENV, TOKEN_FILE_ENV)}
    env[TOKEN_FILE_ENV] = str(folder / "no-such-token-file")
    if token is not None:
        env[TOKEN_ENV] = token
    command = [str(Path(sys.executable).parent / "medsearch"), "--url", stack.gateway, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)


def create_token(stack: Stack, name: str, role: str) -> tuple[int, str]:
    """`medsearch tokens create` as an admin: the new token's ID and its secret."""
    created = medsearch(stack, "tokens", "create", "--name", name, "--role", role)
    assert created.returncode == EXIT_OK, created.stderr
    secret = created.stdout.strip()
    # The secret alone on stdout, so that `$(medsearch tokens create …)` captures it; the note
    # that it is shown only once on stderr, without it.
    assert created.stdout == f"{secret}\n" and secret.startswith("mst_")
    assert "shown only this once" in created.stderr and secret not in created.stderr
    (token,) = [item for item in list_tokens(stack) if item["name"] == name]
    assert token["role"] == role
    return int(token["id"]), secret


def list_tokens(stack: Stack) -> list[dict[str, Any]]:
    listed = medsearch(stack, "tokens", "list", "--json")
    assert listed.returncode == EXIT_OK, listed.stderr
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def fresh_png(size: int = 64) -> bytes:
    """Random pixels: bytes no other test has stored."""
    out = io.BytesIO()
    Image.frombytes("L", (size, size), secrets.token_bytes(size * size)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def images(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Three new images, added with `medsearch ingest` as an admin; deleted afterwards, so that
    the suites that count the shared sets count only those."""
    folder = tmp_path_factory.mktemp(DATASET)
    paths = []
    for i in range(3):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(fresh_png())
    added = medsearch(stack, "ingest", str(folder), "--dataset", DATASET)
    try:
        assert added.returncode == EXIT_OK, added.stdout + added.stderr
        assert added.stdout.strip().splitlines()[-1] == "3 new, 0 completed, 0 already indexed, 0 failed"
        yield paths
    finally:
        for image_id in image_ids_of(stack, DATASET):
            requests.delete(
                f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
            )


def image_ids_of(stack: Stack, dataset: str) -> list[int]:
    found = []
    cursor: str | None = ""
    while cursor is not None:
        page = requests.get(
            f"{stack.gateway}/api/v1/images",
            params={"limit": 500, "cursor": cursor},
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        ).json()
        found += [image["id"] for image in page["items"] if image["metadata"]["dataset"] == dataset]
        cursor = page["next_cursor"]
    return found


@pytest.fixture(scope="module")
def reader(stack: Stack) -> tuple[int, str]:
    """A reader token an admin made with `medsearch tokens create`: its ID and secret."""
    return create_token(stack, f"cli reader {secrets.token_hex(4)}", "reader")


def test_a_reader_token_made_by_an_admin_searches_but_may_not_add(
    stack: Stack, images: list[Path], reader: tuple[int, str], tmp_path: Path
) -> None:
    _, secret = reader

    found = medsearch_with(stack, secret, tmp_path, "search", str(images[0]), "--json")
    assert found.returncode == EXIT_OK, found.stderr
    assert json.loads(found.stdout)["results"][0]["image"]["metadata"]["dataset"] == DATASET

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new.png").write_bytes(fresh_png())
    refused = medsearch_with(stack, secret, tmp_path, "ingest", str(tmp_path / "new"))
    assert refused.returncode == EXIT_FAILED
    assert "needs the editor role" in refused.stderr and "HTTP 403" in refused.stderr, refused.stderr
    assert refused.stdout.strip().splitlines()[-1] == "0 new, 0 completed, 0 already indexed, 1 failed"


def test_tokens_list_shows_every_token_and_never_a_secret(stack: Stack, reader: tuple[int, str]) -> None:
    token_id, secret = reader
    expires = "2099-01-01T00:00:00+00:00"
    created = medsearch(
        stack, "tokens", "create", "--name", "expiring", "--role", "editor", "--expires-at", expires
    )
    assert created.returncode == EXIT_OK, created.stderr

    as_json = medsearch(stack, "tokens", "list", "--json")
    table = medsearch(stack, "tokens", "list")

    assert as_json.returncode == table.returncode == EXIT_OK
    by_id = {item["id"]: item for item in json.loads(as_json.stdout)["items"]}
    assert by_id[token_id]["role"] == "reader" and by_id[token_id]["revoked_at"] is None
    assert set(by_id[token_id]) == {
        "id",
        "name",
        "role",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    }
    for listed in (as_json.stdout, table.stdout):
        for known in (secret, created.stdout.strip(), *stack.tokens.values()):
            assert known not in listed
        assert "mst_" not in listed
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "role", "state", "created", "expires", "last", "used"]
    (expiring,) = [line for line in lines if " expiring " in line]
    assert "editor" in expiring and "active" in expiring and "2099-01-01 00:00:00" in expiring


def test_the_audit_trail_has_the_readers_search_with_its_result_ids(
    stack: Stack, images: list[Path], reader: tuple[int, str], tmp_path: Path
) -> None:
    token_id, secret = reader
    found = medsearch_with(stack, secret, tmp_path, "search", str(images[1]), "--k", "3", "--json")
    assert found.returncode == EXIT_OK, found.stderr
    result_ids = [hit["image"]["id"] for hit in json.loads(found.stdout)["results"]]
    actor = f"token:{token_id}"

    as_json = medsearch(stack, "audit", "--actor", actor, "--action", "search", "--json", "--limit", "1")
    assert as_json.returncode == EXIT_OK, as_json.stderr
    (event,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (event["actor"], event["role"], event["action"], event["outcome"]) == (
        actor,
        "reader",
        "search",
        "ok",
    )
    assert event["result_ids"] == result_ids

    table = medsearch(stack, "audit", "--actor", actor)
    assert table.returncode == EXIT_OK, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["id", "at", "(UTC)"]
    assert any(actor in line and " search " in line for line in table.stdout.splitlines())

    export = tmp_path / "trail.csv"
    exported = medsearch(stack, "audit", "--actor", actor, "--csv", str(export))
    assert exported.returncode == EXIT_OK, exported.stderr
    rows = list(csv.reader(export.read_text(encoding="utf-8").splitlines()))
    assert rows[0] == CSV_HEADER
    searches = [row for row in rows[1:] if row[4] == "search"]
    assert searches and all(row[2] == actor for row in rows[1:])
    assert str(result_ids[0]) in searches[0][7].split()
    assert not list(tmp_path.glob(".*.part")), "the export left its temporary file"


def test_a_reader_may_not_manage_tokens_or_read_the_audit_trail(stack: Stack) -> None:
    for args in (("tokens", "list"), ("tokens", "create", "--name", "x", "--role", "admin"), ("audit",)):
        refused = medsearch(stack, *args, role="reader")
        assert refused.returncode == EXIT_FAILED, refused.stdout
        assert "needs the admin role" in refused.stderr and "is a reader" in refused.stderr, refused.stderr
        assert "HTTP 403" in refused.stderr and refused.stdout == ""


def test_a_revoked_token_is_refused(stack: Stack, tmp_path: Path) -> None:
    token_id, secret = create_token(stack, f"cli revoked {secrets.token_hex(4)}", "editor")
    assert medsearch_with(stack, secret, tmp_path, "stats").returncode == EXIT_OK

    revoked = medsearch(stack, "tokens", "revoke", str(token_id))
    assert revoked.returncode == EXIT_OK, revoked.stderr
    assert revoked.stdout == f"revoked token {token_id}\n"

    # An editor's endpoint verifies the token again at once.
    refused = medsearch_with(stack, secret, tmp_path, "reindex")
    assert refused.returncode == EXIT_FAILED
    assert "HTTP 401" in refused.stderr and "unknown, revoked or expired" in refused.stderr, refused.stderr
    # A read, once the gateway's cache of verified tokens has let it go.
    time.sleep(READ_CACHE_S)
    read = medsearch_with(stack, secret, tmp_path, "stats")
    assert read.returncode == EXIT_FAILED and "HTTP 401" in read.stderr, read.stderr
    (listed,) = [item for item in list_tokens(stack) if item["id"] == token_id]
    assert listed["revoked_at"] is not None
    assert any(
        line.split()[0] == str(token_id) and "revoked" in line
        for line in medsearch(stack, "tokens", "list").stdout.splitlines()[1:]
    )

    unknown = medsearch(stack, "tokens", "revoke", "999999999")
    assert unknown.returncode == EXIT_FAILED and "HTTP 404" in unknown.stderr, unknown.stderr


def test_a_token_that_expires_in_the_past_is_refused_and_no_secret_is_printed(stack: Stack) -> None:
    refused = medsearch(
        stack,
        "tokens",
        "create",
        "--name",
        "late",
        "--role",
        "reader",
        "--expires-at",
        "2000-01-01T00:00:00Z",
    )

    assert refused.returncode == EXIT_FAILED and refused.stdout == ""
    assert "HTTP 4" in refused.stderr, refused.stderr


def test_without_a_token_the_command_says_how_to_sign_in(stack: Stack, tmp_path: Path) -> None:
    anonymous = medsearch_with(stack, None, tmp_path, "stats")

    assert anonymous.returncode == EXIT_FAILED
    assert "HTTP 401" in anonymous.stderr and TOKEN_ENV in anonymous.stderr, anonymous.stderr
    assert str(tmp_path / "no-such-token-file") in anonymous.stderr
