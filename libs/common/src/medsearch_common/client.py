"""The one HTTP client for service-to-service calls.

Timeouts on connect and read; bounded retries with exponential backoff, for idempotent
calls only; the current request ID forwarded; every failure turned into a typed error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from medsearch_common.context import REQUEST_ID_HEADER, current_request_id

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Statuses that say "try again later" rather than "your request is wrong".
RETRYABLE_STATUSES = frozenset({502, 503, 504})


class UpstreamError(Exception):
    """A call to another service failed; `service` names it."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(detail)
        self.service = service

    @property
    def problem_extensions(self) -> dict[str, str]:
        """Named in the problem+json answer, so a caller sees which dependency failed."""
        return {"dependency": self.service}


class UpstreamUnavailable(UpstreamError):
    """The service could not be reached, or said it is unavailable (503)."""


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
        stream: bool = False,
    ) -> requests.Response:
        """Send the request; a 2xx/3xx response is returned, anything else raises.

        `idempotent` overrides the method's default (e.g. a POST that only reads). With
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
        timeout = (self.connect_timeout_s, read_timeout_s or self.read_timeout_s)
        url = f"{self.base_url}/{path.lstrip('/')}"

        error: UpstreamError | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(self.retry.delay(attempt - 1))
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
                error = UpstreamUnavailable(
                    self.service, f"{self.service} did not accept a connection in time"
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                if isinstance(exc, requests.Timeout) or _is_read_timeout(exc):
                    error = UpstreamTimeout(
                        self.service, f"{self.service} did not answer within {timeout[1]} s"
                    )
                else:
                    # The address stays in the log: the gateway shows this detail to the public.
                    error = UpstreamUnavailable(self.service, f"{self.service} is unreachable")
            except requests.RequestException as exc:
                # e.g. a body cut short: the service broke off its answer.
                error = UpstreamFailed(
                    self.service, f"{self.service} sent a broken response: {type(exc).__name__}"
                )
            else:
                if response.status_code < 400:
                    return response
                error = self._error_from(response)
                if response.status_code not in RETRYABLE_STATUSES:
                    raise error
            log.warning(
                "upstream call failed",
                extra={
                    "upstream": self.service,
                    "url": self.base_url,
                    "method": method,
                    "attempt": attempt,
                    "error": str(error),
                },
            )
        assert error is not None
        raise error

    def get_json(
        self, path: str, *, params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None
    ) -> Any:
        return self.request("GET", path, params=params).json()

    def close(self) -> None:
        self._session.close()

    def _error_from(self, response: requests.Response) -> UpstreamError:
        problem = _problem_of(response)
        status = response.status_code
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        if status == 503:
            return UpstreamUnavailable(self.service, f"{self.service} is unavailable: {detail}")
        if status == 504:
            return UpstreamTimeout(self.service, f"{self.service} timed out: {detail}")
        if status >= 500:
            return UpstreamFailed(self.service, f"{self.service} failed with HTTP {status}: {detail}")
        return UpstreamRejected(self.service, status, problem)


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
