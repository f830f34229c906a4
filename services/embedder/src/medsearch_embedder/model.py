"""ResNet-50: built by TensorFlow, run by TensorFlow or by ONNX Runtime.

TensorFlow is always the model's source: it builds ResNet-50 with the weights, and the model ID
digests its variables. On GPU TensorFlow runs it. On CPU (`MEDSEARCH_EMBEDDER_RUNTIME=auto`) the
same `forward` function is converted to ONNX once per model ID (onnx_model.py) and ONNX Runtime
runs it, faster here at every batch size and with vectors equal to TensorFlow's within 1e-6 cosine.

TensorFlow never calls the Keras model eagerly per request (4x slower, 5.6 GB here): one
concrete `tf.function` per batch size in a fixed set, traced and run once at load, so no
request ever waits for a trace. A batch is padded up to the next size in the set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from keras.applications.resnet50 import ResNet50, preprocess_input
from numpy.typing import NDArray

from medsearch_embedder.preprocessing import INPUT_SIZE, PREPROCESSING_VERSION
from medsearch_embedder.weights import IMAGENET_MD5, WeightsSpec

log = logging.getLogger("medsearch.embedder")
# `medsearch-train` writes the model card beside the weights file, named after it.
CARD_SUFFIX = ".card.json"

ARCHITECTURE = "resnet50"
DIM = 2048
# The last convolutional block's output, which the average pool turns into the vector: a
# GRID x GRID map of DIM-d features, each cell seeing mostly its 32 x 32 px of the input.
FEATURE_LAYER = "conv5_block3_out"
GRID = 7


class ModelLoadError(Exception):
    """The model could not be built on the configured device or with the configured weights."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    weights: str
    meaningful: bool
    runtime: str
    device: str
    precision: str
    batch_sizes: tuple[int, ...]
    dim: int = DIM
    input_size: int = INPUT_SIZE
    card: dict[str, Any] | None = None  # the headline of the weights' model card, when they have one

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "architecture": ARCHITECTURE,
            "dim": self.dim,
            "input_size": [self.input_size, self.input_size],
            "preprocessing": PREPROCESSING_VERSION,
            "weights": self.weights,
            "meaningful": self.meaningful,
            "warning": None
            if self.meaningful
            else "Random weights: the vectors do not describe the images; results are not meaningful.",
            "runtime": self.runtime,
            "device": self.device,
            "precision": self.precision,
            "batch_sizes": list(self.batch_sizes),
            "card": self.card,
        }


def batch_sizes_up_to(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch`: at most 2x padding waste."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


class Runner(Protocol):
    """Runs one batch of at most `max_batch` inputs: (n, 224, 224) uint8 -> (n, 2048) float32
    vectors, or (n, 7, 7, 2048) float32 feature maps (for similarity maps)."""

    def __call__(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]: ...

    def features(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]: ...


class Embedder:
    """Turns a batch of letterboxed grayscale inputs into L2-normalized 2048-d vectors."""

    def __init__(self, info: ModelInfo, run: Runner) -> None:
        self.info = info
        self._run = run
        self.max_batch = max(info.batch_sizes)

    def embed(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(n, 224, 224) uint8 -> (n, 2048) float32, each row of norm 1 (or 0 when the model sees nothing)."""
        chunks = [
            self._run(inputs[start : start + self.max_batch])
            for start in range(0, len(inputs), self.max_batch)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, DIM), dtype=np.float32)

    def features(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(n, 224, 224) uint8 -> (n, 7, 7, 2048) float32: the maps whose spatial mean, normalized,
        is each input's vector."""
        chunks = [
            self._run.features(inputs[start : start + self.max_batch])
            for start in range(0, len(inputs), self.max_batch)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, GRID, GRID, DIM), dtype=np.float32)


class TensorFlowRunner:
    """Pads a batch up to the next traced size and runs that concrete function on the device."""

    def __init__(self, functions: dict[int, Callable[[tf.Tensor], tf.Tensor]], device: str) -> None:
        self._functions = functions
        self._sizes = sorted(functions)
        self._device = device

    def __call__(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self._run(inputs, 0)

    def features(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self._run(inputs, 1)

    def _run(self, inputs: NDArray[np.uint8], output: int) -> NDArray[np.float32]:
        size = next(s for s in self._sizes if s >= len(inputs))
        padded = np.zeros((size, *inputs.shape[1:]), dtype=np.uint8)
        padded[: len(inputs)] = inputs
        with tf.device(self._device):
            # Only the output asked for leaves the device.
            outputs = self._functions[size](tf.constant(padded))
        return np.asarray(outputs[output], dtype=np.float32)[: len(inputs)]


def load_embedder(
    weights: WeightsSpec,
    *,
    device: str,
    precision: str,
    max_batch: int,
    runtime: str = "auto",
    cache_dir: Path | None = None,
) -> Embedder:
    """Build ResNet-50 with the located `weights`, then ready the runtime for every batch size.

    `runtime` is auto, tensorflow or onnxruntime; ONNX Runtime keeps its converted model in
    `cache_dir` (None: convert at every load). When ONNX Runtime cannot run the model (not
    installed, the conversion failed), auto runs TensorFlow and says so in a warning.
    """
    started = time.perf_counter()
    if runtime == "onnxruntime" and device == "gpu":
        raise ModelLoadError(
            "MEDSEARCH_EMBEDDER_RUNTIME=onnxruntime runs on the CPU only, and MEDSEARCH_EMBEDDER_DEVICE=gpu "
            "asks for a GPU: the GPU runtime is tensorflow (or auto, which picks it there)"
        )
    device_name = _choose_device(device)
    on_gpu = "GPU" in device_name
    if precision == "mixed_float16" and not on_gpu:
        raise ModelLoadError("MEDSEARCH_EMBEDDER_PRECISION=mixed_float16 needs a GPU; on CPU it is slower")
    if runtime == "onnxruntime" and on_gpu:
        raise ModelLoadError(
            "MEDSEARCH_EMBEDDER_RUNTIME=onnxruntime runs on the CPU only, and MEDSEARCH_EMBEDDER_DEVICE=auto "
            "found a GPU: set the device to cpu, or the runtime to tensorflow or auto"
        )
    chosen = runtime if runtime != "auto" else ("tensorflow" if on_gpu else "onnxruntime")
    # Mixed precision: float16 compute on tensor cores, float32 weights and output.
    keras.mixed_precision.set_global_policy(precision)
    try:
        with tf.device(device_name):
            model = build_model(weights)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"the weights ({weights.describe()}) do not fit ResNet-50 without top: {exc}"
        ) from exc
    finally:
        keras.mixed_precision.set_global_policy("float32")

    identity = model_id(weights, model)
    run: Runner | None = None
    if chosen == "onnxruntime":
        # Imported only here: the GPU image has no ONNX Runtime.
        from medsearch_embedder.onnx_model import load_onnx_runner

        try:
            run, version = load_onnx_runner(weights, identity, cache_dir=cache_dir, max_batch=max_batch)
        except ModelLoadError as exc:
            if runtime != "auto":
                raise
            # auto asks for the fastest runtime that works here; TensorFlow gives the same vectors.
            log.warning("ONNX Runtime cannot run the model: TensorFlow runs it", extra={"error": str(exc)})
        else:
            # A dynamic batch dimension: every size up to max_batch runs as it is, unpadded.
            sizes = tuple(range(1, max_batch + 1))
            description = f"onnxruntime {version} (converted from tensorflow {tf.__version__})"
    if run is None:
        sizes = batch_sizes_up_to(max_batch)
        run = _traced(served_function(model), device_name, sizes)
        description = f"tensorflow {tf.__version__}"
    info = ModelInfo(
        model_id=identity,
        weights=weights.describe(),
        meaningful=weights.meaningful,
        runtime=description,
        device=device_name.lstrip("/"),
        precision=precision,
        batch_sizes=sizes,
        card=card_headline(weights, identity),
    )
    log.info(
        "model loaded",
        extra={**info.to_json(), "load_seconds": round(time.perf_counter() - started, 1)},
    )
    return Embedder(info, run)


def served_function(model: keras.Model) -> Any:
    """uint8 (n, 224, 224) -> (L2-normalized vectors (n, 2048), feature maps (n, 7, 7, 2048)),
    both float32: what both runtimes run. The vector is the maps' spatial mean, normalized,
    which is what makes a similarity map an exact decomposition of the score (maps.py)."""
    with_maps = keras.Model(model.inputs, [model.output, model.get_layer(FEATURE_LAYER).output])

    @tf.function  # type: ignore[untyped-decorator]
    def served(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)
        rgb = tf.repeat(pixels[..., tf.newaxis], 3, axis=-1)  # the grayscale X-ray on all three channels
        pooled, features = with_maps(preprocess_input(rgb), training=False)
        vectors = tf.math.l2_normalize(tf.cast(pooled, tf.float32), axis=1)
        return vectors, tf.cast(features, tf.float32)

    return served


def forward_function(model: keras.Model) -> Any:
    """uint8 (n, 224, 224) -> L2-normalized float32 (n, 2048): the served vectors alone."""
    served = served_function(model)

    @tf.function  # type: ignore[untyped-decorator]
    def forward(images: tf.Tensor) -> tf.Tensor:
        return served(images)[0]

    return forward


def card_headline(weights: WeightsSpec, identity: str) -> dict[str, Any] | None:
    """What the UI shows of the model card `medsearch-train` writes beside its weights file
    (`<file>.card.json`): how the weights were trained and their validation figures. A card
    written for other weights (its model_id differs) is ignored, with a warning."""
    if weights.mode != "file" or weights.path is None:
        return None
    path = weights.path.with_name(weights.path.name + CARD_SUFFIX)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        if card.get("model_id") != identity:
            log.warning(
                "the model card beside the weights is for other weights: not shown", extra={"card": path.name}
            )
            return None
        validation, training = card["validation"], card["training"]
        return {
            "starting_weights": str(card["starting_weights"]),
            "training_images": int(card["data"]["train"]["images"]),
            "split": str(card["split"].get("method", "")),
            "epochs_run": int(training["epochs_run"]),
            "best_epoch": int(training["best_epoch"]),
            "validation_mean_auc": validation["mean_auc"],
            "validation_auc": dict(validation["auc"]),
            "date": str(card["date"]),
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("the model card beside the weights cannot be read: not shown", extra={"error": str(exc)})
        return None


def _traced(forward: Any, device_name: str, sizes: tuple[int, ...]) -> TensorFlowRunner:
    functions = {}
    for size in sizes:
        with tf.device(device_name):
            concrete = forward.get_concrete_function(tf.TensorSpec((size, INPUT_SIZE, INPUT_SIZE), tf.uint8))
            concrete(tf.zeros((size, INPUT_SIZE, INPUT_SIZE), tf.uint8))  # warm: first run allocates
        functions[size] = concrete
    return TensorFlowRunner(functions, device_name)


def model_id(weights: WeightsSpec, model: keras.Model) -> str:
    """`resnet50-<weights>-<digest>`: the digest covers the weights' values and the preprocessing
    version, so different vectors never share an ID, however the same weights were loaded."""
    digest = hashlib.sha256(f"{ARCHITECTURE}/{PREPROCESSING_VERSION}".encode())
    for variable in model.weights:
        digest.update(np.ascontiguousarray(variable.numpy(), dtype=np.float32).tobytes())
    return f"{ARCHITECTURE}-{_weights_label(weights)}-{digest.hexdigest()[:10]}"


def _weights_label(weights: WeightsSpec) -> str:
    if weights.mode == "random":
        return f"random{weights.seed}"
    if weights.mode == "file" and weights.path is not None:
        # Keras's ImageNet file under another name is still ImageNet.
        md5 = hashlib.md5(weights.path.read_bytes(), usedforsecurity=False).hexdigest()
        return "imagenet" if md5 == IMAGENET_MD5 else "file"
    return "imagenet"


def build_model(weights: WeightsSpec) -> keras.Model:
    """ResNet-50 without top, average-pooled, with the located `weights`."""
    if weights.mode == "random":
        keras.utils.set_random_seed(weights.seed)  # the same seed gives the same weights in every process
        return ResNet50(
            include_top=False, weights=None, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
        )
    if weights.path is None:
        raise ModelLoadError(f"the weights ({weights.describe()}) were not located before loading")
    model = ResNet50(include_top=False, weights=None, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
    model.load_weights(str(weights.path))
    return model


def _choose_device(device: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ModelLoadError(
            "MEDSEARCH_EMBEDDER_DEVICE=gpu, but TensorFlow sees no GPU (is the CUDA build installed?)"
        )
    if device == "cpu" or not gpus:
        return "/CPU:0"
    for gpu in gpus:
        try:
            # Take GPU memory as needed rather than all of it at start.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialized by an earlier load in this process: keep its setting
    return "/GPU:0"
