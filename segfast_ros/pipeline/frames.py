"""Encode once per frame, latest frame wins: a one-slot worker thread and an embedding cache.

A camera delivers frames faster than a CPU encoder can take them. :class:`LatestWorker` runs a
handler on its own thread and keeps at most one item waiting: a newer item replaces the waiting
one, which is counted as dropped. The caller (a ROS subscription callback) never blocks.
:class:`EmbeddingCache` keeps the last few encoded frames by stamp, so prompts for a recent
frame are answered from its embedding without running the encoder again.

Nothing here imports ROS or torch; the ROS node and the offline replay share it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from segfast_ros.runtime.backend import Backend
from segfast_ros.runtime.predictor import Predictor

T = TypeVar("T")


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (rclpy or rosbags) as integer nanoseconds: a cache key."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class Frame:
    """One camera frame as it arrived.

    Attributes:
        key: cache key, the header stamp in nanoseconds (0 when the sender left it unset).
        image: ``(H, W, 3)`` uint8 RGB; None once the frame was cached and a newer one came
            (see :meth:`EmbeddingCache.put`).
        header: the transport's header (a ROS ``std_msgs/Header``), passed through untouched.
        received: ``time.monotonic()`` when the frame arrived: the start of the
            frame-to-embedding latency, a duration of work, so wall time even under sim time
            (the frame's data time is its header stamp, the key).
        hw: ``(H, W)`` of the image, kept when the pixels are let go (set from ``image``).
    """

    key: int
    image: np.ndarray | None
    header: Any = None
    received: float = field(default_factory=time.monotonic)
    hw: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.image is not None:
            h, w = self.image.shape[:2]
            object.__setattr__(self, "hw", (int(h), int(w)))


@dataclass(frozen=True)
class EncodedFrame:
    """A frame with its image embedding, ready for prompts.

    Attributes:
        frame: the source frame (image and header).
        embedding: ``(1, C, h, w)`` float32, read-only.
        encode_ms: time of the encoder call (pre-processing included), wall time.
        ready: ``time.monotonic()`` when the embedding was stored (ends the latency; with the
            key it tells a re-encoded stamp from the frame seen before).
    """

    frame: Frame
    embedding: np.ndarray
    encode_ms: float
    ready: float

    @property
    def key(self) -> int:
        """The frame's cache key (stamp in nanoseconds)."""
        return self.frame.key

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the source image."""
        return self.frame.hw

    def without_pixels(self) -> EncodedFrame:
        """This frame with its image let go: prompts need only the embedding and the size."""
        return dataclasses.replace(self, frame=dataclasses.replace(self.frame, image=None))

    def predictor(self, backend: Backend) -> Predictor:
        """A fresh :class:`Predictor` on this frame's embedding (no encoder run, no copy).

        Each caller gets its own, so concurrent service calls never share prompt state.
        """
        predictor = Predictor(backend)
        predictor.set_embedding(self.embedding, self.hw)
        return predictor


def encode_frame(predictor: Predictor, frame: Frame) -> EncodedFrame:
    """Run the encoder on ``frame`` with ``predictor`` and return the embedding.

    Raises:
        ValueError: the image is not ``HxWx3`` uint8, empty or too large, or was let go.
    """
    if frame.image is None:
        raise ValueError(f"frame {frame.key} has no pixels left to encode")
    start = time.perf_counter()
    predictor.set_image(frame.image)
    encode_ms = (time.perf_counter() - start) * 1e3
    return EncodedFrame(frame, predictor.get_image_embedding(), encode_ms, time.monotonic())


class _Keyed(Protocol):
    @property
    def key(self) -> int: ...


K = TypeVar("K", bound=_Keyed)


class StampCache(Generic[K]):
    """The last ``capacity`` items by their ``key`` (a stamp), thread-safe; the item stored
    first is evicted first, and one stored with a key already cached replaces it.

    Args:
        capacity: items to keep (at least 1).
    """

    #: Names the cache in errors.
    _name = "cache"

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[int, K] = OrderedDict()
        self._capacity = 1
        self.resize(capacity)

    @property
    def capacity(self) -> int:
        """Most items kept."""
        return self._capacity

    def resize(self, capacity: int) -> None:
        """Change the capacity, evicting the oldest items if it shrinks.

        Raises:
            ValueError: capacity below 1.
        """
        if capacity < 1:
            raise ValueError(f"{self._name} capacity must be >= 1, got {capacity}")
        with self._lock:
            self._capacity = int(capacity)
            self._evict()

    def put(self, item: K) -> None:
        """Store ``item`` as the newest (an item with the same key is replaced)."""
        with self._lock:
            self._store(item)

    def get(self, key: int) -> K | None:
        """The item with stamp ``key``, or None if it never came or was evicted."""
        with self._lock:
            return self._items.get(key)

    def list_keys(self) -> list[int]:
        """Cached keys, oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget every item."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _store(self, item: K) -> None:
        """Store ``item`` as the newest and evict; the caller holds the lock."""
        self._items.pop(item.key, None)
        self._items[item.key] = item
        self._evict()

    def _evict(self) -> None:
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


class EmbeddingCache(StampCache[EncodedFrame]):
    """The last ``capacity`` encoded frames by key, thread-safe; the oldest is evicted first.

    Args:
        capacity: frames to keep (at least 1).
    """

    def __init__(self, capacity: int) -> None:
        self._latest: EncodedFrame | None = None
        super().__init__(capacity)

    def put(self, item: EncodedFrame) -> None:
        """Store ``item`` as the latest frame (a frame with the same key is replaced).

        Only the latest frame keeps its pixels (SegEvery reads them); older ones keep the
        embedding and the size, all that a prompt needs. At 8K a frame is 100 MB: a cache of
        four would otherwise hold 400 MB of images nobody reads.
        """
        with self._lock:
            previous = self._latest
            if previous is not None and self._items.get(previous.key) is previous:
                self._items[previous.key] = previous.without_pixels()
            self._store(item)
            self._latest = item

    def latest(self) -> EncodedFrame | None:
        """The most recently encoded frame, or None before the first one."""
        with self._lock:
            return self._latest

    def clear(self) -> None:
        """Forget every frame."""
        with self._lock:
            self._items.clear()
            self._latest = None


class RateWindow:
    """Recent event times and values, for rates and percentiles in diagnostics (thread-safe).

    Event times come from ``clock``, the clock a rate is meant in: the ROS node passes its own
    clock, so that with ``use_sim_time`` an input rate is frames per second of sim (bag) time.
    The values (latencies) are whatever the caller measured; they do not depend on ``clock``.
    A clock may go back (a looping bag, a restarted simulator): the times recorded before such
    a jump belong to a timeline that is gone and are forgotten; the values are kept.

    Args:
        size: events kept.
        clock: the current time in seconds; ``time.monotonic`` unless told.
    """

    def __init__(self, size: int = 100, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._times: deque[float] = deque(maxlen=size)
        self._values: deque[float] = deque(maxlen=size)

    def now(self) -> float:
        """The window's clock, in seconds."""
        return self._clock()

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        """Record one event with an optional value (e.g. a latency in ms), at ``now``.

        ``now`` defaults to the window's clock, read under the lock, so that events recorded
        from several threads stay in order.
        """
        with self._lock:
            at = self._clock() if now is None else now
            if self._times and at < self._times[-1]:
                self._times.clear()  # the clock went back: earlier times mean nothing now
            self._times.append(at)
            self._values.append(float(value))

    def rate_hz(self, now: float | None = None, horizon_s: float = 5.0) -> float:
        """Events per second of the window's clock over the last ``horizon_s`` seconds.

        NaN when several events fall in the horizon but no time passed between them (a clock
        that does not move, such as sim time before the first ``/clock`` message).
        """
        now = self._clock() if now is None else now
        with self._lock:
            recent = [t for t in self._times if 0.0 <= now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0 if not recent else 1.0 / horizon_s
        span = recent[-1] - recent[0]
        return (len(recent) - 1) / span if span > 0 else float("nan")

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the recorded values, NaN when there are none."""
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else float("nan")

    def last_time(self) -> float | None:
        """The window's clock at the last event, None before the first."""
        with self._lock:
            return self._times[-1] if self._times else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


class LatestWorker(Generic[T]):
    """Runs ``handler`` on a thread of its own; at most one item waits, the newest wins.

    :meth:`submit` never blocks: an item that arrives while another is still waiting replaces
    it, and the replaced one counts in :attr:`dropped`. The handler's exceptions are caught,
    counted in :attr:`errors`, and passed to ``on_error``; the thread goes on with the next item.

    Args:
        handler: called with each item, on the worker thread.
        name: thread name (shows in debuggers and logs).
        on_error: called with ``(item, exception)`` when ``handler`` raises.
    """

    def __init__(
        self,
        handler: Callable[[T], None],
        name: str = "segfast-worker",
        on_error: Callable[[T, BaseException], None] | None = None,
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: T | None = None
        self._busy = False
        self._stopping = False
        self.submitted = 0
        self.dropped = 0
        self.handled = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> T | None:
        """Queue ``item``; returns the waiting item it replaced (now dropped), or None.

        Raises:
            RuntimeError: the worker was stopped.
        """
        with self._cond:
            if self._stopping:
                raise RuntimeError("worker is stopped")
            replaced = self._pending
            if replaced is not None:
                self.dropped += 1
            self._pending = item
            self.submitted += 1
            self._cond.notify()
        return replaced

    @property
    def busy(self) -> bool:
        """Whether the handler is running or an item waits."""
        with self._cond:
            return self._busy or self._pending is not None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing runs or waits (tests, shutdown). Returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy or self._pending is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float | None = 10.0) -> None:
        """Drop the waiting item and end the thread after the running handler returns."""
        with self._cond:
            self._stopping = True
            if self._pending is not None:
                self.dropped += 1
            self._pending = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _items(self) -> Iterator[T]:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item, self._pending = self._pending, None
                self._busy = True
            yield item

    def _run(self) -> None:
        for item in self._items():
            try:
                self._handler(item)
                self.handled += 1
            except Exception as err:  # a bad item must not end the thread
                self.errors += 1
                if self._on_error is not None:
                    self._on_error(item, err)
