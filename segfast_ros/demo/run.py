"""The commands that segment a whole bag: ``segfast demo`` and ``segfast replay``.

``segfast demo`` is the main job on a fresh machine: it generates a sample bag, replays it with
the model :func:`~.model_choice.demo_model` picks, and scores the result against the
generator's ground truth. ``segfast replay`` runs a recorded bag through the same
:func:`~segfast_ros.replay.replay`; it lives here, not in ``replay/``, because without a model
option it runs the shipped demo model (:func:`~.model_choice.replay_model`), and ``replay/``
does not know about the demo.

Heavy imports (onnxruntime, the replay's bag reader) happen inside the commands, so
``segfast --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..model_args import make_backend, strategy_options
from .model_choice import demo_model, replay_model, segevery_for

if TYPE_CHECKING:
    from ..replay import ReplayOptions
    from ..runtime.backend import Backend
    from ..runtime.predictor import Predictor
    from ..segevery.base import SegEvery


def demo_command(args: argparse.Namespace) -> int:
    """``segfast demo``: a generated bag, replayed with the picked model; exit 0 when complete,
    3 otherwise."""
    import shutil

    from ..bench.scenes import generate_sequence
    from ..replay import ReplayOptions, replay
    from ..replay.bags import write_image_bag
    from ..runtime.predictor import Predictor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = generate_sequence(args.seed, args.frames, (args.height, args.width))
    bag = out / "sample_bag"
    shutil.rmtree(bag, ignore_errors=True)
    write_image_bag(bag, (f.image for f in frames))
    print(
        f"1/3 generated {len(frames)} frames ({args.width}x{args.height}, seed {args.seed}): {bag}"
    )

    choice = demo_model(args, frames[0].image, out)
    print(f"2/3 model: {choice.label}")
    backend = make_backend(args, args.precision, model_dir=choice.onnx_dir)
    segevery, settings, source = segevery_for(
        choice,
        args.mode,
        choice.detector,
        detector_source="--detector" if args.detector else "found in models/",
    )
    options = ReplayOptions(
        overwrite=True,
        coco=out / "coco.json",
        contact_sheet=out / "contact_sheet.png",
        progress=sys.stderr.isatty(),
        model=f"{graph_files(backend)}: {choice.label}",
        segevery_settings=settings,
        segevery_settings_source=source,
    )
    predictor = Predictor(backend)
    summary = replay(bag, out / "segmented_bag", predictor, segevery, options)
    print("3/3 replayed:")
    print(summary.format())
    recall, truth = _recall(out / "coco.json", frames)
    print(
        f"demo: {summary.processed} frames, {summary.instances} instances; {recall:.2f} of the "
        f"{truth} generated objects found (mask IoU >= 0.5 with the generator's ground truth)"
    )
    print(f"demo: look at {out / 'contact_sheet.png'}; results in {out / 'coco.json'}")
    return 0 if summary.complete else 3


@dataclass
class PreparedReplay:
    """What :func:`~segfast_ros.replay.replay` runs a bag with, as ``segfast replay``'s flags
    ask: the model (loaded), the SegEvery strategy and the options."""

    predictor: Predictor
    segevery: SegEvery
    options: ReplayOptions


def prepare_replay(args: argparse.Namespace) -> PreparedReplay:
    """The model, strategy and options of ``segfast replay``'s flags (also each
    ``segfast replay-many`` worker's, so that both write the same output for a bag).

    Without a model option the shipped demo model runs (as the node's ``model_dir:=demo``),
    with its SegEvery settings and detector; the summary's model line says so.

    Raises:
        ValueError: invalid options (the message names the flag).
        FileNotFoundError: a missing model, detector or prompts file.
    """
    from ..runtime.predictor import Predictor

    choice = replay_model(args)
    detector = args.detector or (choice.detector if choice else None)
    options, overrides = replay_flags(args)
    segevery, settings, source = segevery_for(
        choice,
        args.mode,
        detector,
        overrides=overrides,
        detector_source="--detector" if args.detector else "the demo model's",
    )
    options.segevery_settings, options.segevery_settings_source = settings, source
    if choice is not None:
        backend = make_backend(args, args.precision, model_dir=choice.onnx_dir)
        options.model = f"{graph_files(backend)}: {choice.label}"
    else:
        backend = make_backend(args, args.precision)
        given = [
            f"--{k.replace('_', '-')} {v}"
            for k in ("model", "checkpoint", "onnx_dir")
            if (v := getattr(args, k))
        ]
        options.model = f"{graph_files(backend)} ({', '.join(given)})"
    return PreparedReplay(Predictor(backend), segevery, options)


def replay_command(args: argparse.Namespace) -> int:
    """``segfast replay``: exit 0 when complete, 3 on a corrupt input part-way, 130 on Ctrl-C."""
    import json

    from ..replay import replay

    run = prepare_replay(args)
    summary = replay(args.input, args.output, run.predictor, run.segevery, run.options)
    print(summary.format())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary.to_json(), indent=2))
    if summary.error:
        print(f"segfast replay: error: {summary.error}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 3 if summary.error else 0


def replay_flags(args: argparse.Namespace) -> tuple[ReplayOptions, list[tuple[str, object]]]:
    """``segfast replay``'s flags as checked :class:`~segfast_ros.replay.ReplayOptions`, and
    the ``--set`` pairs left for the SegEvery strategy; no model is loaded (``replay-many``
    checks its flags with it before it writes anything). The model label and the SegEvery
    settings are added by :func:`prepare_replay`.

    Raises:
        ValueError: an invalid flag or setting (named); PromptFileError for the prompts file.
        FileNotFoundError: the prompts file is missing.
    """
    from ..replay.options import split_depth, split_tracking

    tracking, overrides = split_tracking(strategy_options(args.set))
    depth, tolerance, overrides = split_depth(overrides)
    options = _replay_options(args)
    options.tracking = tracking
    options.depth, options.sync_tolerance_s = depth, tolerance
    options.check()
    return options, overrides


def _replay_options(args: argparse.Namespace) -> ReplayOptions:
    """``segfast replay``'s flags as :class:`~segfast_ros.replay.ReplayOptions`."""
    from ..replay import ReplayOptions, load_prompts

    return ReplayOptions(
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
        depth_topic=args.depth_topic,
        camera_info_topic=args.camera_info_topic,
        depth_info_topic=args.depth_info_topic,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def graph_files(backend: Backend) -> str:
    """``DIR/encoder.X.onnx + decoder.Y.onnx`` of an ONNX Runtime backend (its class else)."""
    encoder = getattr(backend, "encoder_path", None)
    decoder = getattr(backend, "decoder_path", None)
    if encoder is None or decoder is None:
        return type(backend).__name__
    return f"{Path(encoder)} + {Path(decoder).name}"


def _recall(coco_path: Path, frames: Sequence) -> tuple[float, int]:
    """Fraction of the generated objects some written mask matches (IoU >= 0.5), and how many
    objects there were."""
    import json

    from ..masks import rle_to_mask
    from .metrics import recall_at

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
