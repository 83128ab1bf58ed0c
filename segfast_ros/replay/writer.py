"""The replay's writer thread: label images, overlays, serialization, the output bag and the
side files (COCO results, overlay video, contact sheet).

The writer thread owns the output bag: it opens it, writes every message and closes it, since
rosbags' sqlite3 writer may be used only from the thread that opened it. It closes the bag
whatever happens (rosbags' context manager would abort it on an exception), and writes the side
files for what was processed, so that an error or an interrupt leaves outputs that open in any
reader.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline.detections import detections_2d, detections_3d
from ..pipeline.frames import stamp_to_ns
from ..pipeline.image_msgs import image_fields, rgb_pixels
from ..pipeline.render import instances_to_label_image, overlay
from ..pipeline.tracks import targets_label_image
from . import bags
from .items import (
    END,
    CopiedMessage,
    DecodedFrame,
    FrameDone,
    PromptAnswer,
    Queues,
    SegEveryOutput,
    TracksOutput,
)
from .messages import Messages
from .options import ReplayOptions
from .outputs import CocoResults, ContactSheet, OverlayVideo
from .prompts import TRACK
from .summary import FrameRow, ReplaySummary, StageTimes


class OutputWriter:
    """The writer thread: it opens the output bag, drains ``queues.results`` into it and into
    the side files, and closes it.

    Everything but :meth:`start`, :meth:`join` and reading :attr:`error` runs on that thread.
    A write that fails (disk full, a codec failure) sets :attr:`error` and the stop flag; the
    thread keeps draining the queue, so that the caller never blocks on a full one, and still
    closes the bag.

    Output topics (``<ns>`` is ``opts.namespace``): ``<ns>/instances``,
    ``<ns>/instances/label``, ``<ns>/segment``, with ``overlay_topic`` ``<ns>/overlay``, and,
    when the prompts add targets, ``<ns>/tracks`` and ``<ns>/tracks/label``. With vision_msgs
    in the typestore, ``<ns>/detections``, and with a depth topic also ``<ns>/detections_3d``
    and (with targets) ``<ns>/tracks/detections_3d``; see
    :func:`~segfast_ros.replay.pipeline.replay`.

    Args:
        path: the output bag folder (prepared: it does not exist).
        store: the typestore that serializes the messages.
        opts: the replay's options (namespace, storage, outputs).
        summary: counts written and files saved are recorded here.
        expected: frames the replay expects to process (spreads the contact sheet).
        fps: the overlay video's frame rate.
        copied: the input connections whose messages are copied (``copy_input``).
        queues: the replay's queues.
        on_row: given each frame's row when its :class:`~.items.FrameDone` comes, after the
            frame's results are written (their render and write times added to it).
    """

    def __init__(
        self,
        path: Path,
        store: Any,
        opts: ReplayOptions,
        summary: ReplaySummary,
        *,
        expected: int,
        fps: float,
        copied: Sequence[Any],
        queues: Queues,
        on_row: Callable[[FrameRow], None] | None = None,
    ) -> None:
        self.path, self.store, self.opts, self.summary = path, store, opts, summary
        self.times, self.on_row = StageTimes(summary.timings_ms), on_row
        self._row = FrameRow()  # the row of the frame whose results are being written
        self.expected, self.fps, self.copied, self.queues = expected, fps, copied, queues
        self.topic = summary.topic
        self.error: str | None = None
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replay-write", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until it has opened the output.

        Raises:
            Whatever opening the output bag or the side files raised on the thread.
        """
        self._thread.start()
        self._ready.wait()
        if self._setup_error is not None:
            raise self._setup_error

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as err:
            self._setup_error = err
            self._close_after_failed_open()
            return
        finally:
            self._ready.set()
        try:
            while (item := self.queues.results.get()) is not END:
                if self.error is not None:
                    continue  # keep draining, so that the caller never blocks on a full queue
                try:
                    self._write_item(item)
                except Exception as err:  # disk full, a codec failure: stop, keep the bag
                    self.error = f"writing the output failed: {type(err).__name__}: {err}"
                    self.queues.stop.set()
        finally:
            try:
                self._finish()
            finally:
                self.writer.close()

    def _close_after_failed_open(self) -> None:
        """Close the bag when opening it worked but a later step of :meth:`_open` failed
        (adding a connection, say): an open bag is not a bag any reader takes. The error of
        that step is the one reported; one from closing would only hide it."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()

    def _open(self) -> None:
        """Open the bag (on this thread: sqlite3 objects must stay on their thread), add its
        connections, and set up the side files."""
        store, opts = self.store, self.opts
        self.writer = writer = bags.open_writer(self.path, opts.storage)
        self.messages = Messages(store)
        self.image_type = store.types[bags.IMAGE]
        self.topics = _topics(opts, vision=self.messages.vision)
        self.conns = {
            key: writer.add_connection(name, msgtype, typestore=store)
            for key, (name, msgtype) in self.topics.items()
        }
        self.copies = {c.id: bags.copy_connection(writer, c) for c in self.copied}
        self.coco = CocoResults({"description": f"segfast replay of {self.summary.input}"})
        self.sheet = ContactSheet(self.expected) if opts.contact_sheet else None
        self.video = OverlayVideo(opts.overlay_video, self.fps) if opts.overlay_video else None

    def _write(self, key: str, msg: Any, bag_time: int) -> None:
        name, msgtype = self.topics[key]
        start = time.perf_counter()
        self.writer.write(self.conns[key], bag_time, self.store.serialize_cdr(msg, msgtype))
        self.times.add("write", 1e3 * (time.perf_counter() - start), self._row)
        self.summary.written[name] += 1

    def _detections(self, key: str, header: Any, records: list, bag_time: int) -> None:
        """``<ns>/detections`` (2D, every record) or a ``detections_3d`` topic (the records
        with a valid 3D position), when the bag has that topic."""
        if key not in self.topics:
            return
        if key == "detections":
            msg = self.messages.detection2d_array(header, detections_2d(records))
        else:
            oriented = self.opts.depth.oriented_boxes
            dets = detections_3d(records, oriented=oriented)
            msg = self.messages.detection3d_array(header, dets)
        self._write(key, msg, bag_time)

    def _write_item(self, item: Any) -> None:
        """Write one item of the results queue."""
        if isinstance(item, CopiedMessage):
            self.writer.write(self.copies[item.conn.id], item.bag_time, item.raw)
            self.summary.copied += 1
            return
        if isinstance(item, FrameDone):
            if self.on_row is not None:
                self.on_row(item.row)
            return
        self._row = item.frame.row
        if isinstance(item, PromptAnswer):
            msg = self.messages.instance_array(
                item.frame.msg.header, "segany", item.records, item.sets, item.ms
            )
            self._write("segment", msg, item.frame.bag_time)
        elif isinstance(item, TracksOutput):
            self._tracks(item)
        else:
            self._result(item)

    def _coco_image(self, frame: DecodedFrame) -> int:
        header = frame.msg.header
        return self.coco.image(
            frame.index,
            topic=self.topic,
            stamp_ns=stamp_to_ns(header.stamp),
            bag_time_ns=frame.bag_time,
            frame_id=header.frame_id,
            hw=frame.image.shape[:2],
        )

    def _tracks(self, item: TracksOutput) -> None:
        """The targets on a frame: ``<ns>/tracks`` and its mono16 label image (pixel = target
        ID), ``<ns>/tracks/detections_3d``, and the found ones as COCO annotations."""
        frame, header, records = item.frame, item.frame.msg.header, item.records
        hw = frame.image.shape[:2]
        start = time.perf_counter()
        labels = targets_label_image(item.results, hw)
        self.times.add("render", 1e3 * (time.perf_counter() - start), frame.row)
        arr = self.messages.instance_array(header, "targets", records, item.decoded, item.ms)
        self._write("tracks", arr, frame.bag_time)
        self._write("tracks_label", self._image(header, labels, "mono16"), frame.bag_time)
        self._detections("tracks_3d", header, records, frame.bag_time)
        if self.opts.coco:
            self.coco.add(self._coco_image(frame), records, targets=True)

    def _result(self, item: SegEveryOutput) -> None:
        frame, result = item.frame, item.result
        header = frame.msg.header
        start = time.perf_counter()
        instances = result.instances
        labels = instances_to_label_image(instances, result.image_hw)
        need_overlay = (
            self.opts.overlay_topic
            or self.video is not None
            or (self.sheet is not None and self.sheet.wants(frame.index))
        )
        drawn = overlay(frame.image, labels) if need_overlay else None
        self.times.add("render", 1e3 * (time.perf_counter() - start), frame.row)
        seg_ms = result.timings_ms.get("total", 0.0)
        arr = self.messages.instance_array(
            header, result.strategy, item.records, result.decoder_prompts, seg_ms
        )
        self._write("instances", arr, frame.bag_time)
        self._write("label", self._image(header, labels, "mono16"), frame.bag_time)
        self._detections("detections", header, item.records, frame.bag_time)
        self._detections("detections_3d", header, item.records, frame.bag_time)
        if self.opts.overlay_topic:
            self._write("overlay", self._image(header, rgb_pixels(drawn), "rgb8"), frame.bag_time)
        if self.opts.coco:
            self.coco.add(self._coco_image(frame), item.records)
        if self.video is not None:
            self.video.add(drawn)
        if self.sheet is not None and drawn is not None and self.sheet.wants(frame.index):
            stamp = stamp_to_ns(frame.msg.header.stamp) / 1e9
            self.sheet.add(drawn, f"#{frame.index} t={stamp:.3f} n={len(instances)}")

    def _image(self, header: Any, pixels: np.ndarray, encoding: str) -> Any:
        return self.image_type(header=header, **image_fields(pixels, encoding))

    def _finish(self) -> None:
        """Write the side files with what was processed (also after an error)."""
        files = self.summary.files
        if self.opts.coco:
            self.coco.save(self.opts.coco)
            files["coco"] = str(self.opts.coco)
        if self.video is not None:
            self.video.close()
            if self.video.frames:
                files["overlay video"] = str(self.opts.overlay_video)
        if self.sheet is not None and self.sheet.save(self.opts.contact_sheet):
            files["contact sheet"] = str(self.opts.contact_sheet)
        files["output bag"] = str(self.summary.output)


def _topics(opts: ReplayOptions, *, vision: bool) -> dict[str, tuple[str, str]]:
    """The output topics: key -> (name, type)."""
    ns = opts.namespace.rstrip("/")
    array_type = bags.msg_type("InstanceArray")
    topics = {
        "instances": (f"{ns}/instances", array_type),
        "label": (f"{ns}/instances/label", bags.IMAGE),
        "segment": (f"{ns}/segment", array_type),
    }
    if opts.overlay_topic:
        topics["overlay"] = (f"{ns}/overlay", bags.IMAGE)
    tracks = any(p.action == TRACK for p in opts.prompts)
    if tracks:
        topics["tracks"] = (f"{ns}/tracks", array_type)
        topics["tracks_label"] = (f"{ns}/tracks/label", bags.IMAGE)
    if vision:
        topics["detections"] = (f"{ns}/detections", bags.vision_type("Detection2DArray"))
        if opts.depth_topic is not None:
            d3 = bags.vision_type("Detection3DArray")
            topics["detections_3d"] = (f"{ns}/detections_3d", d3)
            if tracks:
                topics["tracks_3d"] = (f"{ns}/tracks/detections_3d", d3)
    return topics
