"""``segfast bench-decoder``: the decoder graph per prompt, two or more exports side by side.

Issue 18 asks for a faster decoder graph with unchanged outputs. This command opens each model
folder's fp32 decoder with the runtime's own ONNX Runtime backend (its session options, its
decode path) and times :meth:`Predictor.predict_low_res` on one shared image embedding, so that
only the graphs differ. Batch 1 is one foreground point (a SegAny call); a larger batch is that
many boxes in one call (SegEvery's object-aware prompts). The graphs run in alternating rounds,
and each round's first call of a graph is left untimed, so that one graph's caches and thread
wake-ups do not land on the other's clock.

Per batch and graph it reports the median and 95th percentile time per prompt, the speed-up
over the first folder's graph, and how far each graph's logits and IoUs are from the first's
(the same prompts, the same embedding).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.images import read_rgb
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.predictor import Predictor
from .report import format_columns, write_rows_json
from .timing import p50_p95, time_ms


@dataclass(frozen=True)
class DecoderRow:
    """One graph at one batch size: times per prompt (ms) and its distance from the first."""

    batch: int
    graph: str
    median_ms: float
    p95_ms: float
    speedup: float
    max_logit_diff: float
    max_iou_diff: float
    calls: int


def _prompts(batch: int, hw: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """One point for ``batch`` 1, else ``batch`` boxes, inside an ``hw`` frame."""
    h, w = hw
    if batch == 1:
        return {"point_coords": np.array([[0.45 * w, 0.5 * h]]), "point_labels": np.array([1])}
    rng = np.random.default_rng(seed)
    xy0 = rng.uniform(0, 0.6, (batch, 2)) * (w, h)
    xy1 = xy0 + rng.uniform(0.1, 0.4, (batch, 2)) * (w, h)
    return {"box": np.concatenate([xy0, xy1], axis=1)}


def _embedding(folder: Path, image: str | None, threads: int) -> tuple[np.ndarray, tuple]:
    """The embedding of ``image`` by ``folder``'s fp32 encoder, or a seeded random one."""
    backend = OnnxRuntimeBackend.from_dir(folder, precision="fp32", intra_op_threads=threads)
    predictor = Predictor(backend)
    if image is None:
        info = backend.info
        shape = (1, info.embed_dim, info.embed_size, info.embed_size)
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32), (480, 640)
    rgb = read_rgb(image)
    predictor.set_image(rgb)
    return predictor.get_image_embedding(), rgb.shape[:2]


def bench_decoders(
    folders: Sequence[str | Path],
    *,
    batches: Sequence[int] = (1, 64),
    rounds: int = 5,
    calls: int = 4,
    threads: int = 2,
    image: str | None = None,
) -> list[DecoderRow]:
    """Time the fp32 decoders of ``folders`` per prompt, alternating round by round.

    Raises:
        FileNotFoundError: a folder lacks its ONNX files.
        ValueError: a bad count, or graphs whose embeddings differ in shape.
    """
    if rounds < 1 or calls < 1 or min(batches, default=0) < 1:
        raise ValueError(f"need rounds, calls and batches >= 1, got {rounds}, {calls}, {batches}")
    paths = [Path(f) for f in folders]
    embedding, hw = _embedding(paths[0], image, threads)
    predictors = []
    for path in paths:
        backend = OnnxRuntimeBackend.from_dir(path, precision="fp32", intra_op_threads=threads)
        predictor = Predictor(backend)
        predictor.set_embedding(embedding, hw)
        predictors.append(predictor)
    labels = [p.name if [q.name for q in paths].count(p.name) == 1 else str(p) for p in paths]
    rows: list[DecoderRow] = []
    for batch in batches:
        prompts = _prompts(batch, hw, seed=batch)
        kwargs = {**prompts, "multimask_output": False}
        outputs = [p.predict_low_res(**kwargs) for p in predictors]
        times: list[list[float]] = [[] for _ in paths]
        for _ in range(rounds):
            for i, predictor in enumerate(predictors):
                predictor.predict_low_res(**kwargs)  # untimed: the switch from the other graph
                for _ in range(calls):
                    call = functools.partial(predictor.predict_low_res, **kwargs)
                    times[i].append(time_ms(call)[1])
        base = p50_p95(times[0])[0]
        for label, samples, (logits, iou) in zip(labels, times, outputs, strict=True):
            med, p95 = p50_p95(samples)
            rows.append(
                DecoderRow(
                    batch=batch,
                    graph=label,
                    median_ms=med / batch,
                    p95_ms=p95 / batch,
                    speedup=base / med,
                    max_logit_diff=float(np.abs(logits - outputs[0][0]).max()),
                    max_iou_diff=float(np.abs(iou - outputs[0][1]).max()),
                    calls=len(samples),
                )
            )
    return rows


def format_table(rows: Sequence[DecoderRow]) -> str:
    return format_columns(
        rows,
        [
            ("batch", "batch", ">5d"),
            ("graph", "graph", "<24s"),
            ("ms/prompt", "median_ms", ">10.2f"),
            ("p95", "p95_ms", ">8.2f"),
            ("speed-up", "speedup", ">9.2f"),
            ("max |dlogit|", "max_logit_diff", ">13.2e"),
            ("max |diou|", "max_iou_diff", ">11.2e"),
        ],
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folders", nargs="+", help="model folders (decoder.fp32.onnx); the first is the base"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="prompt sets per call")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--calls", type=int, default=4, help="timed calls per graph and round")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (0: all cores)")
    p.add_argument("--image", help="embed this image (else a seeded random embedding)")
    p.add_argument("--json", help="write the rows as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0, or 2 with a message naming what could not be benchmarked."""
    from .tracking import machine_context, machine_line

    context = machine_context()  # the load before the runs
    try:
        rows = bench_decoders(
            args.folders,
            batches=args.batch,
            rounds=args.rounds,
            calls=args.calls,
            threads=args.threads,
            image=args.image,
        )
    except (FileNotFoundError, ValueError) as err:  # CalibrationError: an unreadable image
        print(f"segfast bench-decoder: error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"{machine_line(context)}; {args.threads or 'all'} threads")
    if args.json:
        write_rows_json(
            rows,
            args.json,
            **context,
            folders=[str(f) for f in args.folders],
            threads=args.threads,
            rounds=args.rounds,
            calls=args.calls,
            image=args.image,
        )
        print(f"wrote {args.json}")
    return 0
