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
from .inference import Inference
from .items import END, Queues
from .mcap_salvage import SalvageReader
from .options import ReplayOptions
from .outputs import Progress
from .reader import FrameReader
from .schedule import FrameSelector
from .summary import STAGES, ReplaySummary
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

    Args:
        input_bag: rosbag2 folder (mcap or sqlite3).
        output_bag: new rosbag2 folder.
        predictor: its backend runs the encoder and decoder.
        segevery: the SegEvery strategy.
        options: see :class:`ReplayOptions`.
        on_frame: called on the caller's thread after each processed frame (tests, UIs).

    Returns:
        The summary. A corrupt input part-way or Ctrl-C ends the replay early with
        ``error`` / ``interrupted`` set, and the output holds everything processed before.

    Raises:
        bags.BagError: the input cannot be opened, the topic is missing (the message lists the
            bag's topics), or the output exists (without ``overwrite``).
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
    reader = bags.open_reader(input_bag)
    try:
        summary.topic = bags.select_topic(reader, opts.topic)
        if opts.overlay_video and (opts.overlay_video.parent == output_bag):
            raise ValueError("write the overlay video outside the output bag folder")
        bags.prepare_output(output_bag, overwrite=opts.overwrite)
        _run(reader, store, predictor, segevery, opts, summary, on_frame)
        if isinstance(reader, SalvageReader) and summary.error is None:
            summary.error = reader.describe()
    finally:
        reader.close()
    return summary


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
    on_frame: Callable[[ReplaySummary], None] | None,
) -> None:
    """Start the writer (it opens the output), then the reader; run the models on this thread.

    However the run ends (the input done or corrupt, a write error, Ctrl-C), the reader is
    stopped and the writer drains what was queued and closes the output, with Ctrl-C deferred.
    """
    topic = summary.topic
    image_conns = [c for c in reader.connections if c.topic == topic]
    summary.topic_messages = sum(c.msgcount for c in image_conns)
    conns = list(reader.connections) if opts.copy_input else image_conns
    selector = FrameSelector(opts.every, opts.rate_hz)
    expected = selector.expected(summary.topic_messages, reader.duration)
    summary.timings_ms = {s: [] for s in (*STAGES, "inference")}
    queues = Queues(opts.queue_size)
    frames = FrameReader(
        reader,
        store,
        conns,
        topic,
        selector,
        copy_input=opts.copy_input,
        bag=summary.input,
        queues=queues,
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
    )
    inference = Inference(predictor, segevery, opts, summary, queues, reader.start_time)
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
