"""The one HTTP client for service-to-service calls.

Timeouts on connect and read; bounded retries with exponential backoff, for idempotent
calls only, and only when no connection was made, when the service said 503 (come back later),
or when it closed a kept-alive connection without a word (it closes connections idle past its
keep-alive time, and a call sent at that moment meets the close); the current request ID
forwarded; every failure turned into a typed error. A call whose answer timed out, or came back
502/504, is never sent again: the work may still be running (an embedding behind a busy queue),
and the gateway's callers (the `medsearch` CLI) are the one layer that retries those.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.client import RemoteDisconnected
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from medsearch_common.context import REQUEST_ID_HEADER, current_request_id

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# The one status that says "not done; come back later". A 502 or 504 may come after the work
# ran (or while it still runs): sending it again could double it.
RETRYABLE_STATUSES = frozenset({503})
# How long a caller should wait when a service could not be reached at all, or a call failed
# midway: about one supervised restart of a crashed service (its first backoffs: 1, 2, 4 s).
DEFAULT_RETRY_AFTER_S = 5
# A dependency's name as a service reports it (milvus, postgresql, model): never an address.
_PLAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class UpstreamError(Exception):
    """A call to another service failed; `service` names it."""

    def __init__(self, service: str, detail: str, *, upstream_detail: str | None = None) -> None:
        super().__init__(detail)
        self.service = service
        self.upstream_detail = upstream_detail  # what the service itself said: for logs only

    @property
    def problem_extensions(self) -> dict[str, str]:
        """Named in the problem+json answer, so a caller sees which dependency failed."""
        return {"dependency": self.service}


class UpstreamUnavailable(UpstreamError):
    """The service could not be reached, or said it is unavailable (503); `retry_after_s`, when
    it said how long to wait, is passed on to this service's own caller as Retry-After."""

    def __init__(
        self,
        service: str,
        detail: str,
        *,
        upstream_detail: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(service, detail, upstream_detail=upstream_detail)
        self.problem_headers = {"Retry-After": retry_after_s} if retry_after_s is not None else {}


class UpstreamTimeout(UpstreamError):
    """The service did not answer in time."""


class UpstreamFailed(UpstreamError):
    """The service answered with a server error other than 503/504."""


class UpstreamRejected(UpstreamError):
    """The service refused the request (4xx); `problem` is its problem+json body."""

    def __init__(self, service: str, status: int, problem: dict[str, Any]) -> None:
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        super().__init__(service, f"{service} rejected the request: {detail}")
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got {self.attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class ServiceClient:
    """Calls one service at `base_url`; errors name it as `service`."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.retry = retry or RetryPolicy()
        self._session = requests.Session()
        # One kept-alive connection per thread that calls this service: a smaller pool
        # would close and reopen connections under load.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        read_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send the request; a 2xx/3xx response is returned, anything else raises.

        `idempotent` overrides the method's default (e.g. a POST that only reads); either way a
        call is sent again only when it surely did not run. With
        `stream` the body is read as the caller iterates it (and must be, or the response closed).
        Retried calls must pass `files` as bytes, not streams, so they can be sent again.
        """
        method = method.upper()
        may_retry = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
        attempts = self.retry.attempts if may_retry else 1
        send_headers = dict(headers or {})
        request_id = current_request_id()
        if request_id:
            send_headers[REQUEST_ID_HEADER] = request_id
        timeout = (connect_timeout_s or self.connect_timeout_s, read_timeout_s or self.read_timeout_s)
        url = f"{self.base_url}/{path.lstrip('/')}"

        error: UpstreamError | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(self.retry.delay(attempt - 1))
            # Only when the service surely did not run it (no connection, or a 503), or closed
            # the connection without answering: safe for an idempotent call.
            send_again = False
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    files=files,
                    headers=send_headers,
                    timeout=timeout,
                    stream=stream,
                )
            except requests.ConnectTimeout:
                send_again = True
                error = UpstreamUnavailable(
                    self.service,
                    f"{self.service} did not accept a connection in time",
                    retry_after_s=DEFAULT_RETRY_AFTER_S,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                if isinstance(exc, requests.Timeout) or _is_read_timeout(exc):
                    error = UpstreamTimeout(
                        self.service, f"{self.service} did not answer within {timeout[1]} s"
                    )
                else:
                    send_again = _never_connected(exc) or _closed_unanswered(exc)
                    # The address stays in the log: the gateway shows this detail to the public.
                    error = UpstreamUnavailable(
                        self.service,
                        f"{self.service} is unreachable",
                        retry_after_s=DEFAULT_RETRY_AFTER_S,
                    )
            except requests.RequestException as exc:
                # e.g. a body cut short: the service broke off its answer.
                error = UpstreamFailed(
                    self.service, f"{self.service} sent a broken response: {type(exc).__name__}"
                )
            else:
                if response.status_code < 400:
                    return response
                error = self._error_from(response)
                if response.status_code < 500:
                    raise error  # the request's own fault: no retry, no warning
                send_again = response.status_code in RETRYABLE_STATUSES
            log.warning(
                "upstream call failed",
                extra={
                    "upstream": self.service,
                    "url": self.base_url,
                    "method": method,
                    "attempt": attempt,
                    "error": str(error),
                    # Its own words, for the log only: they may name its hosts.
                    "upstream_detail": error.upstream_detail,
                },
            )
            if not send_again:
                break
        assert error is not None
        raise error

    def get_json(
        self, path: str, *, params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None
    ) -> Any:
        return self.request("GET", path, params=params).json()

    def close(self) -> None:
        self._session.close()

    def _error_from(self, response: requests.Response) -> UpstreamError:
        """The error for an answer of 400 or more. A server error's own detail is never
        passed on (it may name hosts, URIs or ports behind the service): only which of the
        service's dependencies failed, when it says so, and its words go to the log."""
        problem = _problem_of(response)
        status = response.status_code
        if status < 500:
            return UpstreamRejected(self.service, status, problem)
        own_words = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        failing = _failing_dependencies(problem)
        because = f" ({', '.join(failing)} not ready)" if failing else ""
        if status == 503:
            detail = f"{self.service} is unavailable{because}"
            wait = response.headers.get("Retry-After", "").strip()
            retry_after_s = int(wait) if wait.isdigit() and len(wait) <= 4 else None
            return UpstreamUnavailable(
                self.service, detail, upstream_detail=own_words, retry_after_s=retry_after_s
            )
        if status == 504:
            detail = f"{self.service} timed out{because}"
            return UpstreamTimeout(self.service, detail, upstream_detail=own_words)
        detail = f"{self.service} failed with HTTP {status}{because}"
        return UpstreamFailed(self.service, detail, upstream_detail=own_words)


def _never_connected(exc: requests.ConnectionError) -> bool:
    """Whether the connection itself failed (refused, no such host): the request was never sent.
    A connection dropped later (reset, closed mid-answer) may have carried it."""
    return any(
        isinstance(arg, MaxRetryError) and isinstance(arg.reason, NewConnectionError) for arg in exc.args
    )


def _closed_unanswered(exc: requests.ConnectionError) -> bool:
    """Whether the service closed or reset the connection before any answer: what a kept-alive
    connection meets when the call arrives as the service closes it for idleness."""
    silent = (RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    causes = [arg.reason if isinstance(arg, MaxRetryError) else arg for arg in exc.args]
    return any(
        isinstance(cause, ProtocolError) and any(isinstance(inner, silent) for inner in cause.args)
        for cause in causes
    )


def _failing_dependencies(problem: dict[str, Any]) -> list[str]:
    """The dependencies a service's problem names as failing (its `dependency`, or the checks of
    its /readyz that are not ok), when they are plain names: nothing else of its text is kept."""
    names: list[str] = []
    dependency = problem.get("dependency")
    if isinstance(dependency, str):
        names.append(dependency)
    checks = problem.get("checks")
    if isinstance(checks, dict):
        names += [str(name) for name, state in checks.items() if state != "ok"]
    return [name for name in dict.fromkeys(names) if _PLAIN_NAME.fullmatch(name)]


def _is_read_timeout(exc: requests.ConnectionError) -> bool:
    """requests reports a timeout while reading the body as a ConnectionError wrapping it."""
    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def _problem_of(response: requests.Response) -> dict[str, Any]:
    """The response's problem+json body, or a minimal one when it has none."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"status": response.status_code, "title": response.reason or f"HTTP {response.status_code}"}
