"""The ``segfast`` command: segment, export, quantization report and benchmarks.

The parser, one function per subcommand, and the dispatch (each subcommand's ``func``). The
commands run where their work is: ``segment``, ``export`` and ``quant-report`` here (a few
lines each over the runtime and the exporter), the benchmarks in :mod:`segfast_ros.bench.commands`,
``replay`` and ``demo`` in :mod:`segfast_ros.demo.run` (both may pick the demo model
themselves); the model flags and the backend they give in :mod:`segfast_ros.bench.backend_args`.

Heavy imports (torch, onnxruntime) happen inside the subcommands that need them, so
``segfast --help`` is instant and the onnxruntime paths never load torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bench import commands as bench_commands
from .demo import depth_eval, tracking_eval
from .demo.replay_args import add_replay_options
from .demo.run import demo_command, replay_command
from .distill.command import add_distill_parser
from .fleet.benchmark import add_bench_fleet_parser
from .fleet.command import add_replay_many_parser
from .model_args import (
    MODEL_HELP,
    MODES,
    PRECISIONS,
    add_backend_args,
    default_onnx_dir,
    ensure_onnx,
    image_files,
    make_backend,
)
from .runtime.images import read_rgb

log = logging.getLogger("segfast")

#: INT8 targets of `encoder.int8.onnx` (TensorRT's file comes from `segfast build-engine`).
INT8_CPU_TARGETS = ("cpu", "cpu-vnni", "cpu-avx2", "arm", "auto")
QUANT_TARGET_HELP = (
    "int8 types for the CPU that will run encoder.int8.onnx (ONNX Runtime): cpu = right on "
    "every CPU (7-bit weights; the default: build on a workstation, run on a robot or "
    "server); cpu-vnni = x86 with AVX-512 VNNI/AVX-VNNI or ARM, 8-bit weights, wrong on x86 "
    "without VNNI; cpu-avx2 = x86 without VNNI, uint8 weights, slower; arm = ARM64 (Jetson "
    "CPU); auto = this machine's kind. TensorRT: segfast build-engine --precision int8"
)


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in n:
        forms = {"point": "X,Y or X,Y,LABEL", "box": "X0,Y0,X1,Y1"}[what]
        raise argparse.ArgumentTypeError(f"bad {what} {text!r}: expected {forms}")
    return values


def _point(text: str) -> list[float]:
    return _floats(text, (2, 3), "point")


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "box")


def cmd_segment(args: argparse.Namespace) -> int:
    from .runtime.predictor import Predictor

    if not args.point and not args.box:
        raise ValueError("give at least one --point or --box")
    image = read_rgb(args.image)
    predictor = Predictor(make_backend(args, args.precision))
    predictor.set_image(image)
    coords = labels = None
    if args.point:
        coords = np.array([p[:2] for p in args.point], dtype=np.float64)
        labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point])
    box = None
    if args.box:
        box = np.array(args.box, dtype=np.float64)
        if len(args.box) == 1:
            box = box[0]
    pred = predictor.predict(
        coords, labels, box, multimask_output=args.multimask, return_logits=args.logits
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, masks=pred.masks, scores=pred.scores, low_res_logits=pred.low_res_logits
    )
    print(
        f"masks {pred.masks.shape} {pred.masks.dtype}, scores {np.round(pred.scores, 3)} -> {out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model
    from .modeling import build_sam

    sam = build_sam(args.model, args.checkpoint)
    if args.checkpoint is None:
        log.warning("no --checkpoint: exporting random weights (for shapes and speed only)")
    paths = export_model(
        sam,
        Path(args.out_dir),
        precisions=tuple(args.precision),
        calibration_images=image_files(args.calib) if args.calib else None,
        opset=args.opset,
        int8_options={"target": args.quant_target},
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    if "encoder.int8" in paths:
        _print_int8_check(paths["encoder.int8"])
    return 0


def _print_int8_check(path: Path) -> None:
    """The int8 file's target and the accuracy gate's result with the CPU it ran on."""
    from .export.quantize import quantization_settings

    settings = quantization_settings(path) or {}
    check = settings.get("validation")
    print(
        f"int8 target {settings.get('target')}: {settings.get('activation_type')} activations x "
        f"{settings.get('weight_type')} weights"
        + (", 7-bit" if settings.get("reduce_range") else "")
        + (
            f"; embedding cosine vs fp32 {check['mean_cosine']:.4f} (mean of {check['images']}) "
            f"on {check['cpu']}"
            if check
            else ""
        )
    )


def cmd_quant_report(args: argparse.Namespace) -> int:
    from .export import format_int8_report, int8_report_from_dir

    images = image_files(args.images)
    onnx_dir = Path(args.onnx_dir or default_onnx_dir(args.model, args.checkpoint))
    for precision in ("fp32",) if args.quant_targets else ("fp32", "int8"):
        ensure_onnx(
            onnx_dir,
            precision,
            model=args.model,
            checkpoint=args.checkpoint,
            calibration=image_files(args.calib) if args.calib else images,
        )
    names: list[str] = []
    if args.quant_targets:
        from .export.quantize import quantization_settings, quantize_encoder, resolve_target

        for target in dict.fromkeys(resolve_target(t) for t in args.quant_targets):
            path = onnx_dir / f"encoder.int8.{target}.onnx"
            built = quantization_settings(path) if path.is_file() else None
            if (built or {}).get("target") != target:
                # No accuracy gate here: the report is where a saturating target shows.
                quantize_encoder(
                    onnx_dir / "encoder.fp32.onnx",
                    path,
                    image_files(args.calib) if args.calib else images,
                    target=target,  # type: ignore[arg-type]
                    validate=False,
                )
            names.append(path.name)
    report = int8_report_from_dir(
        onnx_dir, images, names, threads=args.threads, json_path=args.json
    )
    print(format_int8_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``segfast`` parser: one subcommand each, listed in this order by ``--help``; each
    subcommand's ``func`` runs it."""
    parser = argparse.ArgumentParser(prog="segfast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(sub)
    _add_export_parser(sub)
    _add_quant_report_parser(sub)
    bench_commands.add_parsers(sub)
    _add_replay_parser(sub)
    add_replay_many_parser(sub)
    add_distill_parser(sub)
    add_bench_fleet_parser(sub)
    bench_commands.add_replay_parser(sub)
    _add_demo_parser(sub)
    _add_eval_tracking_parser(sub)
    _add_eval_depth_parser(sub)
    from .export.tensorrt_build import add_build_engine_parser

    add_build_engine_parser(sub)
    return parser


def _add_segment_parser(sub: Any) -> None:
    p = sub.add_parser("segment", help="masks for point/box prompts on one image")
    add_backend_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--image", required=True, help="RGB image file")
    p.add_argument(
        "--point", type=_point, action="append", help="X,Y[,LABEL] in pixels; LABEL 1 fg, 0 bg"
    )
    p.add_argument(
        "--box", type=_box, action="append", help="X0,Y0,X1,Y1 in pixels; several run batched"
    )
    p.add_argument("--multimask", action="store_true", help="three masks per prompt set")
    p.add_argument("--logits", action="store_true", help="save float logits, not bool masks")
    p.add_argument("--out", required=True, help="output .npz (masks, scores, low_res_logits)")
    p.set_defaults(func=cmd_segment)


def _add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export encoder/decoder to ONNX (fp32, fp16, int8)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--checkpoint", help="official checkpoint; random weights without it")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"])
    p.add_argument("--calib", nargs="+", help="calibration images or folders (int8)")
    p.add_argument(
        "--quant-target", choices=INT8_CPU_TARGETS, default="cpu", help=QUANT_TARGET_HELP
    )
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)


def _add_quant_report_parser(sub: Any) -> None:
    p = sub.add_parser("quant-report", help="fp32 vs int8: embedding cosine, mask IoU, speed")
    add_backend_args(p, backend=False)
    p.add_argument("--images", nargs="+", required=True, help="images or folders to evaluate")
    p.add_argument("--calib", nargs="+", help="calibration images (default: --images)")
    p.add_argument(
        "--quant-targets",
        nargs="+",
        choices=(*INT8_CPU_TARGETS, "tensorrt"),
        help="compare these int8 targets side by side (quantized to "
        "<onnx-dir>/encoder.int8.<target>.onnx if not there) instead of encoder.int8.onnx",
    )
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(func=cmd_quant_report)


def _add_replay_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="segment every selected frame of a rosbag2 (mcap/sqlite3) into an output bag",
        description="Replay a rosbag2 through the encoder and SegEvery, deterministically: "
        "every selected frame is processed, on bag time, and the instance arrays and label "
        "images are written to OUTPUT with the source frame's header and bag time. Without "
        "--model, --checkpoint or --onnx-dir the shipped demo model (models/demo) runs, with "
        "its SegEvery settings and detector.",
    )
    p.add_argument("input", help="input rosbag2 folder (mcap or sqlite3)")
    p.add_argument("output", help="output rosbag2 folder (must not exist, see --overwrite)")
    add_replay_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--coco", help="write COCO results JSON (RLE masks) here")
    p.add_argument("--overlay-video", help="write an mp4 of the overlays here")
    p.add_argument("--contact-sheet", help="write a PNG contact sheet of overlays here")
    p.add_argument("--json", help="write the summary (counts, per-stage timings) as JSON")
    p.set_defaults(func=replay_command, backend="onnxruntime")


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: generate a sample bag and replay it with the demo model",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seed", type=int, default=2026, help="scene generator seed")
    p.add_argument("--mode", choices=MODES, default="object_aware")
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--onnx-dir", help="use this exported model instead of the demo model")
    p.add_argument("--detector", help="object-discovery detector ONNX (default: the demo one)")
    p.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.set_defaults(func=demo_command)


def _add_eval_tracking_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval-tracking",
        help="track held-out moving-object sequences with the demo model: track IDs and "
        "prompted targets against the goals (table + JSON)",
    )
    tracking_eval.add_arguments(p)
    p.set_defaults(func=tracking_eval.eval_tracking_command)


def _add_eval_depth_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval-depth",
        help="lift ground-truth and demo-model masks to 3D on held-out RGB-D scenes: centroid "
        "error against the goal (table + JSON)",
    )
    depth_eval.add_arguments(p)
    p.set_defaults(func=depth_eval.eval_depth_command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"segfast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
