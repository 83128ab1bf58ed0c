"""The demo segmenter's SAM-style interactive loss (see :mod:`segfast_ros.demo.train`).

Every image gets ``prompts_per_image`` prompt sets (a jittered ground-truth box, a point inside
the object, or a point on the background whose target is the whole background), then
``rounds - 1`` correction rounds that add one point from the previous mask's error region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..modeling.sam import Sam
from ..spec import LABEL_BG, LABEL_BOX_BR, LABEL_BOX_TL, LABEL_FG, LABEL_PAD
from .training_data import Batch, TrainConfig


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
