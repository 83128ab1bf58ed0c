"""Full-stage distillation losses (TinySAM's idea, written for this project's :class:`Sam`).

The student is pulled toward the teacher at every stage of the model, not only at its masks:

* the image embedding (mean squared error);
* the mask decoder's output tokens (mean squared error): what the decoder "concluded" about
  the prompt before upscaling, a richer signal than the masks alone;
* the mask logits: a per-pixel binary KL divergence against the teacher's probabilities (the
  BCE-with-logits against the teacher's sigmoid minus the teacher's own entropy, so the same
  gradient as BCE but 0 when student equals teacher) plus a soft dice term. Both are per mask,
  so each mask can be weighted by how hard it is (:func:`hard_mask_weights`).

Everything the teacher gives is a target: it is detached here, whatever the caller passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..demo.segmenter_loss import mask_iou
from ..modeling.sam import Sam


@dataclass(frozen=True)
class DistillWeights:
    """Weights of the three full-stage terms (the issue's "weights as parameters").

    Attributes:
        embedding: image-embedding MSE.
        tokens: decoder output-token MSE.
        logits: mask-logit KL + dice.
    """

    embedding: float = 1.0
    tokens: float = 1.0
    logits: float = 1.0

    def __post_init__(self) -> None:
        for name in ("embedding", "tokens", "logits"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"DistillWeights.{name} must be a finite number >= 0, got {value!r}"
                )
        if self.embedding == self.tokens == self.logits == 0:
            raise ValueError(
                "DistillWeights: at least one of embedding, tokens, logits must be > 0"
            )


@dataclass
class StageOutputs:
    """What one model gives at each distilled stage, for one batch of prompt sets.

    Attributes:
        embedding: ``(B, C, h, w)`` image embeddings.
        tokens: ``(P, T, C)`` the decoder transformer's output tokens.
        logits: ``(P, M, 4h, 4w)`` low-res mask logits of every mask token.
        iou: ``(P, M)`` IoU predictions.
    """

    embedding: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor
    iou: torch.Tensor


def decode_stages(
    sam: Sam,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
) -> StageOutputs:
    """Run ``sam``'s prompt encoder and decoder (with tokens) on ``P`` prompt sets.

    Args:
        embeddings: ``(B, C, h, w)`` image embeddings; ``P`` must be a multiple of ``B`` and the
            sets are grouped by image (the first ``P / B`` on image 0, and so on).
        coords: ``(P, N, 2)`` prompt points in encoder-input pixels (box corners included).
        labels: ``(P, N)`` float labels (see :mod:`segfast_ros.spec`).
        mask_input: ``(P, 1, 4h, 4w)`` previous low-res logits, or None for no mask input.
    """
    b, p = embeddings.shape[0], coords.shape[0]
    if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
        raise ValueError(
            f"prompts must be coords (P, N, 2) and labels (P, N), got {tuple(coords.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if p % b:
        raise ValueError(f"{p} prompt sets cannot be split evenly over {b} images")
    per_set = embeddings.repeat_interleave(p // b, dim=0)
    pe = sam.prompt_encoder
    lr = 4 * pe.embed_size
    if mask_input is None:
        mask_input, has = embeddings.new_zeros(1, 1, lr, lr), embeddings.new_zeros(1)
    else:
        has = embeddings.new_ones(1)
    sparse = pe.embed_points(coords, labels)
    dense = pe.embed_mask(mask_input, has)
    logits, iou, tokens = sam.mask_decoder.forward_with_tokens(
        per_set, pe.get_dense_pe(), sparse, dense
    )
    return StageOutputs(embeddings, tokens, logits, iou)


def _same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {what} differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}; the student must reproduce the teacher's {what} shape "
            "(give a CNN student a neck to the teacher's embedding size and channels)"
        )


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``(B, C, h, w)`` image embeddings."""
    _same_shape("image embeddings", student_emb, teacher_emb)
    return F.mse_loss(student_emb, teacher_emb.detach())


def token_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``(P, T, C)`` decoder output tokens."""
    _same_shape("decoder output tokens", student_tokens, teacher_tokens)
    return F.mse_loss(student_tokens, teacher_tokens.detach())


def _soft_dice(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``1 - 2<p, q> / (|p|^2 + |q|^2)`` over the last two dims (+1 smoothing).

    The squared-norm denominator makes it ``|p - q|^2 / (|p|^2 + |q|^2)``: 0 exactly when the
    two probability maps are equal. The demo's dice (``sum p + sum q``) is minimised by a
    binary student, not by the teacher's soft map, so it does not fit a soft target.
    """
    num = 2 * (p * q).sum(dim=(-2, -1)) + 1
    den = p.square().sum(dim=(-2, -1)) + q.square().sum(dim=(-2, -1)) + 1
    return 1 - num / den


def logit_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-mask binary KL (mean over pixels) + soft dice, then the (weighted) mean over masks.

    Args:
        student_logits: ``(..., H, W)`` mask logits, e.g. ``(K, H, W)`` or ``(P, M, H, W)``.
        teacher_logits: the same shape.
        weights: per-mask weights of shape ``student_logits.shape[:-2]`` (``(K,)`` for ``K``
            masks), e.g. from :func:`hard_mask_weights`; None weighs every mask 1.
    """
    _same_shape("mask logits", student_logits, teacher_logits)
    if student_logits.ndim < 3:
        raise ValueError(
            f"mask logits must be (..., H, W) with masks, got {student_logits.ndim}-D"
        )
    t = teacher_logits.detach()
    target = t.sigmoid()
    bce = F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, target, reduction="none")
    per_mask = (bce - entropy).mean(dim=(-2, -1)) + _soft_dice(student_logits.sigmoid(), target)
    if weights is None:
        return per_mask.mean()
    if weights.shape != per_mask.shape:
        raise ValueError(
            f"mask weights must have shape {tuple(per_mask.shape)} (one per mask), got "
            f"{tuple(weights.shape)}"
        )
    return (per_mask * weights.detach()).mean()


def hard_mask_weights(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    power: float = 1.0,
    floor: float = 0.05,
) -> torch.Tensor:
    """Each mask's teacher-student gap as a loss weight: ``max(1 - IoU, floor) ** power``,
    normalised to mean 1, detached.

    The gap is 1 minus the IoU of the thresholded (logit > 0) masks rather than the mean
    absolute probability difference: it does not depend on the object's size (a small object
    the student misses entirely is as hard as a large one, where a pixel mean would call it
    easy), and it is the measure the student is judged by (mIoU against the teacher). The
    floor keeps masks the student already gets right in the loss (and makes all-equal gaps
    give weights of 1); ``power`` sharpens (> 1) or flattens (< 1) the emphasis, and 0 turns
    hard mask weighting off (every weight 1).

    Args:
        student_logits: ``(..., H, W)`` mask logits.
        teacher_logits: the same shape.

    Returns:
        ``student_logits.shape[:-2]`` weights with mean 1.
    """
    _same_shape("mask logits", student_logits, teacher_logits)
    if not (power >= 0 and math.isfinite(power)):
        raise ValueError(f"power must be a finite number >= 0, got {power}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    with torch.no_grad():
        gap = 1 - mask_iou(student_logits > 0, teacher_logits > 0)
        w = gap.clamp(min=floor) ** power
        return w / w.mean()


def full_stage_loss(
    student: StageOutputs,
    teacher: StageOutputs,
    weights: DistillWeights | None = None,
    *,
    hard_mask_power: float = 1.0,
    hard_mask_floor: float = 0.05,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the three terms, every mask weighted by :func:`hard_mask_weights`.

    Args:
        hard_mask_power: see :func:`hard_mask_weights`; 0 for uniform mask weights (the
            ablation without hard mask weighting).

    Returns:
        The total (a scalar with gradients to the student) and each term as a float:
        ``embedding``, ``tokens``, ``logits`` (unweighted by :class:`DistillWeights`),
        ``total``, and ``miou``: the mean IoU of the student's thresholded masks against the
        teacher's (the agreement the distillation aims at).
    """
    weights = weights or DistillWeights()
    mask_w = hard_mask_weights(
        student.logits, teacher.logits, power=hard_mask_power, floor=hard_mask_floor
    )
    terms = {
        "embedding": embedding_loss(student.embedding, teacher.embedding),
        "tokens": token_loss(student.tokens, teacher.tokens),
        "logits": logit_loss(student.logits, teacher.logits, mask_w),
    }
    total = (
        weights.embedding * terms["embedding"]
        + weights.tokens * terms["tokens"]
        + weights.logits * terms["logits"]
    )
    stats = {name: float(value.detach()) for name, value in terms.items()}
    stats["total"] = float(total.detach())
    with torch.no_grad():
        stats["miou"] = float(mask_iou(student.logits > 0, teacher.logits > 0).mean())
    return total, stats
