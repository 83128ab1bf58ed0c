"""Encode-once machinery: the latest-wins worker, the embedding cache, encoded frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segfast_ros.pipeline.frames import (
    EmbeddingCache,
    EncodedFrame,
    Frame,
    LatestWorker,
    RateWindow,
    encode_frame,
)
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.spec import ModelInfo


class CountingBackend:
    """A backend that counts encoder calls and returns a constant embedding."""

    def __init__(self) -> None:
        self.info = ModelInfo(
            name="fake", image_size=64, embed_dim=8, embed_size=4, num_mask_tokens=4
        )
        self.encodes = 0

    def encode(self, image: np.ndarray) -> np.ndarray:
        self.encodes += 1
        return np.full((1, 8, 4, 4), float(self.encodes), dtype=np.float32)

    def decode(self, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("not used")


def _encoded(key: int) -> EncodedFrame:
    frame = Frame(key, np.zeros((4, 6, 3), np.uint8))
    return EncodedFrame(frame, np.zeros((1, 8, 4, 4), np.float32), 1.0, time.monotonic())


def test_only_the_latest_cached_frame_keeps_its_pixels() -> None:
    """Older frames keep embedding, size and header (all a prompt needs), not the image."""
    cache = EmbeddingCache(4)
    first, second = _encoded(1), _encoded(2)
    cache.put(first)
    assert cache.get(1) is first and cache.get(1).frame.image is not None
    cache.put(second)
    older = cache.get(1)
    assert older.frame.image is None and older.hw == (4, 6) == first.hw
    assert older.embedding is first.embedding  # shared, not copied
    assert first.frame.image is not None  # a holder of the original (SegEvery) keeps it
    assert cache.latest() is second and second.frame.image is not None
    assert cache.list_keys() == [1, 2]
    with pytest.raises(ValueError, match="no pixels left"):
        encode_frame(Predictor(CountingBackend()), older.frame)


def test_cache_evicts_oldest_and_keeps_latest() -> None:
    cache = EmbeddingCache(2)
    for key in (1, 2, 3):
        cache.put(_encoded(key))
    assert cache.list_keys() == [2, 3]
    assert cache.get(1) is None and cache.get(3) is not None
    assert cache.latest() is cache.get(3)
    cache.put(_encoded(2))  # the same stamp again becomes the newest
    assert cache.list_keys() == [3, 2] and cache.latest().key == 2
    cache.resize(1)
    assert cache.list_keys() == [2]
    with pytest.raises(ValueError, match=">= 1"):
        cache.resize(0)
    cache.clear()
    assert len(cache) == 0 and cache.latest() is None


def test_encoded_frame_predictor_uses_the_embedding_without_encoding() -> None:
    backend = CountingBackend()
    encoder = Predictor(backend)
    encoded = encode_frame(encoder, Frame(7, np.zeros((30, 50, 3), np.uint8)))
    assert backend.encodes == 1 and encoded.hw == (30, 50) and encoded.key == 7
    assert not encoded.embedding.flags.writeable
    predictor = encoded.predictor(backend)
    assert backend.encodes == 1
    assert predictor.original_size == (30, 50)
    assert predictor.get_image_embedding() is not encoded.embedding  # a view, no copy
    assert np.shares_memory(predictor.get_image_embedding(), encoded.embedding)


def test_latest_worker_drops_waiting_items_not_running_ones() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def handler(item: int) -> None:
        started.set()
        release.wait(5)
        seen.append(item)

    worker: LatestWorker[int] = LatestWorker(handler)
    try:
        assert worker.submit(1) is None
        assert started.wait(5)
        assert worker.submit(2) is None  # waits behind the running 1
        assert worker.submit(3) == 2  # replaces 2, which is dropped
        assert worker.submit(4) == 3
        assert worker.busy
        release.set()
        assert worker.wait_idle(5)
        assert seen == [1, 4]
        assert (worker.submitted, worker.dropped, worker.handled) == (4, 2, 2)
    finally:
        release.set()
        worker.stop()


def test_latest_worker_survives_handler_errors() -> None:
    errors: list[tuple[int, str]] = []

    def handler(item: int) -> None:
        if item == 1:
            raise ValueError("bad frame")

    worker: LatestWorker[int] = LatestWorker(
        handler, on_error=lambda i, e: errors.append((i, str(e)))
    )
    try:
        worker.submit(1)
        assert worker.wait_idle(5)
        worker.submit(2)
        assert worker.wait_idle(5)
        assert errors == [(1, "bad frame")]
        assert (worker.errors, worker.handled) == (1, 1)
    finally:
        worker.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(3)


def test_rate_window() -> None:
    window = RateWindow(size=10)
    assert window.rate_hz() == 0.0 and np.isnan(window.percentile(50))
    for i in range(5):
        window.add(float(i), now=100.0 + 0.1 * i)
    assert window.rate_hz(now=100.4) == pytest.approx(10.0)
    assert window.rate_hz(now=200.0) == 0.0
    assert window.percentile(50) == 2.0
    assert window.last_time() == pytest.approx(100.4)


def test_rate_window_counts_in_the_clock_it_is_given() -> None:
    """Rates are per second of the given clock (the node's: sim time under use_sim_time)."""
    sim = [1000.0]
    window = RateWindow(size=100, clock=lambda: sim[0])
    for _ in range(11):  # 10 events per sim second, whatever the wall clock does meanwhile
        window.add(5.0)
        sim[0] += 0.1
    assert window.now() == pytest.approx(1001.1)
    assert window.rate_hz() == pytest.approx(10.0)
    assert window.last_time() == pytest.approx(1001.0)
    sim[0] = 1010.0  # nothing within the horizon any more
    assert window.rate_hz() == 0.0


def test_rate_window_forgets_times_when_the_clock_goes_back() -> None:
    """A looping bag or a restarted simulator: times from before the jump are forgotten, the
    values are not; events after ``now`` (recorded since it was read) are left out."""
    sim = [500.0]
    window = RateWindow(size=100, clock=lambda: sim[0])
    for i in range(5):
        window.add(float(i), now=500.0 + i)
    sim[0] = 10.0
    assert window.rate_hz() == 0.0  # every recorded time lies in the future
    window.add(5.0)
    window.add(6.0, now=10.5)
    assert window.last_time() == 10.5 and len(window) == 7
    assert window.rate_hz(now=10.5) == pytest.approx(2.0)
    assert window.rate_hz(now=10.2) == pytest.approx(1 / 5.0)  # 10.5 is after now
    assert window.percentile(50) == 3.0  # the values survive the jump


def test_rate_window_without_time_passing_has_no_rate() -> None:
    """Sim time before the first /clock message stays at 0: no rate can be told."""
    window = RateWindow(clock=lambda: 0.0)
    window.add()
    assert window.rate_hz() == pytest.approx(1 / 5.0)
    window.add()
    assert np.isnan(window.rate_hz())
