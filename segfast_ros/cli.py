"""The ``segfast`` command: segment, export, quantization report and benchmarks.

Heavy imports (torch, onnxruntime) happen inside the subcommands that need them, so
``segfast --help`` is instant and the onnxruntime paths never load torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .runtime.backend import Backend
from .runtime.images import list_images, read_rgb

if TYPE_CHECKING:
    from .segevery.base import SegEvery

log = logging.getLogger("segfast")

PRECISIONS = ("fp32", "fp16", "int8")
#: INT8 targets of `encoder.int8.onnx` (TensorRT's file comes from `segfast build-engine`).
INT8_CPU_TARGETS = ("cpu", "cpu-vnni", "cpu-avx2", "arm", "auto")
QUANT_TARGET_HELP = (
    "int8 types for the CPU that will run encoder.int8.onnx (ONNX Runtime): cpu = right on "
    "every CPU (7-bit weights; the default: build on a workstation, run on a robot or "
    "server); cpu-vnni = x86 with AVX-512 VNNI/AVX-VNNI or ARM, 8-bit weights, wrong on x86 "
    "without VNNI; cpu-avx2 = x86 without VNNI, uint8 weights, slower; arm = ARM64 (Jetson "
    "CPU); auto = this machine's kind. TensorRT: segfast build-engine --precision int8"
)
#: SegEvery strategies the replay commands take (`--mode`).
MODES = ("grid", "hierarchical", "object_aware")
# The registry itself needs torch; an unknown name gets the full list from build_sam.
MODEL_HELP = "registry name: mobile_sam, tinysam, sam_vit_b, sam_vit_l, sam_vit_h, tinyvit_s256"


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


def ensure_onnx(
    onnx_dir: Path,
    precision: str,
    *,
    model: str | None,
    checkpoint: str | None,
    calibration: Sequence[str | Path] = (),
    allow_random: bool = False,
) -> None:
    """Export ``model`` into ``onnx_dir`` if the graphs for ``precision`` are not there yet.

    Needs torch only when an export is actually required. Without a checkpoint the weights are
    random, which only a benchmark may accept (``allow_random``).
    """
    from .runtime.onnx_backend import onnx_file_names

    if all((onnx_dir / f).is_file() for f in onnx_file_names(precision)):
        return
    if model is None:
        raise FileNotFoundError(
            f"no {precision} ONNX graphs in {onnx_dir}; pass --model (and --checkpoint) to export "
            "them, or run `segfast export` first"
        )
    _check_weights(checkpoint, allow_random)
    from .export import export_model
    from .modeling import build_sam

    log.info("exporting %s (%s) to %s", model, precision, onnx_dir)
    sam = build_sam(model, checkpoint)
    export_model(
        sam, onnx_dir, precisions=(precision,), calibration_images=list(calibration) or None
    )


def _check_weights(checkpoint: str | None, allow_random: bool) -> None:
    if checkpoint is None:
        if not allow_random:
            raise ValueError(
                "no --checkpoint: random weights give meaningless masks; pass the official file "
                "(see models/README.md) or --onnx-dir with exported graphs"
            )
        log.warning("no --checkpoint: random weights (timings only)")


def default_onnx_dir(model: str | None, checkpoint: str | None) -> Path:
    """Where graphs exported on demand go: one folder per model and checkpoint, so graphs of
    another checkpoint (or of random weights) are never picked up by mistake."""
    weights = Path(checkpoint).stem if checkpoint else "random"
    return Path("out/onnx") / f"{model or 'model'}-{weights}"


def make_backend(
    args: argparse.Namespace, precision: str, *, allow_random: bool = False
) -> Backend:
    """The backend a subcommand asked for (``--backend``, ``--onnx-dir``, ``--threads``)."""
    if args.backend == "torch":
        if precision != "fp32":
            raise ValueError(f"the torch backend runs fp32 only, not {precision}")
        _check_weights(args.checkpoint, allow_random)
        import torch

        from .runtime.torch_backend import TorchBackend

        if args.threads:
            torch.set_num_threads(args.threads)
        return TorchBackend.from_registry(args.model, args.checkpoint)
    onnx_dir = onnx_dir_for(args, precision, allow_random=allow_random)
    if args.backend == "tensorrt":
        from .runtime import load_backend

        # Engines are built (or taken from <onnx_dir>/engines) on the first use.
        return load_backend("tensorrt", onnx_dir, precision=precision)
    from .runtime.onnx_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_dir(
        onnx_dir, precision, providers=args.providers, intra_op_threads=args.threads
    )


def onnx_dir_for(args: argparse.Namespace, precision: str, *, allow_random: bool) -> Path:
    """``--onnx-dir`` (or the default folder), with ``precision``'s graphs exported if missing."""
    onnx_dir = Path(args.onnx_dir or default_onnx_dir(args.model, args.checkpoint))
    ensure_onnx(
        onnx_dir,
        precision,
        model=args.model,
        checkpoint=args.checkpoint,
        calibration=_images(args.calib) if getattr(args, "calib", None) else [],
        allow_random=allow_random,
    )
    return onnx_dir


def bench_image(
    args: argparse.Namespace, tmp: str, hw: tuple[int, int] | None = None
) -> np.ndarray:
    """The benchmark frame: ``--image``, or a generated scene (of size ``hw``) written to ``tmp``.

    Without ``--calib``, an INT8 export calibrates on that same frame.
    """
    from .bench.latency import synthetic_scene

    if getattr(args, "image", None):
        image = read_rgb(args.image)
        if args.calib is None:
            args.calib = [args.image]
        return image
    image = synthetic_scene() if hw is None else synthetic_scene(hw)
    if args.calib is None:
        import cv2

        args.calib = [str(Path(tmp) / "scene.png")]
        cv2.imwrite(args.calib[0], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return image


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
        calibration_images=_images(args.calib) if args.calib else None,
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


def _images(items: Sequence[str]) -> list[Path]:
    """``--images``/``--calib`` values: one folder, or image files."""
    if len(items) == 1 and Path(items[0]).is_dir():
        return list_images(items[0])
    return list_images(items)


def cmd_quant_report(args: argparse.Namespace) -> int:
    from .export import format_int8_report, int8_report_from_dir

    images = _images(args.images)
    onnx_dir = Path(args.onnx_dir or default_onnx_dir(args.model, args.checkpoint))
    for precision in ("fp32",) if args.quant_targets else ("fp32", "int8"):
        ensure_onnx(
            onnx_dir,
            precision,
            model=args.model,
            checkpoint=args.checkpoint,
            calibration=_images(args.calib) if args.calib else images,
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
                    _images(args.calib) if args.calib else images,
                    target=target,  # type: ignore[arg-type]
                    validate=False,
                )
            names.append(path.name)
    report = int8_report_from_dir(
        onnx_dir, images, names, threads=args.threads, json_path=args.json
    )
    print(format_int8_report(report))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.latency import bench_backend, format_table, write_json

    if args.image:
        image = read_rgb(args.image)
    else:
        import cv2

        image = np.random.default_rng(0).integers(0, 256, (770, 769, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (0, 0), 3)  # some spatial structure for calibration
        if args.calib is None:
            args.calib = [Path("out") / "bench_image.png"]
            Path(args.calib[0]).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.calib[0]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    rows = []
    for backend_name in args.backends:
        precisions = ["fp32"] if backend_name == "torch" else args.precisions
        for precision in precisions:
            args.backend = backend_name
            backend = make_backend(args, precision, allow_random=True)
            rows += bench_backend(
                backend, image, precision=precision, runs=args.runs, decoder_runs=args.decoder_runs
            )
    print(format_table(rows))
    if args.json:
        write_json(
            rows,
            args.json,
            model=args.model,
            threads=args.threads,
            image_hw=list(image.shape[:2]),
            cpu_count=os.cpu_count(),
        )
        print(f"wrote {args.json}")
    return 0


def cmd_bench_segevery(args: argparse.Namespace) -> int:
    """Every SegEvery strategy on one embedding (the encoder runs once): table, notes, JSON."""
    import tempfile
    import time

    from .bench.latency import bench_segevery, format_segevery_table, segevery_notes, write_json
    from .runtime.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="segfast_bench_segevery_") as tmp:
        image = bench_image(args, tmp)
        predictor = Predictor(make_backend(args, args.precision, allow_random=True))
        start = time.perf_counter()
        predictor.set_image(image)  # the only encoder run: every strategy shares it
        encoder_ms = 1e3 * (time.perf_counter() - start)
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
    print(format_segevery_table(rows))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        write_json(
            rows,
            args.json,
            model=args.model,
            checkpoint=args.checkpoint,
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            image=args.image or "generated (bench.synthetic_scene)",
            image_hw=[h, w],
            encoder_ms=encoder_ms,
            points_per_side=args.points_per_side,
            detector=args.detector or "synthetic fixed boxes",
            cpu_count=os.cpu_count(),
            notes=notes,
        )
        print(f"wrote {args.json}")
    return 0


def cmd_bench_node(args: argparse.Namespace) -> int:
    """The node against the library: ~/segment vs predict, frame-to-embedding vs set_image."""
    import tempfile

    from .bench.latency import format_table, write_json
    from .bench.node import bench_node

    with tempfile.TemporaryDirectory(prefix="segfast_bench_node_") as tmp:
        image = bench_image(args, tmp)
        onnx_dir = onnx_dir_for(args, args.precision, allow_random=True)
    if args.concurrent:
        return _bench_node_concurrent(args, onnx_dir, image)
    result = bench_node(
        onnx_dir,
        args.precision,
        image,
        calls=args.calls,
        frames=args.frames,
        providers=tuple(args.providers or ("cpu",)),
        threads=args.threads,
    )
    h, w = image.shape[:2]
    print(
        f"{onnx_dir} {args.precision}, image {w}x{h} (WxH), threads {args.threads or 'all'}, "
        f"{args.calls} service calls, {args.frames} frames"
    )
    print(format_table(result.rows))
    notes = result.notes()
    for note in notes:
        print(f"note: {note}")
    if args.json:
        write_json(
            result.rows,
            args.json,
            onnx_dir=str(onnx_dir),
            precision=args.precision,
            image_hw=[h, w],
            threads=args.threads,
            cpu_count=os.cpu_count(),
            service_overhead_ms=result.service_overhead_ms,
            node_overhead_pct=result.node_overhead_pct,
            notes=notes,
        )
        print(f"wrote {args.json}")
    return 0


def _bench_node_concurrent(args: argparse.Namespace, onnx_dir: Path, image: np.ndarray) -> int:
    """``segfast bench-node --concurrent N ...``: the service under N calls at once."""
    from .bench.latency import write_json
    from .bench.node import bench_concurrent, format_concurrency

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
    h, w = image.shape[:2]
    print(
        f"{onnx_dir} {args.precision}, image {w}x{h} (WxH), threads {args.threads or 'all'}, "
        f"segment.queue_depth {args.queue_depth}, segment.workers {args.workers}; one point, "
        "3 masks per call; latency from sending the calls to each answer"
    )
    print(format_concurrency(rows))
    if args.json:
        write_json(
            rows,
            args.json,
            onnx_dir=str(onnx_dir),
            precision=args.precision,
            image_hw=[h, w],
            threads=args.threads,
            queue_depth=args.queue_depth,
            workers=args.workers,
            cpu_count=os.cpu_count(),
        )
        print(f"wrote {args.json}")
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
        overrides=_strategy_options(args.set),
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


def cmd_bench_replay(args: argparse.Namespace) -> int:
    """Replay throughput vs the encoder-bound limit: raw and JPEG bags, SegEvery off and on."""
    import json
    import tempfile

    from .bench.latency import synthetic_box_detector, synthetic_scene
    from .bench.replay import bench_replay, format_replay_table, rows_json
    from .runtime.predictor import Predictor
    from .segevery.registry import build_segevery

    hw = (args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="segfast_bench_replay_") as tmp:
        first = bench_image(args, tmp, hw)  # also the int8 calibration frame without --calib
        images = [first] + [synthetic_scene(hw, seed=i) for i in range(1, args.frames)]
        predictor = Predictor(make_backend(args, args.precision, allow_random=True))
        if args.mode == "object_aware":
            detector = args.detector or synthetic_box_detector(Path(tmp), hw, args.boxes)
            segevery = build_segevery("object_aware", detector=str(detector))
        else:
            segevery = build_segevery(args.mode, **dict(_strategy_options(args.set)))
        rows = bench_replay(predictor, segevery, images, Path(tmp))
    print(
        f"{args.model or args.onnx_dir} {args.precision}, {args.frames} frames {args.width}x"
        f"{args.height}, threads {args.threads or 'all'}, SegEvery {args.mode}"
    )
    print(format_replay_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "model": args.model or args.onnx_dir,
            "precision": args.precision,
            "threads": args.threads,
            "frames": args.frames,
            "image_hw": list(hw),
            "mode": args.mode,
            "cpu_count": os.cpu_count(),
            "rows": rows_json(rows),
        }
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on a fresh machine: a generated bag, replayed with the demo model."""
    import shutil

    from .demo.scenes import generate_sequence
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


def _strategy_options(items: Sequence[str] | None) -> list[tuple[str, object]]:
    """``--set key=value`` pairs, values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    pairs = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. points_per_side=16")
        pairs.append((key.strip(), yaml.safe_load(value)))
    return pairs


def _random_weights(args: argparse.Namespace) -> bool | None:
    """True when the weights are known to be random: no checkpoint (the default ONNX folder is
    then ``MODEL-random``) or one named so, like the parity fixture's. None otherwise: a file
    name cannot prove that weights are trained, so the benchmark's rows decide."""
    if args.checkpoint is not None:
        named = Path(args.checkpoint).stem
    else:
        named = Path(args.onnx_dir).name if args.onnx_dir else "random"
    return True if "random" in named.lower() else None


def _add_backend_args(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--checkpoint", help="official checkpoint file (e.g. models/mobile_sam.pt)")
    if backend:
        p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument(
        "--onnx-dir",
        help="folder of exported graphs (exported there if missing; default "
        "out/onnx/MODEL-CHECKPOINT)",
    )
    p.add_argument(
        "--providers", nargs="+", default=None, help="onnxruntime providers: cpu, cuda, tensorrt"
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segfast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="masks for point/box prompts on one image")
    _add_backend_args(p)
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
    _add_backend_args(p, backend=False)
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

    p = sub.add_parser("bench", help="encoder/decoder latency table per backend and precision")
    _add_backend_args(p, backend=False)
    p.add_argument("--image", help="image to time on (default: a random 769x770 image)")
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
    _add_backend_args(p)
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
    _add_backend_args(p, backend=False)
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

    from .bench import memory as bench_memory  # no ROS import until a case runs

    p = sub.add_parser(
        "bench-memory",
        help="peak RSS and time of the node on one large frame: SegEvery and ~/segment",
    )
    bench_memory.add_arguments(p)
    p.set_defaults(func=bench_memory.run_cli)

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
    _add_backend_args(p, backend=False)
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

    p = sub.add_parser(
        "bench-replay",
        help="replay throughput vs the encoder-bound limit (raw/JPEG, SegEvery off/on)",
    )
    _add_backend_args(p, backend=False)
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
    if args.command == "bench" and args.calib is None and args.image:
        args.calib = [args.image]
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"segfast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
