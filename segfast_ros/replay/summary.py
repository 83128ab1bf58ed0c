"""What a replay did: counts, per-stage timings, throughput, outputs and why it stopped early.

:class:`ReplaySummary` is filled by the replay's threads as they go (see
:mod:`~segfast_ros.replay.pipeline`) and read once the replay returns, as text
(:meth:`ReplaySummary.format`) or JSON (:meth:`ReplaySummary.to_json`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Stages of the timing summary, in pipeline order.
STAGES: tuple[str, ...] = (
    "decode_image",
    "encoder",
    "detector",
    "decoder",
    "postprocess",
    "track_ids",
    "targets",
    "segany",
    "lift",
    "render",
    "write",
)


@dataclass
class FrameRow:
    """One processed frame: what it held and what each stage cost on it (a row of the fleet
    table, :mod:`segfast_ros.fleet.table`; given to ``replay``'s ``on_row``).

    Attributes:
        index: position among the processed frames.
        stamp_ns: the image's header stamp.
        bag_time_ns: the image message's bag time.
        segevery: SegEvery ran on the frame.
        instances: SegEvery's instances on it (0 without SegEvery).
        tracks: of those, the ones with a track ID (``TRACK_TRACKED``).
        targets: prompted targets found on it (``TRACK_TRACKED``; lost ones not counted).
        positions_3d: instances and targets written with a valid 3D position.
        prompts: scripted calls answered from its embedding.
        stages_ms: each stage's time on the frame (summed when a stage ran more than once, as
            ``segany`` for several calls); a stage that did not run is absent.
    """

    index: int = -1
    stamp_ns: int = 0
    bag_time_ns: int = 0
    segevery: bool = False
    instances: int = 0
    tracks: int = 0
    targets: int = 0
    positions_3d: int = 0
    prompts: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)


class StageTimes:
    """Where the replay's threads record a stage's time: the summary's list for the stage, and
    the frame's row.

    Args:
        timings_ms: the summary's ``timings_ms`` (a list per stage is added when missing).
    """

    def __init__(self, timings_ms: dict[str, list[float]]) -> None:
        self.timings_ms = timings_ms

    def add(self, stage: str, ms: float, row: FrameRow) -> None:
        self.timings_ms.setdefault(stage, []).append(ms)
        row.stages_ms[stage] = row.stages_ms.get(stage, 0.0) + ms


@dataclass
class DepthReport:
    """What the replay did with depth (``--depth-topic``).

    Attributes:
        topic, colour_info, depth_info: the topics read ("" for a CameraInfo the bag lacks).
        defaults: which CameraInfo topics were their image topic's sibling, not given.
        settings: the depth settings that differ from the defaults.
        messages: depth images on the topic.
        used: of those, given to the pairing (the others were near no selected frame).
        bad_depth: depth images rejected, by reason (encoding, size).
        bad_info: CameraInfo messages rejected, by reason (K all zero, ...).
        frames_3d: frames with results whose depth paired and lifted.
        frames_2d: frames with results written 2D only, by reason.
        positions_valid: instances and targets written with a valid 3D position.
        positions_invalid: lifted but with too little valid depth in the mask.
    """

    topic: str = ""
    colour_info: str = ""
    depth_info: str = ""
    defaults: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    messages: int = 0
    used: int = 0
    bad_depth: Counter = field(default_factory=Counter)
    bad_info: Counter = field(default_factory=Counter)
    frames_3d: int = 0
    frames_2d: Counter = field(default_factory=Counter)
    positions_valid: int = 0
    positions_invalid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "colour_info": self.colour_info,
            "depth_info": self.depth_info,
            "defaults": list(self.defaults),
            "settings": self.settings,
            "messages": self.messages,
            "used": self.used,
            "bad_depth": dict(self.bad_depth),
            "bad_info": dict(self.bad_info),
            "frames_3d": self.frames_3d,
            "frames_2d": dict(self.frames_2d),
            "positions_valid": self.positions_valid,
            "positions_invalid": self.positions_invalid,
        }

    def lines(self) -> list[str]:
        """The summary's depth lines: topics, counts, and each reason for 2D-only frames and
        rejected messages (the most common first; the rest counted)."""

        def topic(name: str, key: str) -> str:
            return f"{name or 'none'}{' (sibling)' if key in self.defaults else ''}"

        lines = [
            f"  depth: {self.topic} ({self.messages} images, {self.used} paired), colour "
            f"CameraInfo {topic(self.colour_info, 'colour_info')}, depth CameraInfo "
            f"{topic(self.depth_info, 'depth_info')}",
            f"    3D on {self.frames_3d} frames, 2D only on {sum(self.frames_2d.values())}; "
            f"{self.positions_valid} positions valid, {self.positions_invalid} with too little "
            "valid depth",
        ]
        if self.settings:
            given = ", ".join(f"{k}={v}" for k, v in self.settings.items())
            lines.append(f"    depth settings: {given} (--set; the rest: defaults)")
        for what, counts in (
            ("frame(s) 2D only", self.frames_2d),
            ("depth image(s) rejected", self.bad_depth),
            ("CameraInfo(s) rejected", self.bad_info),
        ):
            common = counts.most_common()
            for reason, n in common[:_REASONS]:
                lines.append(f"    {n} {what}: {reason}")
            if len(common) > _REASONS:
                rest = sum(n for _, n in common[_REASONS:])
                lines.append(f"    {rest} more {what} for {len(common) - _REASONS} other reasons")
        return lines


#: Reasons the summary text lists per kind (the JSON has all).
_REASONS = 5


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
    tracking_settings: dict[str, Any] = field(default_factory=dict)
    topic_messages: int = 0
    selected: int = 0
    processed: int = 0
    segevery_frames: int = 0
    instances: int = 0
    decoder_prompts: int = 0
    skipped: Counter = field(default_factory=Counter)
    prompts_answered: int = 0
    prompt_errors: list[str] = field(default_factory=list)
    segevery_tracks: int = 0
    targets_added: int = 0
    targets_removed: int = 0
    targets_lost: int = 0
    targets_reacquired: int = 0
    tracks_frames: int = 0
    written: Counter = field(default_factory=Counter)
    copied: int = 0
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None
    interrupted: bool = False
    files: dict[str, str] = field(default_factory=dict)
    depth: DepthReport | None = None
    vision_msgs: str = ""

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
            "tracking": self._tracking_json(),
            "depth": self.depth.to_json() if self.depth is not None else None,
            "vision_msgs": self.vision_msgs,
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

    def _tracking_json(self) -> dict[str, Any]:
        return {
            "settings": self.tracking_settings,
            "segevery_tracks": self.segevery_tracks,
            "targets_added": self.targets_added,
            "targets_removed": self.targets_removed,
            "targets_lost": self.targets_lost,
            "targets_reacquired": self.targets_reacquired,
            "tracks_frames": self.tracks_frames,
            "step_median_ms": _or_none(self.median_ms("targets")),
        }

    def _tracking_lines(self) -> list[str]:
        """SegEvery's track IDs, and the prompted targets when there were any."""
        lines = []
        if self.segevery_frames:
            lines.append(f"  SegEvery tracks: {self.segevery_tracks} track IDs given")
        if self.targets_added or self.tracks_frames:
            lines.append(
                f"  targets: {self.targets_added} added, {self.targets_removed} removed, "
                f"{self.targets_lost} times lost, {self.targets_reacquired} re-acquired; "
                f"<ns>/tracks on {self.tracks_frames} frames, step median "
                f"{self.median_ms('targets'):.1f} ms"
            )
        if self.tracking_settings:
            given = ", ".join(f"{k}={v}" for k, v in self.tracking_settings.items())
            lines.append(f"  tracking settings: {given} (--set; the rest: defaults)")
        return lines

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
        lines.extend(self._tracking_lines())
        if self.depth is not None:
            lines.extend(self.depth.lines())
        if self.vision_msgs:
            lines.append(f"  {self.vision_msgs}")
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


def _or_none(value: float) -> float | None:
    """JSON has no NaN: None instead."""
    return None if math.isnan(value) else value


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and math.isfinite(b) and b > 0 else "n/a"
