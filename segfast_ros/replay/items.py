"""What travels between the replay's three threads, and the two queues that carry it.

The reader puts :class:`DecodedFrame`, :class:`CopiedMessage`, :class:`SkippedFrame` and
:class:`ReadFailed` items, then :data:`END`, into ``frames``; the caller's thread puts
:class:`CopiedMessage`, :class:`SegEveryOutput`, :class:`PromptAnswer`, :class:`TracksOutput`
and :class:`FrameDone` items, then :data:`END`, into ``results``, which the writer drains. Both
queues are bounded and FIFO: a full queue makes its producer wait, so nothing is dropped and
the order is the bag's.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pipeline.render import InstanceRecord
from ..segevery.base import SegEveryResult
from ..tracking.targets import TargetResult
from .prompts import ScriptedPrompt
from .summary import FrameRow

#: The last item a queue carries: its producer is done.
END = object()


@dataclass
class DecodedFrame:
    """A selected message of the topic, deserialized and decoded (reader -> caller -> writer).

    Attributes:
        index: position among the processed frames (set by the caller; -1 until then).
        bag_time: the message's bag time (ns).
        msg: the deserialized message (its header is reused for the outputs).
        image: ``(H, W, 3)`` uint8 RGB.
        decode_ms: deserializing and decoding time.
        key: the frame key the trackers see (set by the caller; -1 until then): the header
            stamp (ns), or one more than the previous frame's when the stamps do not increase.
        depth_inputs: the depth images and CameraInfos (:class:`~.depth.DepthInput`) to give
            the caller's depth pairing before this frame is lifted (:mod:`.depth`).
        row: its counts and stage times, filled by the caller and the writer.
    """

    index: int
    bag_time: int
    msg: Any
    image: np.ndarray
    decode_ms: float
    key: int = -1
    depth_inputs: list[Any] = field(default_factory=list)
    row: FrameRow = field(default_factory=FrameRow)


@dataclass
class CopiedMessage:
    """An input message to copy into the output as it is (``--copy-input``)."""

    conn: Any
    bag_time: int
    raw: bytes


@dataclass
class SkippedFrame:
    """A selected message that deserialized but holds no usable image, and why."""

    reason: str


@dataclass
class ReadFailed:
    """The input failed part-way (a corrupt page, a message that does not deserialize)."""

    error: str


@dataclass
class SegEveryOutput:
    """SegEvery's instances on a frame (caller -> writer).

    Attributes:
        frame: the frame.
        result: SegEvery's result.
        records: the ``Instance.msg`` fields of ``result.instances``, in order, with their
            track IDs and states, and 3D when depth is on.
    """

    frame: DecodedFrame
    result: SegEveryResult
    records: list[InstanceRecord]


@dataclass
class TracksOutput:
    """The prompted targets on a frame, once every call on that frame is answered (caller ->
    writer).

    Attributes:
        frame: the frame.
        results: every target, in ID order (lost ones too).
        records: their ``Instance.msg`` fields (``id`` = position in ``results``), with 3D
            when depth is on.
        decoded: targets decoded for this frame (the step's batch and any added on it).
        ms: the step's time (the batched decoder call and the lost checks).
    """

    frame: DecodedFrame
    results: list[TargetResult]
    records: list[InstanceRecord]
    decoded: int
    ms: float


@dataclass
class FrameDone:
    """Every result of a frame is queued before this (caller -> writer, only when the replay
    was given ``on_row``): the writer hands the row on once it has written them."""

    row: FrameRow


@dataclass
class PromptAnswer:
    """A scripted prompt's masks on a frame (caller -> writer).

    Attributes:
        frame: the frame whose embedding answered the prompt.
        prompt: the prompt.
        records: the ``Instance.msg`` fields of every mask of its prompt sets, in order (3D
            when depth is on).
        sets: how many prompt sets were decoded.
        ms: the time the answer took.
    """

    frame: DecodedFrame
    prompt: ScriptedPrompt
    records: list[InstanceRecord]
    sets: int
    ms: float


class Queues:
    """The bounded FIFO queues between the threads, and the stop flag all of them watch.

    Args:
        size: items each queue holds before its producer waits.
    """

    def __init__(self, size: int) -> None:
        self.stop = threading.Event()
        self.frames: queue.Queue = queue.Queue(maxsize=size)
        self.results: queue.Queue = queue.Queue(maxsize=size)

    def put(self, q: queue.Queue, item: Any) -> bool:
        """Put ``item`` into ``q``, waiting while it is full; False (not put) once stopped."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
