"""A full queue refuses a request before it is decoded: 503 with Retry-After, and no decoding
spent on images that could never be queued (the embedder's own metrics count each decode).

The model is a stand-in held busy until the test lets it go, so the queue's state is decided by
the test, never by timing; the decoding, the batcher and the HTTP API are the real ones.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from numpy.typing import NDArray
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from medsearch_embedder.app import create_app
from tests.embedder.conftest import embedder_settings, post_images

HANG_GUARD_S = 30.0


class HeldModel:
    """Takes one image a batch and holds each batch until `release` is set."""

    max_batch = 1

    def __init__(self) -> None:
        self.release = threading.Event()
        self.begun = threading.Semaphore(0)
        self.info = self

    def to_json(self) -> dict[str, Any]:
        return {"model_id": "held", "dim": 4}

    def embed(self, inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.begun.release()
        self.release.wait(HANG_GUARD_S)
        return np.ones((len(inputs), 4), dtype=np.float32)


def png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def metric(app: Flask, name: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return next(s.value for s in samples if s.name == name and not s.labels)


@pytest.fixture
def held() -> Iterator[tuple[Flask, HeldModel]]:
    model = HeldModel()
    settings = embedder_settings(max_batch=1, max_queue=1, max_images_per_request=1, max_delay_ms=0)
    app = create_app(settings, model)  # type: ignore[arg-type]
    app.testing = True
    yield app, model
    model.release.set()
    app.extensions["medsearch_embedder"].close()


def in_background(send: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(send()), daemon=True)
    thread.start()
    return thread, answers


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_a_full_queue_refuses_an_upload_before_decoding_it(held: tuple[Flask, HeldModel]) -> None:
    app, model = held
    running, first = in_background(lambda: post_images(app.test_client(), [png(64, 1)]))
    assert model.begun.acquire(timeout=HANG_GUARD_S)  # the model holds the first image
    waiting, second = in_background(lambda: post_images(app.test_client(), [png(64, 2)]))
    wait_until(lambda: metric(app, "embedder_queue_depth") == 1)  # the second fills the queue
    decoded = metric(app, "embedder_preprocessing_seconds_count")
    assert decoded == 2

    refused = post_images(app.test_client(), [png(2048, 3)])

    assert refused.status_code == 503, refused.get_data(as_text=True)
    assert refused.mimetype == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "busy" in refused.json["detail"]  # type: ignore[index]
    assert metric(app, "embedder_preprocessing_seconds_count") == decoded  # never decoded
    model.release.set()
    for thread in (running, waiting):
        thread.join(HANG_GUARD_S)
    assert [answer.status_code for answer in (*first, *second)] == [200, 200]


def test_room_held_by_a_request_still_decoding_counts_as_taken(held: tuple[Flask, HeldModel]) -> None:
    """Two requests decoding at once cannot both be promised the queue's last place."""
    app, model = held
    service = app.extensions["medsearch_embedder"]
    running, first = in_background(lambda: post_images(app.test_client(), [png(64, 1)]))
    assert model.begun.acquire(timeout=HANG_GUARD_S)
    batcher = service._batcher
    with batcher.admitting(1):  # a request that holds the last place while it decodes
        refused = post_images(app.test_client(), [png(64, 4)])
        assert refused.status_code == 503
    model.release.set()
    running.join(HANG_GUARD_S)
    assert [answer.status_code for answer in first] == [200]
