"""A client of the MedSearch gateway's public API (`/api/v1`): typed calls, timeouts, retries.

Every call here but `create_token` is safe to repeat (ingest is idempotent by the image's
sha256, indexing by image ID, revoking a revoked token is a no-op, a verify repairs only what
it finds, search and reads change nothing), so each one is retried with backoff when the
gateway says a service is down or slow (502/503/504) or does not answer at all; a 4xx is the
request's own fault and is raised at once. A token is created once: a retry after a lost
answer would make a second.

Also the token file `make run` writes and `medsearch` reads (`default_token_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypedDict, cast
from urllib.parse import urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "MEDSEARCH_URL"
TOKEN_ENV = "MEDSEARCH_TOKEN"  # noqa: S105 - the variable's name
TOKEN_FILE_ENV = "MEDSEARCH_TOKEN_FILE"  # noqa: S105 - the variable's name
# Statuses that say "try again later" rather than "your request is wrong".
RETRYABLE_STATUSES = frozenset({502, 503, 504})
_MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ImageMetadata(TypedDict, total=False):
    dataset: str
    external_id: str | None
    patient_id: str | None
    study: int | None
    age: int | None
    sex: str | None
    view_position: str | None
    findings: list[str]
    extra: dict[str, Any]


class Image(TypedDict):
    id: int
    metadata: ImageMetadata
    width: int
    height: int
    mime_type: str
    byte_size: int
    sha256: str
    created_at: str
    index_state: str | None
    thumbnail_url: str
    file_url: str


class SearchHit(TypedDict):
    rank: int
    score: float
    image: Image


class SearchResponse(TypedDict):
    model: dict[str, Any]
    results: list[SearchHit]


class PendingPage(TypedDict):
    model_id: str
    items: list[Image]
    next_cursor: str | None


class IndexCounts(TypedDict):
    indexed: int
    pending: int
    failed: int


class Stats(TypedDict):
    model: dict[str, Any] | None
    images: int
    datasets: dict[str, int]
    index: IndexCounts | None


class Verification(TypedDict):
    """What the gateway found comparing the catalog with the search service for a range of IDs."""

    model_id: str
    checked: int  # the catalog's images in the range
    vectors: int  # the search service's vectors in the range
    indexed_without_vector: list[int]
    vector_without_image: list[int]
    repaired: bool
    max_image_id: int | None  # the highest image ID the catalog has given: where a walk ends


class DuplicatePair(TypedDict):
    a: int  # the lower image ID
    b: int
    score: float  # cosine similarity
    kind: str  # same_patient, different_patients or unknown_patient


class Duplicates(TypedDict):
    """The near-duplicate pairs the gateway found for a range of image IDs."""

    model_id: str
    threshold: float
    k: int
    pairs: list[DuplicatePair]
    images: list[Image]  # every image of a pair
    vectors: int  # the indexed images of the range
    max_image_id: int | None  # the highest image ID the catalog has given: where a walk ends


Role = Literal["reader", "editor", "admin"]
ROLES: tuple[Role, ...] = ("reader", "editor", "admin")  # weakest first


class ApiToken(TypedDict):
    """An API token as the gateway lists it: never its secret."""

    id: int
    name: str
    role: Role
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class CreatedToken(TypedDict):
    token: ApiToken
    secret: str  # shown in this answer only


class AuditEvent(TypedDict):
    id: int
    at: str
    actor: str
    role: Role | None
    action: str
    outcome: str
    image_id: int | None
    result_ids: list[int] | None
    request_id: str | None
    detail: str | None


class AuditPage(TypedDict):
    items: list[AuditEvent]
    next_cursor: str | None


@dataclass(frozen=True)
class AuditFilter:
    """Which audit events to read; each field left None does not filter (they combine with AND).
    `since` and `until` are ISO 8601 times (without an offset: UTC)."""

    actor: str | None = None
    action: str | None = None
    image_id: int | None = None
    since: str | None = None
    until: str | None = None

    def params(self) -> dict[str, str | int]:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Indexed:
    """The answer to an ingest or a (re)index: the image, now indexed for `model_id`."""

    image: Image
    model_id: str
    created: bool  # the bytes were new to the catalog (201)
    already_indexed: bool  # nothing was done: stored and indexed for this model before


def is_retryable(status: int | None) -> bool:
    """Whether a failure may pass by itself: a service down or slow, or no answer (None)."""
    return status is None or status in RETRYABLE_STATUSES


class GatewayError(Exception):
    """A call failed: `status` is the HTTP status (None when no answer came), `problem` the
    gateway's problem+json body (or one made up to say what happened)."""

    def __init__(self, status: int | None, problem: Mapping[str, Any], *, retryable: bool | None = None):
        self.status = status
        self.problem = dict(problem)
        self.retryable = is_retryable(status) if retryable is None else retryable
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or f"HTTP {self.status}")

    @property
    def dependency(self) -> str | None:
        """The service the gateway named as down or slow, if any."""
        value = self.problem.get("dependency")
        return str(value) if value else None

    @property
    def image_id(self) -> int | None:
        """The image the catalog kept although the request failed (ingest-incomplete,
        stored-but-rejected)."""
        value = self.problem.get("image_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def problem_of(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """The problem+json object of an error answer; one made up when the body is not one
    (a proxy's HTML page, say), keeping the start of its text as the detail."""
    if "json" in content_type:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    text = " ".join(body.decode("utf-8", "replace").split())[:300]
    return {"status": status, "title": f"HTTP {status}", "detail": text or f"HTTP {status} with no body"}


@dataclass(frozen=True)
class RetryPolicy:
    """How often a retryable failure is tried again, and how long to wait between tries."""

    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got {self.attempts}")

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based): the server's
        Retry-After (in seconds) when it sent one, else exponential; never over the maximum."""
        if retry_after is not None and retry_after.strip().isdigit():
            return float(min(self.max_backoff_s, int(retry_after)))
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `make run` leaves its admin token and `medsearch` looks for one:
    `MEDSEARCH_TOKEN_FILE`, else `$XDG_CONFIG_HOME/medsearch/token` (~/.config by default)."""
    if environ.get(TOKEN_FILE_ENV):
        return Path(environ[TOKEN_FILE_ENV]).expanduser()
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "medsearch" / "token"


def find_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The API token to send: `MEDSEARCH_TOKEN`, else the token file's first line; None without."""
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    return read_token_file(default_token_file(environ))


def read_token_file(path: Path) -> str | None:
    """The token in the file's first line; None when there is no file or it is empty.
    Raises ValueError when the file is there but cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise ValueError(f"the token file {path} cannot be read: {reason}") from None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else None


def write_token_file(path: Path, token: str) -> None:
    """Keep `token` in `path` for this user only: a new folder 0700, the file 0600, replaced
    at once (a reader never sees half a token, a crash never leaves an empty file)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # made 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(f"{token}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class GatewayClient:
    """Calls the gateway at `base_url`; one HTTP session, shared safely by worker threads.
    `token` (an API token or an identity provider's JWT) goes in every request's
    `Authorization: Bearer` header."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the gateway URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._session = requests.Session()
        if token:
            if not token.isascii() or any(c.isspace() for c in token):
                raise ValueError("the token must be one word of ASCII characters")
            self._session.headers["Authorization"] = f"Bearer {token}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # -- the API ------------------------------------------------------------------------

    def add_image(self, image: Path | bytes, metadata: Mapping[str, Any], *, filename: str = "") -> Indexed:
        """Store and index one PNG or JPEG (`metadata` needs at least `dataset`)."""
        response = self._request(
            "POST",
            "/api/v1/images",
            files={"image": _image_part(image, filename)},
            data={"metadata": json.dumps(dict(metadata))},
        )
        return _indexed(response)

    def add_images(
        self, images: Sequence[tuple[Path | bytes, Mapping[str, Any]]]
    ) -> list[Indexed | GatewayError]:
        """Store and index up to 32 images in one request: each is indexed or fails on its
        own, and comes back in order. Those that failed with a service down are sent again,
        with the same backoff as any call."""
        parts = [_image_part(image, "") for image, _ in images]
        metadata = [dict(fields) for _, fields in images]
        results: list[Indexed | GatewayError] = [
            GatewayError(None, {"detail": "not sent"}, retryable=False) for _ in images
        ]
        todo = list(range(len(images)))
        for attempt in range(1, self.retry.attempts + 1):
            response = self._request(
                "POST",
                "/api/v1/images/batch",
                files=[("image", parts[i]) for i in todo],
                data={"metadata": json.dumps([metadata[i] for i in todo])},
            )
            again = []
            for position, item in zip(todo, _json(response)["items"], strict=True):
                status = int(item["status"])
                if status < 300:
                    results[position] = _indexed_item(item, created=status == 201)
                else:
                    results[position] = GatewayError(status, item)
                    if is_retryable(status):
                        again.append(position)
            if not again or attempt == self.retry.attempts:
                break
            self._sleep(self.retry.delay(attempt))
            todo = again
        return results

    def index_image(self, image_id: int, *, force: bool = False) -> Indexed:
        """(Re)index a stored image for the active model; `force` even when it is indexed."""
        params = {"force": "true"} if force else None
        return _indexed(self._request("POST", f"/api/v1/images/{image_id}/index", params=params))

    def search(
        self,
        image: Path | bytes | None = None,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        one_per_patient: bool = False,
        filename: str = "",
        query_id: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        like: Sequence[int] = (),
        unlike: Sequence[int] = (),
    ) -> SearchResponse:
        """The `k` indexed images most like the query, best first. The query is `image`, or the
        stored image `query_id`, or a `region` (left, top, right, bottom px) of either; images
        marked `like` and `unlike` steer it (relevance feedback) and are left out of the results.
        With no image and no query_id, the `like` images alone are the query."""
        form = {"k": str(k), "one_per_patient": "true" if one_per_patient else "false"}
        if filter:
            form["filter"] = json.dumps(dict(filter))
        if query_id is not None:
            form["query_id"] = str(query_id)
        if region is not None:
            form["region"] = ",".join(map(str, region))
        if like:
            form["positive"] = ",".join(map(str, like))
        if unlike:
            form["negative"] = ",".join(map(str, unlike))
        files = {"image": _image_part(image, filename)} if image is not None else None
        response = self._request("POST", "/api/v1/search", files=files, data=form)
        return cast(SearchResponse, _json(response))

    def similarity_maps(
        self,
        result_ids: Sequence[int],
        *,
        image: Path | bytes | None = None,
        query_id: int | None = None,
        region: tuple[int, int, int, int] | None = None,
    ) -> dict[str, Any]:
        """Where the query (an image or the stored `query_id`, or a region of it) and each of
        up to 16 stored results look alike: a 7 x 7 map per image of each pair, summing to the
        pair's score."""
        form = {"result_id": ",".join(map(str, result_ids))}
        if query_id is not None:
            form["query_id"] = str(query_id)
        if region is not None:
            form["region"] = ",".join(map(str, region))
        files = {"image": _image_part(image, "")} if image is not None else None
        return cast(
            dict[str, Any], _json(self._request("POST", "/api/v1/similarity-maps", files=files, data=form))
        )

    def similar(
        self, image_id: int, *, k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> SearchResponse:
        """The `k` indexed images most like a stored one (by its stored vector), itself left out."""
        params = {"k": str(k)}
        if filter:
            params["filter"] = json.dumps(dict(filter))
        return cast(
            SearchResponse, _json(self._request("GET", f"/api/v1/images/{image_id}/similar", params=params))
        )

    def image_file(self, image_id: int) -> bytes:
        """The stored image's bytes, as they were added."""
        return self._request("GET", f"/api/v1/images/{image_id}/file").content

    def pending(
        self, *, include_failed: bool = False, limit: int = 500, cursor: str | None = None
    ) -> PendingPage:
        """One page of the images not indexed for the active model."""
        params: dict[str, str | int] = {
            "include_failed": "true" if include_failed else "false",
            "limit": limit,
        }
        if cursor is not None:
            params["cursor"] = cursor
        return cast(PendingPage, _json(self._request("GET", "/api/v1/pending", params=params)))

    def iter_images(self, *, page_size: int = 500) -> Iterator[Image]:
        """Every stored image, a page at a time."""
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = _json(self._request("GET", "/api/v1/images", params=params))
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def iter_pending(self, *, include_failed: bool = False, page_size: int = 500) -> Iterator[Image]:
        """Every image not indexed for the active model, a page at a time."""
        cursor: str | None = None
        while True:
            page = self.pending(include_failed=include_failed, limit=page_size, cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def stats(self) -> Stats:
        """How many images there are, per dataset, and their index state for the active model."""
        return cast(Stats, _json(self._request("GET", "/api/v1/stats")))

    def verify(self, first: int, end: int, *, repair: bool) -> Verification:
        """Compare the catalog's index states with the search service's vectors for the active
        model and the image IDs [first, end) (at most 16,000); with `repair`, images indexed
        without a vector are marked pending and vectors without an image deleted."""
        body = {"from": first, "to": end, "repair": repair}
        return cast(Verification, _json(self._request("POST", "/api/v1/verify", json=body)))

    def duplicates(
        self, first: int, end: int, *, threshold: float | None = None, k: int | None = None
    ) -> Duplicates:
        """The pairs of images at or above `threshold` (default: the gateway's measured one)
        among the image IDs [first, end) (at most 16,000) and their `k` nearest (default 10)."""
        body: dict[str, Any] = {"from": first, "to": end}
        if threshold is not None:
            body["threshold"] = threshold
        if k is not None:
            body["k"] = k
        return cast(Duplicates, _json(self._request("POST", "/api/v1/duplicates", json=body)))

    # -- API tokens and the audit trail (admin) -----------------------------------------

    def create_token(self, name: str, role: Role, *, expires_at: str | None = None) -> CreatedToken:
        """A new API token; its secret is in this answer only. Sent once, never retried."""
        body: dict[str, str] = {"name": name, "role": role}
        if expires_at is not None:
            body["expires_at"] = expires_at
        return cast(CreatedToken, _json(self._request("POST", "/api/v1/tokens", json=body, attempts=1)))

    def list_tokens(self) -> list[ApiToken]:
        """Every API token, revoked and expired ones too, by ID; never a secret."""
        return cast(list[ApiToken], _json(self._request("GET", "/api/v1/tokens"))["items"])

    def revoke_token(self, token_id: int) -> None:
        """Revoke a token (a no-op when it is revoked already; a 404 when there is no such token)."""
        self._request("DELETE", f"/api/v1/tokens/{token_id}")

    def audit_page(
        self, where: AuditFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> AuditPage:
        """One page of the audit trail, newest first."""
        params = {**(where or AuditFilter()).params(), "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return cast(AuditPage, _json(self._request("GET", "/api/v1/audit", params=params)))

    def audit_csv(self, out: IO[bytes], where: AuditFilter | None = None) -> int:
        """Stream every event that matches, as the gateway's CSV (with its header row), into
        `out`; the bytes written."""
        params = (where or AuditFilter()).params()
        response = self._request("GET", "/api/v1/audit.csv", params=params, stream=True)
        written = 0
        with response:
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    out.write(chunk)
                    written += len(chunk)
            except requests.RequestException as exc:
                raise GatewayError(
                    None,
                    {"title": "cut off", "detail": f"the CSV stopped after {written} bytes: {_reason(exc)}"},
                    retryable=False,
                ) from None
        return written

    # -- transport ----------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, attempts: int | None = None, **kwargs: Any
    ) -> requests.Response:
        url = self.base_url + path
        attempts = self.retry.attempts if attempts is None else attempts
        for attempt in range(1, attempts + 1):
            retry_after: str | None = None
            try:
                response = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.Timeout:
                error = GatewayError(None, {"title": "timeout", "detail": f"no answer from {url} in time"})
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                error = GatewayError(
                    None, {"title": "unreachable", "detail": f"cannot reach {url}: {_reason(exc)}"}
                )
            except requests.RequestException as exc:
                raise GatewayError(None, {"detail": f"{method} {url}: {exc}"}, retryable=False) from exc
            else:
                if response.ok:
                    return response
                error = GatewayError(
                    response.status_code,
                    problem_of(
                        response.status_code, response.headers.get("Content-Type", ""), response.content
                    ),
                )
                retry_after = response.headers.get("Retry-After")
            if not error.retryable or attempt == attempts:
                raise error
            self._sleep(self.retry.delay(attempt, retry_after))
        raise AssertionError("unreachable: the loop returns or raises")


def _image_part(image: Path | bytes, filename: str) -> tuple[str, bytes, str]:
    if isinstance(image, Path):
        data = image.read_bytes()
        filename = filename or image.name
    else:
        data = image
    filename = filename or "image"
    return filename, data, _MIME_TYPES.get(Path(filename).suffix.lower(), "application/octet-stream")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise GatewayError(
            response.status_code,
            {"detail": f"the gateway answered {response.status_code} with a body that is not JSON"},
            retryable=False,
        ) from None


def _indexed(response: requests.Response) -> Indexed:
    return _indexed_item(_json(response), created=response.status_code == 201)


def _indexed_item(body: Mapping[str, Any], *, created: bool) -> Indexed:
    return Indexed(
        image=body["image"],
        model_id=body["model_id"],
        created=created,
        already_indexed=bool(body.get("already_indexed", False)),
    )


def _reason(exc: Exception) -> str:
    """The innermost cause of a connection error: `[Errno 111] Connection refused`, not
    urllib3's whole chain of wrappers."""
    cause: BaseException = exc
    for _ in range(10):  # a bound, in case a chain ever loops
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    text = str(cause)
    # urllib3 prefixes "<connection object at 0x...>: " to the OS error.
    return text.split(">: ", 1)[-1] if ">: " in text else text
