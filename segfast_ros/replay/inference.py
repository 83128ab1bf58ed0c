"""The replay's middle stage, on the caller's thread: the encoder, SegEvery and the scripted SegAny
prompts, frame by frame in bag order.

Each decoded frame is encoded once; SegEvery runs on it when its bag-time schedule says so, and
the prompts due are answered from its embedding (or the previous frame's, for a ``time`` prompt
due before it). Results go to the writer thread through the bounded results queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..pipeline.frames import stamp_to_ns
from ..pipeline.render import InstanceRecord, answer_records
from ..runtime.predictor import Predictor
from ..segany import decode_prompt_sets, prompt_kwargs
from ..segevery.base import SegEvery, SegEveryResult
from .items import (
    END,
    CopiedMessage,
    DecodedFrame,
    PromptAnswer,
    Queues,
    ReadFailed,
    SegEveryOutput,
    SkippedFrame,
)
from .options import ReplayOptions
from .outputs import Progress
from .prompts import ScriptedPrompt
from .reader import FrameReader
from .schedule import PromptSchedule, SegEverySchedule
from .summary import ReplaySummary
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
    """

    def __init__(
        self,
        predictor: Predictor,
        segevery: SegEvery,
        opts: ReplayOptions,
        summary: ReplaySummary,
        queues: Queues,
        bag_start: int,
    ) -> None:
        self.predictor, self.segevery = predictor, segevery
        self.summary, self.queues = summary, queues
        self.timings = summary.timings_ms
        self.segevery_due = SegEverySchedule(opts.segevery_rate_hz)
        self.prompts = PromptSchedule(opts.prompts, bag_start)
        self.last: DecodedFrame | None = None  # the latest processed frame

    def run(
        self,
        frames: FrameReader,
        writer: OutputWriter,
        progress: Progress,
        on_frame: Callable[[ReplaySummary], None] | None,
    ) -> None:
        """Process the reader's items until it is done, the input fails or a write fails;
        then, if nothing went wrong, answer the prompts due after the last frame."""
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
        if summary.complete and writer.error is None:
            for p in self.prompts.after_last():  # due after the last frame: answered from it
                self._answer(p, self.last)
            for stamp, p in self.prompts.unmatched():
                summary.prompt_errors.append(
                    f"{p.name}: no processed frame has header stamp {stamp} ns"
                )

    def _frame(self, item: DecodedFrame) -> None:
        """Encode a frame, run SegEvery if due, answer the prompts due; pass the results on."""
        summary, timings = self.summary, self.timings
        summary.selected += 1
        # Time prompts due before this frame are answered from the previous frame.
        for p in self.prompts.due_before(item.bag_time):
            self._answer(p, self.last)
        item.index = summary.processed
        start = time.perf_counter()
        self.predictor.set_image(item.image)
        encoded = time.perf_counter()
        timings["decode_image"].append(item.decode_ms)
        timings["encoder"].append(1e3 * (encoded - start))
        result = self._segevery(item, encoded) if self.segevery_due.due(item.bag_time) else None
        for p in self.prompts.at_stamp(stamp_to_ns(item.msg.header.stamp)):
            self._answer(p, item)
        timings["inference"].append(1e3 * (time.perf_counter() - start))
        self.last = item
        summary.processed += 1
        if result is not None:
            summary.segevery_frames += 1
            summary.instances += len(result.instances)
            summary.decoder_prompts += result.decoder_prompts
            self.queues.put(self.queues.results, SegEveryOutput(item, result))

    def _segevery(self, item: DecodedFrame, encoded: float) -> SegEveryResult:
        """SegEvery on the encoded frame, its stages timed (``encoded``: the encoder's end)."""
        timings = self.timings
        result = self.segevery(self.predictor, item.image)
        seg_ms = result.timings_ms
        detector_ms = seg_ms.get("detector", 0.0)
        decoder_ms = seg_ms.get("decoder", 0.0)
        if "detector" in seg_ms:
            timings["detector"].append(detector_ms)
        timings["decoder"].append(decoder_ms)
        seg_total = 1e3 * (time.perf_counter() - encoded)
        timings["postprocess"].append(seg_total - detector_ms - decoder_ms)
        return result

    def _answer(self, prompt: ScriptedPrompt, frame: DecodedFrame | None) -> None:
        """Answer one scripted prompt on ``frame`` (the predictor holds its embedding)."""
        summary = self.summary
        if frame is None:
            summary.prompt_errors.append(
                f"{prompt.name}: no frame before bag time +{prompt.time_ns / 1e9:.3f} s (as the "
                "node answers a call before its first frame)"
            )
            return
        start = time.perf_counter()
        try:
            records, sets = _segany(self.predictor, prompt)
        except ValueError as err:
            summary.prompt_errors.append(f"{prompt.name}: {err}")
            return
        ms = 1e3 * (time.perf_counter() - start)
        self.timings["segany"].append(ms)
        summary.prompts_answered += 1
        self.queues.put(self.queues.results, PromptAnswer(frame, prompt, records, sets, ms))


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
