"""Similarity maps: where in each of two images their similarity comes from.

The vector of an image is its feature map F (7 x 7 cells of 2048 features, ResNet-50's last
convolutional block) averaged over the cells and normalized: e = v / |v| with v = mean(F).
So the cosine score of a query q and a result r splits exactly over q's cells,

    score = e_q . e_r = sum over cells c of  F_q[c] . e_r / (49 |v_q|)

and, the same way, over r's cells (Stylianou et al., "Visualizing Deep Similarity Networks",
2019). Each map is one of these sums' terms per cell: it sums to the score, needs one forward
pass per image and no gradients, and an image against itself gives the same map both ways.
A cell is bright where that part of one image looks like the other image as a whole; the
maps say what the model compares, not what is clinically alike.

The 7 x 7 grid covers the model's letterboxed input (of the whole image, or of a region of
it); `Placement` maps it back onto the original image, so a viewer can stretch the grid over
the extent it gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medsearch_embedder.preprocessing import INPUT_SIZE, Prepared, Region, letterbox_geometry


@dataclass(frozen=True)
class Placement:
    """Where the model's input square lies over an image: `extent` is (left, top, right,
    bottom) as fractions of the image's width and height, past 0 and 1 where the letterbox
    padded it. Fractions, so the extent holds for the image at any size a viewer shows it."""

    extent: tuple[float, float, float, float]

    @classmethod
    def of(cls, prepared: Prepared) -> Placement:
        region = prepared.region or Region(0, 0, prepared.width, prepared.height)
        seen_width, seen_height = region.right - region.left, region.bottom - region.top
        scaled_width, scaled_height, left, top = letterbox_geometry(seen_width, seen_height, INPUT_SIZE)
        x_scale, y_scale = scaled_width / seen_width, scaled_height / seen_height
        return cls(
            (
                (region.left - left / x_scale) / prepared.width,
                (region.top - top / y_scale) / prepared.height,
                (region.left + (INPUT_SIZE - left) / x_scale) / prepared.width,
                (region.top + (INPUT_SIZE - top) / y_scale) / prepared.height,
            )
        )

    def to_json(self) -> list[float]:
        return [round(value, 5) for value in self.extent]


@dataclass(frozen=True)
class PairMaps:
    """The score of a query and a result, and each one's map, which sums to it."""

    score: float
    query: NDArray[np.float64]
    result: NDArray[np.float64]


def pair_maps(query: NDArray[np.float32], result: NDArray[np.float32]) -> PairMaps:
    """The maps of two images from their (7, 7, 2048) feature maps, in float64: the sums hold
    to rounding. An image the model finds no features in has no direction: its map is zero."""
    query_vector, query_norm = _pooled(query)
    result_vector, result_norm = _pooled(result)
    if query_norm == 0 or result_norm == 0:
        zeros = np.zeros(query.shape[:2])
        return PairMaps(0.0, zeros, zeros.copy())
    cells = query.shape[0] * query.shape[1]
    query_map = query.astype(np.float64) @ (result_vector / result_norm) / (cells * query_norm)
    result_map = result.astype(np.float64) @ (query_vector / query_norm) / (cells * result_norm)
    score = float(query_vector @ result_vector / (query_norm * result_norm))
    return PairMaps(score, query_map, result_map)


def _pooled(features: NDArray[np.float32]) -> tuple[NDArray[np.float64], float]:
    vector = features.astype(np.float64).mean(axis=(0, 1))
    return vector, float(np.linalg.norm(vector))
