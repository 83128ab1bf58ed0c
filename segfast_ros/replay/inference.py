"""The replay's middle stage, on the caller's thread: the encoder, SegEvery, tracking and the
scripted calls, frame by frame in bag order.

Each decoded frame is encoded once; SegEvery runs on it when its bag-time schedule says so, its
instances get track IDs (and may re-acquire lost targets), the prompted targets are followed
onto it in one batched decoder call, and the calls due are answered from its embedding (or the
previous frame's, for a ``time`` call due before it). Results go to the writer thread through
the bounded results queue.

A frame's targets (``<ns>/tracks``) are passed on once every call on that frame is answered,
that is when the next frame arrives (``time`` calls due before it are answered from this
frame) or the bag ends: a target added on a frame is on that frame's tracks message, with the
mask its prompt gave, and is followed from the next frame on; one removed on a frame is not
on it.

With a depth topic, every result (SegEvery's instances, the targets, the scripted answers) is
lifted to 3D with the frame's depth (:class:`~.depth.DepthLift`). A frame's depth inputs are
given to it once the previous frame is complete (its late calls answered and its targets
passed on), so each frame is lifted with the depth paired with it.

The frame key the trackers see is the header stamp (ns), raised to one more than the
previous frame's key when the stamps of the bag do not increase (all zero, say), so that every
processed frame is a new frame to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..pipeline.frames import stamp_to_ns
from ..pipeline.render import InstanceRecord, answer_records
from ..pipeline.tracks import Tracking, decoded_count, due_targets, target_records
from ..runtime.predictor import Predictor
from ..segany import decode_prompt_sets, prompt_kwargs
from ..segevery.base import SegEvery, SegEveryResult
from ..tracking.states import TRACK_LOST, TRACK_TRACKED
from .depth import DepthLift
from .items import (
    END,
    CopiedMessage,
    DecodedFrame,
    FrameDone,
    PromptAnswer,
    Queues,
    ReadFailed,
    SegEveryOutput,
    SkippedFrame,
    TracksOutput,
)
from .options import ReplayOptions
from .outputs import Progress
from .prompts import SEGMENT, TRACK, UNTRACK, ScriptedPrompt
from .reader import FrameReader
from .schedule import PromptSchedule, SegEverySchedule
from .summary import ReplaySummary, StageTimes
from .writer import OutputWriter


class Inference:
    """Runs the models on the frames the reader hands over, and counts what it did.

    Args:
        predictor: its backend runs the encoder and decoder.
        segevery: the SegEvery strategy.
        opts: the replay's options (SegEvery rate, prompts).
        summary: counts, timings and prompt errors are recorded here (its ``timings_ms``
            already holds a list per stage).
        queues: the replay's queues.
        bag_start: the input bag's start time (ns); prompt times count from it.
        depth: lifts the results to 3D (with a depth topic), or None.
        rows: pass each frame's row to the writer once the frame is complete
            (:class:`~.items.FrameDone`).
    """

    def __init__(
        self,
        predictor: Predictor,
        segevery: SegEvery,
        opts: ReplayOptions,
        summary: ReplaySummary,
        queues: Queues,
        bag_start: int,
        depth: DepthLift | None = None,
        *,
        rows: bool = False,
    ) -> None:
        self.predictor, self.segevery = predictor, segevery
        self.summary, self.queues = summary, queues
        self.times = StageTimes(summary.timings_ms)
        self.rows = rows
        self.segevery_due = SegEverySchedule(opts.segevery_rate_hz)
        self.prompts = PromptSchedule(opts.prompts, bag_start)
        self.tracking = Tracking(opts.tracking)
        self.depth = depth
        self.last: DecodedFrame | None = None  # the latest processed frame
        self._pending: DecodedFrame | None = None  # the frame whose targets wait for its calls
        self._decoded, self._step_ms = 0, 0.0  # on that frame: targets decoded, the step's ms
        self._states: dict[int, int] = {}  # each target's state on the last tracks written

    def run(
        self,
        frames: FrameReader,
        writer: OutputWriter,
        progress: Progress,
        on_frame: Callable[[ReplaySummary], None] | None,
    ) -> None:
        """Process the reader's items until it is done, the input fails or a write fails;
        then, if nothing went wrong, answer the calls due after the last frame, and pass on
        the last frame's targets (unless a write failed)."""
        summary = self.summary
        while True:
            item = frames.get()
            if writer.error is not None:
                summary.error = writer.error
                break
            if item is END:
                break
            if isinstance(item, CopiedMessage):
                self.queues.put(self.queues.results, item)
                continue
            if isinstance(item, SkippedFrame):
                summary.skipped[item.reason] += 1
                summary.selected += 1
                continue
            if isinstance(item, ReadFailed):
                summary.error = item.error
                continue  # the reader ends with END next
            self._frame(item)
            progress.update(summary.processed, f"{summary.instances} instances")
            if on_frame is not None:
                on_frame(summary)
        if writer.error is not None:
            return
        if summary.complete:
            for p in self.prompts.after_last():  # due after the last frame: answered from it
                self._answer(p, self.last)
        self._flush_tracks()
        if summary.complete:
            for stamp, p in self.prompts.unmatched():
                summary.prompt_errors.append(
                    f"{p.name}: no processed frame has header stamp {stamp} ns"
                )

    def _frame(self, item: DecodedFrame) -> None:
        """Encode a frame, run SegEvery if due, follow the targets, answer the calls due; pass
        the results on."""
        summary, times, row = self.summary, self.times, item.row
        summary.selected += 1
        # Time prompts due before this frame are answered from the previous frame, which is
        # then complete: its targets go out.
        for p in self.prompts.due_before(item.bag_time):
            self._answer(p, self.last)
        self._flush_tracks()
        if self.depth is not None:
            self.depth.feed(item.depth_inputs)
        item.depth_inputs = []  # fed: the writer does not need them
        item.index = summary.processed
        stamp = stamp_to_ns(item.msg.header.stamp)
        row.index, row.stamp_ns, row.bag_time_ns = item.index, stamp, item.bag_time
        item.key = stamp if self.last is None else max(stamp, self.last.key + 1)
        start = time.perf_counter()
        self.predictor.set_image(item.image)
        encoded = time.perf_counter()
        times.add("decode_image", item.decode_ms, row)
        times.add("encoder", 1e3 * (encoded - start), row)
        if self.segevery_due.due(item.bag_time):
            self._segevery(item, encoded)
        self._follow_targets(item)
        self.last = item
        for p in self.prompts.at_stamp(stamp):
            self._answer(p, item)
        times.add("inference", 1e3 * (time.perf_counter() - start), row)
        summary.processed += 1

    def _segevery(self, item: DecodedFrame, encoded: float) -> None:
        """SegEvery on the encoded frame, then its track IDs; passed on to the writer."""
        result = self._segevery_result(item, encoded)
        start = time.perf_counter()
        records = self.tracking.on_segevery(
            result.instances, item.key, result.image_hw, item.image
        )
        self.times.add("track_ids", 1e3 * (time.perf_counter() - start), item.row)
        records = self._lift(item, records)
        row = item.row
        row.segevery, row.instances = True, len(result.instances)
        row.tracks = sum(r.track_state == TRACK_TRACKED for r in records)
        row.positions_3d += _valid_3d(records)
        summary = self.summary
        # IDs are given 1, 2, 3, ... and never reused: the highest is the count.
        summary.segevery_tracks = max([summary.segevery_tracks, *(r.track_id for r in records)])
        summary.segevery_frames += 1
        summary.instances += len(result.instances)
        summary.decoder_prompts += result.decoder_prompts
        self.queues.put(self.queues.results, SegEveryOutput(item, result, records))

    def _follow_targets(self, item: DecodedFrame) -> None:
        """The targets onto the encoded frame: one batched decoder call (none without
        targets)."""
        targets = self.tracking.targets
        due = due_targets(targets.results(), item.key)
        start = time.perf_counter()
        results = self.tracking.on_frame(self.predictor, item.key, item.image)
        ms = 1e3 * (time.perf_counter() - start)
        self._pending, self._decoded, self._step_ms = item, 0, 0.0
        if results is None:
            return
        self.times.add("targets", ms, item.row)
        self._decoded = decoded_count(due, results)
        self._step_ms = ms

    def _flush_tracks(self) -> None:
        """The last frame's targets to the writer, once every call on it is answered; then,
        with ``rows``, its row."""
        frame, self._pending = self._pending, None
        if frame is None:
            return
        self._pass_tracks(frame)
        if self.rows:
            self.queues.put(self.queues.results, FrameDone(frame.row))

    def _pass_tracks(self, frame: DecodedFrame) -> None:
        """``frame``'s targets (if any) to the writer, counted."""
        results = self.tracking.targets.results()
        if not results:
            self._states = {}
            return
        summary = self.summary
        for r in results:
            before = self._states.get(r.target_id)
            summary.targets_lost += before == TRACK_TRACKED and r.state == TRACK_LOST
            summary.targets_reacquired += before == TRACK_LOST and r.state == TRACK_TRACKED
        self._states = {r.target_id: r.state for r in results}
        summary.tracks_frames += 1
        records = self._lift(frame, target_records(results, frame.image.shape[:2]))
        frame.row.targets = sum(r.state == TRACK_TRACKED for r in results)
        frame.row.positions_3d += _valid_3d(records)
        item = TracksOutput(frame, results, records, self._decoded, self._step_ms)
        self.queues.put(self.queues.results, item)

    def _segevery_result(self, item: DecodedFrame, encoded: float) -> SegEveryResult:
        """SegEvery on the encoded frame, its stages timed (``encoded``: the encoder's end)."""
        times, row = self.times, item.row
        result = self.segevery(self.predictor, item.image)
        seg_ms = result.timings_ms
        detector_ms = seg_ms.get("detector", 0.0)
        decoder_ms = seg_ms.get("decoder", 0.0)
        if "detector" in seg_ms:
            times.add("detector", detector_ms, row)
        times.add("decoder", decoder_ms, row)
        seg_total = 1e3 * (time.perf_counter() - encoded)
        times.add("postprocess", seg_total - detector_ms - decoder_ms, row)
        return result

    def _answer(self, prompt: ScriptedPrompt, frame: DecodedFrame | None) -> None:
        """Answer one scripted call on ``frame`` (the predictor holds its embedding); a call
        that fails (a bad prompt, an unknown target ID) is reported and the replay goes on."""
        summary = self.summary
        if frame is None:
            summary.prompt_errors.append(
                f"{prompt.name}: no frame before bag time +{prompt.time_ns / 1e9:.3f} s (as the "
                "node answers a call before its first frame)"
            )
            return
        try:
            if prompt.action == SEGMENT:
                self._segment(prompt, frame)
            else:
                self._track(prompt, frame)
        except ValueError as err:  # TargetError too
            summary.prompt_errors.append(f"{prompt.name}: {err}")
            return
        summary.prompts_answered += 1
        frame.row.prompts += 1

    def _segment(self, prompt: ScriptedPrompt, frame: DecodedFrame) -> None:
        """A SegAny call: its masks to ``<ns>/segment``."""
        start = time.perf_counter()
        records, sets = _segany(self.predictor, prompt)
        records = self._lift(frame, records)
        frame.row.positions_3d += _valid_3d(records)
        ms = 1e3 * (time.perf_counter() - start)
        self.times.add("segany", ms, frame.row)
        self.queues.put(self.queues.results, PromptAnswer(frame, prompt, records, sets, ms))

    def _lift(self, frame: DecodedFrame, records: list[InstanceRecord]) -> list[InstanceRecord]:
        """``records`` of ``frame`` with 3D when depth is on; as they are otherwise."""
        return records if self.depth is None else self.depth.lift(frame, records, self.times)

    def _track(self, prompt: ScriptedPrompt, frame: DecodedFrame) -> None:
        """``Track.srv``'s ADD (new targets, or ``ids`` prompted again), REMOVE or CLEAR on
        ``frame``, whose targets are not written yet: the change is on its tracks message.

        Raises:
            ValueError: a malformed or out-of-image prompt; TargetError (a ValueError): past
                ``tracking.max_targets``, unknown IDs, a prompt that segments nothing.
        """
        targets, summary = self.tracking.targets, self.summary
        if prompt.action == TRACK:
            results = targets.add(
                self.predictor,
                frame.key,
                points=prompt.points,
                labels=prompt.labels,
                boxes=prompt.boxes,
                points_per_set=prompt.points_per_set,
                ids=prompt.ids,
                image=frame.image,
            )
            self._decoded += len(results)
            summary.targets_added += 0 if prompt.ids else len(results)
        elif prompt.action == UNTRACK:
            summary.targets_removed += len(targets.remove(prompt.ids))
        else:
            summary.targets_removed += len(targets.clear())


def _segany(predictor: Predictor, prompt: ScriptedPrompt) -> tuple[list[InstanceRecord], int]:
    """The masks of every prompt set of ``prompt``, in order (best first within a set), as
    ``Instance.msg`` fields with ids counting across the sets; and the number of sets.

    Raises:
        ValueError: a malformed or out-of-image prompt (the message says which and why).
    """
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
        records.extend(answer_records(answer, first_id=len(records)))
    return records, sets


def _valid_3d(records: list[InstanceRecord]) -> int:
    """How many of ``records`` have a valid 3D position."""
    return sum(r.position_3d is not None and r.position_3d.valid for r in records)
