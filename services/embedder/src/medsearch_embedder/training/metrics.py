"""Validation ROC AUC per finding, computed exactly.

Exact, not keras.metrics.AUC's thresholded estimate: the rank (Mann-Whitney U) statistic over
all validation scores, a tie counted as half a correct ordering. A validation set is at most
tens of thousands of images, so sorting them once per finding costs nothing, and a result with
no binning error can be compared across runs and with published ChestX-ray14 figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray


def roc_auc(scores: NDArray[np.floating], positives: NDArray[np.bool_]) -> float:
    """P(a random positive scores above a random negative), ties counting one half."""
    _, where, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # The 1-based rank of each distinct score, averaged over its ties.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[where]
    count_positive = int(positives.sum())
    count_negative = len(positives) - count_positive
    if count_positive == 0 or count_negative == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    positive_rank_sum = float(ranks[positives].sum())
    return (positive_rank_sum - count_positive * (count_positive + 1) / 2.0) / (
        count_positive * count_negative
    )


def scorable_findings(labels: NDArray[np.float32]) -> list[int]:
    """Columns with both positive and negative images: the findings AUC can score."""
    positives = labels.sum(axis=0)
    return [int(column) for column in np.flatnonzero((positives > 0) & (positives < len(labels)))]


def auc_per_finding(
    scores: NDArray[np.floating], labels: NDArray[np.float32], vocabulary: Sequence[str]
) -> dict[str, float | None]:
    """Each finding's AUC over the validation images; None where it has no positive or no negative."""
    scorable = set(scorable_findings(labels))
    return {
        name: roc_auc(scores[:, column], labels[:, column] > 0.5) if column in scorable else None
        for column, name in enumerate(vocabulary)
    }


def mean_auc(per_finding: Mapping[str, float | None]) -> float:
    """The unweighted mean over the scorable findings (ChestX-ray14's usual summary)."""
    values = [value for value in per_finding.values() if value is not None]
    if not values:
        raise ValueError("no finding has both positive and negative validation images")
    return float(np.mean(values))
