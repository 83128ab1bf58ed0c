"""What a demo training run is given: its settings, and generated scenes as training batches.

Scenes come from :func:`~segfast_ros.bench.scenes.generate_scene`, already at the segmenter's
input size (the long side is 256 px, so no resize), and every batch carries them twice: in the
segmenter's input frame with instance masks at the loss size, and letterboxed for the detector
exactly as :class:`~segfast_ros.segevery.detector.ObjectDetector` letterboxes at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..bench.scenes import Scene, generate_scene
from ..runtime.transforms import prepare_image
from ..segevery.detector import boxes_to_letterbox, letterbox_geometry, letterbox_image
from ..spec import ModelInfo

#: Registry name of the demo segmenter.
DEMO_MODEL = "demo_tinyvit"
#: Side of the detector's (square, static) input and its stride.
DETECTOR_IMGSZ = 256
DETECTOR_STRIDE = 8
#: Training-scene sizes (H, W); the long side is the model's input size, so no resize.
TRAIN_SHAPES: tuple[tuple[int, int], ...] = ((256, 256), (192, 256), (256, 192))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result of a training run.

    Attributes:
        seed: seeds the scene stream (``numpy`` SeedSequence ``(seed, 1)``) and torch.
        steps: optimizer steps (both models step once per batch).
        batch_size: scenes per step.
        prompts_per_image: prompt sets per scene and step.
        rounds: prompt rounds per prompt set (1 = no correction points).
        background_prompt_rate: fraction of prompt sets that are a background point.
        box_prompt_rate: fraction of the object prompt sets that are a box (else a point).
        lr: peak AdamW learning rate (cosine decay after a linear warm-up).
        warmup_steps: linear warm-up length.
        weight_decay: AdamW weight decay.
        detector_lr: peak learning rate of the detector.
        loss_size: side at which mask losses are computed (the input frame, downsampled).
        focal_weight: weight of the focal loss next to the dice loss. SAM uses 20; from
            scratch, 20 made the masks collapse to empty for the first hundreds of steps
            (round-0 IoU 0.03 at step 50 vs 0.10 with 1, same data and seed).
    """

    seed: int = 0
    steps: int = 3200
    batch_size: int = 6
    prompts_per_image: int = 12
    rounds: int = 2
    background_prompt_rate: float = 0.15
    box_prompt_rate: float = 0.5
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    detector_lr: float = 2e-3
    loss_size: int = 64
    focal_weight: float = 1.0


@dataclass
class Batch:
    """A training batch in the model's input frame (``S x S``, bottom/right padding).

    Attributes:
        images: ``(B, 3, S, S)`` float32 normalised encoder input.
        targets: per image, ``(N_i, L, L)`` float32 instance masks at the loss size
            (area-averaged, so edge pixels are fractional).
        background: ``(B, L, L)`` float32 background masks at the loss size.
        boxes: per image, ``(N_i, 4)`` float32 XYXY boxes in input pixels.
        detector_images: ``(B, 3, D, D)`` float32 letterboxed RGB in 0..1.
        detector_boxes: per image, ``(N_i, 4)`` float32 XYXY boxes in letterbox pixels.
    """

    images: torch.Tensor
    targets: list[torch.Tensor]
    background: torch.Tensor
    boxes: list[torch.Tensor]
    detector_images: torch.Tensor
    detector_boxes: list[torch.Tensor]


def _downsample(masks: np.ndarray, size: int, image_size: int) -> np.ndarray:
    """``(N, h, w)`` bool masks (the input frame's valid part) to ``(N, L, L)`` area averages."""
    n, h, w = masks.shape
    padded = np.zeros((n, image_size, image_size), dtype=np.float32)
    padded[:, :h, :w] = masks
    f = image_size // size
    return padded.reshape(n, size, f, size, f).mean(axis=(2, 4))


def make_batch(scenes: Sequence[Scene], image_size: int, loss_size: int) -> Batch:
    """Turn scenes whose long side is ``image_size`` into a :class:`Batch`."""
    info = ModelInfo(name=DEMO_MODEL, image_size=image_size)
    images, targets, backgrounds, boxes, det_images, det_boxes = [], [], [], [], [], []
    for scene in scenes:
        h, w = scene.image.shape[:2]
        if max(h, w) != image_size:
            raise ValueError(
                f"training scenes must have a long side of {image_size} px, got {h}x{w}"
            )
        images.append(prepare_image(scene.image, info)[0][0])
        targets.append(torch.from_numpy(_downsample(scene.masks, loss_size, image_size)))
        backgrounds.append(_downsample(scene.background[None], loss_size, image_size)[0])
        boxes.append(torch.from_numpy(scene.boxes.astype(np.float32)))
        geometry = letterbox_geometry((h, w), (DETECTOR_IMGSZ, DETECTOR_IMGSZ), rect=False)
        det_images.append(letterbox_image(scene.image, geometry).transpose(2, 0, 1) / 255.0)
        det_boxes.append(
            torch.from_numpy(boxes_to_letterbox(scene.boxes, geometry).astype(np.float32))
        )
    return Batch(
        images=torch.from_numpy(np.stack(images)),
        targets=targets,
        background=torch.from_numpy(np.stack(backgrounds)),
        boxes=boxes,
        detector_images=torch.from_numpy(np.stack(det_images).astype(np.float32)),
        detector_boxes=det_boxes,
    )


def scene_stream(seed: int):
    """Endless training scenes: sizes from :data:`TRAIN_SHAPES`, from SeedSequence (seed, 1).

    Evaluation uses integer seeds from :data:`~segfast_ros.demo.metrics.EVAL_SEED_BASE` with
    :func:`generate_scene`, a different stream, so its scenes are held out.
    """
    rng = np.random.default_rng([seed, 1])
    while True:
        hw = TRAIN_SHAPES[int(rng.integers(len(TRAIN_SHAPES)))]
        scene = generate_scene(rng, hw)
        if len(scene):
            yield scene


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at ``step``: a linear warm-up over ``warmup`` steps, then a
    cosine decay to 0.05 at ``steps`` (demo training and distillation alike)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
