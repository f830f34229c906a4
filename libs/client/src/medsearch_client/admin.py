"""An admin's `medsearch` commands: API tokens and the audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from medsearch_client.client import (
    TOKEN_ENV,
    ApiToken,
    AuditEvent,
    AuditFilter,
    GatewayClient,
    default_token_file,
)
from medsearch_client.terminal import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    aligned,
    parse_time,
    utc_time,
    write_whole,
)

# The audit trail's actions, as the gateway records them.
AUDIT_ACTIONS = (
    "search",
    "similar",
    "view_image",
    "browse",
    "add_image",
    "delete_image",
    "reindex",
    "sign_in",
    "sign_out",
    "token_create",
    "token_revoke",
    "refused",
    "audit_read",
)

DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_PAGE = 1000  # the gateway's largest page
# Result IDs an audit table shows per event; --json and --csv have them all.
AUDIT_TABLE_RESULT_IDS = 5


def tokens_create(args: argparse.Namespace, client: GatewayClient) -> int:
    created = client.create_token(args.name, args.role, expires_at=args.expires_at)
    token = created["token"]
    # The secret alone on stdout, so that `$(medsearch tokens create …)` captures it.
    print(created["secret"], flush=True)
    expires = f"expires {utc_time(token['expires_at'])} UTC" if token["expires_at"] else "never expires"
    print(
        f"created token {token['id']} {token['name']!r} ({token['role']}, {expires}); its secret, "
        f"above, is shown only this once: keep it (in {TOKEN_ENV} or the file {default_token_file()})",
        file=sys.stderr,
    )
    return EXIT_OK


def tokens_list(args: argparse.Namespace, client: GatewayClient) -> int:
    tokens = client.list_tokens()
    if args.json:
        print(json.dumps({"items": tokens}, indent=2))
    elif tokens:
        print(format_tokens(tokens, datetime.now(UTC)))
    else:
        print("no API tokens", file=sys.stderr)
    return EXIT_OK


def tokens_revoke(args: argparse.Namespace, client: GatewayClient) -> int:
    client.revoke_token(args.id)
    print(f"revoked token {args.id}")
    return EXIT_OK


def audit(args: argparse.Namespace, client: GatewayClient) -> int:
    where = AuditFilter(
        actor=args.actor, action=args.action, image_id=args.image_id, since=args.since, until=args.until
    )
    if args.csv is not None:
        if args.limit is not None:
            raise UsageError(
                "--csv exports every event that matches: narrow it with the filters, not --limit"
            )
        return export_audit(client, where, args.csv)
    limit = args.limit or DEFAULT_AUDIT_LIMIT
    events: list[AuditEvent] = []
    cursor: str | None = None
    while len(events) < limit:
        page = client.audit_page(where, limit=min(limit - len(events), MAX_AUDIT_PAGE), cursor=cursor)
        events.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    if args.json:
        for event in events:
            print(json.dumps(event))
    elif events:
        print(format_audit(events))
    else:
        print("no audit events match", file=sys.stderr)
    if cursor:
        print(
            f"the newest {len(events)} events shown; more match: raise --limit, narrow with "
            "--since/--until, or export them all with --csv FILE",
            file=sys.stderr,
        )
    return EXIT_OK


def export_audit(client: GatewayClient, where: AuditFilter, target: str) -> int:
    """The audit trail's CSV into `target` ("-": stdout). A file appears whole or not at all:
    the CSV goes to a temporary file beside it, renamed when the last byte is in."""
    if target == "-":
        client.audit_csv(sys.stdout.buffer, where)
        sys.stdout.flush()
        return EXIT_OK
    path = Path(target)
    try:
        written = write_whole(path, lambda out: client.audit_csv(out, where))
    except OSError as exc:  # the disk, not the gateway: its failures are GatewayErrors
        print(f"medsearch: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote the audit trail to {path} ({written} bytes of CSV)", file=sys.stderr)
    return EXIT_OK


def format_tokens(tokens: Sequence[ApiToken], now: datetime) -> str:
    """API tokens as an aligned text table, one line per token, times in UTC."""
    rows = [("id", "name", "role", "state", "created", "expires", "last used")]
    for token in tokens:
        rows.append(
            (
                str(token["id"]),
                token["name"],
                token["role"],
                token_state(token, now),
                utc_time(token["created_at"]),
                utc_time(token["expires_at"]) if token["expires_at"] else "never",
                utc_time(token["last_used_at"]) if token["last_used_at"] else "never",
            )
        )
    return aligned(rows, right=1)


def token_state(token: ApiToken, now: datetime) -> str:
    """`revoked`, `expired` or `active`."""
    if token["revoked_at"]:
        return "revoked"
    expires = parse_time(token["expires_at"]) if token["expires_at"] else None
    return "expired" if expires is not None and expires <= now else "active"


def format_audit(events: Sequence[AuditEvent]) -> str:
    """Audit events as an aligned text table, one line per event, newest first, times in UTC."""
    rows = [("id", "at (UTC)", "actor", "role", "action", "outcome", "image", "results", "detail")]
    for event in events:
        ids = event["result_ids"]
        if ids is None:
            results = "-"
        else:
            results = " ".join(str(i) for i in ids[:AUDIT_TABLE_RESULT_IDS]) or "(none)"
            if len(ids) > AUDIT_TABLE_RESULT_IDS:
                results += f" +{len(ids) - AUDIT_TABLE_RESULT_IDS} more"
        rows.append(
            (
                str(event["id"]),
                utc_time(event["at"]),
                event["actor"],
                event["role"] or "-",
                event["action"],
                event["outcome"],
                "-" if event["image_id"] is None else str(event["image_id"]),
                results,
                event["detail"] or "",
            )
        )
    return aligned(rows, right=1)
