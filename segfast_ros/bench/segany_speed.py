"""``segfast bench-segany``: one SegAny point on a large frame, against upstream MobileSAM.

Issue 18 asks that ``Predictor.predict`` of one point, one mask at full size on a 3 MP frame be
at least 3x faster than upstream MobileSAM's ``SamPredictor.predict`` in the same run, and that
the ``~/segment`` handler add less than 3 ms to it. This command runs, in one process and on one
embedded frame:

* ``upstream predict``: ``SamPredictor.predict`` of a MobileSAM source tree (``--upstream``, not
  part of segfast; PyTorch fp32 on the same checkpoint), skipped without it;
* ``predict``: segfast's :meth:`Predictor.predict` (ONNX Runtime) with the same point;
* ``decoder only``: :meth:`Predictor.predict_low_res` (the graph, no upscale);
* ``~/segment handler``: :func:`segfast_ros.ros.segany.segment` on a real ``Segment`` request
  with the same point, as the node's service callback runs it (RLE, box, stability score and
  the message; no DDS: ``segfast bench-node`` measures the transport).

Stages run in alternating rounds; each round's first call of a stage is not timed, so that
one library's thread pool winding down does not land on the other's clock. Reported: median
and 95th percentile per stage, and each stage's speed-up over upstream's predict.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..runtime.images import read_rgb
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.predictor import Predictor
from .report import format_columns, write_rows_json
from .scenes import frame
from .timing import p50_p95, time_ms

#: The issue's frame: a 3 MP photo, ``(H, W)``.
DEFAULT_HW = (1450, 2068)
#: The issue's targets.
PREDICT_SPEEDUP_TARGET = 3.0
HANDLER_OVERHEAD_TARGET_MS = 3.0


@dataclass(frozen=True)
class SegAnyRow:
    """One stage's times (ms) and its speed-up over upstream's predict (None without it)."""

    stage: str
    median_ms: float
    p95_ms: float
    speedup: float | None
    calls: int


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> ``(H, W)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return h, w


def upstream_predictor(source: str | Path, checkpoint: str | Path, threads: int) -> Any:
    """``SamPredictor`` of the MobileSAM source tree at ``source`` on ``checkpoint``.

    Raises:
        FileNotFoundError: no ``mobile_sam`` package under ``source``.
    """
    import torch

    if not (Path(source) / "mobile_sam" / "__init__.py").is_file():
        raise FileNotFoundError(
            f"no mobile_sam package under {source} (expected a MobileSAM source checkout)"
        )
    sys.path.insert(0, str(source))
    from mobile_sam import SamPredictor, sam_model_registry  # type: ignore[import-not-found]

    if threads:
        torch.set_num_threads(threads)
    model = sam_model_registry["vit_t"](checkpoint=str(checkpoint))
    return SamPredictor(model.eval())


def _handler(predictor: Predictor, point: np.ndarray) -> Callable[[], object]:
    """The node's ``~/segment`` callback body for one point, one mask, without DDS."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import Header

    from ..msg import SegmentResult
    from ..ros.segany import segment
    from ..srv import Segment

    req = Segment.Request()
    req.points = [Point(x=float(point[0, 0]), y=float(point[0, 1]))]
    req.labels = [1]
    req.multimask = False
    return lambda: segment(predictor, req, Header(), SegmentResult)


def bench_segany(
    image: np.ndarray,
    onnx_dir: str | Path,
    *,
    upstream: str | Path | None = None,
    checkpoint: str | Path | None = None,
    threads: int = 2,
    rounds: int = 5,
    calls: int = 4,
) -> list[SegAnyRow]:
    """Time the stages (see the module) on ``image`` (HxWx3 RGB uint8), alternating.

    Raises:
        ValueError: bad counts, or ``upstream`` without ``checkpoint``.
        FileNotFoundError: missing graphs, checkpoint or upstream tree.
    """
    if rounds < 1 or calls < 1:
        raise ValueError(f"need rounds and calls >= 1, got {rounds} and {calls}")
    h, w = image.shape[:2]
    point = np.array([[0.45 * w, 0.5 * h]])
    label = np.array([1])
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, precision="fp32", intra_op_threads=threads)
    predictor = Predictor(backend)
    predictor.set_image(image)
    stages: dict[str, Callable[[], object]] = {}
    if upstream is not None:
        if checkpoint is None:
            raise ValueError("--upstream needs --checkpoint (the weights both libraries load)")
        theirs = upstream_predictor(upstream, checkpoint, threads)
        theirs.set_image(image)
        stages["upstream predict"] = lambda: theirs.predict(point, label, multimask_output=False)
    stages["predict"] = lambda: predictor.predict(point, label, multimask_output=False)
    stages["decoder only"] = lambda: predictor.predict_low_res(
        point, label, multimask_output=False
    )
    stages["~/segment handler"] = _handler(predictor, point)
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(rounds):
        for name, fn in stages.items():
            fn()  # untimed: the switch from the other stage
            times[name] += [time_ms(fn)[1] for _ in range(calls)]
    base = p50_p95(times["upstream predict"])[0] if upstream is not None else None
    rows = []
    for name, samples in times.items():
        med, p95 = p50_p95(samples)
        rows.append(SegAnyRow(name, med, p95, None if base is None else base / med, len(samples)))
    return rows


def format_table(rows: list[SegAnyRow]) -> str:
    return format_columns(
        rows,
        [
            ("stage", "stage", "<20s"),
            ("median ms", "median_ms", ">10.2f"),
            ("p95 ms", "p95_ms", ">9.2f"),
            ("vs upstream predict", "speedup", ">20.2f"),
        ],
    )


def summary(rows: list[SegAnyRow]) -> list[str]:
    """The two goals, met or not."""
    by = {r.stage: r for r in rows}
    lines = []
    ours = by["predict"]
    if ours.speedup is not None:
        verdict = "met" if ours.speedup >= PREDICT_SPEEDUP_TARGET else "missed"
        lines.append(
            f"predict vs upstream: {ours.speedup:.2f}x (goal >= {PREDICT_SPEEDUP_TARGET}x: "
            f"{verdict})"
        )
    handler = by["~/segment handler"]
    for what, attr in (("p50", "median_ms"), ("p95", "p95_ms")):
        extra = getattr(handler, attr) - getattr(ours, attr)
        verdict = "met" if extra < HANDLER_OVERHEAD_TARGET_MS else "missed"
        lines.append(
            f"~/segment handler over predict, {what}: {extra:+.2f} ms (goal < "
            f"{HANDLER_OVERHEAD_TARGET_MS} ms without DDS: {verdict})"
        )
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx-dir", required=True, help="segfast's exported graphs (fp32 decoder)")
    p.add_argument("--image", help="a photo (default: a generated scene of --size)")
    p.add_argument(
        "--size",
        type=parse_size,
        help="resize the photo to WIDTHxHEIGHT first; the generated scene's size "
        "(default 2068x1450)",
    )
    p.add_argument("--upstream", help="a MobileSAM source tree (its mobile_sam package)")
    p.add_argument("--checkpoint", help="mobile_sam.pt-layout weights, for --upstream")
    p.add_argument("--threads", type=int, default=2, help="threads of each library (0: all)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--calls", type=int, default=4, help="timed calls per stage and round")
    p.add_argument("--json", help="write the rows as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0, or 2 with a message naming what could not be benchmarked."""
    from .tracking import machine_context, machine_line

    context = machine_context()  # the load before the runs
    try:
        if args.image is None:
            image = frame(args.size or DEFAULT_HW, seed=3)
        else:
            image = read_rgb(args.image)
        if args.size is not None and image.shape[:2] != args.size:
            h, w = args.size
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        rows = bench_segany(
            image,
            args.onnx_dir,
            upstream=args.upstream,
            checkpoint=args.checkpoint,
            threads=args.threads,
            rounds=args.rounds,
            calls=args.calls,
        )
    except (FileNotFoundError, ValueError) as err:  # CalibrationError: an unreadable image
        print(f"segfast bench-segany: error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print("\n".join(summary(rows)))
    print(
        f"frame {image.shape[1]}x{image.shape[0]}; {machine_line(context)}; threads {args.threads}"
    )
    if args.json:
        write_rows_json(
            rows,
            args.json,
            **context,
            frame_hw=list(image.shape[:2]),
            image=args.image or "generated scene, seed 3",
            onnx_dir=args.onnx_dir,
            upstream=args.upstream,
            threads=args.threads,
            rounds=args.rounds,
            calls=args.calls,
            summary=summary(rows),
        )
        print(f"wrote {args.json}")
    return 0
