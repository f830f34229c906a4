"""Dynamic batching, as Triton and TF Serving do it: concurrent requests share model calls.

Inputs wait in a bounded queue. One inference thread takes up to `max_batch` of them, waiting
at most `max_delay_s` after the oldest arrived for others to join, and only while other
requests are still decoding theirs (`admitting`): a lone request runs at once. A full queue
refuses new work at once (the caller answers 503 with Retry-After) instead of growing memory,
and before the request decodes anything: a request holds its places in the queue from the
start of its decoding, so no decoding is spent on images that could never be queued.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from medsearch_embedder.errors import Overloaded

log = logging.getLogger("medsearch.embedder")

RunBatch = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


@dataclass
class _Item:
    image: NDArray[np.uint8]
    arrived: float
    result: Future[NDArray[np.float32]] = field(default_factory=Future)


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._preparing = 0  # requests decoding images they will submit
        self._held = 0  # places in the queue those requests hold for their images
        self._seconds_per_batch = 0.0  # a moving average, for Retry-After
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Inputs waiting for the model (not counting the batch it is running)."""
        return len(self._queue)

    @contextmanager
    def admitting(self, count: int) -> Iterator[Admission]:
        """Around a request's decoding and submit: `count` places in the queue are held for it
        from the start, or it is refused at once (Overloaded) when the queue has no room. While
        any request is in here, a batch waits (up to `max_delay_s`) for its images rather than
        running without them."""
        with self._changed:
            self._check_open()
            self._check_room(count)
            self._held += count
            self._preparing += 1
        admission = Admission(self, count)
        try:
            yield admission
        finally:
            with self._changed:
                self._held -= admission.held
                self._preparing -= 1
                self._changed.notify_all()

    def submit(self, images: Sequence[NDArray[np.uint8]]) -> list[Future[NDArray[np.float32]]]:
        """Queue all of `images` or none of them; each future gives one vector."""
        return self._enqueue(images, held=0)

    def _enqueue(
        self, images: Sequence[NDArray[np.uint8]], *, held: int
    ) -> list[Future[NDArray[np.float32]]]:
        """Queue `images` into `held` places held for them (and more, if there is room)."""
        with self._changed:
            self._check_open()
            self._check_room(len(images) - held)
            self._held -= held
            now = time.monotonic()
            items = [_Item(image, now) for image in images]
            self._queue.extend(items)
            self._changed.notify_all()
        return [item.result for item in items]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the batcher is closed")

    def _check_room(self, count: int) -> None:
        """Raises Overloaded unless `count` more inputs fit beside those queued and held."""
        taken = len(self._queue) + self._held
        if taken + count > self._max_queue:
            raise Overloaded(
                f"the embedder is busy: {taken} images wait for the model "
                f"(at most {self._max_queue}); try again shortly",
                retry_after_s=self._retry_after_s(),
            )

    def close(self) -> None:
        """Stop after the queued inputs are done."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _retry_after_s(self) -> int:
        batches_ahead = math.ceil((len(self._queue) + self._held + 1) / self._max_batch)
        return max(1, min(60, math.ceil(batches_ahead * self._seconds_per_batch)))

    def _next_batch(self) -> list[_Item] | None:
        with self._changed:
            while not self._queue:
                if self._closed:
                    return None
                self._changed.wait()
            deadline = self._queue[0].arrived + self._max_delay_s
            # Nothing more is on its way when no request is decoding: waiting would only add delay.
            while len(self._queue) < self._max_batch and self._preparing and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A caller that gave up has cancelled its future: skip its input.
            live = [item for item in batch if item.result.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _run(self, live: list[_Item]) -> None:
        """One model call; whatever fails, every caller hears of it and the thread goes on."""
        started = time.perf_counter()
        try:
            vectors = self._run_batch(np.stack([item.image for item in live]))
            if len(vectors) != len(live):
                raise RuntimeError(f"the model gave {len(vectors)} vectors for {len(live)} images")
        except Exception as exc:
            for item in live:
                item.result.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._seconds_per_batch = (
            elapsed if not self._seconds_per_batch else 0.8 * self._seconds_per_batch + 0.2 * elapsed
        )
        for item, vector in zip(live, vectors, strict=True):
            item.result.set_result(vector)
        if self._on_batch is not None:
            try:
                self._on_batch(len(live), elapsed)
            except Exception:
                log.exception("batch observer failed")


class Admission:
    """A request's places in the queue, held while it decodes; `submit` fills them."""

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher = batcher
        self.held = count

    def submit(self, images: Sequence[NDArray[np.uint8]]) -> list[Future[NDArray[np.float32]]]:
        """Queue the request's decoded images (at most the places held; those it rejected are
        fewer); each future gives one vector."""
        if len(images) > self.held:
            raise ValueError(f"{len(images)} images for {self.held} places held")
        futures = self._batcher._enqueue(images, held=self.held)
        self.held = 0
        return futures
