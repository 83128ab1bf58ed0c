"""Offline replay: every selected frame of a bag through the encoder and SegEvery, into a bag.

Three threads, so that image decoding and writing overlap with inference:

* the **reader** deserializes and decodes the selected frames (and passes copied messages on);
* the **caller's thread** runs the encoder, SegEvery and the scripted SegAny prompts;
* the **writer** paints label images and overlays, serializes and writes the output bag, and
  feeds the COCO file, the video and the contact sheet.

Queues between them are bounded and FIFO, so nothing is dropped and the output does not depend
on timing: the same bag and options give the same output bag, message for message. Frames are
selected, and prompts scheduled, on bag time (the time each message was recorded), never on
the wall clock.

If the input turns out corrupt part-way, or the run is interrupted (Ctrl-C), what was processed
so far is written and the output bag is closed properly, so it opens in any reader.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..masks import Instance
from ..pipeline.frames import stamp_to_ns
from ..pipeline.image_msgs import (
    ImageError,
    compressed_msg_to_rgb,
    image_fields,
    image_msg_to_rgb,
    rgb_pixels,
)
from ..pipeline.render import (
    InstanceRecord,
    instance_record,
    instances_to_label_image,
    mask_record,
    overlay,
)
from ..runtime.predictor import Predictor
from ..segany import decode_prompt_sets, prompt_kwargs
from ..segevery.base import SegEvery, SegEveryResult
from . import bags
from .mcap_salvage import SalvageReader
from .outputs import CocoResults, ContactSheet, OverlayVideo, Progress
from .prompts import ScriptedPrompt

log = logging.getLogger("segfast.replay")

#: Stages of the timing summary, in pipeline order.
STAGES: tuple[str, ...] = (
    "decode_image",
    "encoder",
    "detector",
    "decoder",
    "postprocess",
    "segany",
    "render",
    "write",
)

_END = object()


@dataclass
class ReplayOptions:
    """What to replay and what to write.

    Attributes:
        topic: image topic to segment (None: the bag's only image topic).
        every: process every N-th message of the topic (1: all).
        rate_hz: instead, process at most this many frames per second of bag time: the first
            frame in each ``1 / rate_hz`` slot after the topic's first frame.
        segevery_rate_hz: run SegEvery on at most this many processed frames per second of bag
            time (as the node's ``segevery.rate``); None, on every processed frame; 0, never
            (only the encoder and the scripted prompts run).
        namespace: prefix of the output topics (the node's namespace and name).
        copy_input: copy every input topic into the output bag, unchanged.
        overlay_topic: also write overlays to ``<namespace>/overlay``.
        storage: output storage, ``mcap`` or ``sqlite3``.
        overwrite: replace an existing output bag.
        prompts: scripted SegAny calls.
        coco: write COCO results JSON here.
        overlay_video: write an mp4 of the overlays here.
        contact_sheet: write a PNG contact sheet of overlays here.
        progress: draw a progress line on stderr.
        queue_size: frames buffered between the threads.
        model: what runs the encoder and decoder, and why it was chosen (for the summary).
        segevery_settings: the SegEvery settings given to the strategy, those that differ
            from its defaults (for the summary).
        segevery_settings_source: where those settings come from (for the summary).
    """

    topic: str | None = None
    every: int = 1
    rate_hz: float | None = None
    segevery_rate_hz: float | None = None
    namespace: str = "/segfast"
    copy_input: bool = False
    overlay_topic: bool = False
    storage: str = "mcap"
    overwrite: bool = False
    prompts: Sequence[ScriptedPrompt] = ()
    coco: Path | None = None
    overlay_video: Path | None = None
    contact_sheet: Path | None = None
    progress: bool = False
    queue_size: int = 4
    model: str = ""
    segevery_settings: Mapping[str, Any] = field(default_factory=dict)
    segevery_settings_source: str = ""

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, got {self.every}")
        if self.rate_hz is not None and not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"--rate must be a positive number of Hz, got {self.rate_hz}")
        rate = self.segevery_rate_hz
        if rate is not None and not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"--segevery-rate must be >= 0 Hz, got {rate}")
        if self.rate_hz is not None and self.every != 1:
            raise ValueError("give --every or --rate, not both")
        if not self.namespace.startswith("/"):
            raise ValueError(f"the output namespace must start with '/', got {self.namespace!r}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")


@dataclass
class ReplaySummary:
    """What a replay did. ``error`` and ``interrupted`` say why it stopped early, if it did."""

    input: Path
    output: Path
    topic: str = ""
    strategy: str = ""
    model: str = ""
    segevery_settings: dict[str, Any] = field(default_factory=dict)
    segevery_settings_source: str = ""
    topic_messages: int = 0
    selected: int = 0
    processed: int = 0
    segevery_frames: int = 0
    instances: int = 0
    decoder_prompts: int = 0
    skipped: Counter = field(default_factory=Counter)
    prompts_answered: int = 0
    prompt_errors: list[str] = field(default_factory=list)
    written: Counter = field(default_factory=Counter)
    copied: int = 0
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None
    interrupted: bool = False
    files: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.error is None and not self.interrupted

    @property
    def fps(self) -> float:
        return self.processed / self.wall_s if self.wall_s > 0 else 0.0

    def median_ms(self, stage: str) -> float:
        values = self.timings_ms.get(stage, [])
        return float(np.median(values)) if values else math.nan

    @property
    def encoder_bound_fps(self) -> float:
        """1 / median encoder time: what a replay that only ran the encoder could reach."""
        ms = self.median_ms("encoder")
        return 1000.0 / ms if ms > 0 else math.nan

    @property
    def inference_bound_fps(self) -> float:
        """1 / median (encoder + SegEvery + SegAny) time per frame: the limit with SegEvery."""
        per_frame = self.timings_ms.get("inference", [])
        return 1000.0 / float(np.median(per_frame)) if per_frame else math.nan

    def to_json(self) -> dict[str, Any]:
        stages = {
            s: {
                "count": len(v),
                "median_ms": float(np.median(v)),
                "p95_ms": float(np.percentile(v, 95)),
                "total_s": float(np.sum(v)) / 1e3,
            }
            for s, v in self.timings_ms.items()
            if v
        }
        return {
            "input": str(self.input),
            "output": str(self.output),
            "topic": self.topic,
            "strategy": self.strategy,
            "model": self.model,
            "segevery_settings": self.segevery_settings,
            "segevery_settings_source": self.segevery_settings_source,
            "topic_messages": self.topic_messages,
            "selected": self.selected,
            "processed": self.processed,
            "segevery_frames": self.segevery_frames,
            "instances": self.instances,
            "decoder_prompts": self.decoder_prompts,
            "skipped": dict(self.skipped),
            "prompts_answered": self.prompts_answered,
            "prompt_errors": self.prompt_errors,
            "written": dict(self.written),
            "copied": self.copied,
            "stages": stages,
            "wall_s": self.wall_s,
            "fps": self.fps,
            "encoder_bound_fps": self.encoder_bound_fps,
            "inference_bound_fps": self.inference_bound_fps,
            "error": self.error,
            "interrupted": self.interrupted,
            "files": self.files,
        }

    def _setup_lines(self) -> list[str]:
        """What ran: the model, and the SegEvery settings with where they come from."""
        lines = [f"  model: {self.model}"] if self.model else []
        if self.segevery_settings or self.segevery_settings_source:
            given = ", ".join(f"{k}={v}" for k, v in self.segevery_settings.items())
            source = f" ({self.segevery_settings_source})" if self.segevery_settings_source else ""
            lines.append(f"  SegEvery {self.strategy} settings: {given or 'none'}{source}")
        return lines

    def format(self) -> str:
        """A human summary: counts, per-stage timings, throughput, outputs, problems."""
        lines = [
            f"replay {self.input} -> {self.output} ({self.topic}, {self.strategy})",
            *self._setup_lines(),
            f"  frames: {self.topic_messages} on the topic, {self.selected} selected, "
            f"{self.processed} processed ({self.segevery_frames} with SegEvery); "
            f"{self.instances} instances, "
            f"{self.decoder_prompts} decoder prompts",
        ]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} frame(s): {reason}")
        if self.prompts_answered or self.prompt_errors:
            lines.append(
                f"  scripted prompts: {self.prompts_answered} answered, "
                f"{len(self.prompt_errors)} failed"
            )
            lines.extend(f"    {e}" for e in self.prompt_errors)
        lines.append(f"  {'stage':<13}{'count':>7}{'median ms':>11}{'p95 ms':>9}{'total s':>9}")
        for stage in (*STAGES, "inference"):
            v = self.timings_ms.get(stage)
            if v:
                lines.append(
                    f"  {stage:<13}{len(v):>7}{np.median(v):>11.1f}"
                    f"{np.percentile(v, 95):>9.1f}{np.sum(v) / 1e3:>9.2f}"
                )
        lines.append(
            f"  throughput: {self.fps:.2f} frames/s over {self.wall_s:.1f} s; encoder-bound "
            f"limit {self.encoder_bound_fps:.2f}/s ({_ratio(self.fps, self.encoder_bound_fps)}), "
            f"inference-bound {self.inference_bound_fps:.2f}/s "
            f"({_ratio(self.fps, self.inference_bound_fps)})"
        )
        written = ", ".join(f"{t} {n}" for t, n in sorted(self.written.items()))
        lines.append(f"  written: {written or 'nothing'}; copied {self.copied} input messages")
        for what, path in self.files.items():
            lines.append(f"  {what}: {path}")
        if self.interrupted:
            lines.append("  INTERRUPTED: the output holds the frames processed until then")
        if self.error:
            lines.append(f"  ERROR: {self.error}")
            lines.append("  the output holds the frames processed before the error")
        return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and math.isfinite(b) and b > 0 else "n/a"


# --------------------------------------------------------------------------------- items


@dataclass
class _Frame:
    index: int  # position among the selected frames
    bag_time: int
    msg: Any  # the deserialized message (header is reused for the outputs)
    image: np.ndarray
    decode_ms: float


@dataclass
class _Copy:
    conn: Any
    bag_time: int
    raw: bytes


@dataclass
class _Skip:
    reason: str


@dataclass
class _Failed:
    error: str


@dataclass
class _Result:
    frame: _Frame
    result: SegEveryResult


@dataclass
class _Answer:
    frame: _Frame
    prompt: ScriptedPrompt
    records: list[InstanceRecord]
    sets: int
    ms: float


class _Selector:
    """Which messages of the topic to process, from their index and bag time only."""

    def __init__(self, every: int, rate_hz: float | None) -> None:
        self.every, self.rate_hz = every, rate_hz
        self.start: int | None = None
        self.slot = -1

    def take(self, index: int, bag_time: int) -> bool:
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
        if self.rate_hz is None:
            return math.ceil(count / self.every)
        return min(count, math.floor(duration_ns * self.rate_hz / 1e9) + 1)


# ---------------------------------------------------------------------------------- replay


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

    * ``<ns>/instances`` (``segfast_ros/msg/InstanceArray``): SegEvery, one per frame;
    * ``<ns>/instances/label`` (``sensor_msgs/Image``, mono16): instance ``i`` is label
      ``i + 1``, 0 is the background;
    * ``<ns>/overlay`` (``sensor_msgs/Image``, rgb8), with ``overlay_topic``;
    * ``<ns>/segment`` (``InstanceArray``, strategy ``segany``): one per scripted prompt, all
      masks of its prompt sets in order (best first within a set).

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
    topic = summary.topic
    image_conns = [c for c in reader.connections if c.topic == topic]
    summary.topic_messages = sum(c.msgcount for c in image_conns)
    conns = list(reader.connections) if opts.copy_input else image_conns
    selector = _Selector(opts.every, opts.rate_hz)
    seg_rate = opts.segevery_rate_hz
    # None: SegEvery on every processed frame; 0: never; else on bag-time slots.
    seg_selector = _Selector(1, seg_rate) if seg_rate else None
    expected = selector.expected(summary.topic_messages, reader.duration)
    timings = summary.timings_ms = {s: [] for s in (*STAGES, "inference")}

    ns = opts.namespace.rstrip("/")
    duration_s = reader.duration / 1e9
    fps = opts.rate_hz or (
        (expected - 1) / duration_s if duration_s > 0 and expected > 1 else 10.0
    )
    copied = conns if opts.copy_input else []

    stop = threading.Event()
    frames: queue.Queue = queue.Queue(maxsize=opts.queue_size)
    results: queue.Queue = queue.Queue(maxsize=opts.queue_size)
    bag_start = reader.start_time

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        index = 0
        try:
            for conn, bag_time, raw in bags.read_messages(reader, conns):
                if stop.is_set():
                    return
                if opts.copy_input and not put(frames, _Copy(conn, bag_time, raw)):
                    return
                if conn.topic != topic:
                    continue
                take = selector.take(index, bag_time)
                index += 1
                if not take:
                    continue
                start = time.perf_counter()
                # Bytes that do not deserialize end the replay (a BagError naming the message,
                # turned into the summary's error below); a message that deserializes but
                # holds an unusable image is skipped and counted.
                msg = bags.deserialize(
                    store, conn, raw, bag=summary.input, index=index - 1, bag_time=bag_time
                )
                try:
                    convert = (
                        image_msg_to_rgb if conn.msgtype == bags.IMAGE else compressed_msg_to_rgb
                    )
                    image = convert(msg)
                except ImageError as err:
                    if not put(frames, _Skip(str(err))):
                        return
                    continue
                item = _Frame(-1, bag_time, msg, image, 1e3 * (time.perf_counter() - start))
                if not put(frames, item):
                    return
        except Exception as err:
            put(frames, _Failed(str(err)))
        finally:
            put(frames, _END)

    out: _Outputs | None = None
    ready = threading.Event()
    setup_error: list[BaseException] = []

    def write() -> None:
        # The writer lives on this thread alone: sqlite3 objects must stay on their thread.
        nonlocal out
        try:
            writer = bags.open_writer(summary.output, opts.storage)
            out = _Outputs(writer, store, ns, opts, summary, expected, topic, fps, copied)
        except BaseException as err:
            setup_error.append(err)
            return
        finally:
            ready.set()
        try:
            while (item := results.get()) is not _END:
                if out.error is not None:
                    continue  # keep draining, so that the caller never blocks on a full queue
                try:
                    out.write(item)
                except Exception as err:  # disk full, a codec failure: stop, keep the bag
                    out.error = f"writing the output failed: {type(err).__name__}: {err}"
                    stop.set()
        finally:
            try:
                out.finish()
            finally:
                writer.close()

    def next_frame() -> Any:
        while True:
            try:
                return frames.get(timeout=0.1)
            except queue.Empty:
                if not threads[0].is_alive() and frames.empty():
                    return _END  # the reader stopped early (stop was set)

    progress = Progress(expected, enabled=opts.progress)
    pending = sorted(
        (p for p in opts.prompts if p.time_ns is not None), key=lambda p: (p.time_ns, p.index)
    )
    by_stamp: dict[int, list[ScriptedPrompt]] = {}
    for p in opts.prompts:
        if p.stamp_ns is not None:
            by_stamp.setdefault(p.stamp_ns, []).append(p)

    threads = [threading.Thread(target=read, name="replay-read", daemon=True)]
    threads.append(threading.Thread(target=write, name="replay-write", daemon=True))
    threads[1].start()
    ready.wait()
    if setup_error:
        raise setup_error[0]
    assert out is not None
    started = time.perf_counter()
    threads[0].start()
    last: _Frame | None = None
    try:
        while True:
            item = next_frame()
            if out.error is not None:
                summary.error = out.error
                break
            if item is _END:
                break
            if isinstance(item, _Copy):
                put(results, item)
                continue
            if isinstance(item, _Skip):
                summary.skipped[item.reason] += 1
                summary.selected += 1
                continue
            if isinstance(item, _Failed):
                summary.error = item.error
                continue  # the reader ends with _END next
            summary.selected += 1
            # Time prompts due before this frame are answered from the previous frame.
            while pending and bag_start + pending[0].time_ns < item.bag_time:
                _answer(pending.pop(0), last, predictor, summary, timings, results, put)
            item.index = summary.processed
            start = time.perf_counter()
            predictor.set_image(item.image)
            encoded = time.perf_counter()
            timings["decode_image"].append(item.decode_ms)
            timings["encoder"].append(1e3 * (encoded - start))
            result = None
            if seg_rate != 0 and (seg_selector is None or seg_selector.take(0, item.bag_time)):
                result = segevery(predictor, item.image)
                seg_ms = result.timings_ms
                detector_ms = seg_ms.get("detector", 0.0)
                decoder_ms = seg_ms.get("decoder", 0.0)
                if "detector" in seg_ms:
                    timings["detector"].append(detector_ms)
                timings["decoder"].append(decoder_ms)
                seg_total = 1e3 * (time.perf_counter() - encoded)
                timings["postprocess"].append(seg_total - detector_ms - decoder_ms)
            for p in by_stamp.pop(stamp_to_ns(item.msg.header.stamp), []):
                _answer(p, item, predictor, summary, timings, results, put)
            timings["inference"].append(1e3 * (time.perf_counter() - start))
            last = item
            summary.processed += 1
            if result is not None:
                summary.segevery_frames += 1
                summary.instances += len(result.instances)
                summary.decoder_prompts += result.decoder_prompts
                put(results, _Result(item, result))
            progress.update(summary.processed, f"{summary.instances} instances")
            if on_frame is not None:
                on_frame(summary)
        if summary.complete and out.error is None:
            for p in pending:  # due after the last frame: answered from it
                _answer(p, last, predictor, summary, timings, results, put)
            for stamp, ps in sorted(by_stamp.items()):
                for p in ps:
                    summary.prompt_errors.append(
                        f"{p.name}: no processed frame has header stamp {stamp} ns"
                    )
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        with _no_interrupts():
            stop.set()  # the reader stops; the writer drains what was queued
            threads[0].join()
            results.put(_END)
            threads[1].join()
            summary.wall_s = time.perf_counter() - started
            if out.error is not None and summary.error is None:
                summary.error = out.error
            progress.close(summary.processed, f"{summary.instances} instances")


def _answer(
    prompt: ScriptedPrompt,
    frame: _Frame | None,
    predictor: Predictor,
    summary: ReplaySummary,
    timings: dict[str, list[float]],
    results: queue.Queue,
    put: Callable[[queue.Queue, Any], bool],
) -> None:
    """Answer one scripted prompt on ``frame`` (the predictor holds its embedding)."""
    if frame is None:
        summary.prompt_errors.append(
            f"{prompt.name}: no frame before bag time +{prompt.time_ns / 1e9:.3f} s (as the "
            "node answers a call before its first frame)"
        )
        return
    start = time.perf_counter()
    try:
        kwargs = prompt_kwargs(
            prompt.points,
            prompt.labels,
            prompt.boxes,
            points_per_set=prompt.points_per_set,
            multimask=prompt.multimask,
            low_res_size=predictor.info.low_res_size,
        )
        records: list[InstanceRecord] = []
        sets = 0
        for answer in decode_prompt_sets(predictor, kwargs):
            sets += 1
            for mask, score, stab in zip(
                answer.masks, answer.scores, answer.stability, strict=True
            ):
                records.append(
                    mask_record(mask, float(score), float(stab), len(records), answer.prompt)
                )
    except ValueError as err:
        summary.prompt_errors.append(f"{prompt.name}: {err}")
        return
    ms = 1e3 * (time.perf_counter() - start)
    timings["segany"].append(ms)
    summary.prompts_answered += 1
    put(results, _Answer(frame, prompt, records, sets, ms))


class _Outputs:
    """The writer thread's side: messages into the bag, and the optional files."""

    def __init__(
        self,
        writer: Any,
        store: Any,
        ns: str,
        opts: ReplayOptions,
        summary: ReplaySummary,
        expected: int,
        topic: str,
        fps: float,
        copied: Sequence[Any] = (),
    ) -> None:
        self.writer, self.store, self.opts, self.summary = writer, store, opts, summary
        self.topic = topic
        self.error: str | None = None
        self.types = {n: store.types[bags.msg_type(n)] for n in ("Instance", "InstanceArray")}
        self.image_type = store.types[bags.IMAGE]
        self.roi_type = store.types["sensor_msgs/msg/RegionOfInterest"]
        array_type = bags.msg_type("InstanceArray")
        self.topics = {
            "instances": (f"{ns}/instances", array_type),
            "label": (f"{ns}/instances/label", bags.IMAGE),
            "segment": (f"{ns}/segment", array_type),
        }
        if opts.overlay_topic:
            self.topics["overlay"] = (f"{ns}/overlay", bags.IMAGE)
        self.conns = {
            key: writer.add_connection(name, msgtype, typestore=store)
            for key, (name, msgtype) in self.topics.items()
        }
        self.copies = {c.id: bags.copy_connection(writer, c) for c in copied}
        self.coco = CocoResults({"description": f"segfast replay of {summary.input}"})
        self.sheet = ContactSheet(expected) if opts.contact_sheet else None
        self.video = OverlayVideo(opts.overlay_video, fps) if opts.overlay_video else None

    def _write(self, key: str, msg: Any, bag_time: int) -> None:
        name, msgtype = self.topics[key]
        start = time.perf_counter()
        self.writer.write(self.conns[key], bag_time, self.store.serialize_cdr(msg, msgtype))
        self.summary.timings_ms["write"].append(1e3 * (time.perf_counter() - start))
        self.summary.written[name] += 1

    def _instance(self, rec: InstanceRecord) -> Any:
        x, y, w, h = rec.roi
        return self.types["Instance"](
            id=rec.id,
            score=rec.score,
            stability=rec.stability,
            box=self.roi_type(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
            area=rec.area,
            mask_height=rec.mask_hw[0],
            mask_width=rec.mask_hw[1],
            rle_counts=rec.rle_counts,
            prompt=rec.prompt,
        )

    def _array(self, header: Any, strategy: str, records: list[InstanceRecord], n: int, ms: float):
        return self.types["InstanceArray"](
            header=header,
            strategy=strategy,
            instances=[self._instance(r) for r in records],
            decoder_prompts=n,
            segevery_ms=ms,
        )

    def write(self, item: Any) -> None:
        if isinstance(item, _Copy):
            self.writer.write(self.copies[item.conn.id], item.bag_time, item.raw)
            self.summary.copied += 1
        elif isinstance(item, _Answer):
            msg = self._array(item.frame.msg.header, "segany", item.records, item.sets, item.ms)
            self._write("segment", msg, item.frame.bag_time)
        else:
            self._result(item)

    def _result(self, item: _Result) -> None:
        frame, result = item.frame, item.result
        header = frame.msg.header
        start = time.perf_counter()
        instances: list[Instance] = result.instances
        labels = instances_to_label_image(instances, result.image_hw)
        need_overlay = (
            self.opts.overlay_topic
            or self.video is not None
            or (self.sheet is not None and self.sheet.wants(frame.index))
        )
        drawn = overlay(frame.image, labels) if need_overlay else None
        records = [instance_record(inst, i) for i, inst in enumerate(instances)]
        self.summary.timings_ms["render"].append(1e3 * (time.perf_counter() - start))
        seg_ms = result.timings_ms.get("total", 0.0)
        arr = self._array(header, result.strategy, records, result.decoder_prompts, seg_ms)
        self._write("instances", arr, frame.bag_time)
        self._write("label", self._image(header, labels, "mono16"), frame.bag_time)
        if self.opts.overlay_topic:
            self._write("overlay", self._image(header, rgb_pixels(drawn), "rgb8"), frame.bag_time)
        if self.opts.coco:
            self.coco.add_frame(
                topic=self.topic,
                stamp_ns=stamp_to_ns(frame.msg.header.stamp),
                bag_time_ns=frame.bag_time,
                frame_id=header.frame_id,
                hw=result.image_hw,
                instances=instances,
            )
        if self.video is not None:
            self.video.add(drawn)
        if self.sheet is not None and drawn is not None and self.sheet.wants(frame.index):
            stamp = stamp_to_ns(frame.msg.header.stamp) / 1e9
            self.sheet.add(drawn, f"#{frame.index} t={stamp:.3f} n={len(instances)}")

    def _image(self, header: Any, pixels: np.ndarray, encoding: str) -> Any:
        return self.image_type(header=header, **image_fields(pixels, encoding))

    def finish(self) -> None:
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
