"""The replay's reader thread: the input bag's messages in bag order, the selected frames of the
topic deserialized and decoded to RGB, handed to the caller's thread.

With a depth topic, the depth images and CameraInfos are deserialized here too and paired with
the selected frames by :class:`~.depth.DepthPairing`, which holds a frame back (a bounded
look-ahead) until the depth it pairs with has been read; see :mod:`.depth`.

A message whose bytes do not deserialize ends the replay (a :class:`~.bags.BagError` naming
the bag, the topic, the message's index and its bag time, passed on as :class:`ReadFailed`);
one that deserializes but holds an unusable image is passed on as :class:`SkippedFrame`, to be
counted by reason.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..pipeline.image_msgs import ImageError
from . import bags
from .depth import DepthInput, DepthPairing, DepthTopics
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
        depth: the depth-side topics (their connections must be in ``conns``), or None.
        pairing: pairs their messages with the frames (with ``depth``).
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
        depth: DepthTopics | None = None,
        pairing: DepthPairing | None = None,
    ) -> None:
        self.reader, self.store, self.conns, self.topic = reader, store, conns, topic
        self.selector, self.copy_input, self.bag, self.queues = selector, copy_input, bag, queues
        self.kinds = depth.kinds() if depth is not None else {}
        self.pairing = pairing
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
        counts: Counter[str] = Counter()  # messages read per topic (names them in errors)
        pairing = self.pairing
        try:
            for conn, bag_time, raw in bags.read_messages(self.reader, self.conns):
                if stop.is_set():
                    return
                if self.copy_input and not put(frames, CopiedMessage(conn, bag_time, raw)):
                    return
                index = counts[conn.topic]
                counts[conn.topic] += 1
                items = self._items(conn, raw, index, bag_time)
                if pairing is not None:
                    items = [*items, *pairing.advance(bag_time)]
                if not all(put(frames, item) for item in items):
                    return
            for item in pairing.finish() if pairing is not None else ():
                if not put(frames, item):
                    return
        except Exception as err:
            put(frames, ReadFailed(str(err)))
        finally:
            put(frames, END)

    def _items(self, conn: Any, raw: bytes, index: int, bag_time: int) -> list[Any]:
        """What one message gives the caller now: its decoded frame, why it was skipped, or
        (with depth) the frames the pairing releases; nothing for a frame not selected.

        Raises:
            bags.BagError: the bytes do not deserialize (this ends the replay).
        """
        kind = self.kinds.get(conn.topic)
        if kind is not None:
            msg = self._deserialize(conn, raw, index, bag_time)
            return self.pairing.add_input(DepthInput(kind, msg, bag_time))
        if conn.topic != self.topic or not self.selector.take(index, bag_time):
            return []
        item = self._decode(conn, raw, index, bag_time)
        if self.pairing is not None and isinstance(item, DecodedFrame):
            return self.pairing.add_frame(item)
        return [item]

    def _deserialize(self, conn: Any, raw: bytes, index: int, bag_time: int) -> Any:
        return bags.deserialize(
            self.store, conn, raw, bag=self.bag, index=index, bag_time=bag_time
        )

    def _decode(
        self, conn: Any, raw: bytes, index: int, bag_time: int
    ) -> DecodedFrame | SkippedFrame:
        """Message ``index`` of the topic as RGB, or why its image is unusable.

        Raises:
            bags.BagError: the bytes do not deserialize (this ends the replay).
        """
        start = time.perf_counter()
        msg = self._deserialize(conn, raw, index, bag_time)
        try:
            image = bags.rgb_of(conn.msgtype, msg)
        except ImageError as err:
            return SkippedFrame(str(err))
        return DecodedFrame(-1, bag_time, msg, image, 1e3 * (time.perf_counter() - start))
