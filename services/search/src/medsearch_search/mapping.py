"""The 2-D map of a collection: exact PCA to at most 50 dimensions, then UMAP to two.

- Why UMAP (umap-learn): it keeps local neighbourhoods (near-identical X-rays stay together)
  and more of the global layout than t-SNE, lays out 112k points in minutes on two cores, and
  is the well-kept reference implementation. PCA first is what its authors advise for
  high-dimensional inputs: 2048 -> 50 dimensions drops noise and makes UMAP's neighbour search
  cheaper.
- Why exact PCA from a streamed covariance: two passes over the vectors, batch by batch, need
  one batch and a dim x dim matrix in memory, never the whole collection (918 MB at 112k).
- UMAP runs in a child process (`python -m medsearch_search.mapping IN OUT`): its compiled
  loops hold the GIL for minutes, which would stall the service's request threads, and its
  memory goes back to the system when the child ends.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

PCA_DIMENSIONS = 50
UMAP_NEIGHBORS = 15
UMAP_MIN_DIST = 0.1
UMAP_SEED = 42  # the same collection gives the same map
# UMAP needs more points than neighbours; below this a map says nothing.
MIN_MAP_VECTORS = 20
PARAMETERS = {
    "pca_dimensions": PCA_DIMENSIONS,
    "umap_neighbors": UMAP_NEIGHBORS,
    "umap_min_dist": UMAP_MIN_DIST,
    "seed": UMAP_SEED,
}


class LayoutFailed(Exception):
    """The UMAP child process failed or ran out of time; the message says which."""


class Covariance:
    """The mean and covariance of vectors added batch by batch (float64 sums of float32
    products: each batch's Gram matrix is exact enough in float32 and twice as fast)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._gram = np.zeros((dim, dim), dtype=np.float64)

    def add(self, batch: NDArray[np.float32]) -> None:
        batch = np.asarray(batch, dtype=np.float32)
        self.count += len(batch)
        self._sum += batch.sum(axis=0, dtype=np.float64)
        self._gram += batch.T @ batch

    def principal_axes(self, k: int) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        """The mean, the `k` leading principal axes (dim x k, each of deterministic sign) and
        the fraction of the variance they keep."""
        if self.count < 2:
            raise ValueError("principal axes need at least two vectors")
        mean = self._sum / self.count
        covariance = self._gram / self.count - np.outer(mean, mean)
        values, vectors = np.linalg.eigh(covariance)  # ascending
        k = min(k, len(values))
        axes = vectors[:, ::-1][:, :k].copy()
        # An eigenvector's sign is arbitrary: make each axis's largest entry positive.
        largest = np.abs(axes).argmax(axis=0)
        axes *= np.sign(axes[largest, np.arange(k)])
        total = float(np.clip(values, 0, None).sum())
        kept = float(np.clip(values[::-1][:k], 0, None).sum() / total) if total > 0 else 1.0
        return mean, axes, kept


def project(
    batch: NDArray[np.float32], mean: NDArray[np.float64], axes: NDArray[np.float64]
) -> NDArray[np.float32]:
    return np.asarray((np.asarray(batch, dtype=np.float64) - mean) @ axes, dtype=np.float32)


def layout(reduced: NDArray[np.float32]) -> NDArray[np.float32]:
    """UMAP's 2-D layout of the reduced vectors, scaled into the unit square (aspect kept)."""
    # umap-learn imports TensorFlow for its parametric variant whenever it is installed (the
    # development environment has it for the embedder): 5 s and 1 GB the map never uses.
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
    import umap  # imported here: only the child process pays for numba

    count = len(reduced)
    if count < MIN_MAP_VECTORS:
        raise ValueError(f"a map needs at least {MIN_MAP_VECTORS} vectors, got {count}")
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(UMAP_NEIGHBORS, count - 1),
        min_dist=UMAP_MIN_DIST,
        metric="euclidean",  # of PCA coordinates of unit vectors: cosine's order, cheaper
        random_state=UMAP_SEED,
    )
    xy = np.asarray(reducer.fit_transform(reduced), dtype=np.float64)
    return unit_square(xy)


def unit_square(xy: NDArray[np.float64]) -> NDArray[np.float32]:
    low = xy.min(axis=0)
    span = float((xy.max(axis=0) - low).max()) or 1.0
    return np.asarray((xy - low) / span, dtype=np.float32)


def layout_in_child(reduced: NDArray[np.float32], workdir: Path, timeout_s: float) -> NDArray[np.float32]:
    """`layout` run by a child Python process over files in `workdir`."""
    source, target = workdir / "reduced.npy", workdir / "layout.npy"
    np.save(source, reduced)
    try:
        finished = subprocess.run(  # noqa: S603 - this interpreter, this module, our own files
            [sys.executable, "-m", "medsearch_search.mapping", str(source), str(target)],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LayoutFailed(f"the UMAP layout ran past {timeout_s:.0f} s") from None
    if finished.returncode != 0:
        # The child's last words go to the log only: they may name files and folders.
        last = (finished.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        log.warning("map layout failed", extra={"exit": finished.returncode, "error": last[:500]})
        raise LayoutFailed(f"the UMAP layout failed (exit {finished.returncode})")
    xy: NDArray[np.float32] = np.load(target)
    if xy.shape != (len(reduced), 2) or not np.isfinite(xy).all():
        raise LayoutFailed(f"the UMAP layout gave a {xy.shape} array for {len(reduced)} points")
    return xy


@dataclass(frozen=True)
class PointAttributes:
    """The attributes a map is coloured by, one entry per point."""

    dataset: list[str]
    sex: list[str]
    view_position: list[str]
    age: list[int | None]
    findings: list[Sequence[str]]

    def to_json(self) -> dict[str, Any]:
        """Columns: text fields as codes into a list of values (a compact answer at 112k points)."""
        return {
            "dataset": _coded(self.dataset),
            "sex": _coded(self.sex),
            "view_position": _coded(self.view_position),
            "age": self.age,
            "findings": _coded_lists(self.findings),
        }


def _coded(column: Sequence[str]) -> dict[str, Any]:
    values = sorted(set(column))
    index = {value: i for i, value in enumerate(values)}
    # The store's "" (unknown) is null to callers.
    return {"values": [value or None for value in values], "codes": [index[value] for value in column]}


def _coded_lists(column: Sequence[Sequence[str]]) -> dict[str, Any]:
    values = sorted({value for entry in column for value in entry})
    index = {value: i for i, value in enumerate(values)}
    return {"values": values, "codes": [[index[value] for value in entry] for entry in column]}


def main(argv: Sequence[str]) -> int:
    source, target = argv
    # No rename needed: the parent reads the file only after a clean exit.
    np.save(target, layout(np.load(source)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
