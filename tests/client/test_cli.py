"""The command's pure parts: how results are counted and summed up, the exit code, the
results, token and audit tables, and command lines refused before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from medsearch_client.admin import (
    audit,
    format_audit,
    format_tokens,
    token_state,
    tokens_create,
    tokens_list,
    tokens_revoke,
)
from medsearch_client.batch import Job, Outcome, Tally, describe_failure, outcome_of, report, run_jobs
from medsearch_client.cli import batches, build_parser, format_results, main
from medsearch_client.client import (
    ApiToken,
    AuditEvent,
    GatewayError,
    Image,
    ImageMetadata,
    Indexed,
    SearchHit,
)
from medsearch_client.sources import IngestItem
from medsearch_client.terminal import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

# Nothing listens here: a test that reached the network would fail, not pass.
NOWHERE = "http://127.0.0.1:9"


def image(image_id: int = 7, **metadata: Any) -> Image:
    return {
        "id": image_id,
        "metadata": cast(ImageMetadata, {"dataset": "nih", **metadata}),
        "width": 1024,
        "height": 1024,
        "mime_type": "image/png",
        "byte_size": 1,
        "sha256": "0" * 64,
        "created_at": "2026-01-01T00:00:00Z",
        "index_state": "indexed",
        "thumbnail_url": f"/api/v1/images/{image_id}/thumbnail",
        "file_url": f"/api/v1/images/{image_id}/file",
    }


@pytest.mark.parametrize(
    ("created", "already_indexed", "outcome"),
    [
        (True, False, Outcome.NEW),
        (False, False, Outcome.COMPLETED),
        (False, True, Outcome.ALREADY_INDEXED),
    ],
)
def test_each_answer_counts_as_what_was_done(created: bool, already_indexed: bool, outcome: Outcome) -> None:
    assert outcome_of(Indexed(image(), "m1", created, already_indexed)) is outcome


def test_summary_line_counts_every_outcome_and_failure() -> None:
    tally = Tally()
    for outcome in [Outcome.NEW] * 3 + [Outcome.COMPLETED] + [Outcome.ALREADY_INDEXED] * 2:
        tally.add(outcome)
    tally.fail("a.png", "bad")

    assert tally.summary() == "3 new, 1 completed, 2 already indexed, 1 failed"
    assert Tally().summary() == "0 new, 0 completed, 0 already indexed, 0 failed"


def test_exit_code_is_1_when_anything_failed_or_was_not_tried() -> None:
    tally = Tally()
    tally.add(Outcome.NEW)
    assert tally.exit_code() == EXIT_OK
    tally.fail("a.png", "bad")
    assert tally.exit_code() == EXIT_FAILED
    untried = Tally(not_tried=3)
    assert untried.exit_code() == EXIT_FAILED
    assert Tally(interrupted=True).exit_code() == EXIT_INTERRUPTED


def test_outage_streak_counts_only_failures_in_a_row_that_say_a_service_is_down() -> None:
    tally = Tally()
    tally.fail("a", "down", outage=True)
    tally.fail("b", "down", outage=True)
    assert tally.outage_streak == 2
    tally.fail("c", "bad metadata")
    assert tally.outage_streak == 0
    tally.fail("d", "down", outage=True)
    tally.add(Outcome.NEW)
    assert tally.outage_streak == 0


def test_report_prints_the_summary_then_each_failure(capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally()
    tally.add(Outcome.NEW)
    tally.fail("/data/a.png", "metadata.age must be between 0 and 130, got 300 (HTTP 422)")

    assert report(tally) == EXIT_FAILED

    out, err = capsys.readouterr()
    assert out == "1 new, 0 completed, 0 already indexed, 1 failed\n"
    assert err == "failed: /data/a.png: metadata.age must be between 0 and 130, got 300 (HTTP 422)\n"


def test_failure_says_the_detail_status_service_and_what_was_kept() -> None:
    incomplete = GatewayError(
        503,
        {
            "detail": "the search service is unavailable",
            "dependency": "search",
            "image_id": 12,
            "index_state": "pending",
        },
    )
    rejected = GatewayError(
        422, {"detail": "the model cannot read it", "image_id": 13, "index_state": "failed"}
    )

    assert (
        describe_failure(incomplete)
        == "the search service is unavailable (HTTP 503, search; image 12 pending)"
    )
    assert describe_failure(rejected) == "the model cannot read it (HTTP 422; image 13 failed)"
    assert (
        describe_failure(GatewayError(None, {"detail": "cannot reach it"})) == "cannot reach it (no answer)"
    )


def test_results_table_has_one_aligned_line_per_hit() -> None:
    hits: list[SearchHit] = [
        {
            "rank": 1,
            "score": 0.99987,
            "image": image(
                12,
                external_id="00000075_000.png",
                patient_id="75",
                age=61,
                sex="F",
                view_position="PA",
                findings=["Cardiomegaly", "Effusion"],
            ),
        },
        {"rank": 2, "score": 0.5, "image": image(3, dataset="hannover", external_id="fff13f3a", findings=[])},
    ]

    assert format_results(hits).splitlines() == [
        "rank   score  id  external_id       dataset   patient  age/sex/view  findings",
        "   1  0.9999  12  00000075_000.png  nih       75       61/F/PA       Cardiomegaly, Effusion",
        "   2  0.5000   3  fff13f3a          hannover  -        -/-/-         (none)",
    ]


# -- command lines refused before anything is sent ---------------------------------------


def test_ingest_of_a_path_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(tmp_path / "nowhere"), "--url", NOWHERE]) == EXIT_USAGE
    assert "neither a folder nor a file" in capsys.readouterr().err


def test_ingest_with_an_unknown_map_field_is_a_usage_error(
    test_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = test_data / "covid_hannover" / "labels.csv"

    assert main(["ingest", str(csv_path), "--map", "sex=gender", "--url", NOWHERE]) == EXIT_USAGE
    assert "unknown field 'gender'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "x.png", "--filter", "{bad"], "not valid JSON"),
        (["search", "x.png", "--filter", "[1]"], "expected a JSON object"),
        (["search", "x.png", "--k", "0"], "expected 1 or more"),
        (["ingest", "x", "--concurrency", "four"], "expected a whole number"),
        (["ingest", "x", "--format", "dicom"], "invalid choice"),
        (["reindex", "--bogus"], "unrecognized arguments"),
        (["stats", "--timeout", "0"], "expected more than 0"),
        ([], "required: COMMAND"),
        (["tokens"], "required: ACTION"),
        (["tokens", "create", "--role", "reader"], "required: --name"),
        (["tokens", "create", "--name", "ci"], "required: --role"),
        (["tokens", "create", "--name", "ci", "--role", "root"], "invalid choice: 'root'"),
        (["tokens", "create", "--name", "ci", "--role", "reader", "--expires-at", "soon"], "ISO 8601"),
        (["tokens", "list", "--bogus"], "unrecognized arguments"),
        (["tokens", "revoke"], "required: ID"),
        (["tokens", "revoke", "three"], "expected a whole number"),
        (["tokens", "revoke", "0"], "expected 1 or more"),
        (["audit", "--json", "--csv", "out.csv"], "not allowed with argument"),
        (["audit", "--action", "peek"], "invalid choice: 'peek'"),
        (["audit", "--image-id", "-4"], "expected 1 or more"),
        (["audit", "--since", "yesterday"], "ISO 8601"),
        (["audit", "--limit", "0"], "expected 1 or more"),
        (["verify", "--batch", "16001"], "at most 16000 image IDs per request"),
        (["verify", "--batch", "0"], "expected 1 or more"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_search_of_a_file_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(tmp_path / "none.png"), "--url", NOWHERE]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


def test_a_gateway_url_that_is_not_http_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "localhost:8080", "stats"]) == EXIT_USAGE
    assert "http(s)://host[:port]" in capsys.readouterr().err


def test_url_before_or_after_the_command_and_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid URL is refused before any call, which shows which URL was taken."""
    assert main(["--url", "before:1", "stats"]) == EXIT_USAGE
    assert "'before:1'" in capsys.readouterr().err
    assert main(["--url", "before:1", "stats", "--url", "after:1"]) == EXIT_USAGE
    assert "'after:1'" in capsys.readouterr().err
    monkeypatch.setenv("MEDSEARCH_URL", "env:1")
    assert main(["stats"]) == EXIT_USAGE
    assert "'env:1'" in capsys.readouterr().err


def _item(path: Path, size: int) -> IngestItem:
    path.write_bytes(b"x" * size)
    return IngestItem(path=path, metadata={"dataset": "t"})


def test_batches_keep_order_and_split_by_count_and_by_bytes(tmp_path: Path) -> None:
    items = [_item(tmp_path / f"{i}.png", 10) for i in range(7)]
    assert [len(b) for b in batches(items, 3, 1000)] == [3, 3, 1]
    assert [i for b in batches(items, 3, 1000) for i in b] == items
    # 10-byte files, at most 25 bytes a request: two at a time, whatever the count allows.
    assert [len(b) for b in batches(items, 5, 25)] == [2, 2, 2, 1]
    # One file over the limit still goes, alone: the gateway says what is wrong with it.
    big = [_item(tmp_path / "big.png", 100), *items[:2]]
    assert [len(b) for b in batches(big, 5, 25)] == [1, 2]


def test_a_batch_counts_each_image_and_a_failed_request_fails_all_of_its_images() -> None:
    outage = GatewayError(503, {"detail": "search is unavailable", "dependency": "search"})
    refused = GatewayError(422, {"detail": "the PNG image is truncated"})

    def failing_request() -> list[Indexed]:
        raise GatewayError(400, {"detail": "bad form"})

    jobs = [
        Job(["a.png", "b.png", "c.png"], lambda: [Indexed(image(1), "m", True, False), refused, outage]),
        Job(["d.png", "e.png"], failing_request),
        Job(["f.png"], lambda: [OSError(13, "Permission denied")]),
    ]
    tally = run_jobs(jobs, 2, "test")
    assert tally.counts[Outcome.NEW] == 1
    # Jobs finish in any order; each image is counted once.
    assert sorted(name for name, _ in tally.failures) == ["b.png", "c.png", "d.png", "e.png", "f.png"]
    reasons = dict(tally.failures)
    assert "truncated" in reasons["b.png"] and "HTTP 503, search" in reasons["c.png"]
    assert "bad form" in reasons["e.png"] and "Permission denied" in reasons["f.png"]
    assert tally.exit_code() == EXIT_FAILED and tally.not_tried == 0


# -- tokens and the audit trail -----------------------------------------------------------


def test_token_and_audit_command_lines_reach_their_handlers() -> None:
    parser = build_parser()

    created = parser.parse_args(
        ["tokens", "create", "--name", "ci", "--role", "editor", "--expires-at", "2030-01-01T00:00:00+02:00"]
    )
    assert (created.handler, created.name, created.role) == (tokens_create, "ci", "editor")
    assert created.expires_at == "2030-01-01T00:00:00+02:00"
    assert parser.parse_args(["tokens", "create", "--name", "ci", "--role", "admin"]).expires_at is None
    listed = parser.parse_args(["tokens", "list", "--json", "--url", "http://gw:1"])
    assert (listed.handler, listed.json, listed.url) == (tokens_list, True, "http://gw:1")
    revoked = parser.parse_args(["--url", "http://gw:1", "tokens", "revoke", "7", "--timeout", "5"])
    assert (revoked.handler, revoked.id, revoked.url, revoked.timeout) == (
        tokens_revoke,
        7,
        "http://gw:1",
        5.0,
    )
    read = parser.parse_args(
        ["audit", "--actor", "token:3", "--action", "search", "--image-id", "12", "--since", "2026-01-01"]
    )
    assert (read.handler, read.actor, read.action, read.image_id, read.since) == (
        audit,
        "token:3",
        "search",
        12,
        "2026-01-01",
    )
    assert (read.until, read.limit, read.json, read.csv) == (None, None, False, None)
    exported = parser.parse_args(["audit", "--csv", "trail.csv", "--until", "2026-02-01T00:00:00Z"])
    assert (exported.csv, exported.until) == ("trail.csv", "2026-02-01T00:00:00Z")


def test_an_audit_export_with_a_limit_is_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "--csv", "out.csv", "--limit", "10", "--url", NOWHERE]) == EXIT_USAGE
    assert "--csv exports every event that matches" in capsys.readouterr().err


def test_an_audit_export_into_a_missing_folder_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "trail.csv"

    assert main(["audit", "--csv", str(target), "--url", NOWHERE]) == EXIT_USAGE
    assert f"cannot write {target}" in capsys.readouterr().err


def test_an_audit_export_into_a_folder_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--csv", str(tmp_path), "--url", NOWHERE]) == EXIT_USAGE
    assert "is a folder" in capsys.readouterr().err


def test_a_token_file_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEDSEARCH_TOKEN", raising=False)
    monkeypatch.setenv("MEDSEARCH_TOKEN_FILE", str(tmp_path))  # a folder: it cannot be read

    assert main(["stats", "--url", NOWHERE]) == EXIT_USAGE
    assert f"the token file {tmp_path} cannot be read" in capsys.readouterr().err


def test_not_signed_in_says_where_a_token_goes() -> None:
    described = describe_failure(GatewayError(401, {"detail": "sign in first: GET /api/v1/stats"}))

    assert described.startswith("sign in first: GET /api/v1/stats (HTTP 401)")
    assert "MEDSEARCH_TOKEN" in described and "medsearch tokens create" in described


def token(token_id: int = 1, **fields: Any) -> ApiToken:
    base = {
        "id": token_id,
        "name": "ci",
        "role": "reader",
        "created_at": "2026-03-01T09:30:00+00:00",
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": None,
    }
    return cast(ApiToken, {**base, **fields})


def test_a_token_is_revoked_expired_or_active() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)

    assert token_state(token(), now) == "active"
    assert token_state(token(expires_at="2026-07-01T00:00:00+00:00"), now) == "active"
    assert token_state(token(expires_at="2026-05-31T23:59:59+00:00"), now) == "expired"
    revoked = token(revoked_at="2026-04-01T00:00:00+00:00", expires_at="2026-05-01T00:00:00+00:00")
    assert token_state(revoked, now) == "revoked"


def test_tokens_table_has_one_line_per_token_with_times_in_utc() -> None:
    tokens = [
        token(3, name="make run admin", role="admin", last_used_at="2026-05-31T12:00:00+02:00"),
        token(12, expires_at="2026-05-01T00:00:00+00:00"),
    ]

    assert format_tokens(tokens, datetime(2026, 6, 1, tzinfo=UTC)).splitlines() == [
        "id  name            role    state    created              expires              last used",
        " 3  make run admin  admin   active   2026-03-01 09:30:00  never                2026-05-31 10:00:00",
        "12  ci              reader  expired  2026-03-01 09:30:00  2026-05-01 00:00:00  never",
    ]


def test_audit_table_has_one_line_per_event_and_shortens_long_result_lists() -> None:
    events: list[AuditEvent] = [
        {
            "id": 41,
            "at": "2026-05-02T08:00:01.123456+00:00",
            "actor": "token:3",
            "role": "reader",
            "action": "search",
            "outcome": "ok",
            "image_id": None,
            "result_ids": [5, 9, 2, 7, 1, 8, 4],
            "request_id": "r1",
            "detail": None,
        },
        {
            "id": 40,
            "at": "2026-05-02T08:00:00+00:00",
            "actor": "anonymous",
            "role": None,
            "action": "refused",
            "outcome": "refused",
            "image_id": 12,
            "result_ids": None,
            "request_id": None,
            "detail": "DELETE /api/v1/images/{image_id} needs the editor role",
        },
    ]

    assert format_audit(events).splitlines() == [
        "id  at (UTC)             actor      role    action   outcome  image  results            detail",
        "41  2026-05-02 08:00:01  token:3    reader  search   ok       -      5 9 2 7 1 +2 more",
        "40  2026-05-02 08:00:00  anonymous  -       refused  refused  12     -                  "
        "DELETE /api/v1/images/{image_id} needs the editor role",
    ]
