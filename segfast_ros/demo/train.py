"""Train the demo segmenter and the demo object detector on generated scenes, then export both.

One command, one seed, fixed step counts (the wall time is measured, never used to stop)::

    python -m segfast_ros.demo.train --out models/demo --seed 0

**Segmenter** (``demo_tinyvit`` in :data:`~segfast_ros.modeling.registry.MODEL_REGISTRY`: the
same TinyViT, prompt encoder and mask decoder code as MobileSAM, at 256 px with narrow dims),
trained from scratch SAM-style. Every image gets ``prompts_per_image`` prompt sets; each is a
jittered ground-truth box (SAM: noise of 10% of the box side, at most 20 px) or one point drawn
uniformly inside the object, and a fraction of them a point on the background, whose target is
the whole background (the "stuff" region SAM also segments; it is what lets hierarchical
SegEvery skip the dense points of large, confidently segmented areas). ``rounds - 1``
correction rounds follow: one more point drawn uniformly from the error region of the previous
mask (foreground where the mask missed the object, background where it spilled), with the
previous low-res logits as ``mask_input``. Losses: focal + dice on the masks (SAM weights the
focal term 20x; see :attr:`TrainConfig.focal_weight` for why not here), on the best of the
three multimask outputs for a single point (plus the single-mask output), on the single-mask
output otherwise; MSE between the IoU head and each output's actual IoU.

**Detector**: a small anchor-free CNN whose ONNX output has the YOLOv8 layout
``[1, 4 + 1, 1024]`` (cx, cy, w, h in letterbox pixels, one sigmoid "object" score per stride-8
cell), trained in the same loop on the same scenes, letterboxed exactly as
:class:`~segfast_ros.segevery.detector.ObjectDetector` does at run time. The cell holding a
box's centre must score 1 (focal loss), every other cell 0; the box is regressed (GIoU) from
that cell and its neighbours inside the box.

Exports (``out``): ``encoder.fp32.onnx``, ``encoder.int8.onnx`` (the project's QDQ
quantization, default target, calibrated on generated scenes), ``decoder.fp32.onnx``,
``detector.onnx`` and ``training.json`` (seed, steps, wall time, loss curve, int8 settings).
``--requantize`` rebuilds only ``encoder.int8.onnx`` from the fp32 encoder already in ``out``
(after a change of the quantizer's default target; no training)::

    python -m segfast_ros.demo.train --out models/demo --requantize
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..export.quantize import quantization_settings, quantize_encoder
from ..modeling.registry import build_sam
from ..modeling.sam import Sam
from ..runtime.onnx_backend import onnx_file_names
from ..runtime.transforms import prepare_image
from ..segevery.detector import boxes_to_letterbox, letterbox_geometry, letterbox_image
from ..spec import LABEL_BG, LABEL_BOX_BR, LABEL_BOX_TL, LABEL_FG, LABEL_PAD, ModelInfo
from ..bench.scenes import Scene, generate_scene

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


# ----------------------------------------------------------------------------- data


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

    Evaluation uses integer seeds from :data:`~segfast_ros.demo.evaluate.EVAL_SEED_BASE` with
    :func:`generate_scene`, a different stream, so its scenes are held out.
    """
    rng = np.random.default_rng([seed, 1])
    while True:
        hw = TRAIN_SHAPES[int(rng.integers(len(TRAIN_SHAPES)))]
        scene = generate_scene(rng, hw)
        if len(scene):
            yield scene


# ----------------------------------------------------------------------------- segmenter


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """SAM's focal loss, mean over the last two dims: ``(..., L, L)`` -> ``(...)``."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss over the last two dims: ``(..., L, L)`` -> ``(...)``."""
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(dim=(-2, -1)) + 1
    den = p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + 1
    return 1 - num / den


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks over the last two dims (1 when both are empty)."""
    inter = (pred & target).sum(dim=(-2, -1)).float()
    union = (pred | target).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class _Prompts:
    """Prompt sets of one image: every set has the same number of tokens."""

    coords: torch.Tensor  # (K, T, 2) input pixels
    labels: torch.Tensor  # (K, T)
    targets: torch.Tensor  # (K, L, L) float
    single_point: torch.Tensor  # (K,) bool: one point, no box (multimask loss)
    is_box: torch.Tensor  # (K,) bool


def _sample_point(weights: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """One uniformly drawn pixel of each ``(K, L, L)`` weight map, as input-pixel (X, Y)."""
    k, size, _ = weights.shape
    flat = weights.reshape(k, -1).clone()
    empty = flat.sum(dim=1) <= 0
    flat[empty] = 1.0  # anywhere, if nothing qualifies
    idx = torch.multinomial(flat, 1, generator=gen)[:, 0]
    ys, xs = idx // size, idx % size
    jitter = torch.rand(k, 2, generator=gen)
    return torch.stack([xs + jitter[:, 0], ys + jitter[:, 1]], dim=1).float() * scale


def _initial_prompts(
    batch: Batch, i: int, cfg: TrainConfig, gen: torch.Generator, image_size: int
) -> _Prompts:
    targets_all = batch.targets[i]
    k = cfg.prompts_per_image
    n = len(targets_all)
    scale = image_size / cfg.loss_size
    which = torch.randint(n, (k,), generator=gen)
    background = torch.rand(k, generator=gen) < cfg.background_prompt_rate
    is_box = (torch.rand(k, generator=gen) < cfg.box_prompt_rate) & ~background
    targets = targets_all[which].clone()
    targets[background] = batch.background[i]

    # Points: uniform inside the (mostly) covered pixels of the target.
    point = _sample_point((targets > 0.5).float(), gen, scale)
    # Boxes: the GT box with SAM's jitter (std 10% of the side, at most 20 px).
    box = batch.boxes[i][which].clone()
    side = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, dim=1)
    noise = torch.randn(k, 4, generator=gen) * 0.1 * side
    box = (box + noise.clamp(-20, 20)).clamp(0, image_size)
    box = torch.stack(
        [
            torch.minimum(box[:, 0], box[:, 2]),
            torch.minimum(box[:, 1], box[:, 3]),
            torch.maximum(box[:, 0], box[:, 2]),
            torch.maximum(box[:, 1], box[:, 3]),
        ],
        dim=1,
    )
    coords = torch.zeros(k, 2, 2)
    labels = torch.empty(k, 2)
    # Point sets: [point, pad]; box sets: [top-left, bottom-right] (as Predictor packs them).
    coords[:, 0] = torch.where(is_box[:, None], box[:, :2], point)
    coords[:, 1] = torch.where(is_box[:, None], box[:, 2:], torch.zeros(k, 2))
    labels[:, 0] = torch.where(is_box, float(LABEL_BOX_TL), float(LABEL_FG))
    labels[:, 1] = torch.where(is_box, float(LABEL_BOX_BR), float(LABEL_PAD))
    return _Prompts(coords, labels, targets, ~is_box, is_box)


def _add_point(p: _Prompts, point: torch.Tensor, label: torch.Tensor) -> _Prompts:
    """Put a correction point first (points precede the box or the pad token)."""
    coords = torch.cat([point[:, None], p.coords], dim=1)
    labels = torch.cat([label[:, None], p.labels], dim=1)
    return _Prompts(coords, labels, p.targets, torch.zeros_like(p.single_point), p.is_box)


def segmenter_loss(
    sam: Sam, batch: Batch, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SAM-style interactive loss of one batch (see the module docstring)."""
    info = sam.info
    image_size, lr_size, size = info.image_size, info.low_res_size, cfg.loss_size
    embeddings = sam.encode(batch.images)
    prompts = [_initial_prompts(batch, i, cfg, gen, image_size) for i in range(len(embeddings))]
    total = torch.zeros(())
    stats = {"mask": 0.0, "iou": 0.0, "miou": 0.0}
    # Every prompt set sees its own image's embedding: one decoder call for the whole batch
    # (the decoder broadcasts a (1, C, h, w) embedding, and takes a (P, C, h, w) one as is).
    per_set = embeddings.repeat_interleave(cfg.prompts_per_image, dim=0)
    mask_in = torch.zeros(1, 1, lr_size, lr_size)
    has = torch.zeros(1)
    for r in range(cfg.rounds):
        coords = torch.cat([p.coords for p in prompts])
        labels = torch.cat([p.labels for p in prompts])
        low, iou_pred = sam.decode(per_set, coords, labels, mask_in, has)  # (P, M, ...)
        targets = torch.cat([p.targets for p in prompts])  # (P, L, L)
        single = torch.cat([p.single_point for p in prompts])
        logits = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        tgt = targets[:, None].expand_as(logits)
        per_token = cfg.focal_weight * sigmoid_focal_loss(logits, tgt) + dice_loss(
            logits, tgt
        )  # (P, M)
        best_multi = 1 + per_token[:, 1:].argmin(dim=1)
        rows = torch.arange(len(low))
        multi = per_token[rows, best_multi]
        mask_loss = torch.where(single, multi + per_token[:, 0], per_token[:, 0]).mean()
        with torch.no_grad():
            actual = mask_iou(logits > 0, (targets > 0.5)[:, None].expand_as(logits))
        iou_loss = F.mse_loss(iou_pred, actual)
        total = total + (mask_loss + iou_loss) / cfg.rounds
        chosen = torch.where(single, best_multi, torch.zeros_like(best_multi))
        stats["mask"] += float(mask_loss.detach()) / cfg.rounds
        stats["iou"] += float(iou_loss.detach()) / cfg.rounds
        if r == 0:
            stats["miou"] = float(actual[rows, chosen].mean())
        if r == cfg.rounds - 1:
            break
        # Next round: a point from the error region of the chosen mask, its logits as input.
        with torch.no_grad():
            pred = logits[rows, chosen] > 0
            truth = targets > 0.5
            error = (pred ^ truth).float()
            point = _sample_point(error, gen, image_size / size)
            px = (point / (image_size / size)).long().clamp(0, size - 1)
            label = truth[rows, px[:, 1], px[:, 0]].float() * (LABEL_FG - LABEL_BG) + LABEL_BG
            prev = low[rows, chosen].detach()[:, None]
        mask_in, has = prev, torch.ones(1)
        k = cfg.prompts_per_image
        prompts = [
            _add_point(p, point[i * k : (i + 1) * k], label[i * k : (i + 1) * k])
            for i, p in enumerate(prompts)
        ]
    return total, stats


# ----------------------------------------------------------------------------- detector


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class DemoDetector(nn.Module):
    """A small anchor-free object detector with the YOLOv8 output layout.

    ``forward``: ``(1, 3, D, D)`` RGB in 0..1 -> ``(1, 5, (D / 8)**2)``: cx, cy, w, h in input
    pixels and the sigmoid object score of every stride-8 cell (rows by Y, X fastest).
    :meth:`raw` gives the training outputs.
    """

    def __init__(self, imgsz: int = DETECTOR_IMGSZ, width: int = 16) -> None:
        super().__init__()
        w = width
        self.c2 = nn.Sequential(_conv(3, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.c3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # stride 8
        self.c4 = nn.Sequential(_conv(4 * w, 6 * w, 2), _conv(6 * w, 6 * w))  # stride 16
        self.c5 = nn.Sequential(_conv(6 * w, 8 * w, 2), _conv(8 * w, 8 * w))  # stride 32
        self.l3 = nn.Conv2d(4 * w, 4 * w, 1)
        self.l4 = nn.Conv2d(6 * w, 4 * w, 1)
        self.l5 = nn.Conv2d(8 * w, 4 * w, 1)
        self.head = nn.Sequential(_conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.out = nn.Conv2d(4 * w, 5, 1)
        nn.init.constant_(self.out.bias, 0.0)
        nn.init.constant_(self.out.bias[4:], -4.0)  # start with few positives (focal loss)
        side = imgsz // DETECTOR_STRIDE
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5) * DETECTOR_STRIDE
        self.register_buffer("centres", centres, persistent=False)  # (2, A)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A, 4)`` XYXY boxes in input pixels and ``(B, A)`` score logits."""
        c3 = self.c3(self.c2(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p = (
            self.l3(c3)
            + F.interpolate(self.l4(c4), scale_factor=2.0, mode="nearest")
            + F.interpolate(self.l5(c5), scale_factor=4.0, mode="nearest")
        )
        out = self.out(self.head(p)).flatten(2)  # (B, 5, A)
        ltrb = out[:, :4].clamp(max=6.0).exp() * DETECTOR_STRIDE
        cx, cy = self.centres[0], self.centres[1]
        boxes = torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]])
        return boxes.permute(1, 2, 0), out[:, 4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, logits = self.raw(x)
        cxcywh = torch.stack(
            [
                (boxes[..., 0] + boxes[..., 2]) / 2,
                (boxes[..., 1] + boxes[..., 3]) / 2,
                boxes[..., 2] - boxes[..., 0],
                boxes[..., 3] - boxes[..., 1],
            ],
            dim=1,
        )
        return torch.cat([cxcywh, logits.sigmoid()[:, None]], dim=1)


def _giou_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of paired XYXY boxes ``(N, 4)``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    return 1 - inter / union.clamp(min=1e-6) + (hull - union) / hull.clamp(min=1e-6)


def detector_loss(detector: DemoDetector, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss on the centre-cell scores plus GIoU on the boxes around each centre."""
    boxes, logits = detector.raw(batch.detector_images)
    side = DETECTOR_IMGSZ // DETECTOR_STRIDE
    score_target = torch.zeros_like(logits)
    pred_rows, gt_rows = [], []
    centres = detector.centres.T  # (A, 2)
    for i, gt in enumerate(batch.detector_boxes):
        if not len(gt):
            continue
        c = (gt[:, :2] + gt[:, 2:]) / 2
        cell = (c / DETECTOR_STRIDE).long().clamp(0, side - 1)
        score_target[i, cell[:, 1] * side + cell[:, 0]] = 1.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                x = (cell[:, 0] + dx).clamp(0, side - 1)
                y = (cell[:, 1] + dy).clamp(0, side - 1)
                idx = y * side + x
                inside = (
                    (centres[idx, 0] > gt[:, 0])
                    & (centres[idx, 0] < gt[:, 2])
                    & (centres[idx, 1] > gt[:, 1])
                    & (centres[idx, 1] < gt[:, 3])
                ) | ((dx == 0) & (dy == 0))
                pred_rows.append(boxes[i, idx[inside]])
                gt_rows.append(gt[inside])
    positives = max(1.0, float(score_target.sum()))
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, score_target, reduction="none")
    p_t = p * score_target + (1 - p) * (1 - score_target)
    alpha = 0.25 * score_target + 0.75 * (1 - score_target)
    score_loss = (alpha * ce * (1 - p_t) ** 2).sum() / positives
    box_loss = _giou_loss(torch.cat(pred_rows), torch.cat(gt_rows)).mean()
    loss = score_loss + 2.0 * box_loss
    return loss, {"det_score": float(score_loss.detach()), "det_box": float(box_loss.detach())}


# ----------------------------------------------------------------------------- loop


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(
    cfg: TrainConfig,
    *,
    log_every: int = 50,
    log=print,
    snapshot_dir: Path | None = None,
) -> tuple[Sam, DemoDetector, dict]:
    """Train both demo models; returns them (eval mode) and the training record.

    With ``snapshot_dir``, both models' weights are saved there at every log line
    (``snapshot.pt``), so that a run stopped early still leaves weights to inspect.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sam = build_sam(DEMO_MODEL).train()
    detector = DemoDetector().train()
    opt = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    det_opt = torch.optim.AdamW(detector.parameters(), lr=cfg.detector_lr, weight_decay=1e-4)
    scenes = scene_stream(cfg.seed)
    history: list[dict] = []
    start = time.perf_counter()
    window: list[dict] = []
    for step in range(cfg.steps):
        batch = make_batch(
            [next(scenes) for _ in range(cfg.batch_size)], sam.info.image_size, cfg.loss_size
        )
        factor = _lr_factor(step, cfg)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        for group in det_opt.param_groups:
            group["lr"] = cfg.detector_lr * factor
        loss, stats = segmenter_loss(sam, batch, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        det, det_stats = detector_loss(detector, batch)
        det_opt.zero_grad(set_to_none=True)
        det.backward()
        nn.utils.clip_grad_norm_(detector.parameters(), 5.0)
        det_opt.step()
        window.append(
            {"loss": float(loss.detach()), "det_loss": float(det.detach()), **stats, **det_stats}
        )
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            record = {"step": step + 1, "minutes": (time.perf_counter() - start) / 60, **mean}
            history.append(record)
            log(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
            window = []
            if snapshot_dir is not None:
                snapshot_dir.mkdir(parents=True, exist_ok=True)
                state = {
                    "step": step + 1,
                    "sam": sam.state_dict(),
                    "detector": detector.state_dict(),
                }
                torch.save(state, snapshot_dir / "snapshot.pt")
    record = {
        "config": asdict(cfg),
        "model": DEMO_MODEL,
        "train_minutes": (time.perf_counter() - start) / 60,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "history": history,
    }
    return sam.eval(), detector.eval(), record


# ----------------------------------------------------------------------------- export


def export_detector(detector: DemoDetector, path: str | Path) -> Path:
    """Write the detector as ONNX: input ``images`` (1, 3, 256, 256), output ``output0``.

    The ``names`` metadata (``{0: 'object'}``, ultralytics' format) tells
    :class:`~segfast_ros.segevery.detector.ObjectDetector` there is one class and no mask
    coefficients; ``imgsz`` and ``stride`` are recorded as ultralytics does.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, DETECTOR_IMGSZ, DETECTOR_IMGSZ)
    torch.onnx.export(
        detector.eval(),
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["output0"],
        do_constant_folding=True,
    )
    model = onnx.load(str(path))
    for key, value in (
        ("names", str({0: "object"})),
        ("imgsz", str([DETECTOR_IMGSZ, DETECTOR_IMGSZ])),
        ("stride", str(DETECTOR_STRIDE)),
        ("description", "segfast_ros demo object detector for synthetic scenes (YOLOv8 layout)"),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def write_calibration_images(folder: Path, seed: int, count: int = 32) -> Path:
    """Generated scenes as PNG files, for the INT8 calibration (stream (seed, 2))."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    for i in range(count):
        hw = TRAIN_SHAPES[i % len(TRAIN_SHAPES)]
        scene = generate_scene(rng, hw)
        cv2.imwrite(
            str(folder / f"calib_{i:03d}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        )
    return folder


def quantize_demo_encoder(out: Path, seed: int) -> Path:
    """Write ``out/encoder.int8.onnx`` from ``out/encoder.fp32.onnx``: the default (``cpu``)
    target, calibrated on the 32 scenes of :func:`write_calibration_images` for ``seed``.

    Works on the ONNX file alone, so the training export and ``--requantize`` share it.
    """
    encoder, int8 = onnx_file_names("fp32")[0], onnx_file_names("int8")[0]
    with tempfile.TemporaryDirectory(prefix="segfast_demo_calib_") as tmp:
        calib = write_calibration_images(Path(tmp), seed)
        return quantize_encoder(out / encoder, out / int8, calib)


def export_all(sam: Sam, detector: DemoDetector, out: Path, seed: int) -> dict[str, Path]:
    """Export the segmenter (fp32 + int8 encoder, fp32 decoder) and the detector into ``out``."""
    from ..export.onnx_export import export_model

    written = export_model(sam, out, ("fp32",))
    written["encoder.int8"] = quantize_demo_encoder(out, seed)
    written["detector"] = export_detector(detector, out / "detector.onnx")
    return written


def _file_record(path: Path) -> dict[str, object]:
    return {"name": path.name, "bytes": path.stat().st_size}


def requantize(out: Path) -> Path:
    """Rebuild only ``out/encoder.int8.onnx`` from the fp32 encoder there, without training.

    The calibration seed is the training seed in ``out/training.json``; that record's int8 file
    size and ``int8`` entry (the file's quantization settings) are updated.

    Raises:
        FileNotFoundError: ``out`` has no ``training.json``.
    """
    record_path = out / "training.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{record_path} not found: --requantize needs a folder written by this module "
            "(its training.json gives the calibration seed)"
        )
    record = json.loads(record_path.read_text())
    start = time.perf_counter()
    path = quantize_demo_encoder(out, int(record["config"]["seed"]))
    record["files"]["encoder.int8"] = _file_record(path)
    record["int8"] = {
        **(quantization_settings(path) or {}),
        "requantized_minutes": (time.perf_counter() - start) / 60,
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (the result may depend on it)"
    )
    parser.add_argument("--checkpoint", action="store_true", help="also save the torch weights")
    parser.add_argument(
        "--requantize",
        action="store_true",
        help="no training: rebuild --out's encoder.int8.onnx from its encoder.fp32.onnx "
        "(current default int8 target, the training seed's calibration scenes)",
    )
    args = parser.parse_args(argv)
    if args.requantize:
        path = requantize(args.out)
        settings = quantization_settings(path) or {}
        print(
            f"wrote {path} (target {settings.get('target')}, reduce_range "
            f"{settings.get('reduce_range')}, {path.stat().st_size} bytes) and updated "
            f"{args.out / 'training.json'}"
        )
        return
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size)
    sam, detector, record = train(
        cfg,
        log=lambda line: print(line, flush=True),
        snapshot_dir=args.out if args.checkpoint else None,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        torch.save(sam.state_dict(), args.out / f"{DEMO_MODEL}.pt")
        torch.save(detector.state_dict(), args.out / "detector.pt")
    start = time.perf_counter()
    written = export_all(sam, detector, args.out, args.seed)
    record["export_minutes"] = (time.perf_counter() - start) / 60
    record["files"] = {k: _file_record(p) for k, p in written.items()}
    record["int8"] = quantization_settings(written["encoder.int8"])
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {', '.join(p.name for p in written.values())} and training.json to {args.out}")


if __name__ == "__main__":
    main()
