"""DynamicBatcher's logic over a fake model: results in order, shared batches, limits, errors, close.

The fake model can be held busy on a batch until the test releases it, so what is submitted
meanwhile waits in the queue: batch composition is then decided by the test, never by timing.
Timeouts below are only hang guards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

from medsearch_embedder.batching import DynamicBatcher
from medsearch_embedder.errors import Overloaded

HANG_GUARD_S = 30.0
BLOCKER = 255  # the value of the image that keeps the model busy


class FakeModel:
    """Each image's mean as a one-element vector; records the values of each batch it ran.

    While `release` is clear, a batch waits for it before returning. `begun` counts batches started.
    """

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.begun = threading.Semaphore(0)
        self._fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        values = [int(image[0, 0]) for image in images]
        with self._lock:
            self.batches.append(values)
        self.begun.release()
        if not self.release.wait(HANG_GUARD_S):
            raise TimeoutError("the test never released the fake model")
        if self._fail_on in values:
            raise RuntimeError(f"the model broke on image {self._fail_on}")
        means: NDArray[np.float32] = images.reshape(len(images), -1).mean(axis=1, dtype=np.float32)
        return means[:, np.newaxis]

    @property
    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [len(batch) for batch in self.batches]

    @property
    def values_run(self) -> list[int]:
        with self._lock:
            return [value for batch in self.batches for value in batch]


BatcherFactory = Callable[..., DynamicBatcher]


@pytest.fixture
def make_batcher() -> Iterator[BatcherFactory]:
    """A batcher over the given fake model; released and closed after the test."""
    made: list[tuple[DynamicBatcher, FakeModel]] = []

    def make(
        model: FakeModel, *, max_batch: int = 4, max_delay_s: float = 0.005, max_queue: int = 64
    ) -> DynamicBatcher:
        batcher = DynamicBatcher(model, max_batch=max_batch, max_delay_s=max_delay_s, max_queue=max_queue)
        made.append((batcher, model))
        return batcher

    yield make
    for batcher, model in made:
        model.release.set()
        batcher.close()


def image(value: int) -> NDArray[np.uint8]:
    """A small image whose every pixel, and so whose mean, is `value`."""
    return np.full((3, 3), value, dtype=np.uint8)


def vector_value(future: Future[NDArray[np.float32]]) -> float:
    vector = future.result(timeout=HANG_GUARD_S)
    assert vector.shape == (1,) and vector.dtype == np.float32
    return float(vector[0])


def occupy(batcher: DynamicBatcher, model: FakeModel) -> Future[NDArray[np.float32]]:
    """Hold the model busy on one image, so that what is submitted next waits in the queue."""
    model.release.clear()
    [busy] = batcher.submit([image(BLOCKER)])
    assert model.begun.acquire(timeout=HANG_GUARD_S), "the model never started the first batch"
    return busy


def submit_together(
    batcher: DynamicBatcher, groups: list[list[int]]
) -> list[list[Future[NDArray[np.float32]]]]:
    """Each group submitted by its own thread, all threads let go at once; returns their futures."""
    start = threading.Barrier(len(groups), timeout=HANG_GUARD_S)

    def submit(values: list[int]) -> list[Future[NDArray[np.float32]]]:
        start.wait()
        return batcher.submit([image(v) for v in values])

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        submitted = [pool.submit(submit, values) for values in groups]
        return [future.result(timeout=HANG_GUARD_S) for future in submitted]


def refuses_submits(batcher: DynamicBatcher) -> bool:
    try:
        batcher.submit([])
    except RuntimeError:
        return True
    return False


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; the deadline is only a hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)  # pacing only: the loop ends when the condition holds, not on time


def test_each_image_gets_its_own_result_in_order_across_concurrent_submitters(
    make_batcher: BatcherFactory,
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=4)
    groups = [[thread * 10 + i for i in range(7)] for thread in range(8)]
    start = threading.Barrier(len(groups), timeout=HANG_GUARD_S)

    def submit_and_wait(values: list[int]) -> list[float]:
        start.wait()
        return [vector_value(f) for f in batcher.submit([image(v) for v in values])]

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        results = list(pool.map(submit_and_wait, groups, timeout=HANG_GUARD_S))

    assert results == [[float(v) for v in values] for values in groups]
    assert sorted(model.values_run) == sorted(v for values in groups for v in values)


def test_images_submitted_while_the_model_is_busy_share_one_model_call(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=8)
    busy = occupy(batcher, model)

    futures = submit_together(batcher, [[value] for value in range(8)])
    model.release.set()

    assert [vector_value(f) for [f] in futures] == [float(v) for v in range(8)]
    assert vector_value(busy) == BLOCKER
    assert model.batch_sizes == [1, 8]


def test_no_batch_exceeds_max_batch(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=4)
    occupy(batcher, model)

    futures = submit_together(batcher, [[thread * 10 + i for i in range(5)] for thread in range(4)])
    futures.append(batcher.submit([image(100), image(101), image(102)]))
    model.release.set()

    for group in futures:
        for future in group:
            future.result(timeout=HANG_GUARD_S)
    assert max(model.batch_sizes) <= 4
    # The 23 queued images go as full batches while enough wait, then the rest.
    assert model.batch_sizes == [1, 4, 4, 4, 4, 4, 3]


def test_a_lone_image_is_run_without_waiting_for_others(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=8, max_delay_s=0.01)

    [future] = batcher.submit([image(42)])

    assert vector_value(future) == 42.0
    assert model.batch_sizes == [1]


def test_a_lone_image_never_waits_out_the_delay_when_no_other_request_is_preparing(
    make_batcher: BatcherFactory,
) -> None:
    model = FakeModel()
    # A delay far past the hang guard: the image can only come back if nothing waits for it.
    batcher = make_batcher(model, max_batch=8, max_delay_s=3600)

    [future] = batcher.submit([image(7)])

    assert vector_value(future) == 7.0
    assert model.batch_sizes == [1]


def test_a_batch_waits_for_the_images_a_request_is_still_preparing(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=8, max_delay_s=3600)
    decoding, decoded = threading.Event(), threading.Event()

    def slow_request() -> list[Future[NDArray[np.float32]]]:
        with batcher.admitting(2) as admission:
            decoding.set()
            decoded.wait(HANG_GUARD_S)
            return admission.submit([image(2), image(3)])

    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(slow_request)
        decoding.wait(HANG_GUARD_S)
        [first] = batcher.submit([image(1)])
        time.sleep(0.2)
        assert model.batch_sizes == []  # the lone image waits for the request still decoding
        decoded.set()
        later = slow.result(timeout=HANG_GUARD_S)

    assert [vector_value(f) for f in [first, *later]] == [1.0, 2.0, 3.0]
    assert model.batch_sizes == [3]


def test_a_full_batch_does_not_wait_for_max_delay(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    # A delay far past the hang guard: only a full batch can finish in time.
    batcher = make_batcher(model, max_batch=4, max_delay_s=3600)

    futures = batcher.submit([image(v) for v in (1, 2, 3, 4)])

    assert [vector_value(f) for f in futures] == [1.0, 2.0, 3.0, 4.0]
    assert model.batch_sizes == [4]


def test_a_submit_past_max_queue_is_refused_whole_with_retry_after(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=2, max_queue=5)
    occupy(batcher, model)
    queued = batcher.submit([image(v) for v in (1, 2, 3)])

    with pytest.raises(Overloaded) as refused:
        batcher.submit([image(v) for v in (50, 51, 52)])

    retry_after = refused.value.problem_headers["Retry-After"]
    assert isinstance(retry_after, int) and retry_after >= 1
    assert "busy" in str(refused.value)
    assert batcher.depth() == 3  # none of the refused images was queued
    queued += batcher.submit([image(v) for v in (4, 5)])  # what still fits is taken
    with pytest.raises(Overloaded):
        batcher.submit([image(60)])

    model.release.set()
    assert [vector_value(f) for f in queued] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not {50, 51, 52, 60} & set(model.values_run)

    # Once the queue has drained, a submit as large as the queue is taken.
    later = batcher.submit([image(v) for v in (70, 71, 72, 73, 74)])
    assert [vector_value(f) for f in later] == [70.0, 71.0, 72.0, 73.0, 74.0]


def test_an_error_in_run_batch_reaches_every_future_of_that_batch_and_the_next_batch_is_served(
    make_batcher: BatcherFactory,
) -> None:
    model = FakeModel(fail_on=13)
    batcher = make_batcher(model, max_batch=3)
    occupy(batcher, model)
    doomed = batcher.submit([image(v) for v in (12, 13, 14)])
    model.release.set()

    for future in doomed:
        with pytest.raises(RuntimeError, match="the model broke on image 13"):
            future.result(timeout=HANG_GUARD_S)
    assert model.batch_sizes == [1, 3]

    after = batcher.submit([image(20), image(21)])
    assert [vector_value(f) for f in after] == [20.0, 21.0]


def test_a_cancelled_future_s_image_is_not_run(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=4)
    occupy(batcher, model)
    first, abandoned, last = batcher.submit([image(1), image(2), image(3)])

    assert abandoned.cancel()
    model.release.set()

    assert vector_value(first) == 1.0 and vector_value(last) == 3.0
    assert abandoned.cancelled()
    assert model.batches[1:] == [[1, 3]]


def test_a_batch_of_only_cancelled_futures_is_skipped_and_serving_goes_on(
    make_batcher: BatcherFactory,
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=2)
    occupy(batcher, model)
    abandoned = batcher.submit([image(1), image(2)])
    for future in abandoned:
        assert future.cancel()
    model.release.set()

    [future] = batcher.submit([image(3)])

    assert vector_value(future) == 3.0
    assert model.batches == [[BLOCKER], [3]]


def test_close_finishes_the_queued_images_then_refuses_submits(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=2)
    busy = occupy(batcher, model)
    queued = batcher.submit([image(v) for v in (1, 2, 3, 4, 5)])

    closer = threading.Thread(target=batcher.close)
    closer.start()
    # Let the model go only once close() has taken effect, so the queue is worked off after it.
    wait_until(lambda: refuses_submits(batcher))
    model.release.set()
    closer.join(HANG_GUARD_S)

    assert not closer.is_alive()
    assert all(f.done() for f in [busy, *queued])
    assert [vector_value(f) for f in queued] == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([image(6)])


def test_depth_counts_the_images_waiting_not_the_batch_being_run(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=4)
    assert batcher.depth() == 0
    occupy(batcher, model)
    assert batcher.depth() == 0

    futures = batcher.submit([image(v) for v in (1, 2, 3)])
    assert batcher.depth() == 3
    futures += batcher.submit([image(4), image(5)])
    assert batcher.depth() == 5

    model.release.set()
    for future in futures:
        future.result(timeout=HANG_GUARD_S)
    assert batcher.depth() == 0


def test_a_model_giving_the_wrong_number_of_vectors_fails_its_batch_not_the_thread() -> None:
    calls: list[int] = []

    def short_by_one(images: NDArray[np.uint8]) -> NDArray[np.float32]:
        calls.append(len(images))
        return np.zeros((len(images) - 1 if len(calls) == 1 else len(images), 1), dtype=np.float32)

    batcher = DynamicBatcher(short_by_one, max_batch=4, max_delay_s=0.0, max_queue=8)
    try:
        with pytest.raises(RuntimeError, match="1 vectors for 2 images"):
            batcher.submit([image(1), image(1)])[0].result(timeout=HANG_GUARD_S)
        assert batcher.submit([image(2)])[0].result(timeout=HANG_GUARD_S).shape == (1,)
    finally:
        batcher.close()


def test_a_failing_batch_observer_does_not_stop_the_batcher() -> None:
    def observe(size: int, seconds: float) -> None:
        raise ValueError("observer broke")

    batcher = DynamicBatcher(FakeModel(), max_batch=4, max_delay_s=0.0, max_queue=8, on_batch=observe)
    try:
        for value in (1, 2, 3):
            assert vector_value(batcher.submit([image(value)])[0]) == float(value)
    finally:
        batcher.close()


def test_a_request_without_room_is_refused_before_it_decodes(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=1, max_queue=3)
    occupy(batcher, model)
    queued = batcher.submit([image(1), image(2)])
    decoded = []

    with pytest.raises(Overloaded) as refused, batcher.admitting(2):
        decoded.append("decoded")  # never reached: the queue has room for one

    assert decoded == [] and "busy" in str(refused.value)
    assert refused.value.problem_headers["Retry-After"] >= 1
    model.release.set()
    assert [vector_value(f) for f in queued] == [1.0, 2.0]


def test_places_held_while_decoding_are_taken_from_the_others(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=1, max_queue=3)
    occupy(batcher, model)
    with batcher.admitting(2) as admission:
        with pytest.raises(Overloaded):
            batcher.submit([image(1), image(2)])  # one place is left beside the two held
        [other] = batcher.submit([image(3)])
        mine = admission.submit([image(4)])  # one of its two images was rejected while decoding
    # The place it did not use is free again.
    [last] = batcher.submit([image(5)])
    model.release.set()
    assert [vector_value(f) for f in [other, *mine, last]] == [3.0, 4.0, 5.0]


def test_places_held_by_a_request_that_failed_are_given_back(make_batcher: BatcherFactory) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=1, max_queue=2)
    occupy(batcher, model)
    with pytest.raises(ZeroDivisionError), batcher.admitting(2):
        1 / 0  # noqa: B018 - a decoding that failed
    queued = batcher.submit([image(1), image(2)])
    model.release.set()
    assert [vector_value(f) for f in queued] == [1.0, 2.0]
