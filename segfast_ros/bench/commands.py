"""The ``segfast`` benchmark commands: ``bench``, ``bench-segevery``, ``bench-node``,
``bench-tracking``, ``bench-memory``, ``bench-lifting``, ``bench-ops``, ``bench-postprocess``
and ``bench-replay``, their flags and what each prints and writes.

``cli.py`` calls :func:`add_parsers` and :func:`add_replay_parser` (the latter after
``replay``, where ``segfast --help`` lists the two replay benchmarks). Heavy imports (torch,
onnxruntime, rclpy) happen inside the commands, so building the parser stays instant.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..model_args import (
    MODES,
    PRECISIONS,
    add_backend_args,
    make_backend,
    onnx_dir_for,
    strategy_options,
)
from ..runtime.images import read_rgb
from ..runtime.paths import DEMO_MODEL, resolve_model_path
from . import decoder as bench_decoder
from . import lifting as bench_lifting  # numpy and cv2 only
from . import memory as bench_memory  # no ROS import until a case runs
from . import op_profile as bench_ops  # onnxruntime imported when it runs
from . import postprocess as bench_postprocess  # replays run as processes
from . import segany_speed as bench_segany  # ROS messages and torch imported when it runs
from . import tracking as bench_tracking  # the tracking library loads when a part runs
from .report import write_json, write_rows_json
from .scenes import frame

#: ``(H, W)`` of the generated benchmark frame (769x770 WxH: not a multiple of anything).
BENCH_HW = (770, 769)


def bench_image(
    args: argparse.Namespace, tmp: str, hw: tuple[int, int] | None = None
) -> np.ndarray:
    """The benchmark frame: ``--image``, or a generated scene (:func:`~.scenes.frame`, of size
    ``hw``, default :data:`BENCH_HW`) written to ``tmp``.

    Without ``--calib``, an INT8 export calibrates on that same frame.
    """
    if getattr(args, "image", None):
        image = read_rgb(args.image)
        if args.calib is None:
            args.calib = [args.image]
        return image
    image = frame(hw or BENCH_HW)
    if args.calib is None:
        _write_png(image, Path(tmp) / "scene.png")
        args.calib = [str(Path(tmp) / "scene.png")]
    return image


def _write_png(image: np.ndarray, path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def cmd_bench(args: argparse.Namespace) -> int:
    """Encoder and decoder latency per backend and precision: table and JSON."""
    from .latency import bench_backend, format_table

    if args.image:
        if args.calib is None:
            args.calib = [args.image]
        image = read_rgb(args.image)
    else:
        image = frame(BENCH_HW)
        if args.calib is None:
            args.calib = [Path("out") / "bench_image.png"]
            _write_png(image, args.calib[0])
    rows = []
    for backend_name in args.backends:
        precisions = ["fp32"] if backend_name == "torch" else args.precisions
        for precision in precisions:
            args.backend = backend_name
            backend = make_backend(args, precision, allow_random=True)
            rows += bench_backend(
                backend, image, precision=precision, runs=args.runs, decoder_runs=args.decoder_runs
            )
    _print_and_write(
        args,
        format_table(rows),
        rows,
        model=args.model,
        threads=args.threads,
        image_hw=list(image.shape[:2]),
        cpu_count=os.cpu_count(),
    )
    return 0


def _print_and_write(
    args: argparse.Namespace,
    table: str,
    rows: Sequence[Any],
    *,
    notes: Sequence[str] | None = None,
    **context: object,
) -> None:
    """Print the table and its notes; with ``--json``, write the rows, the run's context and
    the notes (a ``notes`` key only when ``notes`` is given)."""
    print(table)
    for note in notes or ():
        print(f"note: {note}")
    if args.json:
        extra = {} if notes is None else {"notes": list(notes)}
        write_rows_json(rows, args.json, **context, **extra)
        print(f"wrote {args.json}")


def cmd_bench_segevery(args: argparse.Namespace) -> int:
    """Every SegEvery strategy on one embedding (the encoder runs once): table, notes, JSON."""
    import tempfile

    from ..runtime.predictor import Predictor
    from .latency import bench_segevery, format_segevery_table, segevery_notes
    from .timing import time_ms

    with tempfile.TemporaryDirectory(prefix="segfast_bench_segevery_") as tmp:
        image = bench_image(args, tmp)
        predictor = Predictor(make_backend(args, args.precision, allow_random=True))
        # The only encoder run: every strategy shares it.
        _, encoder_ms = time_ms(lambda: predictor.set_image(image))
        rows = bench_segevery(
            predictor,
            image,
            strategies=args.strategies,
            points_per_side=args.points_per_side,
            box_counts=args.boxes,
            detector=args.detector,
            work_dir=tmp,
            runs=args.runs,
            detector_threads=args.threads,
        )
    notes = segevery_notes(
        rows, points_per_side=args.points_per_side, random_weights=_random_weights(args)
    )
    h, w = image.shape[:2]
    print(
        f"{args.model or args.onnx_dir} {args.backend} {args.precision}, image {w}x{h} (WxH), "
        f"threads {args.threads or 'all'}; shared encoder (set_image, once): {encoder_ms:.0f} "
        f"ms, not in the rows; runs per strategy: {args.runs} (medians)"
    )
    _print_and_write(
        args,
        format_segevery_table(rows),
        rows,
        notes=notes,
        model=args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        image=args.image or "generated (bench.scenes.frame)",
        image_hw=[h, w],
        encoder_ms=encoder_ms,
        points_per_side=args.points_per_side,
        detector=args.detector or "synthetic fixed boxes",
        cpu_count=os.cpu_count(),
    )
    return 0


def _random_weights(args: argparse.Namespace) -> bool | None:
    """True when the weights are known to be random: no checkpoint (the default ONNX folder is
    then ``MODEL-random``) or one named so, like the parity fixture's. None otherwise: a file
    name cannot prove that weights are trained, so the benchmark's rows decide."""
    if args.checkpoint is not None:
        named = Path(args.checkpoint).stem
    else:
        named = Path(args.onnx_dir).name if args.onnx_dir else "random"
    return True if "random" in named.lower() else None


def cmd_bench_node(args: argparse.Namespace) -> int:
    """The node against the library: ~/segment vs predict, frame-to-embedding vs set_image."""
    import tempfile

    from .latency import format_table
    from .node import bench_node

    with tempfile.TemporaryDirectory(prefix="segfast_bench_node_") as tmp:
        image = bench_image(args, tmp)
        onnx_dir = onnx_dir_for(args, args.precision, allow_random=True)
    h, w = image.shape[:2]
    head = f"{onnx_dir} {args.precision}, image {w}x{h} (WxH), threads {args.threads or 'all'}, "
    run = {
        "onnx_dir": str(onnx_dir),
        "precision": args.precision,
        "image_hw": [h, w],
        "threads": args.threads,
    }
    if args.concurrent:
        return _bench_node_concurrent(args, onnx_dir, image, head, run)
    result = bench_node(
        onnx_dir,
        args.precision,
        image,
        calls=args.calls,
        frames=args.frames,
        providers=tuple(args.providers or ("cpu",)),
        threads=args.threads,
    )
    print(f"{head}{args.calls} service calls, {args.frames} frames")
    _print_and_write(
        args,
        format_table(result.rows),
        result.rows,
        notes=result.notes(),
        **run,
        cpu_count=os.cpu_count(),
        service_overhead_ms=result.service_overhead_ms,
        node_overhead_pct=result.node_overhead_pct,
    )
    return 0


def _bench_node_concurrent(
    args: argparse.Namespace, onnx_dir: Path, image: np.ndarray, head: str, run: dict[str, Any]
) -> int:
    """``segfast bench-node --concurrent N ...``: the service under N calls at once."""
    from .node import bench_concurrent, format_concurrency

    rows = bench_concurrent(
        onnx_dir,
        args.precision,
        image,
        in_flight=tuple(args.concurrent),
        queue_depth=args.queue_depth,
        workers=args.workers,
        providers=tuple(args.providers or ("cpu",)),
        threads=args.threads,
    )
    print(
        f"{head}segment.queue_depth {args.queue_depth}, segment.workers {args.workers}; one "
        "point, 3 masks per call; latency from sending the calls to each answer"
    )
    _print_and_write(
        args,
        format_concurrency(rows),
        rows,
        **run,
        queue_depth=args.queue_depth,
        workers=args.workers,
        cpu_count=os.cpu_count(),
    )
    return 0


def cmd_bench_replay(args: argparse.Namespace) -> int:
    """Replay throughput vs the encoder-bound limit: raw and JPEG bags, SegEvery off and on."""
    import tempfile

    from ..runtime.predictor import Predictor
    from ..segevery.registry import build_segevery
    from .latency import synthetic_box_detector
    from .replay import bench_replay, format_replay_table

    hw = (args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="segfast_bench_replay_") as tmp:
        first = bench_image(args, tmp, hw)  # also the int8 calibration frame without --calib
        images = [first] + [frame(hw, seed=i) for i in range(1, args.frames)]
        predictor = Predictor(make_backend(args, args.precision, allow_random=True))
        if args.mode == "object_aware":
            detector = args.detector or synthetic_box_detector(Path(tmp), hw, args.boxes)
            segevery = build_segevery("object_aware", detector=str(detector))
        else:
            segevery = build_segevery(args.mode, **dict(strategy_options(args.set)))
        rows = bench_replay(predictor, segevery, images, Path(tmp))
    print(
        f"{args.model or args.onnx_dir} {args.precision}, {args.frames} frames {args.width}x"
        f"{args.height}, threads {args.threads or 'all'}, SegEvery {args.mode}"
    )
    print(format_replay_table(rows))
    if args.json:
        doc = {
            "model": args.model or args.onnx_dir,
            "precision": args.precision,
            "threads": args.threads,
            "frames": args.frames,
            "image_hw": list(hw),
            "mode": args.mode,
            "cpu_count": os.cpu_count(),
            "rows": rows,
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def cmd_bench_tracking(args: argparse.Namespace) -> int:
    """Tracking's cost: association, batched targets, the node's frame-to-tracks latency."""
    from .latency import format_table
    from .report import format_columns

    t = bench_tracking
    context = t.machine_context()  # first: the load average of the others, not of this run
    if args.model or args.checkpoint or args.onnx_dir:
        model_dir = onnx_dir_for(args, args.precision, allow_random=True)
    else:
        model_dir = resolve_model_path(DEMO_MODEL)
    context.update(model_dir=str(model_dir), precision=args.precision, threads=args.threads)
    # Targets and node: these thresholds (max_targets there: the part's N).
    context["target_settings"] = t.lenient_settings(max(args.targets))
    print(f"{model_dir} {args.precision}, threads {args.threads or 'all'}")
    print(t.machine_line(context))
    association = t.bench_association(args.sizes, instances=args.instances, runs=args.runs)
    print(f"\nAssociation: InstanceTracker.update, medians of {args.runs} (ms)")
    print(format_columns(association, t.ASSOCIATION_COLUMNS))
    backend = make_backend(args, args.precision, model_dir=model_dir)
    targets = t.bench_targets(backend, counts=args.targets, frames=args.frames, hw=args.size)
    print(f"\nTargets: TargetTracker.step on {args.size[1]}x{args.size[0]} frames (ms)")
    print(format_columns(targets, t.TARGETS_COLUMNS))
    notes = t.tracking_notes(association, targets)
    node = None
    if args.node_targets:
        from .tracking_node import bench_node_tracking

        node = bench_node_tracking(
            model_dir, args.precision, targets=args.node_targets, frames=args.node_frames,
            hw=args.size, threads=args.threads, providers=tuple(args.providers or ("cpu",)),
        )  # fmt: skip
        print(f"\nNode: {args.node_targets} targets, {node.frames} frames")
        print(format_table(node.rows))
        notes += node.notes()
    for note in notes:
        print(f"note: {note}")
    if args.json:
        doc = {"context": context, "association": association, "targets": targets}
        write_json(args.json, {**doc, "node": node, "notes": notes})
        print(f"wrote {args.json}")
    return 0


def add_parsers(sub: Any) -> None:
    """``bench``, ``bench-segevery``, ``bench-node``, ``bench-tracking``, ``bench-memory``,
    ``bench-lifting`` and ``bench-ops`` on ``sub`` (the ``segfast`` subparsers), in that order."""
    p = sub.add_parser("bench", help="encoder/decoder latency table per backend and precision")
    add_backend_args(p, backend=False)
    p.add_argument("--image", help="image to time on (default: a generated 769x770 scene)")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=("onnxruntime", "torch", "tensorrt"),
        default=["torch", "onnxruntime"],
        help="tensorrt: the native TensorRT backend (a Jetson or NVIDIA GPU with TensorRT)",
    )
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "int8"])
    p.add_argument("--calib", nargs="+", help="int8 calibration images (default: --image)")
    p.add_argument("--runs", type=int, default=10, help="encoder runs")
    p.add_argument("--decoder-runs", type=int, default=50)
    p.add_argument("--json", help="write the table as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "bench-segevery",
        help="SegEvery strategies on one embedding: decoder prompts, time, instances",
    )
    add_backend_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--image", help="image to run on (default: a generated 769x770 scene)")
    p.add_argument("--calib", nargs="+", help="int8 calibration images (default: the image)")
    p.add_argument(
        "--strategies",
        nargs="+",
        default=["grid", "hierarchical", "object_aware"],
        help="SegEvery strategies: grid, hierarchical, object_aware",
    )
    p.add_argument(
        "--points-per-side", type=int, default=32, help="grid/hierarchical points per side"
    )
    p.add_argument(
        "--boxes",
        type=int,
        nargs="+",
        default=[50, 100],
        help="object-aware box counts, each emitted by a synthetic detector graph",
    )
    p.add_argument("--detector", help="a real detector ONNX file instead of synthetic boxes")
    p.add_argument("--runs", type=int, default=1, help="timed runs per strategy (medians)")
    p.add_argument("--json", help="write the table as JSON")
    p.set_defaults(func=cmd_bench_segevery)

    p = sub.add_parser(
        "bench-node",
        help="the ROS node vs the library: ~/segment round trip, frame-to-embedding latency",
    )
    add_backend_args(p, backend=False)
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--image", help="frame to send (default: a generated 769x770 scene)")
    p.add_argument("--calib", nargs="+", help="int8 calibration images (default: the image)")
    p.add_argument("--calls", type=int, default=100, help="timed service calls")
    p.add_argument("--frames", type=int, default=20, help="timed frames")
    p.add_argument(
        "--concurrent",
        type=int,
        nargs="+",
        metavar="N",
        help="instead: N ~/segment calls at once, per N: answered, busy, lost, p50/p95",
    )
    p.add_argument("--queue-depth", type=int, default=32, help="the node's segment.queue_depth")
    p.add_argument("--workers", type=int, default=2, help="the node's segment.workers")
    p.add_argument("--json", help="write the table as JSON")
    p.set_defaults(func=cmd_bench_node)

    _add_tracking_parser(sub)
    for name, module, help_text in _MODULE_BENCHES:
        _add_module_parser(sub, name, module, help_text)


#: The benchmarks whose module declares its flags (``add_arguments``) and runs (``run_cli``).
_MODULE_BENCHES = (
    ("bench-memory", bench_memory, "peak RSS and time of the node on one large frame: "
     "SegEvery and ~/segment"),
    ("bench-lifting", bench_lifting, "depth lifting's cost: 100 masks to 3D (goal < 5 ms), "
     "point cloud, depth resampling"),
    ("bench-ops", bench_ops, "where ONNX graphs spend their time per operator type, side by "
     "side (fp32 vs int8)"),
    ("bench-decoder", bench_decoder, "the fp32 decoder per prompt, several exports side by "
     "side (batch 1 and 64)"),
    ("bench-segany", bench_segany, "one SegAny point on a large frame: predict and the "
     "~/segment handler vs upstream MobileSAM"),
)  # fmt: skip


def _add_module_parser(sub: Any, name: str, module: Any, help_text: str) -> None:
    """``name`` on ``sub``, for a benchmark module with ``add_arguments`` and ``run_cli``;
    its description is the first paragraph of the module's docstring."""
    description = (module.__doc__ or "").split("\n\n")[0]
    p = sub.add_parser(name, help=help_text, description=description)
    module.add_arguments(p)
    p.set_defaults(func=module.run_cli)


def _add_tracking_parser(sub: Any) -> None:
    """``bench-tracking`` on ``sub``."""
    p = sub.add_parser(
        "bench-tracking",
        help="tracking's cost: association, N targets in one decoder call, frame-to-tracks",
        description="Without --model, --checkpoint or --onnx-dir the shipped demo model "
        "(models/demo) runs.",
    )
    add_backend_args(p, backend=False)  # no model option: the shipped demo model
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    size, count = bench_tracking.parse_size, bench_tracking.count_arg
    p.add_argument("--sizes", type=size, nargs="+", default=[(480, 640), (720, 1280)],
                   help="association: frame sizes WxH")  # fmt: skip
    p.add_argument("--instances", type=count, default=100, help="association: instances = tracks")
    p.add_argument("--runs", type=count, default=200, help="association: timed updates per size")
    p.add_argument("--targets", type=count, nargs="+", default=[1, 4, 16, 64], help="N targets")
    p.add_argument("--frames", type=count, default=10, help="targets: timed frames per count")
    p.add_argument("--size", type=size, default="640x480", help="targets and node: frame WxH")
    p.add_argument("--node-targets", type=functools.partial(count, least=0), default=4,
                   help="node: targets (0: skip the node)")  # fmt: skip
    p.add_argument("--node-frames", type=count, default=20, help="node: timed frames")
    p.add_argument("--json", help="write the tables as JSON")
    p.set_defaults(func=cmd_bench_tracking, backend="onnxruntime")


def add_replay_parser(sub: Any) -> None:
    """``bench-replay`` and ``bench-postprocess`` on ``sub`` (the ``segfast`` subparsers; listed
    after ``replay``)."""
    p = sub.add_parser(
        "bench-replay",
        help="replay throughput vs the encoder-bound limit (raw/JPEG, SegEvery off/on)",
    )
    add_backend_args(p, backend=False)
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--calib", nargs="+", help="int8 calibration images (default: frame 0)")
    p.add_argument("--frames", type=int, default=20, help="frames in the generated bag")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--mode", choices=MODES, default="object_aware")
    p.add_argument("--boxes", type=int, default=20, help="object_aware: synthetic detector boxes")
    p.add_argument("--detector", help="object_aware: a real detector ONNX instead")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="grid/hierarchical option")
    p.add_argument("--json", help="write the table as JSON")
    p.set_defaults(func=cmd_bench_replay, backend="onnxruntime")
    _add_module_parser(
        sub,
        "bench-postprocess",
        bench_postprocess,
        "SegEvery post-processing and rendering vs the decoder: this checkout vs --base, "
        "replaying make demo's bag",
    )
