"""The model on ONNX Runtime: TensorFlow's `forward` converted once per model ID, kept on disk.

The conversion (tf2onnx) runs in a child process: it takes 20-40 s and peaks at about 4.5 GB,
and a process gives all of that back when it ends, where the service would keep 1.6 GB of
it for good. The child builds the model from the same weights, checks the model ID, converts,
checks that ONNX Runtime gives TensorFlow's vectors, and hands the model over on its stdout.

The result is cached as `<model ID>.opset<N>.<format>.onnx` with its SHA-256 beside it, each written
to a temporary file and renamed into place, so a crash never leaves half a file; a file that
does not match its digest, or that ONNX Runtime cannot load, is converted again, never trusted.
A cache folder that cannot be written costs only the cache: the model then runs from memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medsearch_embedder.model import DIM, ModelLoadError
from medsearch_embedder.preprocessing import INPUT_SIZE
from medsearch_embedder.weights import WeightsSpec

log = logging.getLogger("medsearch.embedder")

OPSET = 17
# Bump when the converted graph changes (v2: the feature maps as a second output), so that a
# cached model of the old form is never loaded.
FORMAT = "v2"
# How far a conversion's vectors may be from TensorFlow's; measured: below 1e-6.
MAX_COSINE_DISTANCE = 1e-4
CONVERSION_TIMEOUT_S = 900
_INPUT = "images"


class OnnxRunner:
    """Runs a batch of any size through the ONNX Runtime session, as it is (no padding). The
    model has two outputs, the vectors and the feature maps; each call fetches only one."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._vectors, self._features = (output.name for output in session.get_outputs())

    def __call__(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self._run(inputs, self._vectors)

    def features(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self._run(inputs, self._features)

    def _run(self, inputs: NDArray[np.uint8], output: str) -> NDArray[np.float32]:
        [result] = self._session.run([output], {_INPUT: np.ascontiguousarray(inputs, dtype=np.uint8)})
        return np.asarray(result, dtype=np.float32)


class ConvertedModelCache:
    """A folder of converted models: `<model ID>.opset<N>.<format>.onnx`, its SHA-256 in `<that>.sha256`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, model_id: str) -> Path:
        return self.folder / f"{model_id}.opset{OPSET}.{FORMAT}.onnx"

    def read(self, model_id: str) -> bytes | None:
        """The cached model; None when there is none, or when it does not match its digest."""
        path = self.path(model_id)
        try:
            model = path.read_bytes()
            expected = _digest_path(path).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the converted model", extra={"path": str(path), "error": str(exc)})
            return None
        if hashlib.sha256(model).hexdigest() != expected:
            log.warning("the converted model does not match its digest", extra={"path": str(path)})
            return None
        return model

    def write(self, model_id: str, model: bytes) -> bool:
        """The model, then its digest, each renamed into place whole; False (and a warning) when
        the folder cannot take them: that costs only the cache."""
        path = self.path(model_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _replace(path, model)
            _replace(_digest_path(path), hashlib.sha256(model).hexdigest().encode("ascii") + b"\n")
        except OSError as exc:
            log.warning(
                "cannot cache the converted model: the next start converts again",
                extra={"path": str(path), "error": str(exc)},
            )
            return False
        log.info("converted model cached", extra={"path": str(path)})
        return True


def load_onnx_runner(
    weights: WeightsSpec, model_id: str, *, cache_dir: Path | None, max_batch: int
) -> tuple[OnnxRunner, str]:
    """A warm runner for the model of `weights` (whose ID is `model_id`), and ONNX Runtime's version."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            "MEDSEARCH_EMBEDDER_RUNTIME needs ONNX Runtime on CPU, which is not installed: install "
            "the embedder's `cpu` extra, or set MEDSEARCH_EMBEDDER_RUNTIME=tensorflow"
        ) from exc
    cache = ConvertedModelCache(cache_dir) if cache_dir is not None else None
    session = _cached_session(cache, model_id) if cache is not None else None
    if session is None:
        model = _convert_in_child(weights, model_id)
        try:
            session = _session(model)
        except Exception as exc:  # ONNX Runtime's errors derive from Exception alone
            raise ModelLoadError(f"ONNX Runtime cannot load the converted model: {exc}") from exc
        if cache is not None:
            cache.write(model_id, model)
    runner = OnnxRunner(session)
    # Warm: the first run of a batch size allocates its buffers.
    for size in sorted({1, max_batch}):
        runner(np.zeros((size, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8))
    return runner, str(onnxruntime.__version__)


def _cached_session(cache: ConvertedModelCache, model_id: str) -> Any | None:
    """A session on the cached model; None, to convert again, when there is none or it is damaged."""
    model = cache.read(model_id)
    if model is None:
        return None
    try:
        session = _session(model)
    except Exception as exc:  # ONNX Runtime's errors derive from Exception alone
        log.warning(
            "ONNX Runtime cannot load the converted model",
            extra={"path": str(cache.path(model_id)), "error": str(exc)},
        )
        return None
    log.info("converted model loaded from the cache", extra={"path": str(cache.path(model_id))})
    return session


def _session(model: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # ResNet-50 is one chain of operators: one inter-op thread, and each operator spread over
    # the cores this process may use. Idle workers sleep rather than spin: spinning only pays
    # for calls back to back, which the service never makes, and it took the cores from a
    # decoding thread (a batch-1 call 214 ms instead of 101 ms on 2 cores, measured).
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _convert_in_child(weights: WeightsSpec, model_id: str) -> bytes:
    request = json.dumps(
        {
            "mode": weights.mode,
            "path": str(weights.path) if weights.path is not None else None,
            "seed": weights.seed,
            "model_id": model_id,
        }
    )
    # tf2onnx deep-copies the graph before each optimizer pass unless told not to catch their
    # errors: 6.8 GB peak and 30 s with the copies, 4.2 GB and 20 s without. An optimizer that
    # fails then fails the conversion, and the load says so.
    env = {**os.environ, "TF2ONNX_CATCH_ERRORS": "FALSE"}
    started = time.perf_counter()
    try:
        child = subprocess.run(  # noqa: S603 - this interpreter, this module, and JSON made above
            [sys.executable, "-m", "medsearch_embedder.onnx_model", request],
            capture_output=True,
            env=env,
            timeout=CONVERSION_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"the conversion to ONNX took more than {CONVERSION_TIMEOUT_S} s") from None
    except OSError as exc:
        raise ModelLoadError(f"the conversion to ONNX could not start: {exc}") from exc
    if child.returncode < 0:
        # SIGKILL is most often the kernel's OOM killer: the conversion peaks at about 4.5 GB.
        killed = -child.returncode
        hint = " (out of memory? converting needs about 4.5 GB once)" if killed == signal.SIGKILL else ""
        raise ModelLoadError(f"the conversion to ONNX was killed by signal {killed}{hint}")
    if child.returncode != 0:
        last_lines = child.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ModelLoadError(
            f"the conversion to ONNX failed: {(last_lines or [f'exit {child.returncode}'])[0]}"
        )
    log.info(
        "model converted to ONNX",
        extra={
            "opset": OPSET,
            "bytes": len(child.stdout),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    return child.stdout


def _replace(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _digest_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def _convert(request: dict[str, Any]) -> bytes:
    """In the child: the model of the request's weights in ONNX, checked against TensorFlow."""
    import tensorflow as tf
    import tf2onnx

    from medsearch_embedder.model import GRID, build_model, model_id, served_function

    path = request["path"]
    weights = WeightsSpec(request["mode"], path=Path(path) if path else None, seed=request["seed"])
    model = build_model(weights)
    if model_id(weights, model) != request["model_id"]:
        raise ModelLoadError(f"the weights changed while loading: not {request['model_id']} any more")
    served = served_function(model)
    signature = [tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE), tf.uint8, name=_INPUT)]
    proto, _ = tf2onnx.convert.from_function(served, input_signature=signature, opset=OPSET)
    converted: bytes = proto.SerializeToString()
    probe = np.random.default_rng(0).integers(0, 256, (2, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    expected = np.asarray(served(tf.constant(probe))[0], dtype=np.float64)
    got, features = _session(converted).run(None, {_INPUT: probe})
    got = np.asarray(got, dtype=np.float64)
    if got.shape != (len(probe), DIM) or features.shape != (len(probe), GRID, GRID, DIM):
        raise ModelLoadError(
            f"the converted model gives vectors of shape {got.shape} and maps of {features.shape},"
            f" not (2, {DIM}) and (2, {GRID}, {GRID}, {DIM})"
        )
    cosine = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    if not float(cosine.min()) >= 1 - MAX_COSINE_DISTANCE:
        raise ModelLoadError(
            f"the converted model's vectors differ from TensorFlow's (cosine {cosine.min():.6f})"
        )
    return converted


def main() -> None:
    """The conversion child: the request (JSON) in argv, the ONNX model out on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of TensorFlow or tf2onnx go to stderr, not into the model
    try:
        converted = _convert(json.loads(sys.argv[1]))
    except ModelLoadError as exc:
        sys.exit(str(exc))
    with out:
        out.write(converted)


if __name__ == "__main__":
    main()
