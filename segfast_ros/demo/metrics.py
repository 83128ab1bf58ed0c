"""What the demo model's evaluation and its SegEvery tuning share: where the shipped model is,
the scene sets they measure on, and the measures themselves (mask IoU, recall at an IoU).

Both sets are generated (:func:`~segfast_ros.bench.scenes.generate_scene`) from integer seeds
that training never draws (it uses the SeedSequence stream of
:func:`~segfast_ros.demo.training_data.scene_stream`): the held-out evaluation scenes from
:data:`EVAL_SEED_BASE`, the validation scenes the settings are picked on from
:data:`VALIDATION_SEED_BASE`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..bench.scenes import Scene, generate_scene
from ..masks import rle_to_mask
from ..runtime.predictor import Predictor
from ..segevery.base import SegEveryResult

#: First seed of the evaluation scenes.
EVAL_SEED_BASE = 1_000_000
#: First seed of the validation scenes, on which :func:`~segfast_ros.demo.tune.tune_segevery`
#: picks the SegEvery settings; neither training nor the evaluation sees them.
VALIDATION_SEED_BASE = 2_000_000
#: Default folder of the shipped demo model.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"


def add_eval_arguments(
    p: argparse.ArgumentParser, *, seed_base: int, held_out: str, settings: str, example: str
) -> None:
    """The flags every held-out evaluation of the demo model shares: ``--model-dir``,
    ``--seed-base``, ``--precision``, ``--threads``, ``--set`` and ``--json``.

    Args:
        seed_base: the evaluation's first seed (its default).
        held_out: what its seeds are kept apart from, for the help text.
        settings: the settings type ``--set`` fills, e.g. ``"TrackingSettings"``.
        example: a ``FIELD=VALUE`` example for the help text.
    """
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="the demo model's folder")
    p.add_argument(
        "--seed-base",
        type=int,
        default=seed_base,
        help=f"first seed (default {seed_base}, held out from {held_out})",
    )
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"a {settings} field, e.g. {example} (as the node's parameters; repeatable)",
    )
    p.add_argument("--json", help="write the report here")


def settings_values(pairs: Sequence[str], prefix: str, example: str) -> dict[str, Any]:
    """``--set FIELD=VALUE`` strings as a settings dict: values parsed as YAML scalars, the
    node's ``<prefix>.`` optional before a field; ``example`` is shown for a malformed pair.

    Raises:
        ValueError: a pair without ``=`` or a field name.
    """
    from ..model_args import strategy_options

    return {k.removeprefix(f"{prefix}."): v for k, v in strategy_options(pairs, example)}


def eval_scenes(
    count: int, hw: tuple[int, int] = (256, 256), seed_base: int = EVAL_SEED_BASE
) -> list[Scene]:
    """The first ``count`` non-empty scenes of seeds ``seed_base, seed_base + 1, ...``.

    The default is the held-out evaluation set; :data:`VALIDATION_SEED_BASE` gives the
    validation set.
    """
    scenes = []
    seed = seed_base
    while len(scenes) < count:
        scene = generate_scene(seed, hw)
        seed += 1
        if len(scene):
            scenes.append(scene)
    return scenes


def interior_points(masks: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float64 (X, Y): each mask's pixel farthest from its edge.

    The distance transform runs on the mask padded by one background pixel, so the image
    border counts as an edge.
    """
    points = np.zeros((len(masks), 2), dtype=np.float64)
    for i, mask in enumerate(masks):
        padded = np.pad(mask.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points[i] = (x, y)
    return points


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, H, W)`` and ``(M, H, W)`` bool masks: ``(N, M)`` float64."""
    fa = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float32)
    fb = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def prompt_ious(predictor: Predictor, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance IoU of the point-prompt and box-prompt masks (image already set)."""
    n = len(scene)
    points = interior_points(scene.masks)[:, None]  # (N, 1, 2)
    pred = predictor.predict(points, np.ones((n, 1)), multimask_output=True)
    best = np.argmax(pred.scores, axis=1)
    point_masks = pred.masks[np.arange(n), best]
    boxes = predictor.predict(box=scene.boxes, multimask_output=False).masks[:, 0]
    point_iou = np.diag(iou_matrix(point_masks, scene.masks))
    box_iou = np.diag(iou_matrix(boxes, scene.masks))
    return point_iou, box_iou


def recall_at(found: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(N,)`` bool: ground-truth mask ``i`` is matched by a found mask with IoU >= threshold."""
    if len(found) == 0:
        return np.zeros(len(truth), dtype=bool)
    return iou_matrix(truth, found).max(axis=1) >= threshold


def result_masks(result: SegEveryResult) -> np.ndarray:
    """``(N, H, W)`` bool masks of a SegEvery result's instances."""
    found = np.array([rle_to_mask(inst.rle) for inst in result.instances], dtype=bool)
    return found.reshape(-1, *result.image_hw)
