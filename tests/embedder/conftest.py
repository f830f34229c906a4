"""Embedder fixtures: one real ResNet-50 (random:42 weights) per runtime, shared by the session.

`embedder` is what the service runs on this CPU by default: the model converted to ONNX and run
by ONNX Runtime, its converted file in the session's `onnx_cache` (converting takes about 30 s
here, loading it from there 4 s). `tensorflow_embedder` is the same model on TensorFlow (about
15 s). Every app the tests make reuses `embedder`; the tests that need a fresh load (other
weights, another process) make their own.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from numpy.typing import NDArray
from werkzeug.test import TestResponse

from medsearch_common.settings import Binding
from medsearch_embedder.app import create_app
from medsearch_embedder.model import Embedder, load_embedder
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.weights import WeightsSpec

SEED = 42
MAX_BATCH = 8


def embedder_settings(**changes: Any) -> EmbedderSettings:
    base: dict[str, Any] = {
        "binding": Binding("127.0.0.1", 0),
        "weights": WeightsSpec("random", seed=SEED),
        "max_batch": MAX_BATCH,
    }
    return EmbedderSettings(**{**base, **changes})


@pytest.fixture(scope="session")
def onnx_cache(embedder_cache: Path) -> Path:
    """The session's MEDSEARCH_EMBEDDER_CACHE_DIR, holding `embedder`'s converted model."""
    return embedder_cache


@pytest.fixture(scope="session")
def embedder(onnx_cache: Path) -> Embedder:
    return load_embedder(
        WeightsSpec("random", seed=SEED),
        device="auto",
        precision="float32",
        max_batch=MAX_BATCH,
        cache_dir=onnx_cache,
    )


@pytest.fixture(scope="session")
def tensorflow_embedder() -> Embedder:
    return load_embedder(
        WeightsSpec("random", seed=SEED),
        device="auto",
        precision="float32",
        max_batch=MAX_BATCH,
        runtime="tensorflow",
    )


@pytest.fixture
def make_embedder_app(embedder: Embedder) -> Iterator[Callable[..., Flask]]:
    """An app on the shared model with the given setting changes; closed after the test."""
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_app(embedder_settings(**changes), embedder)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["medsearch_embedder"].close()


@pytest.fixture
def make_app_without_model(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """An app whose model never loads (its weights file does not exist), with the given setting changes.

    For what must work without the model: no model is built, so it costs next to nothing.
    """
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        weights = WeightsSpec("file", path=tmp_path / "no-such-weights.h5")
        app = create_app(embedder_settings(**{"weights": weights, **changes}))
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["medsearch_embedder"].close()


@pytest.fixture
def client(make_embedder_app: Callable[..., Flask]) -> FlaskClient:
    return make_embedder_app().test_client()


def post_images(client: FlaskClient, images: Sequence[bytes], field: str = "images") -> TestResponse:
    """POST /v1/embeddings with each of `images` as one file part."""
    files = [(io.BytesIO(data), f"image-{i}") for i, data in enumerate(images)]
    return client.post("/v1/embeddings", data={field: files}, content_type="multipart/form-data")


def post_render(client: FlaskClient, files: Sequence[bytes], field: str = "image") -> TestResponse:
    """POST /v1/render with each of `files` as one file part (one, unless the test wants more)."""
    parts = [(io.BytesIO(data), f"file-{i}") for i, data in enumerate(files)]
    return client.post("/v1/render", data={field: parts}, content_type="multipart/form-data")


def vectors_of(response: TestResponse) -> dict[int, NDArray[np.float32]]:
    """The embeddings of a 200 answer, by image index."""
    assert response.status_code == 200, response.get_data(as_text=True)
    return {item["index"]: np.asarray(item["embedding"], dtype=np.float32) for item in response.json["data"]}  # type: ignore[index]


def cosine(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    x, y = a.astype(np.float64), b.astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
