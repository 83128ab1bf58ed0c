"""Latency benchmark of the two graphs through the public API: a table plus JSON.

Timings are wall-clock medians and 95th percentiles of repeated calls on the same image, after
warm-up. Compare rows of one run with each other; these machines are noisy between runs.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .runtime.backend import Backend
from .runtime.predictor import Predictor
from .runtime.transforms import prepare_image


@dataclass(frozen=True)
class BenchRow:
    """One timed stage of one backend/precision."""

    backend: str
    precision: str
    stage: str
    median_ms: float
    p95_ms: float
    runs: int


def time_call(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median and 95th percentile of ``fn``'s wall time, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1e3
    return float(np.median(times)), float(np.percentile(times, 95))


def bench_backend(
    backend: Backend,
    image: np.ndarray,
    *,
    precision: str,
    runs: int = 10,
    warmup: int = 2,
    decoder_runs: int = 50,
    num_boxes: int = 16,
) -> list[BenchRow]:
    """Time the encoder and typical decoder calls of ``backend`` on ``image`` (HxWx3 RGB uint8).

    Stages:
        ``encoder``: the encoder graph alone on a preprocessed image.
        ``set_image``: preprocessing plus encoder, as a node pays per frame.
        ``point->1 mask``: one point, single-mask output, upscaled to the original size.
        ``point->3 masks``: one point, multimask output, upscaled.
        ``{num_boxes} boxes``: one batched decode of ``num_boxes`` boxes, single mask each.
    """
    predictor = Predictor(backend)
    tensor, _ = prepare_image(image, backend.info)
    h, w = image.shape[:2]
    rows: list[BenchRow] = []

    def add(stage: str, fn: Callable[[], object], n: int) -> None:
        med, p95 = time_call(fn, n, warmup)
        rows.append(BenchRow(backend.name, precision, stage, med, p95, n))

    add("encoder", lambda: backend.encode(tensor), runs)
    add("set_image", lambda: predictor.set_image(image), runs)
    point = np.array([[0.45 * w, 0.5 * h]])
    label = np.array([1])
    add(
        "point->1 mask",
        lambda: predictor.predict(point, label, multimask_output=False),
        decoder_runs,
    )
    add("point->3 masks", lambda: predictor.predict(point, label), decoder_runs)
    rng = np.random.default_rng(0)
    xy0 = rng.uniform(0, 0.6, (num_boxes, 2)) * (w, h)
    boxes = np.concatenate([xy0, xy0 + rng.uniform(0.1, 0.4, (num_boxes, 2)) * (w, h)], 1)
    add(
        f"{num_boxes} boxes",
        lambda: predictor.predict(box=boxes, multimask_output=False),
        max(5, decoder_runs // 5),
    )
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A fixed-width table of the rows."""
    header = f"{'backend':<12} {'precision':<9} {'stage':<16} {'median ms':>10} {'p95 ms':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.backend:<12} {r.precision:<9} {r.stage:<16} {r.median_ms:>10.2f} {r.p95_ms:>9.2f}"
        )
    return "\n".join(lines)


def write_json(rows: Sequence[BenchRow], path: str | Path, **context: object) -> None:
    """Write the rows and the run's context (machine, threads, model...) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "context": {"machine": platform.machine(), "python": platform.python_version(), **context},
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
