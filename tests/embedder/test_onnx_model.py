"""ResNet-50 on ONNX Runtime (converted from TensorFlow): its vectors, its cache, and when it runs.

The real converted model throughout: the session's `embedder` converted it once into `onnx_cache`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from numpy.typing import NDArray

from medsearch_embedder.model import Embedder, ModelLoadError, load_embedder
from medsearch_embedder.onnx_model import ConvertedModelCache
from medsearch_embedder.preprocessing import InputLimits, prepare
from medsearch_embedder.weights import WeightsSpec
from tests.embedder.conftest import MAX_BATCH, SEED

# The runtimes may differ by rounding only; measured: 1 - 2e-7 at worst.
MIN_COSINE = 1 - 1e-4


@pytest.fixture(scope="module")
def xrays(test_data: Path) -> NDArray[np.uint8]:
    """Eight real X-rays as the model reads them: NIH (1024², L and RGBA) and Hannover (not square)."""
    paths = (
        sorted(test_data.glob("nih_cxr14/images/*.png"))[:5]
        + sorted(test_data.glob("covid_hannover/images/*.png"))[:3]
    )
    return np.stack([prepare(path.read_bytes(), InputLimits(10**9, 10**9)) for path in paths])


def min_cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    x, y = a.astype(np.float64), b.astype(np.float64)
    return float(np.min(np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))


def load_random42(
    cache_dir: Path, *, device: str = "cpu", runtime: str = "auto", max_batch: int = MAX_BATCH
) -> Embedder:
    return load_embedder(
        WeightsSpec("random", seed=SEED),
        device=device,
        precision="float32",
        max_batch=max_batch,
        runtime=runtime,
        cache_dir=cache_dir,
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "medsearch.embedder"]


# Vectors


@pytest.mark.parametrize("count", [1, 5, MAX_BATCH])
def test_onnxruntime_gives_tensorflow_s_vectors_on_real_x_rays(
    embedder: Embedder, tensorflow_embedder: Embedder, xrays: NDArray[np.uint8], count: int
) -> None:
    converted = embedder.embed(xrays[:count])
    assert converted.shape == (count, 2048) and converted.dtype == np.float32
    assert min_cosine(converted, tensorflow_embedder.embed(xrays[:count])) >= MIN_COSINE


def test_onnxruntime_gives_the_same_vector_alone_and_in_a_batch(
    embedder: Embedder, xrays: NDArray[np.uint8]
) -> None:
    together = embedder.embed(xrays)
    for i in range(len(xrays)):
        np.testing.assert_allclose(embedder.embed(xrays[i : i + 1])[0], together[i], atol=1e-5)


# What runs, and what the model says about it


def test_auto_runs_onnxruntime_on_a_cpu_and_both_runtimes_share_the_model_id(
    embedder: Embedder, tensorflow_embedder: Embedder
) -> None:
    assert embedder.info.model_id == tensorflow_embedder.info.model_id
    assert re.fullmatch(r"onnxruntime \d\S* \(converted from tensorflow \d\S*\)", embedder.info.runtime)
    assert re.fullmatch(r"tensorflow \d\S*", tensorflow_embedder.info.runtime)
    assert embedder.info.device == tensorflow_embedder.info.device == "CPU:0"
    # A dynamic batch: every size runs unpadded; TensorFlow pads to its compiled sizes.
    assert embedder.info.batch_sizes == tuple(range(1, MAX_BATCH + 1))
    assert tensorflow_embedder.info.batch_sizes == (1, 2, 4, 8)


def test_the_service_reports_the_runtime_it_runs(client: FlaskClient, embedder: Embedder) -> None:
    model = client.get("/v1/model").json
    assert model is not None and model["runtime"] == embedder.info.runtime
    assert model["runtime"].startswith("onnxruntime ")


def test_onnxruntime_on_a_gpu_is_refused_naming_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as refused:
        load_random42(tmp_path, device="gpu", runtime="onnxruntime")
    assert "MEDSEARCH_EMBEDDER_RUNTIME=onnxruntime runs on the CPU only" in str(refused.value)
    assert "MEDSEARCH_EMBEDDER_DEVICE=gpu" in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # refused before any conversion


def test_without_onnxruntime_installed_the_load_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` finds: ImportError
    with pytest.raises(ModelLoadError, match=r"`cpu` extra.*MEDSEARCH_EMBEDDER_RUNTIME=tensorflow"):
        load_random42(tmp_path, runtime="onnxruntime")


@pytest.mark.parametrize(
    ("child", "reason"),
    [
        ('echo "converter: no handler for op Foo" >&2; exit 3', "failed: converter: no handler for op Foo"),
        ("kill -9 $$", "killed by signal 9 (out of memory?"),
    ],
    ids=["fails", "killed"],
)
def test_a_failed_conversion_stops_an_onnxruntime_load_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, child: str, reason: str
) -> None:
    converter = tmp_path / "python"
    converter.write_text(f"#!/bin/sh\n{child}\n")
    converter.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(converter))  # what the conversion child runs
    with pytest.raises(ModelLoadError, match=re.escape(reason)):
        load_random42(tmp_path / "cache", runtime="onnxruntime", max_batch=1)
    assert not (tmp_path / "cache").exists()


def test_auto_runs_tensorflow_when_onnxruntime_cannot_run_and_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.WARNING, logger="medsearch.embedder"):
        fallback = load_random42(tmp_path, max_batch=1)
    assert fallback.info.runtime.startswith("tensorflow ")
    assert "ONNX Runtime cannot run the model: TensorFlow runs it" in messages(caplog)


# The cache of converted models


def test_a_second_load_takes_the_cached_model_without_converting(
    embedder: Embedder, onnx_cache: Path, xrays: NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    cached = ConvertedModelCache(onnx_cache).path(embedder.info.model_id)
    written = cached.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medsearch.embedder"):
        again = load_random42(onnx_cache, max_batch=2)
    assert "converted model loaded from the cache" in messages(caplog)
    assert "model converted to ONNX" not in messages(caplog)
    assert cached.stat().st_mtime_ns == written
    # Only the model and its digest: no temporary file left behind.
    assert sorted(path.name for path in onnx_cache.iterdir()) == [cached.name, f"{cached.name}.sha256"]
    np.testing.assert_array_equal(again.embed(xrays[:2]), embedder.embed(xrays[:2]))


def test_a_damaged_cached_model_is_converted_again_and_gives_tensorflow_s_vectors(
    embedder: Embedder,
    tensorflow_embedder: Embedder,
    onnx_cache: Path,
    tmp_path: Path,
    xrays: NDArray[np.uint8],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "cache"
    shutil.copytree(onnx_cache, folder)
    cached = ConvertedModelCache(folder).path(embedder.info.model_id)
    damaged = bytearray(cached.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one weight's byte: still a model ONNX Runtime would load
    cached.write_bytes(damaged)

    with caplog.at_level(logging.INFO, logger="medsearch.embedder"):
        reloaded = load_random42(folder)

    assert "the converted model does not match its digest" in messages(caplog)
    assert "model converted to ONNX" in messages(caplog)
    digest = Path(f"{cached}.sha256").read_text().strip()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    assert min_cosine(reloaded.embed(xrays), tensorflow_embedder.embed(xrays)) >= MIN_COSINE


def test_the_cache_gives_back_what_it_was_given(tmp_path: Path) -> None:
    cache = ConvertedModelCache(tmp_path / "new" / "folder")
    assert cache.read("resnet50-random1-0123456789") is None
    assert cache.write("resnet50-random1-0123456789", b"model bytes")
    assert cache.read("resnet50-random1-0123456789") == b"model bytes"
    assert cache.read("resnet50-random2-0123456789") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"model bytEs"),
        lambda path: path.write_bytes(b"model by"),  # cut short
        lambda path: Path(f"{path}.sha256").unlink(),
        lambda path: Path(f"{path}.sha256").write_text("0" * 64),
    ],
    ids=["changed", "truncated", "digest missing", "digest wrong"],
)
def test_a_cached_model_that_does_not_match_its_digest_is_not_given_back(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    cache = ConvertedModelCache(tmp_path)
    cache.write("resnet50-random1-0123456789", b"model bytes")
    damage(cache.path("resnet50-random1-0123456789"))
    assert cache.read("resnet50-random1-0123456789") is None


def test_a_cache_folder_that_cannot_be_written_costs_only_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="medsearch.embedder"):
        assert not ConvertedModelCache(blocker / "cache").write("resnet50-random1-0123456789", b"model")
    assert "cannot cache the converted model: the next start converts again" in messages(caplog)
    assert ConvertedModelCache(blocker / "cache").read("resnet50-random1-0123456789") is None
