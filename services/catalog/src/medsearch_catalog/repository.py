"""The catalog's PostgreSQL store: images, their bytes and their indexing state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from medsearch_catalog.errors import DatabaseUnavailable, ImageNotFound
from medsearch_catalog.images import CheckedImage
from medsearch_catalog.metadata import FIELDS, ImageMetadata
from medsearch_catalog.migrations import apply_migrations, bundled_migrations

log = logging.getLogger(__name__)

INDEX_STATES = ("pending", "indexed", "failed")


@dataclass(frozen=True)
class IndexState:
    state: str
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class IndexStateChange:
    """A state to set for one image (validated: `reason` is set exactly when failed)."""

    image_id: int
    state: str
    reason: str | None = None


@dataclass(frozen=True)
class NewImage:
    """A decoded image with the metadata to store it under."""

    image: CheckedImage
    metadata: ImageMetadata


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    mime_type: str
    width: int
    height: int
    byte_size: int
    metadata: ImageMetadata
    created_at: datetime
    updated_at: datetime
    index_states: dict[str, IndexState] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    mime_type: str
    sha256: str


@dataclass(frozen=True)
class IndexCounts:
    """Images per indexing state for one model; "pending" includes images never indexed for it."""

    indexed: int
    pending: int
    failed: int


@dataclass(frozen=True)
class IndexStatesInRange:
    """Each image's state for one model in a range of IDs, and the highest ID the catalog ever gave."""

    states: list[tuple[int, str]]  # by ascending ID; "pending" for an image with no state for the model
    # Images since deleted count: a vector left behind by one may hold an ID above any image's.
    max_image_id: int | None


@dataclass(frozen=True)
class CatalogStats:
    images: int
    datasets: dict[str, int]
    models: dict[str, IndexCounts]
    breakdown: dict[str, dict[str, int]] | None = None  # see COLLECTION_COUNTS; when asked


# What a collection's statistics count, each over every image, in one snapshot: by finding
# (any: images that have it, alone or among others; only: images whose one finding it is, with
# "(none)" and "(several)" for the others, so that they add up), by age band, sex and view
# position ("unknown" where unset).
COLLECTION_COUNTS = {
    "findings_any": (
        "SELECT finding AS key, count(*) AS n FROM images, unnest(findings) AS finding GROUP BY 1"
    ),
    "findings_only": (
        "SELECT CASE cardinality(findings) WHEN 0 THEN '(none)' WHEN 1 THEN findings[1]"
        " ELSE '(several)' END AS key, count(*) AS n FROM images GROUP BY 1"
    ),
    "age_bands": (
        "SELECT CASE WHEN age IS NULL THEN 'unknown' WHEN age < 18 THEN '0-17' WHEN age < 40 THEN '18-39'"
        " WHEN age < 60 THEN '40-59' WHEN age < 80 THEN '60-79' ELSE '80+' END AS key, count(*) AS n"
        " FROM images GROUP BY 1"
    ),
    "sexes": "SELECT coalesce(sex, 'unknown') AS key, count(*) AS n FROM images GROUP BY 1",
    "view_positions": (
        "SELECT coalesce(view_position, 'unknown') AS key, count(*) AS n FROM images GROUP BY 1"
    ),
}


@dataclass(frozen=True)
class ImageFilter:
    """Which images a listing returns; each tuple matches any of its values, fields combine with AND.

    `index_state` with `model_id`: "pending" also matches images never indexed for that model.
    """

    dataset: tuple[str, ...] = ()
    patient_id: tuple[str, ...] = ()
    external_id: tuple[str, ...] = ()
    finding: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()
    view_position: tuple[str, ...] = ()
    age_min: int | None = None
    age_max: int | None = None
    model_id: str | None = None
    index_state: tuple[str, ...] = ()


# Index states per model, as one JSON object, in the same query as the image rows.
_SELECT_IMAGES = """
SELECT i.*,
       COALESCE((SELECT jsonb_object_agg(s.model_id, jsonb_build_object(
                          'state', s.state, 'reason', s.reason, 'updated_at', s.updated_at))
                 FROM index_states s WHERE s.image_id = i.id), jsonb_build_object()) AS index_states
FROM images i
"""

_IMAGE_COLUMNS = (
    "sha256", "mime_type", "width", "height", "byte_size", "dataset", "external_id",
    "patient_id", "study", "age", "sex", "view_position", "findings", "extra",
)  # fmt: skip

_SELECT_ORIGINAL = """
SELECT f.original AS data, i.mime_type, i.sha256
FROM images i JOIN image_files f ON f.image_id = i.id WHERE i.id = %s
"""
_SELECT_THUMBNAIL = """
SELECT f.thumbnail AS data, f.thumbnail_mime AS mime_type, i.sha256
FROM images i JOIN image_files f ON f.image_id = i.id WHERE i.id = %s
"""


class ImageRepository:
    """Every read and write of the catalog's tables; SQL is parametrized throughout."""

    def __init__(self, pool: ConnectionPool, *, connection_timeout_s: float) -> None:
        self.pool = pool
        self.connection_timeout_s = connection_timeout_s
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    # -- connections and schema -------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection in a transaction; database failures become DatabaseUnavailable."""
        try:
            with self.pool.connection(timeout=self.connection_timeout_s) as conn:
                conn.row_factory = dict_row  # type: ignore[assignment]
                with conn.transaction():
                    yield conn  # type: ignore[misc]
        except PoolTimeout:
            raise DatabaseUnavailable(
                f"PostgreSQL gave no connection within {self.connection_timeout_s:g} s"
            ) from None
        except psycopg.OperationalError as exc:
            # psycopg's words name the server's host and port: they go to the log, not to callers.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("database failure", extra={"error": reason})
            raise DatabaseUnavailable("PostgreSQL is unavailable") from None

    @contextmanager
    def _ready_transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        self.ensure_schema()
        with self._transaction() as conn:
            yield conn

    def transaction(self) -> AbstractContextManager[psycopg.Connection[dict[str, Any]]]:
        """A connection in a transaction on the migrated schema, for the catalog's other stores
        (identity, audit): one pool, one migration step, one mapping of database failures."""
        return self._ready_transaction()

    def ensure_schema(self) -> None:
        """Apply pending migrations once per process (again after a failure)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._transaction() as conn:
                applied = apply_migrations(conn, bundled_migrations())  # type: ignore[arg-type]
            if applied:
                log.info("database schema migrated", extra={"versions": applied})
            self._schema_ready = True

    def check(self) -> str | None:
        """None when the database answers and the schema is in place, else why not."""
        try:
            self.ensure_schema()
            with self._transaction() as conn:
                conn.execute("SELECT 1")
        except DatabaseUnavailable as exc:
            return str(exc)
        return None

    # -- images -----------------------------------------------------------------------

    def find_by_sha256(self, sha256s: Iterable[str]) -> dict[str, ImageRecord]:
        """The stored images among these contents, by sha256, in one query."""
        wanted = sorted(set(sha256s))
        if not wanted:
            return {}
        with self._ready_transaction() as conn:
            rows = conn.execute(_SELECT_IMAGES + "WHERE i.sha256 = ANY(%s)", (wanted,)).fetchall()
        return {row["sha256"]: _record(row) for row in rows}

    def add_images(self, images: Sequence[NewImage]) -> dict[str, tuple[ImageRecord, bool]]:
        """Store new images in one transaction, by sha256 with whether each was created.

        Bytes already stored (also by a concurrent request) keep their image and give False.
        """
        if not images:
            return {}
        # Rows go in by sha256, so that two batches sharing images lock them in the same order
        # and wait for each other instead of deadlocking.
        first: dict[str, NewImage] = {}
        for new in images:
            first.setdefault(new.image.sha256, new)
        unique = [first[sha256] for sha256 in sorted(first)]
        with self._ready_transaction() as conn:
            rows = conn.execute(
                sql.SQL(
                    "INSERT INTO images ({}) VALUES {} ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256"
                ).format(
                    sql.SQL(", ").join(map(sql.Identifier, _IMAGE_COLUMNS)),
                    sql.SQL(", ").join(
                        sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(_IMAGE_COLUMNS)))
                        for _ in unique
                    ),
                ),
                [value for new in unique for value in _image_row(new)],
            ).fetchall()
            created = {row["sha256"]: row["id"] for row in rows}
            if created:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO image_files (image_id, original, thumbnail, thumbnail_mime)"
                        " VALUES (%s, %s, %s, %s)",
                        [
                            (created[n.image.sha256], n.image.data, n.image.thumbnail, n.image.thumbnail_mime)
                            for n in unique
                            if n.image.sha256 in created
                        ],
                    )
            # A conflict means the row exists, committed: ON CONFLICT waited for its transaction.
            records = conn.execute(
                _SELECT_IMAGES + "WHERE i.sha256 = ANY(%s)", ([n.image.sha256 for n in unique],)
            ).fetchall()
        stored = {row["sha256"]: (_record(row), row["sha256"] in created) for row in records}
        # Only a delete of the same bytes committed between the insert and the select breaks this.
        assert len(stored) == len(unique)
        return stored

    def get_image(self, image_id: int) -> ImageRecord:
        with self._ready_transaction() as conn:
            return self._get(conn, image_id)

    def get_images(self, image_ids: Sequence[int]) -> list[ImageRecord]:
        """The images that exist among `image_ids`, in the order asked, in one query."""
        with self._ready_transaction() as conn:
            rows = conn.execute(_SELECT_IMAGES + "WHERE i.id = ANY(%s)", (list(image_ids),)).fetchall()
        by_id = {row["id"]: _record(row) for row in rows}
        return [by_id[i] for i in dict.fromkeys(image_ids) if i in by_id]

    def list_images(self, image_filter: ImageFilter, *, after_id: int, limit: int) -> list[ImageRecord]:
        """Images matching the filter with ID > `after_id`, by ascending ID."""
        where, params = _filter_sql(image_filter)
        where.append(sql.SQL("i.id > %s"))
        params.append(after_id)
        query = sql.SQL(_SELECT_IMAGES + "WHERE {} ORDER BY i.id LIMIT %s").format(
            sql.SQL(" AND ").join(where)
        )
        with self._ready_transaction() as conn:
            rows = conn.execute(query, [*params, limit]).fetchall()
        return [_record(row) for row in rows]

    def update_metadata(self, image_id: int, changes: dict[str, Any]) -> ImageRecord:
        """Set the given metadata fields (already validated) and return the image."""
        assignments = [sql.SQL("{} = %s").format(sql.Identifier(name)) for name in changes if name in FIELDS]
        values = [_column_value(name, value) for name, value in changes.items() if name in FIELDS]
        with self._ready_transaction() as conn:
            query = sql.SQL("UPDATE images SET {}, updated_at = now() WHERE id = %s RETURNING id").format(
                sql.SQL(", ").join(assignments)
            )
            if conn.execute(query, [*values, image_id]).fetchone() is None:
                raise ImageNotFound(f"no image has ID {image_id}")
            return self._get(conn, image_id)

    def delete_image(self, image_id: int) -> None:
        with self._ready_transaction() as conn:
            if conn.execute("DELETE FROM images WHERE id = %s RETURNING id", (image_id,)).fetchone() is None:
                raise ImageNotFound(f"no image has ID {image_id}")

    def set_index_state(self, image_id: int, model_id: str, state: str, reason: str | None) -> IndexState:
        with self._ready_transaction() as conn:
            if conn.execute("SELECT 1 FROM images WHERE id = %s FOR SHARE", (image_id,)).fetchone() is None:
                raise ImageNotFound(f"no image has ID {image_id}")
            row = conn.execute(
                """
                INSERT INTO index_states (image_id, model_id, state, reason) VALUES (%s, %s, %s, %s)
                ON CONFLICT (image_id, model_id)
                DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, updated_at = now()
                RETURNING state, reason, updated_at
                """,
                (image_id, model_id, state, reason),
            ).fetchone()
        assert row is not None
        return IndexState(row["state"], row["reason"], row["updated_at"])

    def set_index_states(
        self, model_id: str, changes: Sequence[IndexStateChange]
    ) -> tuple[list[tuple[int, IndexState]], list[int]]:
        """Set each image's state for the model in one statement: the states saved, in the order
        given, and the IDs of images that do not exist (nothing is set for those)."""
        with self._ready_transaction() as conn:
            # The key-share lock keeps a concurrent delete from taking an image away between the
            # join and the insert; an image deleted first is simply not there.
            rows = conn.execute(
                """
                INSERT INTO index_states (image_id, model_id, state, reason)
                SELECT i.id, %s, c.state, c.reason
                FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS c(image_id, state, reason)
                JOIN images i ON i.id = c.image_id
                ORDER BY i.id
                FOR KEY SHARE OF i
                ON CONFLICT (image_id, model_id)
                DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, updated_at = now()
                RETURNING image_id, state, reason, updated_at
                """,
                (
                    model_id,
                    [c.image_id for c in changes],
                    [c.state for c in changes],
                    [c.reason for c in changes],
                ),
            ).fetchall()
        saved = {row["image_id"]: IndexState(row["state"], row["reason"], row["updated_at"]) for row in rows}
        return (
            [(c.image_id, saved[c.image_id]) for c in changes if c.image_id in saved],
            [c.image_id for c in changes if c.image_id not in saved],
        )

    def index_states_between(self, model_id: str, first: int, end: int) -> IndexStatesInRange:
        """The states for the model of the images with IDs in [first, end)."""
        with self._ready_transaction() as conn:
            rows = conn.execute(
                """
                SELECT i.id, COALESCE(s.state, 'pending') AS state
                FROM images i LEFT JOIN index_states s ON s.image_id = i.id AND s.model_id = %s
                WHERE i.id >= %s AND i.id < %s
                ORDER BY i.id
                """,
                (model_id, first, end),
            ).fetchall()
            # The identity's sequence: IDs are never given twice, so its last is the highest ever.
            given = conn.execute(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence('images', 'id')::regclass) AS max_id"
            ).fetchone()
        assert given is not None
        return IndexStatesInRange([(row["id"], row["state"]) for row in rows], given["max_id"])

    def stats(self, model_id: str | None = None, *, breakdown: bool = False) -> CatalogStats:
        """Images in all, per dataset, and per state for each model with a state (and `model_id`);
        with `breakdown`, the collection's counts of COLLECTION_COUNTS too."""
        with self._ready_transaction() as conn:
            # One snapshot for every count, so that they add up while images come and go.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            counted = (
                {
                    name: {row["key"]: row["n"] for row in conn.execute(query + " ORDER BY 2 DESC, 1")}
                    for name, query in COLLECTION_COUNTS.items()
                }
                if breakdown
                else None
            )
            datasets = {
                row["dataset"]: row["n"]
                for row in conn.execute(
                    "SELECT dataset, count(*) AS n FROM images GROUP BY dataset ORDER BY dataset"
                )
            }
            states = conn.execute(
                "SELECT model_id, state, count(*) AS n FROM index_states"
                " GROUP BY model_id, state ORDER BY model_id"
            ).fetchall()
        total = sum(datasets.values())  # dataset is NOT NULL: every image has one
        by_model: dict[str, dict[str, int]] = {} if model_id is None else {model_id: {}}
        for row in states:
            by_model.setdefault(row["model_id"], {})[row["state"]] = row["n"]
        # No row for a model means never indexed with it: pending, as in the pending listing.
        return CatalogStats(
            images=total,
            datasets=datasets,
            models={
                model: IndexCounts(
                    indexed=counts.get("indexed", 0),
                    pending=total - counts.get("indexed", 0) - counts.get("failed", 0),
                    failed=counts.get("failed", 0),
                )
                for model, counts in sorted(by_model.items())
            },
            breakdown=counted,
        )

    def get_file(self, image_id: int, *, thumbnail: bool) -> StoredFile:
        query = _SELECT_THUMBNAIL if thumbnail else _SELECT_ORIGINAL
        with self._ready_transaction() as conn:
            row = conn.execute(query, (image_id,)).fetchone()
        if row is None:
            raise ImageNotFound(f"no image has ID {image_id}")
        return StoredFile(bytes(row["data"]), row["mime_type"], row["sha256"])

    def _get(self, conn: psycopg.Connection[dict[str, Any]], image_id: int) -> ImageRecord:
        row = conn.execute(_SELECT_IMAGES + "WHERE i.id = %s", (image_id,)).fetchone()
        if row is None:
            raise ImageNotFound(f"no image has ID {image_id}")
        return _record(row)


def _filter_sql(image_filter: ImageFilter) -> tuple[list[sql.Composable], list[Any]]:
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column in ("dataset", "patient_id", "external_id", "sex", "view_position"):
        values = getattr(image_filter, column)
        if values:
            where.append(sql.SQL("i.{} = ANY(%s)").format(sql.Identifier(column)))
            params.append(list(values))
    if image_filter.finding:
        where.append(sql.SQL("i.findings && %s::text[]"))
        params.append(list(image_filter.finding))
    if image_filter.age_min is not None:
        where.append(sql.SQL("i.age >= %s"))
        params.append(image_filter.age_min)
    if image_filter.age_max is not None:
        where.append(sql.SQL("i.age <= %s"))
        params.append(image_filter.age_max)
    if image_filter.model_id is not None and image_filter.index_state:
        states = list(image_filter.index_state)
        # No row for the model means the image was never indexed with it: pending.
        where.append(
            sql.SQL(
                "COALESCE((SELECT s.state FROM index_states s"
                " WHERE s.image_id = i.id AND s.model_id = %s), 'pending') = ANY(%s)"
            )
        )
        params.extend([image_filter.model_id, states])
    return where, params


def _image_row(new: NewImage) -> tuple[Any, ...]:
    """The values of _IMAGE_COLUMNS, in that order."""
    image, metadata = new.image, new.metadata
    return (
        image.sha256,
        image.mime_type,
        image.width,
        image.height,
        len(image.data),
        metadata.dataset,
        metadata.external_id,
        metadata.patient_id,
        metadata.study,
        metadata.age,
        metadata.sex,
        metadata.view_position,
        list(metadata.findings),
        Jsonb(metadata.extra),
    )


def _column_value(name: str, value: Any) -> Any:
    if name == "findings":
        return list(value)
    if name == "extra":
        return Jsonb(value)
    return value


def _record(row: dict[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        sha256=row["sha256"],
        mime_type=row["mime_type"],
        width=row["width"],
        height=row["height"],
        byte_size=row["byte_size"],
        metadata=ImageMetadata(
            dataset=row["dataset"],
            external_id=row["external_id"],
            patient_id=row["patient_id"],
            study=row["study"],
            age=row["age"],
            sex=row["sex"],
            view_position=row["view_position"],
            findings=tuple(row["findings"]),
            extra=row["extra"],
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        index_states={
            model_id: IndexState(s["state"], s["reason"], datetime.fromisoformat(s["updated_at"]))
            for model_id, s in row["index_states"].items()
        },
    )
