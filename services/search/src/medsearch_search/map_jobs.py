"""Map jobs: each model's 2-D map computed in the background, with its progress, and stored.

- A job reads the model's vectors twice from Milvus (the covariance, then the projection;
  see mapping.py), lays the reduced vectors out in a child process, and writes the map.
- One job per model at a time: starting a second while one runs is JobRunning (409).
- Stored in the map folder, per collection: `<name>.job.json` (the last job and its progress,
  rewritten whole at each step) and `<name>.map.npz` (the last finished map). Each is written
  to a temporary file and renamed over the old one, so a failed or killed job leaves the
  previous map whole; a job still "running" in the file with no thread here was interrupted
  (the service stopped), and the next start runs it anew.
- When the collection changes enough (images added or deleted since the map reach
  `STALE_FRACTION` of the points mapped), reading the map starts a new job by itself; the old
  map is served until the new one is written.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medsearch_search.errors import JobRunning, MapNotFound, MilvusUnavailable, TooFewVectors
from medsearch_search.filters import UNKNOWN_AGE, Attributes
from medsearch_search.mapping import (
    MIN_MAP_VECTORS,
    PARAMETERS,
    PCA_DIMENSIONS,
    Covariance,
    LayoutFailed,
    PointAttributes,
    layout_in_child,
    project,
)
from medsearch_search.store import Collection, MilvusStore

log = logging.getLogger(__name__)

STALE_FRACTION = 0.10
_READ_BATCH = 2000
# The share of a job's progress each stage takes (measured at 112k: reading ~ projecting < UMAP).
_STAGES = {"reading": (0.0, 0.3), "projecting": (0.3, 0.5), "laying out": (0.5, 0.98), "saving": (0.98, 1.0)}


@dataclass(frozen=True)
class MapJob:
    id: str
    model_id: str
    state: str  # running, done, failed, interrupted
    stage: str
    progress: float
    started_at: str
    finished_at: str | None = None
    vectors: int = 0
    error: str | None = None
    automatic: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoredMap:
    meta: dict[str, Any]
    ids: NDArray[np.int64]
    xy: NDArray[np.float32]
    attributes: PointAttributes


class MapJobs:
    def __init__(self, store: MilvusStore, folder: Path, layout_timeout_s: float) -> None:
        self.store = store
        self.folder = folder
        self.layout_timeout_s = layout_timeout_s
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._loaded: dict[str, tuple[int, StoredMap]] = {}  # by collection: (file version, map)

    def start(self, collection: Collection, *, automatic: bool = False) -> MapJob:
        with self._lock:
            if self._is_running(collection.model_id):
                raise JobRunning(f"a map job for model {collection.model_id} is already running")
            count = self.store.count(collection)
            if count < MIN_MAP_VECTORS:
                raise TooFewVectors(
                    f"model {collection.model_id} has {count} vectors; a map needs at least {MIN_MAP_VECTORS}"
                )
            job = MapJob(
                id=uuid.uuid4().hex,
                model_id=collection.model_id,
                state="running",
                stage="reading",
                progress=0.0,
                started_at=_now(),
                vectors=count,
                automatic=automatic,
            )
            self._write_job(collection, job)
            thread = threading.Thread(
                target=self._run, args=(collection, job), name=f"map-{collection.model_id}", daemon=True
            )
            self._running[collection.model_id] = thread
            thread.start()
        log.info("map job started", extra={"model_id": collection.model_id, "job": job.id, "vectors": count})
        return job

    def current(self, collection: Collection) -> MapJob | None:
        """The model's last job; one the file says runs but no thread here runs was interrupted."""
        path = self._path(collection, "job.json")
        try:
            job = MapJob(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        if job.state == "running" and not self._is_running(collection.model_id):
            return replace(job, state="interrupted", error="the search service stopped during the job")
        return job

    def wait(self, model_id: str, timeout_s: float) -> None:
        """Until the model's running job ends (for tests)."""
        thread = self._running.get(model_id)
        if thread is not None:
            thread.join(timeout_s)

    def stored(self, collection: Collection) -> StoredMap:
        """The last finished map, read from its file once per version of the file (a map is
        read far more often than made: 112k points take ~1 s to load)."""
        path = self._path(collection, "map.npz")
        try:
            version = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise MapNotFound(
                f"no map was made for model {collection.model_id} yet: start a map job"
            ) from None
        cached = self._loaded.get(collection.name)
        if cached is not None and cached[0] == version:
            return cached[1]
        with np.load(path, allow_pickle=False) as saved:
            offsets = saved["finding_offsets"]
            findings = [str(value) for value in saved["findings"]]
            attributes = PointAttributes(
                dataset=saved["dataset"].tolist(),
                sex=saved["sex"].tolist(),
                view_position=saved["view_position"].tolist(),
                age=[None if age == UNKNOWN_AGE else int(age) for age in saved["age"]],
                findings=[findings[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
            )
            stored = StoredMap(json.loads(str(saved["meta"])), saved["ids"], saved["xy"], attributes)
        self._loaded[collection.name] = (version, stored)
        return stored

    def changes(self, collection: Collection, stored: StoredMap) -> dict[str, Any]:
        """Images added and deleted since the map (IDs only grow: new ones are above its highest),
        and whether that makes it stale."""
        mapped = len(stored.ids)
        highest = int(stored.ids.max()) if mapped else 0
        now = self.store.count(collection)
        added = self.store.count(collection, above=highest)
        deleted = max(0, mapped + added - now)
        return {
            "added": added,
            "deleted": deleted,
            "stale": added + deleted >= max(1, STALE_FRACTION * mapped),
            "stale_fraction": STALE_FRACTION,
        }

    def refresh_if_stale(self, collection: Collection, changes: dict[str, Any]) -> MapJob | None:
        """A new job when the map is stale and none runs; the job that runs otherwise."""
        if not changes["stale"]:
            return None
        try:
            return self.start(collection, automatic=True)
        except (JobRunning, TooFewVectors):
            return self.current(collection)

    # -- the job ---------------------------------------------------------------------------

    def _run(self, collection: Collection, job: MapJob) -> None:
        began = time.monotonic()
        try:
            stored = self._compute(
                collection, job, lambda stage, fraction: self._progress(collection, job, stage, fraction)
            )
            self._write_job(
                collection,
                replace(
                    job, state="done", stage="done", progress=1.0, finished_at=_now(), vectors=len(stored.ids)
                ),
            )
            log.info(
                "map job done",
                extra={
                    "model_id": collection.model_id,
                    "job": job.id,
                    "points": len(stored.ids),
                    "seconds": round(time.monotonic() - began, 1),
                },
            )
        except (MilvusUnavailable, LayoutFailed, ValueError, OSError) as exc:
            log.warning(
                "map job failed", extra={"model_id": collection.model_id, "job": job.id, "error": str(exc)}
            )
            self._write_job(
                collection,
                replace(self._last(collection, job), state="failed", finished_at=_now(), error=str(exc)),
            )
        except Exception as exc:
            log.exception("map job crashed", extra={"model_id": collection.model_id, "job": job.id})
            self._write_job(
                collection,
                replace(
                    self._last(collection, job),
                    state="failed",
                    finished_at=_now(),
                    error=f"internal error ({type(exc).__name__})",
                ),
            )
        finally:
            with self._lock:
                self._running.pop(collection.model_id, None)

    def _compute(
        self, collection: Collection, job: MapJob, progress: Callable[[str, float], None]
    ) -> StoredMap:
        began = time.monotonic()
        covariance = Covariance(collection.dim)
        ids: list[int] = []
        attributes: list[Attributes] = []
        for batch_ids, vectors, batch_attributes in self.store.scan(collection, _READ_BATCH):
            covariance.add(vectors)
            ids += batch_ids
            attributes += batch_attributes
            progress("reading", len(ids) / max(job.vectors, len(ids)))
        if len(ids) < MIN_MAP_VECTORS:
            raise ValueError(
                f"model {collection.model_id} has {len(ids)} vectors; a map needs at least {MIN_MAP_VECTORS}"
            )
        mean, axes, kept = covariance.principal_axes(PCA_DIMENSIONS)
        order = {image_id: i for i, image_id in enumerate(ids)}
        reduced = np.zeros((len(ids), axes.shape[1]), dtype=np.float32)
        present = np.zeros(len(ids), dtype=bool)
        for start in range(0, len(ids), _READ_BATCH):
            read_ids, vectors = self.store.vectors(collection, ids[start : start + _READ_BATCH])
            rows = [order[image_id] for image_id in read_ids]
            reduced[rows] = project(vectors, mean, axes)
            present[rows] = True
            progress("projecting", min(1.0, (start + _READ_BATCH) / len(ids)))
        # Deleted between the two reads: left out of the map.
        kept_rows = np.flatnonzero(present)
        progress("laying out", 0.0)
        with tempfile.TemporaryDirectory(prefix="medsearch-map-") as workdir:
            xy = layout_in_child(reduced[kept_rows], Path(workdir), self.layout_timeout_s)
        progress("saving", 0.0)
        stored = StoredMap(
            meta={
                "model_id": collection.model_id,
                "made_by_job": job.id,
                "computed_at": _now(),
                "points": len(kept_rows),
                "explained_variance": round(kept, 4),
                "seconds": round(time.monotonic() - began, 1),
                "parameters": PARAMETERS,
            },
            ids=np.asarray(ids, dtype=np.int64)[kept_rows],
            xy=xy,
            attributes=_attributes([attributes[i] for i in kept_rows]),
        )
        self._write_map(collection, stored)
        return stored

    # -- storage ---------------------------------------------------------------------------

    def _progress(self, collection: Collection, job: MapJob, stage: str, fraction: float) -> None:
        low, high = _STAGES[stage]
        self._write_job(
            collection, replace(job, stage=stage, progress=round(low + (high - low) * fraction, 3))
        )

    def _last(self, collection: Collection, job: MapJob) -> MapJob:
        """The job as last written (its stage and progress when it failed)."""
        current = self.current(collection)
        return current if current is not None and current.id == job.id else job

    def _write_job(self, collection: Collection, job: MapJob) -> None:
        _write_atomically(self._path(collection, "job.json"), json.dumps(job.to_json()).encode("utf-8"))

    def _write_map(self, collection: Collection, stored: StoredMap) -> None:
        findings = [finding for entry in stored.attributes.findings for finding in entry]
        offsets = np.cumsum([0, *(len(entry) for entry in stored.attributes.findings)])
        out = io.BytesIO()  # a few MB at 112k points
        np.savez(
            out,
            meta=np.array(json.dumps(stored.meta)),
            ids=stored.ids,
            xy=stored.xy,
            dataset=np.array(stored.attributes.dataset, dtype=str),
            sex=np.array(stored.attributes.sex, dtype=str),
            view_position=np.array(stored.attributes.view_position, dtype=str),
            age=np.array(
                [UNKNOWN_AGE if age is None else age for age in stored.attributes.age], dtype=np.int32
            ),
            findings=np.array(findings, dtype=str),
            finding_offsets=offsets.astype(np.int64),
        )
        _write_atomically(self._path(collection, "map.npz"), out.getvalue())

    def _path(self, collection: Collection, suffix: str) -> Path:
        return self.folder / f"{collection.name}.{suffix}"

    def _is_running(self, model_id: str) -> bool:
        thread = self._running.get(model_id)
        return thread is not None and thread.is_alive()


def _attributes(rows: list[Attributes]) -> PointAttributes:
    return PointAttributes(
        dataset=[row.dataset for row in rows],
        sex=[row.sex for row in rows],
        view_position=[row.view_position for row in rows],
        age=[None if row.age == UNKNOWN_AGE else row.age for row in rows],
        findings=[list(row.findings) for row in rows],
    )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
