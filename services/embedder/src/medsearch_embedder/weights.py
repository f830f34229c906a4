"""Which weights the model loads: `imagenet`, a weights file, or `random:<seed>`.

ImageNet weights come through Keras's own download and cache; where they cannot be had the
service stops with the ways to provide them. It never falls back to other weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from medsearch_common.settings import SettingsError
from medsearch_embedder.errors import WeightsUnavailable

WEIGHTS_VARIABLE = "MEDSEARCH_EMBEDDER_WEIGHTS"
# Keras's ResNet-50 weights without the classifier, as keras.applications fetches them.
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
_RANDOM = re.compile(r"random:([0-9]{1,10})")

WeightsMode = Literal["imagenet", "file", "random"]


@dataclass(frozen=True)
class WeightsSpec:
    mode: WeightsMode
    path: Path | None = None  # a file once located; imagenet's is in Keras's cache
    seed: int | None = None

    @property
    def meaningful(self) -> bool:
        """Random weights give vectors that say nothing about the images' content."""
        return self.mode != "random"

    def describe(self) -> str:
        """How the weights were chosen, without the folders a path would show."""
        if self.mode == "random":
            return f"random:{self.seed}"
        if self.mode == "file" and self.path is not None:
            return f"file:{self.path.name}"
        return self.mode


def parse_weights(raw: str) -> WeightsSpec:
    value = raw.strip()
    if value.lower() == "imagenet":
        return WeightsSpec("imagenet")
    if value.lower() == "random" or value.lower().startswith("random:"):
        match = _RANDOM.fullmatch(value)
        if not match or int(match[1]) >= 2**32:
            raise SettingsError(
                f"{WEIGHTS_VARIABLE}: random weights need a seed from 0 to 2^32-1, e.g. random:42"
            )
        return WeightsSpec("random", seed=int(match[1]))
    if not value:
        raise SettingsError(
            f"{WEIGHTS_VARIABLE} is empty: use imagenet, a weights file path or random:<seed>"
        )
    return WeightsSpec("file", path=Path(value).expanduser())


def keras_home() -> Path:
    """Where Keras caches downloads: $KERAS_HOME, else ~/.keras."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def locate_weights(spec: WeightsSpec) -> WeightsSpec:
    """The spec with the weights file found (downloaded into Keras's cache for `imagenet`).

    Raises WeightsUnavailable with what to do when there is no such file.
    """
    if spec.mode == "random":
        return spec
    if spec.mode == "file":
        assert spec.path is not None
        if not spec.path.is_file() or not os.access(spec.path, os.R_OK):
            raise WeightsUnavailable(
                f"{WEIGHTS_VARIABLE}={spec.path}: no readable file there. Point it to a Keras weights file "
                f"of ResNet-50 without its top, e.g. {IMAGENET_FILE}."
            )
        return spec
    return replace(spec, path=_fetch_imagenet())


def _fetch_imagenet() -> Path:
    import keras  # here: TensorFlow takes seconds to load, and parsing settings must not wait for it

    cache = keras_home() / "models" / IMAGENET_FILE
    # Keras deletes a cached file whose md5 is wrong before it downloads again: say so if it fails.
    replaced = (
        cache.is_file() and hashlib.md5(cache.read_bytes(), usedforsecurity=False).hexdigest() != IMAGENET_MD5
    )
    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_FILE,
                IMAGENET_URL,
                cache_dir=str(keras_home()),
                cache_subdir="models",
                file_hash=IMAGENET_MD5,
            )
        )
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        found = " (the file there had the wrong md5, so Keras removed it)" if replaced else ""
        raise WeightsUnavailable(
            f"The ImageNet weights of ResNet-50 are not in Keras's cache ({cache}){found} and could not be "
            f"downloaded from {IMAGENET_URL} ({exc}). Provide them in one of these ways: copy "
            f"{IMAGENET_FILE} (md5 {IMAGENET_MD5}) into {cache.parent}/ (set KERAS_HOME to use another "
            f"cache folder); or set {WEIGHTS_VARIABLE}=/path/to/{IMAGENET_FILE}. For a smoke run whose "
            f"results mean nothing, set {WEIGHTS_VARIABLE}=random:42."
        ) from exc
