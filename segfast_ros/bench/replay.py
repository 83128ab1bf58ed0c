"""Replay throughput against the encoder-bound limit, on one machine, in one run.

The limit is what a loop that only ran the encoder on the same decoded frames would reach
(1 / median encoder time). The replay adds image decoding, SegEvery and writing; its reader and
writer threads overlap decoding and writing with inference, so with SegEvery off it should come
close to the limit, and with SegEvery on close to 1 / (encoder + SegEvery).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..replay import bags
from ..replay.pipeline import ReplayOptions, replay
from ..runtime.predictor import Predictor
from ..segevery.base import SegEvery
from .report import format_columns
from .timing import percentile, time_ms


@dataclass(frozen=True)
class ReplayBenchRow:
    """One replay configuration, timed.

    Attributes:
        config: what ran (input format, SegEvery or not).
        frames: frames processed.
        fps: frames per second of the whole replay (wall time, reading to closing the bag).
        encoder_bound_fps: 1 / median encoder time of a plain encoder loop on the same frames.
        ratio: ``fps / encoder_bound_fps``.
        inference_bound_fps: 1 / median per-frame inference time inside the replay (encoder,
            SegEvery); equal to the encoder-bound limit's own measure when SegEvery is off.
        serial_fps: 1 / the sum of all stage medians: what the replay would reach without its
            reader and writer threads.
        instances: instances written.
    """

    config: str
    frames: int
    fps: float
    encoder_bound_fps: float
    ratio: float
    inference_bound_fps: float
    serial_fps: float
    instances: int


def encoder_bound_fps(predictor: Predictor, images: Sequence[np.ndarray]) -> float:
    """1 / median ``set_image`` time over ``images`` (after one warm-up call)."""
    predictor.set_image(images[0])
    times = [time_ms(lambda image=image: predictor.set_image(image))[1] for image in images]
    return 1e3 / percentile(times, 50)


def bench_replay(
    predictor: Predictor,
    segevery: SegEvery,
    images: Sequence[np.ndarray],
    work_dir: Path,
) -> list[ReplayBenchRow]:
    """Replay the same frames as raw and JPEG bags, with SegEvery off and on, side by side.

    The encoder-bound limit is measured right before each replay, so that both see the same
    machine state.
    """
    rows = []
    for jpeg in (False, True):
        bag = work_dir / ("in_jpeg" if jpeg else "in_raw")
        shutil.rmtree(bag, ignore_errors=True)
        bags.write_image_bag(bag, images, jpeg=jpeg)
        for with_segevery in (False, True):
            limit = encoder_bound_fps(predictor, images)
            out = work_dir / "out"
            shutil.rmtree(out, ignore_errors=True)
            opts = ReplayOptions(segevery_rate_hz=None if with_segevery else 0.0)
            summary = replay(bag, out, predictor, segevery, opts)
            serial_ms = sum(
                summary.median_ms(s) * len(v) / max(summary.processed, 1)
                for s, v in summary.timings_ms.items()
                if v and s != "inference"
            )
            config = f"{'jpeg' if jpeg else 'rgb8'}, " + (
                f"SegEvery {segevery.name}" if with_segevery else "encoder only"
            )
            rows.append(
                ReplayBenchRow(
                    config=config,
                    frames=summary.processed,
                    fps=summary.fps,
                    encoder_bound_fps=limit,
                    ratio=summary.fps / limit,
                    inference_bound_fps=summary.inference_bound_fps,
                    serial_fps=1000.0 / serial_ms if serial_ms > 0 else math.nan,
                    instances=summary.instances,
                )
            )
    return rows


def format_replay_table(rows: Sequence[ReplayBenchRow]) -> str:
    """A fixed-width table of :func:`bench_replay`'s rows."""
    return format_columns(
        rows,
        [
            ("config", "config", "<28"),
            ("frames", "frames", ">7"),
            ("replay fps", "fps", ">11.2f"),
            ("enc-bound", "encoder_bound_fps", ">10.2f"),
            ("ratio", "ratio", ">7.2f"),
            ("infer-bound", "inference_bound_fps", ">12.2f"),
            ("serial", "serial_fps", ">8.2f"),
            ("instances", "instances", ">10"),
        ],
        sep="",
    )
