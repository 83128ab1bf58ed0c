"""Pick the demo model's SegEvery settings on validation scenes.

``python -m segfast_ros.demo.evaluate --tune`` runs :func:`tune_segevery` and prints
:func:`format_tuning`; its picks are
:data:`~segfast_ros.segevery.presets.DEMO_SEGEVERY_PARAMS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.predictor import Predictor
from ..segevery.presets import DEMO_SEGEVERY_PARAMS
from ..segevery.registry import build_segevery
from .metrics import DEFAULT_MODEL_DIR, VALIDATION_SEED_BASE, eval_scenes, recall_at, result_masks

#: Settings :func:`tune_segevery` tries, strictest first: (pred_iou_thresh,
#: stability_score_thresh) for grid and hierarchical (one pair for both, so that their recall
#: stays comparable), and the object-aware detector's conf.
TUNE_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (0.88, 0.95),
    (0.7, 0.9),
    (0.5, 0.8),
    (0.3, 0.7),
)
TUNE_CONFS: tuple[float, ...] = (0.4, 0.25, 0.1)


def tune_segevery(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    num_scenes: int = 8,
    hw: tuple[int, int] = (256, 256),
    thresholds: Sequence[tuple[float, float]] = TUNE_THRESHOLDS,
    confs: Sequence[float] = TUNE_CONFS,
    threads: int = 2,
) -> dict[str, Any]:
    """Pick the demo's SegEvery settings on validation scenes (never the evaluation ones).

    Grid recall and precision at IoU 0.5 are measured for every threshold pair, object-aware
    ones for every detector conf, on the scenes of :data:`VALIDATION_SEED_BASE`. The pick is
    the best F1: recall alone would always pick the loosest setting, which returns several
    duplicate or background masks per object. A tie goes to the setting listed first.

    Returns:
        ``{"scenes", "grid": [{"pred_iou_thresh", "stability_score_thresh", "recall",
        "precision", "f1", "instances"}...], "object_aware": [{"conf", ...}...], "params"}``
        where ``params`` has the shape of :data:`DEMO_SEGEVERY_PARAMS`.

    Raises:
        FileNotFoundError: a model file is missing.
        ValueError: no thresholds or no confs.
    """
    if not thresholds or not confs:
        raise ValueError("tune_segevery needs at least one threshold pair and one conf")
    model_dir = Path(model_dir)
    backend = OnnxRuntimeBackend.from_dir(model_dir, "fp32", intra_op_threads=threads)
    predictor = Predictor(backend)
    snap = DEMO_SEGEVERY_PARAMS["object_aware"]["border_snap_px"]
    grids = [
        build_segevery("grid", pred_iou_thresh=p, stability_score_thresh=q) for p, q in thresholds
    ]
    detector = str(model_dir / "detector.onnx")
    aware = [
        build_segevery("object_aware", detector=detector, conf=c, border_snap_px=snap)
        for c in confs
    ]
    matched: list[list[bool]] = [[] for _ in grids + aware]
    correct: list[list[bool]] = [[] for _ in grids + aware]
    scenes = eval_scenes(num_scenes, hw, VALIDATION_SEED_BASE)
    for scene in scenes:
        predictor.set_image(scene.image)
        for i, strategy in enumerate(grids + aware):
            found = result_masks(strategy(predictor, scene.image))
            matched[i].extend(recall_at(found, scene.masks).tolist())
            correct[i].extend(recall_at(scene.masks, found).tolist())
    n = len(scenes)
    rows = []
    for m, c in zip(matched, correct, strict=True):
        recall = float(np.mean(m)) if m else 0.0
        precision = float(np.mean(c)) if c else 0.0
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        rows.append({"recall": recall, "precision": precision, "f1": f1, "instances": len(c) / n})
    grid_rows = [
        {"pred_iou_thresh": p, "stability_score_thresh": q, **row}
        for (p, q), row in zip(thresholds, rows[: len(grids)], strict=True)
    ]
    aware_rows = [{"conf": c, **row} for c, row in zip(confs, rows[len(grids) :], strict=True)]
    best_grid = max(grid_rows, key=lambda row: row["f1"])  # first of equals
    best_conf = max(aware_rows, key=lambda row: row["f1"])["conf"]
    pair = {k: best_grid[k] for k in ("pred_iou_thresh", "stability_score_thresh")}
    return {
        "scenes": n,
        "validation_seed_base": VALIDATION_SEED_BASE,
        "grid": grid_rows,
        "object_aware": aware_rows,
        "params": {
            "grid": dict(pair),
            "hierarchical": dict(pair),
            "object_aware": {"conf": best_conf, "border_snap_px": snap},
        },
    }


def _quality(row: Mapping[str, float]) -> str:
    return (
        f"recall {row['recall']:.3f}, precision {row['precision']:.3f}, F1 {row['f1']:.3f}, "
        f"{row['instances']:.1f} instances/scene"
    )


def format_tuning(tuning: Mapping[str, Any]) -> str:
    """:func:`tune_segevery`'s result as a plain-text table."""
    lines = [
        f"SegEvery settings on {tuning['scenes']} validation scenes (seeds "
        f"{tuning['validation_seed_base']}+), at IoU 0.5 (picked by F1):"
    ]
    for row in tuning["grid"]:
        lines.append(
            f"  grid pred_iou {row['pred_iou_thresh']:.2f} stability "
            f"{row['stability_score_thresh']:.2f}: {_quality(row)}"
        )
    for row in tuning["object_aware"]:
        lines.append(f"  object_aware conf {row['conf']:.2f}: {_quality(row)}")
    lines.append(f"  picked: {json.dumps(tuning['params'])}")
    return "\n".join(lines)
