"""What is trained: the embedder's ResNet-50 under a head of one sigmoid unit per finding.

Only the backbone is served: the head exists so that the pooled 2048-d vector learns what
tells findings apart, and the search contract (that vector, L2-normalised) stays as it is.

The objective is multi-label binary cross-entropy with per-finding positive weights, by
default alone: it is the CheXNet-style baseline, and it is stable at the small batches
(16) that fit a ResNet-50 on one GPU. `--retrieval-loss supcon` adds a supervised-contrastive
term on the L2-normalised pooled vector, "shares a finding" being positive; it shapes the very
space search ranks in, but it learns from the pairs inside a batch, and at 16 images (many of
them without any finding) a batch holds few positive pairs, so it is off by default.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.applications.resnet50 import preprocess_input
from numpy.typing import NDArray

from medsearch_embedder.model import DIM

# neg/pos weights beyond 50 (Hernia in ChestX-ray14 is about 1 in 500) make single images dominate.
MAX_POSITIVE_WEIGHT = 50.0
SUPCON_TEMPERATURE = 0.1


def pooled_features(backbone: keras.Model, images: tf.Tensor, *, training: bool) -> tf.Tensor:
    """uint8 (n, 224, 224) -> float32 (n, 2048): `model.forward_function`'s graph before its
    L2 normalisation, so what is trained is exactly what is served."""
    pixels = tf.cast(images, tf.float32)
    rgb = tf.repeat(pixels[..., tf.newaxis], 3, axis=-1)  # the grayscale X-ray on all three channels
    return tf.cast(backbone(preprocess_input(rgb), training=training), tf.float32)


class FindingClassifier:
    """The backbone and its finding head. The head computes in float32 under mixed precision:
    sigmoid logits in float16 saturate and their loss underflows."""

    def __init__(self, backbone: keras.Model, findings: int) -> None:
        self.backbone = backbone
        self.head = keras.layers.Dense(findings, dtype="float32", name="findings")
        self.head.build((None, DIM))

    @property
    def trainable_variables(self) -> list[Any]:
        return [*self.backbone.trainable_variables, *self.head.trainable_variables]

    def __call__(self, images: tf.Tensor, *, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """Pooled features (n, 2048) and finding logits (n, findings), both float32."""
        pooled = pooled_features(self.backbone, images, training=training)
        return pooled, self.head(pooled)


def positive_weights(labels: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per finding, negatives / positives in the training images, clipped to [1, 50]: a rare
    finding's positives count as much as its negatives. A finding never positive gets 50."""
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    with np.errstate(divide="ignore"):
        ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), MAX_POSITIVE_WEIGHT)
    return np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT).astype(np.float32)


def weighted_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy averaged over images and findings, positives weighted per finding."""
    return tf.reduce_mean(
        tf.nn.weighted_cross_entropy_with_logits(labels=labels, logits=logits, pos_weight=weights)
    )


def supervised_contrastive(
    pooled: tf.Tensor, labels: tf.Tensor, temperature: float = SUPCON_TEMPERATURE
) -> tf.Tensor:
    """Khosla et al.'s SupCon on L2-normalised vectors; two images are positives when they share
    a finding. Anchors with no positive in the batch (no finding, or none shared) do not count."""
    vectors = tf.math.l2_normalize(pooled, axis=1)
    count = tf.shape(vectors)[0]
    itself = tf.eye(count)
    similarity = tf.matmul(vectors, vectors, transpose_b=True) / temperature - 1e9 * itself
    log_probability = similarity - tf.reduce_logsumexp(similarity, axis=1, keepdims=True)
    shares = tf.cast(tf.matmul(labels, labels, transpose_b=True) > 0.5, tf.float32) * (1.0 - itself)
    positives = tf.reduce_sum(shares, axis=1)
    per_anchor = -tf.reduce_sum(shares * log_probability, axis=1) / tf.maximum(positives, 1.0)
    anchors = tf.cast(positives > 0, tf.float32)
    return tf.reduce_sum(per_anchor * anchors) / tf.maximum(tf.reduce_sum(anchors), 1.0)


class Objective:
    """Weighted BCE, plus `retrieval_weight` x SupCon when `retrieval_loss` is "supcon"."""

    def __init__(
        self, weights: NDArray[np.float32], retrieval_loss: str | None, retrieval_weight: float
    ) -> None:
        self.weights = tf.constant(weights, dtype=tf.float32)
        self.retrieval_loss = retrieval_loss
        self.retrieval_weight = retrieval_weight

    def classification(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return weighted_cross_entropy(labels, logits, self.weights)

    def __call__(self, labels: tf.Tensor, logits: tf.Tensor, pooled: tf.Tensor) -> tf.Tensor:
        loss = self.classification(labels, logits)
        if self.retrieval_loss == "supcon":
            loss += self.retrieval_weight * supervised_contrastive(pooled, labels)
        return loss
