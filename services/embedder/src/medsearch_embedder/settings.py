"""The embedder's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medsearch_common.settings import (
    LOG_LEVELS,
    Binding,
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_str,
)
from medsearch_embedder.weights import WEIGHTS_VARIABLE, WeightsSpec, parse_weights

DEFAULT_PORT = 8081
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("float32", "mixed_float16")
# auto: ONNX Runtime on CPU (converted from the TensorFlow model), TensorFlow on GPU.
RUNTIMES = ("auto", "tensorflow", "onnxruntime")
# Relative to the working folder, like the other services' data under var/.
DEFAULT_CACHE_DIR = Path("var/embedder")


@dataclass(frozen=True)
class EmbedderSettings:
    binding: Binding
    weights: WeightsSpec = field(default_factory=lambda: WeightsSpec("imagenet"))
    device: str = "auto"
    precision: str = "float32"
    runtime: str = "auto"
    # Converted models by model ID: a restart loads the file instead of converting again.
    cache_dir: Path = DEFAULT_CACHE_DIR
    # Batching: on 2 CPU cores batches past 8 gain nothing; a GPU wants 32 or more.
    max_batch: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 64
    max_images_per_request: int = 32
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    max_request_bytes: int = 256 * 1024 * 1024
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    wait_timeout_s: float = 60.0
    # More threads than a batch holds: while the model runs one batch, other requests
    # are read and decoded into the next, so the model never waits on HTTP.
    threads: int = 32
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.runtime == "onnxruntime" and (self.device == "gpu" or self.precision == "mixed_float16"):
            setting = (
                "MEDSEARCH_EMBEDDER_DEVICE=gpu"
                if self.device == "gpu"
                else "MEDSEARCH_EMBEDDER_PRECISION=mixed_float16"
            )
            raise SettingsError(
                f"MEDSEARCH_EMBEDDER_RUNTIME=onnxruntime runs on the CPU only, and {setting} asks for a "
                "GPU: the GPU runtime is tensorflow (or auto, which picks it there)"
            )
        if self.max_queue < self.max_images_per_request:
            raise SettingsError(
                f"MEDSEARCH_EMBEDDER_MAX_QUEUE ({self.max_queue}) must be at least "
                f"MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}): "
                "a request larger than the queue could never be served"
            )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> EmbedderSettings:
        def number(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
            return env_int(environ, f"MEDSEARCH_EMBEDDER_{name}", default, minimum=minimum, maximum=maximum)

        return cls(
            binding=Binding.from_environ(environ, DEFAULT_PORT),
            weights=parse_weights(env_str(environ, WEIGHTS_VARIABLE, "imagenet")),
            device=env_choice(environ, "MEDSEARCH_EMBEDDER_DEVICE", cls.device, DEVICES),
            precision=env_choice(environ, "MEDSEARCH_EMBEDDER_PRECISION", cls.precision, PRECISIONS),
            runtime=env_choice(environ, "MEDSEARCH_EMBEDDER_RUNTIME", cls.runtime, RUNTIMES),
            cache_dir=Path(
                env_str(environ, "MEDSEARCH_EMBEDDER_CACHE_DIR", str(DEFAULT_CACHE_DIR))
            ).expanduser(),
            max_batch=number("MAX_BATCH", cls.max_batch, 1, 256),
            max_delay_ms=env_float(
                environ, "MEDSEARCH_EMBEDDER_MAX_DELAY_MS", cls.max_delay_ms, minimum=0, maximum=1000
            ),
            max_queue=number("MAX_QUEUE", cls.max_queue, 1, 100_000),
            max_images_per_request=number("MAX_IMAGES_PER_REQUEST", cls.max_images_per_request, 1, 1024),
            max_image_bytes=number("MAX_IMAGE_BYTES", cls.max_image_bytes, 1024),
            max_image_pixels=number("MAX_IMAGE_PIXELS", cls.max_image_pixels, 1024),
            max_request_bytes=number("MAX_REQUEST_BYTES", cls.max_request_bytes, 1024),
            decode_threads=number("DECODE_THREADS", os.cpu_count() or 2, 1, 256),
            wait_timeout_s=env_float(
                environ, "MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", cls.wait_timeout_s, minimum=0.1, maximum=3600
            ),
            threads=number("THREADS", cls.threads, 1, 256),
            log_level=env_choice(environ, "MEDSEARCH_LOG_LEVEL", cls.log_level, LOG_LEVELS),
        )
