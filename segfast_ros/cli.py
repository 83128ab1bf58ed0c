"""The ``segfast`` command: segment, export, quantization report and benchmarks.

Heavy imports (torch, onnxruntime) happen inside the subcommands that need them, so
``segfast --help`` is instant and the onnxruntime paths never load torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bench import commands as bench_commands
from .bench.backend_args import (
    MODEL_HELP,
    MODES,
    PRECISIONS,
    add_backend_args,
    default_onnx_dir,
    ensure_onnx,
    image_files,
    make_backend,
    strategy_options,
)
from .runtime.backend import Backend
from .runtime.images import read_rgb

if TYPE_CHECKING:
    from .segevery.base import SegEvery

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


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a bag; exit 0 when complete, 3 on a corrupt input part-way, 130 on Ctrl-C.

    Without a model option the shipped demo model runs (as the node's ``model_dir:=demo``),
    with its SegEvery settings and detector; the summary says so.
    """
    import json

    from .replay import ReplayOptions, load_prompts, replay
    from .runtime.predictor import Predictor

    demo = _replay_demo_model(args)
    detector = args.detector or (demo.detector if demo else None)
    segevery, settings, source = _build_segevery(
        args.mode,
        detector,
        demo=demo is not None,
        overrides=strategy_options(args.set),
        detector_source="--detector" if args.detector else "the demo model's",
    )
    options = ReplayOptions(
        topic=args.topic,
        every=args.every,
        rate_hz=args.rate,
        segevery_rate_hz=args.segevery_rate,
        namespace=args.namespace,
        copy_input=args.copy_input,
        overlay_topic=args.overlay_topic,
        storage=args.storage,
        overwrite=args.overwrite,
        prompts=load_prompts(args.prompts) if args.prompts else (),
        coco=Path(args.coco) if args.coco else None,
        overlay_video=Path(args.overlay_video) if args.overlay_video else None,
        contact_sheet=Path(args.contact_sheet) if args.contact_sheet else None,
        progress=not args.no_progress and sys.stderr.isatty(),
        segevery_settings=settings,
        segevery_settings_source=source,
    )
    options.check()
    if demo is not None:
        backend = make_backend_from_dir(demo.onnx_dir, args)
        options.model = f"{_graph_files(backend)}: {demo.label}"
    else:
        backend = make_backend(args, args.precision)
        given = [
            f"--{k.replace('_', '-')} {v}"
            for k in ("model", "checkpoint", "onnx_dir")
            if (v := getattr(args, k))
        ]
        options.model = f"{_graph_files(backend)} ({', '.join(given)})"
    summary = replay(args.input, args.output, Predictor(backend), segevery, options)
    print(summary.format())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary.to_json(), indent=2))
    if summary.error:
        print(f"segfast replay: error: {summary.error}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 3 if summary.error else 0


def _replay_demo_model(args: argparse.Namespace) -> ModelChoice | None:
    """The shipped demo model when no model option (``--model``, ``--checkpoint``,
    ``--onnx-dir``) is given, as the node's ``model_dir:=demo``; None otherwise."""
    if args.model or args.checkpoint or args.onnx_dir:
        return None
    from .runtime.paths import DEMO_MODEL, model_candidates

    folder = shipped_demo_dir()
    if folder is None:
        searched = ", ".join(str(c) for c in model_candidates(DEMO_MODEL))
        raise FileNotFoundError(
            "no --model, --checkpoint or --onnx-dir given, and the shipped demo model is "
            f"missing (no encoder.fp32.onnx in {searched}); pass --onnx-dir with exported graphs"
        )
    detector = folder / "detector.onnx"
    return ModelChoice(
        folder,
        detector if detector.is_file() else None,
        "no --model, --checkpoint or --onnx-dir given, so the shipped demo model runs (as the "
        "node's model_dir:=demo; trained on synthetic scenes only)",
        demo=True,
    )


def _graph_files(backend: Backend) -> str:
    """``DIR/encoder.X.onnx + decoder.Y.onnx`` of an ONNX Runtime backend (its class else)."""
    encoder = getattr(backend, "encoder_path", None)
    decoder = getattr(backend, "decoder_path", None)
    if encoder is None or decoder is None:
        return type(backend).__name__
    return f"{Path(encoder)} + {Path(decoder).name}"


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on a fresh machine: a generated bag, replayed with the demo model."""
    import shutil

    from .bench.scenes import generate_sequence
    from .replay import ReplayOptions, replay
    from .replay.bags import write_image_bag
    from .runtime.predictor import Predictor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = generate_sequence(args.seed, args.frames, (args.height, args.width))
    bag = out / "sample_bag"
    shutil.rmtree(bag, ignore_errors=True)
    write_image_bag(bag, (f.image for f in frames))
    print(
        f"1/3 generated {len(frames)} frames ({args.width}x{args.height}, seed {args.seed}): {bag}"
    )

    choice = _demo_model(args, frames[0].image, out)
    print(f"2/3 model: {choice.label}")
    backend = make_backend_from_dir(choice.onnx_dir, args)
    segevery, settings, source = _build_segevery(
        args.mode,
        choice.detector,
        demo=choice.demo,
        detector_source="--detector" if args.detector else "found in models/",
    )
    options = ReplayOptions(
        overwrite=True,
        coco=out / "coco.json",
        contact_sheet=out / "contact_sheet.png",
        progress=sys.stderr.isatty(),
        model=f"{_graph_files(backend)}: {choice.label}",
        segevery_settings=settings,
        segevery_settings_source=source,
    )
    predictor = Predictor(backend)
    summary = replay(bag, out / "segmented_bag", predictor, segevery, options)
    print("3/3 replayed:")
    print(summary.format())
    recall, truth = _demo_recall(out / "coco.json", frames)
    print(
        f"demo: {summary.processed} frames, {summary.instances} instances; {recall:.2f} of the "
        f"{truth} generated objects found (mask IoU >= 0.5 with the generator's ground truth)"
    )
    print(f"demo: look at {out / 'contact_sheet.png'}; results in {out / 'coco.json'}")
    return 0 if summary.complete else 3


def make_backend_from_dir(model_dir: Path, args: argparse.Namespace) -> Backend:
    """ONNX Runtime on ``model_dir`` at ``--precision``; the fp32 graphs when that precision's
    encoder is missing, said on stderr (the missing file and what runs instead)."""
    from .runtime.onnx_backend import OnnxRuntimeBackend, onnx_file_names

    precision = args.precision
    wanted = model_dir / onnx_file_names(precision)[0]
    if precision != "fp32" and not wanted.is_file():
        fp32 = " + ".join(onnx_file_names("fp32"))
        print(
            f"segfast {args.command}: {wanted} not found; running the fp32 graphs ({fp32}) "
            f"instead of --precision {precision}",
            file=sys.stderr,
        )
        precision = "fp32"
    return OnnxRuntimeBackend.from_dir(
        model_dir, precision, providers=args.providers, intra_op_threads=args.threads
    )


@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs when it picks one itself, and why.

    Attributes:
        onnx_dir: folder of the exported graphs.
        detector: object-discovery detector ONNX (YOLOv8 layout) for object_aware, or None.
        label: what the model is and why it was chosen, for the user.
        demo: it is the shipped demo model, so its SegEvery settings apply.
    """

    onnx_dir: Path
    detector: Path | None
    label: str
    demo: bool = False


def shipped_demo_dir() -> Path | None:
    """The first folder of ``models/demo``'s candidates that holds the demo model, or None
    (not any folder that happens to be called "demo")."""
    from .runtime.paths import DEMO_MODEL, model_candidates

    return next(
        (c for c in model_candidates(DEMO_MODEL) if (c / "encoder.fp32.onnx").is_file()), None
    )


def _demo_model(args: argparse.Namespace, calib_rgb: np.ndarray, out: Path) -> ModelChoice:
    """The model ``segfast demo`` runs.

    ``--onnx-dir`` first; else official MobileSAM weights in ``models/`` (exported once to
    ONNX, calibrated on a generated frame); else the project's demo model.
    """
    from .runtime.paths import DEMO_MODEL, resolve_model_path

    demo = shipped_demo_dir()
    official_detector = resolve_model_path("object_aware.onnx")
    candidates = [official_detector] + ([demo / "detector.onnx"] if demo else [])
    found = next((d for d in candidates if d.is_file()), None)
    detector = Path(args.detector) if args.detector else found
    if args.onnx_dir:
        return ModelChoice(Path(args.onnx_dir), detector, f"{args.onnx_dir} (--onnx-dir)")
    checkpoint = resolve_model_path("mobile_sam.pt")
    if checkpoint.is_file():
        import cv2

        calib = out / "calibration_frame.png"
        cv2.imwrite(str(calib), cv2.cvtColor(calib_rgb, cv2.COLOR_RGB2BGR))
        onnx_dir = default_onnx_dir("mobile_sam", str(checkpoint))
        ensure_onnx(
            onnx_dir,
            args.precision,
            model="mobile_sam",
            checkpoint=str(checkpoint),
            calibration=[calib],
        )
        label = f"official MobileSAM ({checkpoint}), exported to {onnx_dir}"
        return ModelChoice(onnx_dir, detector, label)
    if demo is None:
        raise FileNotFoundError(
            f"no model: models/{DEMO_MODEL} (the demo model) is missing and no official "
            "checkpoint is in models/ (see models/README.md); pass --onnx-dir"
        )
    label = f"the demo model in {demo} (trained on synthetic scenes only)"
    return ModelChoice(demo, detector, label, demo=True)


def _build_segevery(
    mode: str,
    detector: str | Path | None,
    *,
    demo: bool,
    overrides: Sequence[tuple[str, object]] = (),
    detector_source: str = "--detector",
) -> tuple[SegEvery, dict[str, Any], str]:
    """The SegEvery strategy ``mode``, the settings it was given, and where they come from.

    With ``demo`` (the shipped demo model runs) the demo's settings (``DEMO_SEGEVERY_PARAMS``:
    its IoU head is not calibrated for SAM's thresholds) replace the strategy's defaults;
    ``overrides`` (``--set``) win over both. ``detector`` is object_aware's.
    """
    from .segevery.presets import DEMO_SEGEVERY_PARAMS
    from .segevery.registry import build_segevery

    kwargs: dict[str, Any] = dict(DEMO_SEGEVERY_PARAMS[mode]) if demo else {}
    sources = ["DEMO_SEGEVERY_PARAMS, the shipped demo model's settings"] if demo else []
    if mode == "object_aware":
        if detector is None:
            missing = "; the demo model's detector.onnx is missing" if demo else ""
            raise ValueError(
                "--mode object_aware needs a detector: pass --detector DETECTOR.onnx (YOLOv8 "
                f"output layout) or another --mode{missing}"
            )
        kwargs["detector"] = str(detector)
        sources.append(f"detector: {detector_source}")
    if overrides:
        kwargs.update(overrides)
        sources.append("--set " + ", ".join(k for k, _ in overrides))
    sources.append("the rest: the strategy's defaults")
    return build_segevery(mode, **kwargs), kwargs, "; ".join(sources)


def _demo_recall(coco_path: Path, frames: Sequence) -> tuple[float, int]:
    """Fraction of the generated objects some written mask matches (IoU >= 0.5)."""
    import json

    from .demo.evaluate import recall_at
    from .masks import rle_to_mask

    doc = json.loads(coco_path.read_text())
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(rle_to_mask(ann["segmentation"]))
    hits = []
    for image, frame in zip(doc["images"], frames, strict=False):
        found = by_image.get(image["id"], [])
        hw = frame.masks.shape[1:]
        stack = np.stack(found) if found else np.zeros((0, *hw), dtype=bool)
        hits.append(recall_at(stack, frame.masks))
    all_hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    return (float(all_hits.mean()) if all_hits.size else 0.0), int(all_hits.size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segfast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

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

    bench_commands.add_parsers(sub)

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
    add_backend_args(p, backend=False)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument(
        "--topic", help="image topic (sensor_msgs/Image or CompressedImage; default: the only one)"
    )
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--every", type=int, default=1, help="process every N-th frame (default 1)")
    pick.add_argument(
        "--rate", type=float, help="process at most HZ frames per second of bag time"
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="grid",
        help="SegEvery strategy (object_aware needs --detector, except with the demo model)",
    )
    p.add_argument(
        "--detector",
        help="object-discovery detector ONNX (YOLOv8 output layout; default with the demo "
        "model: its own)",
    )
    p.add_argument(
        "--segevery-rate",
        type=float,
        help="SegEvery on at most HZ processed frames per second of bag time (default: every "
        "processed frame; 0: never, only the encoder and --prompts)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="SegEvery strategy option, e.g. points_per_side=16 (repeatable)",
    )
    p.add_argument("--prompts", help="YAML file of scripted SegAny calls (points/boxes at times)")
    p.add_argument("--copy-input", action="store_true", help="copy all input topics through")
    p.add_argument("--overlay-topic", action="store_true", help="also write <ns>/overlay images")
    p.add_argument("--namespace", default="/segfast", help="output topic prefix (the node's)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--coco", help="write COCO results JSON (RLE masks) here")
    p.add_argument("--overlay-video", help="write an mp4 of the overlays here")
    p.add_argument("--contact-sheet", help="write a PNG contact sheet of overlays here")
    p.add_argument("--json", help="write the summary (counts, per-stage timings) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_replay, backend="onnxruntime")

    bench_commands.add_replay_parser(sub)

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
    p.set_defaults(func=cmd_demo)

    from .export.tensorrt_build import add_build_engine_parser

    add_build_engine_parser(sub)
    return parser


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
