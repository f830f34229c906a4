"""The gateway client's pure parts: which failures are retried, how long it waits, what an
error says, where the token comes from. (The client against the real gateway is tested end
to end with the stack.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medsearch_client.client import (
    AuditFilter,
    GatewayClient,
    GatewayError,
    RetryPolicy,
    default_token_file,
    find_token,
    is_retryable,
    problem_of,
    read_token_file,
    write_token_file,
)


@pytest.mark.parametrize("status", [None, 502, 503, 504])
def test_service_down_slow_or_no_answer_is_retried(status: int | None) -> None:
    assert is_retryable(status)
    assert GatewayError(status, {"detail": "down"}).retryable


@pytest.mark.parametrize("status", [400, 404, 409, 413, 415, 422, 500])
def test_a_request_the_gateway_refuses_is_not_retried(status: int) -> None:
    assert not is_retryable(status)
    assert not GatewayError(status, {"detail": "bad"}).retryable


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = RetryPolicy(attempts=6, backoff_s=1.0, max_backoff_s=5.0)

    assert [policy.delay(attempt) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_after_in_seconds_is_honored_but_bounded() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=30.0)

    assert policy.delay(1, "7") == 7.0
    assert policy.delay(1, "3600") == 30.0
    # An HTTP date is not worth parsing here: the exponential backoff applies.
    assert policy.delay(2, "Wed, 21 Oct 2026 07:28:00 GMT") == 2.0


def test_a_retry_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)


def test_problem_json_is_kept_whole() -> None:
    body = (
        b'{"type": "urn:medsearch:problem:ingest-incomplete", "title": "Ingest incomplete", "status": 503,'
        b' "detail": "search is down", "dependency": "search", "image_id": 12, "index_state": "pending"}'
    )

    error = GatewayError(503, problem_of(503, "application/problem+json", body))

    assert (error.status, error.detail, error.dependency, error.image_id) == (
        503,
        "search is down",
        "search",
        12,
    )
    assert error.retryable


def test_a_body_that_is_not_problem_json_becomes_a_short_detail() -> None:
    page = b"<html>\n<body>  <h1>502 Bad Gateway</h1>  </body></html>" + b" " * 1000

    problem = problem_of(502, "text/html", page)

    assert problem == {
        "status": 502,
        "title": "HTTP 502",
        "detail": "<html> <body> <h1>502 Bad Gateway</h1> </body></html>",
    }
    assert problem_of(504, "application/json", b"not json")["detail"] == "not json"
    assert problem_of(503, "", b"")["detail"] == "HTTP 503 with no body"


def test_error_without_detail_falls_back_to_title_then_status() -> None:
    assert GatewayError(418, {"title": "I'm a teapot"}).detail == "I'm a teapot"
    assert GatewayError(418, {}).detail == "HTTP 418"
    assert GatewayError(422, {"image_id": True}).image_id is None


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://", ""])
def test_a_gateway_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        GatewayClient(url)


# -- the token: MEDSEARCH_TOKEN, else the token file --------------------------------------


def test_the_token_file_is_named_by_its_variable_else_under_the_config_folder(tmp_path: Path) -> None:
    assert default_token_file({"MEDSEARCH_TOKEN_FILE": str(tmp_path / "t")}) == tmp_path / "t"
    assert default_token_file({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "medsearch" / "token"
    assert default_token_file({}) == Path.home() / ".config" / "medsearch" / "token"
    assert default_token_file({"MEDSEARCH_TOKEN_FILE": "~/t"}) == Path.home() / "t"


def test_the_token_variable_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("mst_from_the_file\n")
    environ = {"MEDSEARCH_TOKEN_FILE": str(path)}

    assert find_token({**environ, "MEDSEARCH_TOKEN": " mst_from_the_env "}) == "mst_from_the_env"
    assert find_token({**environ, "MEDSEARCH_TOKEN": "  "}) == "mst_from_the_file"


def test_the_token_is_the_files_first_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n  mst_first  \nmst_second\n")

    assert find_token({"MEDSEARCH_TOKEN_FILE": str(path)}) == "mst_first"


@pytest.mark.parametrize("content", [None, "", "\n \n"])
def test_no_file_or_an_empty_one_is_no_token(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)

    assert find_token({"MEDSEARCH_TOKEN_FILE": str(path)}) is None


def test_a_token_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"  # reading a folder fails as a permission problem would
    folder.mkdir()

    with pytest.raises(ValueError, match=f"the token file {folder} cannot be read"):
        find_token({"MEDSEARCH_TOKEN_FILE": str(folder)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not text"):
        read_token_file(binary)


def test_a_written_token_file_is_for_its_user_only_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "config" / "medsearch" / "token"

    write_token_file(path, "mst_one")
    write_token_file(path, "mst_two")

    assert path.read_text() == "mst_two\n"
    assert read_token_file(path) == "mst_two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temporary file left


@pytest.mark.parametrize("token", ["two words", "mst_é", "line\nbreak"])
def test_a_token_that_cannot_go_in_a_header_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="one word of ASCII"):
        GatewayClient("http://127.0.0.1:9", token=token)


def test_the_audit_filter_sends_only_what_is_set() -> None:
    assert AuditFilter().params() == {}
    assert AuditFilter(actor="token:3", image_id=12, since="2026-01-01").params() == {
        "actor": "token:3",
        "image_id": 12,
        "since": "2026-01-01",
    }
