"""Which frames the replay processes, which get SegEvery, and when scripted prompts are due.

Every decision is taken on bag time (the time each message was recorded) and the message's
position on its topic, never on the wall clock, so the same bag and options select the same
frames run after run, however fast the machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from .prompts import ScriptedPrompt


class FrameSelector:
    """Which messages of the topic to process, from their index and bag time only.

    Args:
        every: take every N-th message (1: all), when ``rate_hz`` is None.
        rate_hz: instead, take the first message in each ``1 / rate_hz`` slot of bag time
            after the first message.
    """

    def __init__(self, every: int, rate_hz: float | None) -> None:
        self.every, self.rate_hz = every, rate_hz
        self.start: int | None = None
        self.slot = -1

    def take(self, index: int, bag_time: int) -> bool:
        """Whether message ``index`` (0-based, on the topic) at ``bag_time`` (ns) is taken."""
        if self.rate_hz is None:
            return index % self.every == 0
        if self.start is None:
            self.start = bag_time
        slot = math.floor((bag_time - self.start) * self.rate_hz / 1e9)
        if slot > self.slot:
            self.slot = slot
            return True
        return False

    def expected(self, count: int, duration_ns: int) -> int:
        """How many of ``count`` messages over ``duration_ns`` of bag time will be taken."""
        if self.rate_hz is None:
            return math.ceil(count / self.every)
        return min(count, math.floor(duration_ns * self.rate_hz / 1e9) + 1)

    def fps(self, expected: int, duration_ns: int) -> float:
        """Frames per second of bag time the selection keeps (the overlay video's rate).

        ``rate_hz`` when given; else ``expected`` frames spread over the duration; 10 when
        that says nothing (a single frame, or no duration).
        """
        duration_s = duration_ns / 1e9
        return self.rate_hz or (
            (expected - 1) / duration_s if duration_s > 0 and expected > 1 else 10.0
        )


class SegEverySchedule:
    """Which processed frames SegEvery runs on, by bag time, as the node's ``segevery.rate``.

    Args:
        rate_hz: None, every processed frame; 0, none; else the first processed frame in each
            ``1 / rate_hz`` slot of bag time.
    """

    def __init__(self, rate_hz: float | None) -> None:
        self.rate_hz = rate_hz
        self._slots = FrameSelector(1, rate_hz) if rate_hz else None

    def due(self, bag_time: int) -> bool:
        """Whether SegEvery runs on the processed frame at ``bag_time`` (ns)."""
        return self.rate_hz != 0 and (self._slots is None or self._slots.take(0, bag_time))


class PromptSchedule:
    """Scripted prompts waiting for their frame: ``time`` prompts in bag-time order, ``stamp``
    prompts by the header stamp they name.

    A ``time`` prompt is answered from the latest processed frame at or before its bag time,
    as the node answers a request for the latest frame; a ``stamp`` prompt from the frame with
    that header stamp, as the node answers ``Segment.stamp``.

    Args:
        prompts: the prompts file's calls.
        bag_start: the bag's start time (ns); ``time`` offsets count from it.
    """

    def __init__(self, prompts: Sequence[ScriptedPrompt], bag_start: int) -> None:
        self.bag_start = bag_start
        self._pending = sorted(
            (p for p in prompts if p.time_ns is not None), key=lambda p: (p.time_ns, p.index)
        )
        self._by_stamp: dict[int, list[ScriptedPrompt]] = {}
        for p in prompts:
            if p.stamp_ns is not None:
                self._by_stamp.setdefault(p.stamp_ns, []).append(p)

    def due_before(self, bag_time: int) -> Iterator[ScriptedPrompt]:
        """The ``time`` prompts due before a frame at ``bag_time``, removed as they are taken:
        the previous frame answers them."""
        while self._pending and self.bag_start + self._pending[0].time_ns < bag_time:
            yield self._pending.pop(0)

    def at_stamp(self, stamp_ns: int) -> list[ScriptedPrompt]:
        """The ``stamp`` prompts that name header stamp ``stamp_ns``, removed."""
        return self._by_stamp.pop(stamp_ns, [])

    def after_last(self) -> list[ScriptedPrompt]:
        """The ``time`` prompts due after the last frame (the last frame answers them)."""
        return list(self._pending)

    def unmatched(self) -> Iterator[tuple[int, ScriptedPrompt]]:
        """``(stamp, prompt)`` for each ``stamp`` prompt whose frame never came, by stamp."""
        for stamp, ps in sorted(self._by_stamp.items()):
            for p in ps:
                yield stamp, p
