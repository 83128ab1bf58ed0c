"""The replay's reader thread: the input bag's messages in bag order, the selected frames of the
topic deserialized and decoded to RGB, handed to the caller's thread.

A message whose bytes do not deserialize ends the replay (a :class:`~.bags.BagError` naming
the bag, the topic, the message's index and its bag time, passed on as :class:`ReadFailed`);
one that deserializes but holds an unusable image is passed on as :class:`SkippedFrame`, to be
counted by reason.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from ..pipeline.image_msgs import ImageError, compressed_msg_to_rgb, image_msg_to_rgb
from . import bags
from .items import END, CopiedMessage, DecodedFrame, Queues, ReadFailed, SkippedFrame
from .schedule import FrameSelector


class FrameReader:
    """Reads the input on its own thread into ``queues.frames``, ending with :data:`END`.

    Args:
        reader: the open input bag (rosbags ``Reader`` or ``SalvageReader``).
        store: the typestore that deserializes the messages.
        conns: the connections to read: the topic's, or all with ``copy_input``.
        topic: the image topic to segment.
        selector: which of the topic's messages to decode.
        copy_input: pass every message read on as a :class:`CopiedMessage` too.
        bag: the input bag's path (names it in errors).
        queues: the replay's queues; the reader stops once ``queues.stop`` is set.
    """

    def __init__(
        self,
        reader: Any,
        store: Any,
        conns: list[Any],
        topic: str,
        selector: FrameSelector,
        *,
        copy_input: bool,
        bag: Path,
        queues: Queues,
    ) -> None:
        self.reader, self.store, self.conns, self.topic = reader, store, conns, topic
        self.selector, self.copy_input, self.bag, self.queues = selector, copy_input, bag, queues
        self._thread = threading.Thread(target=self._read, name="replay-read", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def get(self) -> Any:
        """The next item for the caller (waits for it); :data:`END` once the reader is done,
        also when it stopped early without putting :data:`END` (the stop flag was set)."""
        frames = self.queues.frames
        while True:
            try:
                return frames.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and frames.empty():
                    return END

    def _read(self) -> None:
        put, frames, stop = self.queues.put, self.queues.frames, self.queues.stop
        index = 0
        try:
            for conn, bag_time, raw in bags.read_messages(self.reader, self.conns):
                if stop.is_set():
                    return
                if self.copy_input and not put(frames, CopiedMessage(conn, bag_time, raw)):
                    return
                if conn.topic != self.topic:
                    continue
                take = self.selector.take(index, bag_time)
                index += 1
                if take and not put(frames, self._decode(conn, raw, index - 1, bag_time)):
                    return
        except Exception as err:
            put(frames, ReadFailed(str(err)))
        finally:
            put(frames, END)

    def _decode(
        self, conn: Any, raw: bytes, index: int, bag_time: int
    ) -> DecodedFrame | SkippedFrame:
        """Message ``index`` of the topic as RGB, or why its image is unusable.

        Raises:
            bags.BagError: the bytes do not deserialize (this ends the replay).
        """
        start = time.perf_counter()
        msg = bags.deserialize(self.store, conn, raw, bag=self.bag, index=index, bag_time=bag_time)
        convert = image_msg_to_rgb if conn.msgtype == bags.IMAGE else compressed_msg_to_rgb
        try:
            image = convert(msg)
        except ImageError as err:
            return SkippedFrame(str(err))
        return DecodedFrame(-1, bag_time, msg, image, 1e3 * (time.perf_counter() - start))
