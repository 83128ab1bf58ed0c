"""Latency benchmarks through the public API: a table plus JSON.

:func:`bench_backend` times the two graphs (encoder, decoder) of one backend/precision.
:func:`bench_segevery` runs the SegEvery strategies on one shared embedding and counts what
each costs the decoder.

Timings are wall-clock medians (and, for the graphs, 95th percentiles) of repeated calls on the
same image, after warm-up. Compare rows of one run with each other; these machines are noisy
between runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..runtime.backend import Backend
from ..runtime.predictor import Predictor
from ..runtime.transforms import prepare_image
from ..segevery.base import SegEvery
from ..segevery.candidates import predictor_image_hw
from ..segevery.detector import ObjectDetector
from ..segevery.grid import PointGridParams
from ..segevery.hierarchical import HierarchicalResult
from ..segevery.object_aware import ObjectAwareSegEvery
from ..segevery.registry import STRATEGIES, build_segevery
from .report import format_columns
from .timing import p50_p95, percentile, sample_ms


@dataclass(frozen=True)
class BenchRow:
    """One timed stage of one backend/precision."""

    backend: str
    precision: str
    stage: str
    median_ms: float
    p95_ms: float
    runs: int


def bench_row(backend: str, precision: str, stage: str, samples: Sequence[float]) -> BenchRow:
    """A row from a stage's timed samples (ms): their median and 95th percentile."""
    med, p95 = p50_p95(samples)
    return BenchRow(backend, precision, stage, med, p95, len(samples))


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
        rows.append(bench_row(backend.name, precision, stage, sample_ms(fn, n, warmup=warmup)))

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
    return format_columns(
        rows,
        [
            ("backend", "backend", "<12"),
            ("precision", "precision", "<9"),
            ("stage", "stage", "<16"),
            ("median ms", "median_ms", ">10.2f"),
            ("p95 ms", "p95_ms", ">9.2f"),
        ],
    )


# ------------------------------------------------------------------ SegEvery strategies

#: The issue's target: object-aware decoder time at least this many times below grid-32's.
OBJECT_AWARE_TARGET_RATIO = 16.0


@dataclass(frozen=True)
class SegEveryBenchRow:
    """One SegEvery strategy on the shared embedding. Times are medians over ``runs``, in ms.

    Attributes:
        strategy: registry name (``grid``, ``hierarchical``, ``object_aware``).
        boxes: object-aware with a synthetic detector: the boxes it emits; None otherwise.
        decoder_prompts: prompt sets the decoder evaluated (grid: points, object-aware: boxes).
        decoder_ms: time in the decoder graph (low-res masks and predicted IoUs).
        postprocess_ms: IoU/stability filters, upscale of the survivors, boxes and RLE.
        detector_ms: the object detector; 0 for the point strategies.
        end_to_end_ms: the whole strategy call; the shared encoder is not included.
        instances: instances returned (of the last run; runs are deterministic).
        runs: timed runs.
        grid_decoder_ratio: the grid row's ``decoder_ms`` over this row's: how many times less
            decoder time this strategy needs. None without a grid row.
        grid_end_to_end_ratio: the same for ``end_to_end_ms``.
        note: what else the row depends on (hierarchical's rounds, the detector).
    """

    strategy: str
    boxes: int | None
    decoder_prompts: int
    decoder_ms: float
    postprocess_ms: float
    detector_ms: float
    end_to_end_ms: float
    instances: int
    runs: int
    grid_decoder_ratio: float | None = None
    grid_end_to_end_ratio: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        """``strategy`` plus the box count of a synthetic detector, e.g. ``object_aware[50]``."""
        return self.strategy if self.boxes is None else f"{self.strategy}[{self.boxes}]"


def bench_segevery(
    predictor: Predictor,
    image: np.ndarray,
    *,
    strategies: Sequence[str] = ("grid", "hierarchical", "object_aware"),
    points_per_side: int = 32,
    box_counts: Sequence[int] = (50, 100),
    detector: str | Path | None = None,
    work_dir: str | Path | None = None,
    runs: int = 1,
    detector_threads: int = 0,
) -> list[SegEveryBenchRow]:
    """Run each SegEvery strategy on the predictor's embedding of ``image``, with its defaults.

    The encoder does not run here: every strategy decodes the same cached embedding, so the
    rows differ only in what they ask of the decoder. Thresholds are each strategy's defaults
    (SAM's for grid and hierarchical; MobileSAMv2's, no filters, for object-aware).

    Example::

        predictor = Predictor(backend)
        predictor.set_image(image)  # the one encoder run
        rows = bench_segevery(predictor, image, box_counts=(50, 100))
        print(format_segevery_table(rows))

    Args:
        predictor: with ``set_image(image)`` already called.
        image: the same frame, ``(H, W, 3)`` uint8 RGB (the object-aware detector looks at it).
        strategies: registry names, each benchmarked once (object-aware once per box count).
        points_per_side: grid and hierarchical dense grid side (``points_per_side**2`` points).
        box_counts: object-aware without ``detector``: for each count ``n``, a synthetic
            detector graph (:mod:`~.bench.synthetic_detector`) emits ``n`` distinct boxes
            spread over the image, so the decoder gets exactly ``n`` box prompts.
        detector: a real detector ONNX file instead (one object-aware row, with as many boxes
            as it finds; ``box_counts`` is then ignored).
        work_dir: folder for the synthetic detector graphs; None uses a temporary one.
        runs: timed runs per strategy (medians are reported); grid-32 on a full model takes
            tens of seconds per run on a small CPU.
        detector_threads: ONNX Runtime threads of the detector (0: its choice).

    Returns:
        One row per strategy (and box count), in the order asked for.

    Raises:
        ValueError: no image set or not this image, unknown strategy, ``runs`` or a box count
            below 1, or ``points_per_side`` out of a strategy's range.
        RuntimeError: a synthetic detector returned another number of boxes than it emits.
    """
    hw = _check_request(predictor, image, strategies, runs, detector, box_counts)
    with tempfile.TemporaryDirectory(prefix="segfast_bench_") as tmp:
        folder = Path(work_dir) if work_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        plan = _plan(
            strategies, points_per_side, detector, box_counts, folder, hw, detector_threads
        )
        # Warm-up is outside every timed call, and the detector sessions (in ``plan``) are
        # used only inside this block, where their graph files still exist.
        _warm_up_decoder(predictor, image, plan)
        rows = [_time_step(predictor, image, step, runs) for step in plan]
    return _with_grid_ratios(rows)


def _check_request(
    predictor: Predictor,
    image: np.ndarray,
    strategies: Sequence[str],
    runs: int,
    detector: str | Path | None,
    box_counts: Sequence[int],
) -> tuple[int, int]:
    """The frame's ``(H, W)``, once :func:`bench_segevery`'s arguments are known good."""
    hw = predictor_image_hw(predictor)
    if tuple(np.shape(image)[:2]) != hw:
        raise ValueError(
            f"image {tuple(np.shape(image))} is not the frame set on the predictor {(*hw, 3)}"
        )
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(
            f"unknown SegEvery strategy {unknown}; expected some of {list(STRATEGIES)}"
        )
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    synthetic = "object_aware" in strategies and detector is None
    if synthetic and (not box_counts or min(box_counts) < 1):
        raise ValueError(f"box counts must be >= 1, got {list(box_counts)}")
    return hw


def _plan(
    strategies: Sequence[str],
    points_per_side: int,
    detector: str | Path | None,
    box_counts: Sequence[int],
    folder: Path,
    hw: tuple[int, int],
    detector_threads: int,
) -> list[_Step]:
    """Each strategy configured to time (object-aware once per synthetic box count)."""
    plan: list[_Step] = []
    for name in strategies:
        if name != "object_aware":
            grid_like = build_segevery(name, points_per_side=points_per_side)
            plan.append(_Step(name, None, grid_like, ""))
        elif detector is not None:
            det = ObjectDetector(detector, intra_op_threads=detector_threads)
            plan.append(_Step(name, None, build_segevery(name, detector=det), det.path.name))
        else:
            for n in box_counts:
                path = synthetic_box_detector(folder, hw, n)
                # max_det: the detector's default (300) must not cut a larger count.
                det = ObjectDetector(path, max_det=max(300, n), intra_op_threads=detector_threads)
                plan.append(_Step(name, n, build_segevery(name, detector=det), "synthetic"))
    return plan


def _with_grid_ratios(rows: list[SegEveryBenchRow]) -> list[SegEveryBenchRow]:
    """The rows with grid's times over each row's filled in (unchanged without a grid row)."""
    grid = next((r for r in rows if r.strategy == "grid"), None)
    if grid is None:
        return rows
    return [
        replace(
            r,
            grid_decoder_ratio=_ratio(grid.decoder_ms, r.decoder_ms),
            grid_end_to_end_ratio=_ratio(grid.end_to_end_ms, r.end_to_end_ms),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class _Step:
    """One configured strategy to time: its name, synthetic box count, instance, note."""

    name: str
    boxes: int | None
    segevery: SegEvery
    note: str


def synthetic_box_detector(folder: Path, hw: tuple[int, int], n: int) -> Path:
    """A fixed-box detector graph emitting ``n`` distinct boxes over an ``hw`` image (needs
    the ``onnx`` package, as the benchmarks do)."""
    # Needs onnx, which the robot's runtime does not: imported only when a benchmark asks.
    from .synthetic_detector import spread_boxes, write_detector_for_image

    boxes = spread_boxes(hw, n, seed=n)
    # Distinct scores above the detector's conf (0.4), best first as a detector ranks them.
    scores = np.linspace(0.95, 0.5, n)
    return write_detector_for_image(folder / f"synthetic_{n}_boxes.onnx", hw, boxes, scores)


def _warm_up_decoder(predictor: Predictor, image: np.ndarray, plan: Sequence[_Step]) -> None:
    """One untimed decoder call per prompt kind and batch size the strategies start with.

    ONNX Runtime allocates and plans on the first call of each input shape; without this the
    first strategy timed would pay for it and the ratios would flatter the others.
    """
    h, w = image.shape[:2]
    shapes: set[tuple[str, int]] = set()
    for step in plan:
        s = step.segevery
        if isinstance(s, PointGridParams):
            shapes.add(("points", min(s.points_per_batch, s.points_per_side**2)))
        elif isinstance(s, ObjectAwareSegEvery):
            assert isinstance(s.detector, ObjectDetector)
            found = step.boxes if step.boxes is not None else len(s.detector(image))
            if found:
                shapes.add(("boxes", min(s.prompts_per_batch, found)))
    for kind, n in sorted(shapes):
        if kind == "points":
            xy = np.full((n, 1, 2), (w / 2, h / 2))
            predictor.predict_low_res(xy, np.ones((n, 1)), multimask_output=True)
        else:
            box = np.tile([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], (n, 1))
            predictor.predict_low_res(box=box, multimask_output=False)


def _time_step(
    predictor: Predictor, image: np.ndarray, step: _Step, runs: int
) -> SegEveryBenchRow:
    """Run one strategy ``runs`` times on the predictor's embedding; medians of its timings."""
    results = [step.segevery(predictor, image) for _ in range(runs)]
    last = results[-1]

    def median(stage: str) -> float:
        return percentile([r.timings_ms.get(stage, 0.0) for r in results], 50)

    if step.boxes is not None and last.decoder_prompts != step.boxes:
        raise RuntimeError(
            f"the synthetic detector emits {step.boxes} boxes but the decoder got "
            f"{last.decoder_prompts}; its boxes overlap more than its NMS allows"
        )
    note = step.note
    if isinstance(last, HierarchicalResult):
        note = (
            f"round 1: {last.round1_prompts}, round 2: {last.round2_prompts}, "
            f"skipped: {last.skipped_prompts}"
        )
    elif step.name == "object_aware" and step.boxes is None:
        note = f"{note}: {last.decoder_prompts} boxes"
    return SegEveryBenchRow(
        strategy=step.name,
        boxes=step.boxes,
        decoder_prompts=last.decoder_prompts,
        decoder_ms=median("decoder"),
        postprocess_ms=median("postprocess"),
        detector_ms=median("detector"),
        end_to_end_ms=median("total"),
        instances=len(last.instances),
        runs=runs,
        note=note,
    )


def _ratio(reference_ms: float, ms: float) -> float | None:
    return reference_ms / ms if ms > 0 else None


def format_segevery_table(rows: Sequence[SegEveryBenchRow]) -> str:
    """A fixed-width table of the rows; ``grid/x`` columns are grid's time over the row's."""

    def ratio(attr: str) -> Callable[[SegEveryBenchRow], str | None]:
        return lambda r: None if getattr(r, attr) is None else f"{getattr(r, attr):.2f}x"

    return format_columns(
        rows,
        [
            ("strategy", "label", "<18"),
            ("prompts", "decoder_prompts", ">7d"),
            ("decoder ms", "decoder_ms", ">10.1f"),
            ("post ms", "postprocess_ms", ">9.1f"),
            ("det ms", "detector_ms", ">7.1f"),
            ("e2e ms", "end_to_end_ms", ">9.1f"),
            ("instances", "instances", ">9d"),
            ("grid/x dec", ratio("grid_decoder_ratio"), ">10"),
            ("grid/x e2e", ratio("grid_end_to_end_ratio"), ">10"),
            (" note", lambda r: f" {r.note}", ""),
        ],
    )


def segevery_notes(
    rows: Sequence[SegEveryBenchRow],
    *,
    points_per_side: int,
    random_weights: bool | None,
) -> list[str]:
    """What a reader must know to read the rows: weights, detector, target, honesty notes.

    Args:
        rows: from :func:`bench_segevery`.
        points_per_side: the grid side the rows were run with.
        random_weights: True for random (or missing) weights, False for a trained checkpoint,
            None when unknown (then the rows themselves decide whether to warn).

    Returns:
        One sentence per note, most important first.
    """
    notes: list[str] = []
    point_rows = [r for r in rows if r.strategy in ("grid", "hierarchical")]
    if random_weights or (
        random_weights is None and point_rows and all(r.instances == 0 for r in point_rows)
    ):
        lead = "RANDOM WEIGHTS" if random_weights else "NO GRID/HIERARCHICAL INSTANCES"
        notes.append(
            f"{lead}: with random (untrained) weights SAM's default filters (predicted IoU > "
            "0.88, stability >= 0.95) keep few or no grid/hierarchical masks, so their "
            "instances and postprocess times are far below a trained model's. Decoder prompts "
            "and decoder times of grid and object-aware do not depend on the weights."
        )
    hier = next((r for r in rows if r.strategy == "hierarchical"), None)
    grid = next((r for r in rows if r.strategy == "grid"), None)
    if hier is not None and grid is not None:
        verdict = "fewer" if hier.decoder_prompts < grid.decoder_prompts else "no fewer"
        notes.append(
            f"hierarchical vs grid: {hier.decoder_prompts} vs {grid.decoder_prompts} decoder "
            f"prompts ({verdict}), decoder time {hier.decoder_ms:.0f} vs {grid.decoder_ms:.0f} "
            "ms. Hierarchical skips the dense points that its sparse round covers with "
            "confident masks (logit > 8.5); random weights are rarely that confident, so it "
            "only saves with a trained model (the demo-model issue provides one)."
        )
    aware = [r for r in rows if r.strategy == "object_aware"]
    if any(r.boxes is not None for r in aware):
        notes.append(
            "object_aware[N] uses a synthetic detector graph that emits N fixed boxes (no "
            "network): its det ms is letterbox and NMS only. A real YOLOv8 detector at 1024 px "
            "adds its inference to e2e ms; pass --detector to time one."
        )
    if aware:
        notes.append(
            "object_aware keeps every mask (MobileSAMv2's defaults: no IoU, stability or NMS "
            "filter), so it returns about one instance per box and upscales every mask."
        )
    if grid is not None and points_per_side == 32:
        for r in aware:
            if r.grid_decoder_ratio is None:
                continue
            met = "met" if r.grid_decoder_ratio >= OBJECT_AWARE_TARGET_RATIO else "NOT met"
            notes.append(
                f"target: {r.label} decoder time >= {OBJECT_AWARE_TARGET_RATIO:.0f}x below "
                f"grid-{points_per_side}: {r.grid_decoder_ratio:.1f}x ({met})"
            )
    return notes
