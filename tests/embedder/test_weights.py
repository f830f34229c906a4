"""Finding the weights before the service starts: files, Keras's ImageNet cache, and a start that stops.

No test downloads anything: the ImageNet URL is pointed at a closed port on 127.0.0.1, so Keras's
real download fails at once whether or not this machine has internet.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsearch_embedder import weights
from medsearch_embedder.errors import WeightsUnavailable
from medsearch_embedder.weights import (
    IMAGENET_FILE,
    IMAGENET_MD5,
    WEIGHTS_VARIABLE,
    WeightsSpec,
    locate_weights,
)
from tests.support.processes import free_port

CLOSED_URL = "http://127.0.0.1:9/" + IMAGENET_FILE  # the discard port: nothing listens there
START_HANG_GUARD_S = 120


@pytest.fixture
def empty_keras_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """KERAS_HOME set to an empty folder and the ImageNet URL to a closed port; returns the folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "IMAGENET_URL", CLOSED_URL)
    return tmp_path


def start_embedder(tmp_path: Path, **changes: str) -> subprocess.CompletedProcess[str]:
    """`python -m medsearch_embedder` with `changes` over this environment (less any embedder settings)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEDSEARCH_EMBEDDER_")}
    env.update(MEDSEARCH_PORT=str(free_port()), KERAS_HOME=str(tmp_path / "keras"), **changes)
    return subprocess.run(
        [sys.executable, "-m", "medsearch_embedder"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_HANG_GUARD_S,
    )


# Random weights and weights files


def test_random_weights_need_no_file() -> None:
    spec = WeightsSpec("random", seed=42)
    assert locate_weights(spec) == spec


def test_an_existing_weights_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "resnet50_notop.h5"
    path.write_bytes(b"weights")
    spec = WeightsSpec("file", path=path)

    assert locate_weights(spec) == spec


def test_a_missing_weights_file_stops_naming_the_variable_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet50_notop.h5"

    with pytest.raises(WeightsUnavailable) as unavailable:
        locate_weights(WeightsSpec("file", path=path))

    assert f"{WEIGHTS_VARIABLE}={path}" in str(unavailable.value)
    assert IMAGENET_FILE in str(unavailable.value)  # which file would do


def test_a_folder_is_not_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable) as unavailable:
        locate_weights(WeightsSpec("file", path=tmp_path))

    assert f"{WEIGHTS_VARIABLE}={tmp_path}" in str(unavailable.value)


# ImageNet through Keras's cache


def test_imagenet_that_cannot_be_had_stops_with_every_way_to_provide_it(empty_keras_cache: Path) -> None:
    cache = empty_keras_cache / "models"

    with pytest.raises(WeightsUnavailable) as unavailable:
        locate_weights(WeightsSpec("imagenet"))

    message = str(unavailable.value)
    assert IMAGENET_FILE in message
    assert str(cache) in message
    assert "KERAS_HOME" in message
    assert IMAGENET_MD5 in message
    assert f"{WEIGHTS_VARIABLE}=/path/to/{IMAGENET_FILE}" in message
    assert f"{WEIGHTS_VARIABLE}=random:42" in message
    assert CLOSED_URL in message
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial download passes for the weights


def test_imagenet_in_the_cache_with_the_wrong_content_is_not_used(empty_keras_cache: Path) -> None:
    cached = empty_keras_cache / "models" / IMAGENET_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"a truncated copy of the weights")

    # Keras checks the md5, finds it wrong and downloads again, which fails here.
    with pytest.raises(WeightsUnavailable) as unavailable:
        locate_weights(WeightsSpec("imagenet"))

    assert IMAGENET_FILE in str(unavailable.value)
    assert not cached.exists() or hashlib.md5(cached.read_bytes()).hexdigest() != IMAGENET_MD5  # noqa: S324


def test_imagenet_in_the_cache_with_the_expected_md5_is_used_without_download(
    empty_keras_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"stand-in weights whose md5 the test declares expected"
    cached = empty_keras_cache / "models" / IMAGENET_FILE
    cached.parent.mkdir()
    cached.write_bytes(content)
    monkeypatch.setattr(weights, "IMAGENET_MD5", hashlib.md5(content).hexdigest())  # noqa: S324

    located = locate_weights(WeightsSpec("imagenet"))

    # The URL is a closed port: success means the cached file was taken as it is.
    assert located == WeightsSpec("imagenet", path=cached)
    assert cached.read_bytes() == content


# The start of `python -m medsearch_embedder`


def test_the_service_does_not_start_without_its_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing_weights.h5"

    started = start_embedder(tmp_path, MEDSEARCH_EMBEDDER_WEIGHTS=str(missing))

    assert started.returncode != 0
    assert WEIGHTS_VARIABLE in started.stderr
    assert str(missing) in started.stderr


def test_the_service_does_not_start_with_a_bad_setting(tmp_path: Path) -> None:
    started = start_embedder(
        tmp_path, MEDSEARCH_EMBEDDER_WEIGHTS="random:42", MEDSEARCH_EMBEDDER_MAX_BATCH="abc"
    )

    assert started.returncode != 0
    assert "MEDSEARCH_EMBEDDER_MAX_BATCH" in started.stderr
    assert "'abc'" in started.stderr
