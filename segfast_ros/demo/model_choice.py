"""The model a command runs when it picks one itself, and the SegEvery settings that follow.

``segfast demo`` always picks its model (``--onnx-dir``, else official MobileSAM weights in
``models/``, else the shipped demo model); ``segfast replay`` picks the shipped demo model when
no model option is given, as the node's ``model_dir:=demo``. Whether the demo model's SegEvery
settings (:data:`~segfast_ros.segevery.presets.DEMO_SEGEVERY_PARAMS`) apply follows from that
choice (:attr:`ModelChoice.demo`), never from a printed label.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model_args import default_onnx_dir, ensure_onnx
from ..runtime.paths import DEMO_MODEL, model_candidates, resolve_model_path

if TYPE_CHECKING:
    from ..segevery.base import SegEvery


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
    return next(
        (c for c in model_candidates(DEMO_MODEL) if (c / "encoder.fp32.onnx").is_file()), None
    )


def replay_model(args: argparse.Namespace) -> ModelChoice | None:
    """The shipped demo model when no model option (``--model``, ``--checkpoint``,
    ``--onnx-dir``) is given, as the node's ``model_dir:=demo``; None otherwise.

    Raises:
        FileNotFoundError: no model option, and the demo model is not installed.
    """
    if args.model or args.checkpoint or args.onnx_dir:
        return None
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


def demo_model(args: argparse.Namespace, calib_rgb: np.ndarray, out: Path) -> ModelChoice:
    """The model ``segfast demo`` runs.

    ``--onnx-dir`` first; else official MobileSAM weights in ``models/`` (exported once to
    ONNX, calibrated on a generated frame, ``calib_rgb``, written to ``out``); else the
    project's demo model. The detector: ``--detector``, else MobileSAMv2's
    ``models/object_aware.onnx``, else the demo model's.

    Raises:
        FileNotFoundError: none of the three is there.
    """
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


def segevery_for(
    choice: ModelChoice | None,
    mode: str,
    detector: str | Path | None,
    *,
    overrides: Sequence[tuple[str, object]] = (),
    detector_source: str = "--detector",
) -> tuple[SegEvery, dict[str, Any], str]:
    """The SegEvery strategy ``mode``, the settings it was given, and where they come from.

    When ``choice`` is the shipped demo model, the demo's settings (``DEMO_SEGEVERY_PARAMS``:
    its IoU head is not calibrated for SAM's thresholds) replace the strategy's defaults;
    ``overrides`` (``--set``) win over both. ``detector`` is object_aware's.

    Raises:
        ValueError: object_aware without a detector.
    """
    from ..segevery.presets import DEMO_SEGEVERY_PARAMS
    from ..segevery.registry import build_segevery

    demo = choice is not None and choice.demo
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
