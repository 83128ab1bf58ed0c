"""Offline replay: every selected frame of a bag through the encoder and SegEvery, into a bag.

Three threads, so that image decoding and writing overlap with inference:

* the **reader** (:mod:`.reader`) deserializes and decodes the selected frames (and passes
  copied messages on);
* the **caller's thread** (:mod:`.inference`) runs the encoder, SegEvery, the trackers (SegEvery
  track IDs, prompted targets) and the scripted calls;
* the **writer** (:mod:`.writer`) paints label images and overlays, serializes and writes the
  output bag, and feeds the COCO file, the video and the contact sheet.

Queues between them (:mod:`.items`) are bounded and FIFO, so nothing is dropped and the output
does not depend on timing: the same bag and options give the same output bag, message for
message. Frames are selected, and prompts scheduled, on bag time (the time each message was
recorded), never on the wall clock (:mod:`.schedule`); the trackers see only the frames, in
order, so track IDs and targets are the same run after run too.

With a depth topic the reader pairs depth images and CameraInfos with the selected frames, on
header stamps with a bounded look-ahead (:mod:`.depth`), and every ``Instance`` written gets
its ``position_3d``: the mask lifted with the depth paired by header stamp (within
``depth.sync_tolerance``) and the CameraInfos; ``valid`` false without depth for the frame
(the summary says why). When the typestore has vision_msgs (:func:`~.bags.vision_msgs_dir`):

* ``<ns>/detections`` (``vision_msgs/Detection2DArray``) mirrors ``<ns>/instances`` (same
  header and order; box, score, track ID as ``id``);
* with a depth topic, ``<ns>/detections_3d`` (``Detection3DArray``: the instances with a
  valid 3D position, ``id`` their track ID, the hypothesis pose the centroid, the box the 3D
  extent) and, with targets, ``<ns>/tracks/detections_3d`` (the targets').

Without vision_msgs only the project's messages are written; the log and the summary say so.

If the input turns out corrupt part-way, or the run is interrupted (Ctrl-C), what was processed
so far is written and the output bag is closed properly, so it opens in any reader.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..runtime.predictor import Predictor
from ..segevery.base import SegEvery
from . import bags
from .depth import (
    COLOUR_INFO,
    DEPTH_INFO,
    DepthLift,
    DepthPairing,
    DepthTopics,
    select_depth_topics,
)
from .inference import Inference
from .items import END, Queues
from .mcap_salvage import SalvageReader
from .options import ReplayOptions
from .outputs import Progress
from .reader import FrameReader
from .schedule import FrameSelector
from .summary import STAGES, DepthReport, FrameRow, ReplaySummary
from .writer import OutputWriter

__all__ = ["STAGES", "ReplayOptions", "ReplaySummary", "replay"]


def replay(
    input_bag: str | Path,
    output_bag: str | Path,
    predictor: Predictor,
    segevery: SegEvery,
    options: ReplayOptions | None = None,
    *,
    on_frame: Callable[[ReplaySummary], None] | None = None,
    on_row: Callable[[FrameRow], None] | None = None,
) -> ReplaySummary:
    """Replay ``input_bag`` through ``predictor`` and ``segevery`` into ``output_bag``.

    Output topics (``<ns>`` is ``options.namespace``), each message with its source frame's
    header and written at the source message's bag time:

    * ``<ns>/instances`` (``segfast_ros/msg/InstanceArray``): SegEvery, one per frame, each
      instance with its ``track_id`` / ``track_state``;
    * ``<ns>/instances/label`` (``sensor_msgs/Image``, mono16): instance ``i`` is label
      ``i + 1``, 0 is the background;
    * ``<ns>/overlay`` (``sensor_msgs/Image``, rgb8), with ``overlay_topic``;
    * ``<ns>/segment`` (``InstanceArray``, strategy ``segany``): one per scripted prompt, all
      masks of its prompt sets in order (best first within a set);
    * ``<ns>/tracks`` (``InstanceArray``, strategy ``targets``, ``decoder_prompts`` the targets
      decoded, ``segevery_ms`` the step's time) and ``<ns>/tracks/label`` (mono16, pixel =
      target ID): the prompted targets (lost ones too, with no mask), on every processed frame
      from the one the first target is added on, while at least one target exists. Written
      only when the prompts add targets (``track:`` entries, see :mod:`.prompts`).

    * ``<ns>/detections``, ``<ns>/detections_3d``, ``<ns>/tracks/detections_3d``
      (vision_msgs), and ``position_3d`` in every ``Instance``: see the module docstring.

    Args:
        input_bag: rosbag2 folder (mcap or sqlite3).
        output_bag: new rosbag2 folder.
        predictor: its backend runs the encoder and decoder.
        segevery: the SegEvery strategy.
        options: see :class:`ReplayOptions`.
        on_frame: called on the caller's thread after each processed frame (tests, UIs).
        on_row: called on the writer thread with each processed frame's
            :class:`~.summary.FrameRow` (its counts and stage times), in order, once all of
            the frame's results are written (the fleet table).

    Returns:
        The summary. A corrupt input part-way or Ctrl-C ends the replay early with
        ``error`` / ``interrupted`` set, and the output holds everything processed before.

    Raises:
        bags.BagError: the input cannot be opened, the topic or the depth topic is missing, no
            CameraInfo for 3D (the message lists the bag's topics), or the output exists
            (without ``overwrite``).
        ValueError: invalid options.
    """
    opts = options or ReplayOptions()
    opts.check()
    input_bag, output_bag = Path(input_bag), Path(output_bag)
    summary = ReplaySummary(
        input=input_bag,
        output=output_bag,
        strategy=segevery.name,
        model=opts.model,
        segevery_settings=dict(opts.segevery_settings),
        segevery_settings_source=opts.segevery_settings_source,
        tracking_settings=opts.tracking_changes(),
    )
    store = bags.typestore()
    summary.vision_msgs = _vision_line(store, opts)
    reader = bags.open_reader(input_bag)
    try:
        summary.topic = bags.select_topic(reader, opts.topic)
        summary.depth = _depth_report(reader, summary.topic, opts)
        if opts.overlay_video and (opts.overlay_video.parent == output_bag):
            raise ValueError("write the overlay video outside the output bag folder")
        bags.prepare_output(output_bag, overwrite=opts.overwrite)
        _run(reader, store, predictor, segevery, opts, summary, (on_frame, on_row))
        if isinstance(reader, SalvageReader) and summary.error is None:
            summary.error = reader.describe()
    finally:
        reader.close()
    return summary


def _vision_line(store: Any, opts: ReplayOptions) -> str:
    """The summary's vision_msgs line: where the types came from and what they give, or why
    they are missing."""
    if not bags.has_vision_msgs(store):
        return bags.vision_msgs_missing()
    ns = opts.namespace.rstrip("/")
    written = f"{ns}/detections" + (f", {ns}/detections_3d" if opts.depth_topic else "")
    return f"vision_msgs from {bags.vision_msgs_dir()}: {written}"


def _depth_report(reader: Any, topic: str, opts: ReplayOptions) -> DepthReport | None:
    """The depth topics, checked against the bag, in an empty report; None without depth.

    Raises:
        bags.BagError: see :func:`~.depth.select_depth_topics`.
    """
    if opts.depth_topic is None:
        return None
    depth = select_depth_topics(
        reader, topic, opts.depth_topic, opts.camera_info_topic, opts.depth_info_topic
    )
    return DepthReport(
        topic=depth.depth,
        colour_info=depth.colour_info or "",
        depth_info=depth.depth_info or "",
        defaults=depth.defaults,
        settings=opts.depth_changes(),
        messages=reader.topics[depth.depth].msgcount,
    )


def _depth_topics(report: DepthReport | None) -> DepthTopics | None:
    if report is None:
        return None
    return DepthTopics(report.topic, report.colour_info or None, report.depth_info or None)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Defer Ctrl-C while the output is being closed (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *a: pending.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _run(
    reader: Any,
    store: Any,
    predictor: Predictor,
    segevery: SegEvery,
    opts: ReplayOptions,
    summary: ReplaySummary,
    callbacks: tuple[Callable[[ReplaySummary], None] | None, Callable[[FrameRow], None] | None],
) -> None:
    """Start the writer (it opens the output), then the reader; run the models on this thread.

    However the run ends (the input done or corrupt, a write error, Ctrl-C), the reader is
    stopped and the writer drains what was queued and closes the output, with Ctrl-C deferred.
    """
    on_frame, on_row = callbacks
    topic = summary.topic
    image_conns = [c for c in reader.connections if c.topic == topic]
    summary.topic_messages = sum(c.msgcount for c in image_conns)
    depth_topics = _depth_topics(summary.depth)
    kinds = depth_topics.kinds() if depth_topics is not None else {}
    read = {topic, *kinds}
    conns = [c for c in reader.connections if opts.copy_input or c.topic in read]
    selector = FrameSelector(opts.every, opts.rate_hz)
    expected = selector.expected(summary.topic_messages, reader.duration)
    summary.timings_ms = {s: [] for s in (*STAGES, "inference")}
    queues = Queues(opts.queue_size)
    tolerance_ns = round(opts.sync_tolerance_s * 1e9)
    pairing, lift = None, None
    if summary.depth is not None:
        infos = frozenset(kinds.values()) & {COLOUR_INFO, DEPTH_INFO}
        pairing = DepthPairing(tolerance_ns, infos)
        lift = DepthLift(opts.depth, tolerance_ns, summary.depth)
    frames = FrameReader(
        reader,
        store,
        conns,
        topic,
        selector,
        copy_input=opts.copy_input,
        bag=summary.input,
        queues=queues,
        depth=depth_topics,
        pairing=pairing,
    )
    writer = OutputWriter(
        summary.output,
        store,
        opts,
        summary,
        expected=expected,
        fps=selector.fps(expected, reader.duration),
        copied=conns if opts.copy_input else [],
        queues=queues,
        on_row=on_row,
    )
    rows = on_row is not None
    inference = Inference(
        predictor, segevery, opts, summary, queues, reader.start_time, lift, rows=rows
    )
    progress = Progress(expected, enabled=opts.progress)
    writer.start()
    started = time.perf_counter()
    frames.start()
    try:
        inference.run(frames, writer, progress, on_frame)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        with _no_interrupts():
            queues.stop.set()  # the reader stops; the writer drains what was queued
            frames.join()
            queues.results.put(END)
            writer.join()
            summary.wall_s = time.perf_counter() - started
            if writer.error is not None and summary.error is None:
                summary.error = writer.error
            progress.close(summary.processed, f"{summary.instances} instances")
