"""Image files into batches: the embedder's own `prepare`, then augmentation that keeps anatomy.

Every image goes through `preprocessing.prepare`, as an upload does (letterboxed 224x224
uint8 grayscale), so the weights learn from the pixels they will be served. Files are decoded
in parallel by tf.data; a file that cannot be read stops training with its name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from medsearch_embedder.errors import ImageRejected
from medsearch_embedder.preprocessing import INPUT_SIZE, InputLimits, prepare


@dataclass(frozen=True)
class Augmentation:
    """Small changes of position and exposure, as between two films of one chest.

    No horizontal flip: the heart's side is anatomy (a mirrored film shows dextrocardia or
    situs inversus, a different and rare finding), and a flip would teach the model that
    left and right do not matter. No vertical flip for the same reason.
    """

    max_rotation_degrees: float = 7.0
    min_scale: float = 0.9
    max_scale: float = 1.1
    max_shift: float = 0.05  # of the image's side, each way
    max_brightness: float = 0.1  # of the 0..255 range, each way
    max_contrast: float = 0.1  # contrast factor between 0.9 and 1.1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "horizontal_flip": False}


class ImageDecoder:
    """`prepare` of one file, for tf.data; keeps the failure, whose message TensorFlow would
    bury in a traceback, so that the error can name the file."""

    def __init__(self, limits: InputLimits) -> None:
        self.limits = limits
        self.failure: str | None = None

    def __call__(self, path: bytes) -> NDArray[np.uint8]:
        name = os.fsdecode(path)
        try:
            return prepare(Path(name).read_bytes(), self.limits)
        except OSError as exc:
            self.failure = f"cannot read image {name}: {exc.strerror or exc}"
            raise
        except ImageRejected as exc:
            self.failure = f"cannot read image {name}: {exc}"
            raise


def augment(image: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """One random variation of a (224, 224) uint8 image, drawn from the stateless `seed` (2,):
    rotation, scale and shift about the centre in one bilinear warp (exposed border black, like
    the letterbox), then contrast about the mean and brightness."""
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def uniform(index: int, low: float, high: float, shape: Sequence[int] = ()) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, seeds[index], low, high)

    limit = math.radians(augmentation.max_rotation_degrees)
    angle = uniform(0, -limit, limit)
    scale = uniform(1, augmentation.min_scale, augmentation.max_scale)
    size = tf.cast(tf.shape(image)[0], tf.float32)
    shift = uniform(2, -augmentation.max_shift, augmentation.max_shift, (2,)) * size
    brightness = uniform(3, -augmentation.max_brightness, augmentation.max_brightness) * 255.0
    contrast = uniform(4, 1.0 - augmentation.max_contrast, 1.0 + augmentation.max_contrast)

    # The warp maps each output pixel back into the input:
    # input = centre + R(-angle) (output - centre - shift) / scale.
    centre = (size - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    x0, y0 = centre + shift[0], centre + shift[1]
    transform = tf.stack(
        [cos, sin, centre - cos * x0 - sin * y0, -sin, cos, centre + sin * x0 - cos * y0, 0.0, 0.0]
    )
    pixels = tf.cast(image, tf.float32)[tf.newaxis, :, :, tf.newaxis]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels,
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0, :, :, 0]
    mean = tf.reduce_mean(moved)
    exposed = (moved - mean) * contrast + mean + brightness
    return tf.cast(tf.round(tf.clip_by_value(exposed, 0.0, 255.0)), tf.uint8)


def _decode(path: tf.Tensor, decoder: ImageDecoder) -> tf.Tensor:
    image = tf.numpy_function(decoder, [path], tf.uint8)
    image.set_shape((INPUT_SIZE, INPUT_SIZE))
    return image


def training_batches(
    paths: Sequence[Path],
    labels: NDArray[np.float32],
    *,
    batch_size: int,
    seed: int,
    decoder: ImageDecoder,
    augmentation: Augmentation,
) -> tf.data.Dataset:
    """Shuffled anew each epoch (from `seed`), decoded in parallel, augmented, batched, prefetched.

    A last batch smaller than `batch_size` is dropped when there is a full one: a batch of
    one or two images makes batch normalisation's statistics noise.
    """
    files = tf.data.Dataset.from_tensor_slices(([str(path) for path in paths], labels))
    shuffled = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    decoded = shuffled.map(
        lambda path, label: (_decode(path, decoder), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    augmented = tf.data.Dataset.zip(decoded, seeds).map(
        lambda example, pair: (augment(example[0], pair, augmentation), example[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return augmented.batch(batch_size, drop_remainder=len(paths) >= batch_size).prefetch(tf.data.AUTOTUNE)


def validation_batches(
    paths: Sequence[Path], labels: NDArray[np.float32], *, batch_size: int, decoder: ImageDecoder
) -> tf.data.Dataset:
    """In order, unaugmented: the images as the embedder sees them."""
    files = tf.data.Dataset.from_tensor_slices(([str(path) for path in paths], labels))
    decoded = files.map(
        lambda path, label: (_decode(path, decoder), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    return decoded.batch(batch_size).prefetch(tf.data.AUTOTUNE)
