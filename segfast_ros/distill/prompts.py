"""Prompts for distillation, which has no labels: only the teacher says what is where.

* :func:`initial_prompts`: the first round's prompts: a stratified grid of foreground points
  over the image (where nothing is known yet), or points and boxes drawn from the teacher's
  masks of that grid (so every prompt is about something the teacher sees as an object);
* :func:`hard_points`: TinySAM's hard prompt sampling: the next round's points come from where
  the student's and the teacher's masks disagree, labelled by the teacher, so each round moves
  the prompts (and the loss) toward the hard boundary regions the student gets wrong.

Coordinates are in encoder-input pixels (X, Y), the frame :meth:`Sam.decode` takes; masks and
logits are low-res ``(K, L, L)`` maps covering the whole ``S x S`` input (padding included).
Every draw comes from the ``torch.Generator`` passed in: the same seed gives the same prompts.
The draws run on the CPU (where the generator is), whatever device the models train on: the
training loop hands these functions CPU copies of the low-res masks and moves the prompts to
the device with :meth:`PromptSets.to`, so a seed gives the same prompts on a GPU too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..spec import LABEL_BG, LABEL_BOX_BR, LABEL_BOX_TL, LABEL_FG, LABEL_PAD


@dataclass
class PromptSets:
    """``K`` prompt sets with the same number ``N`` of tokens each.

    Attributes:
        coords: ``(K, N, 2)`` float (X, Y) in encoder-input pixels.
        labels: ``(K, N)`` float labels (:mod:`segfast_ros.spec`'s ``LABEL_*``).
    """

    coords: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.coords.shape[0]

    def with_points(self, points: torch.Tensor, labels: torch.Tensor) -> PromptSets:
        """These sets with ``(K, k, 2)`` points and ``(K, k)`` labels put first (points come
        before a box or the pad token, as the Predictor packs them)."""
        if points.shape[:1] != self.coords.shape[:1] or labels.shape != points.shape[:2]:
            raise ValueError(
                f"expected ({len(self)}, k, 2) points and ({len(self)}, k) labels, got "
                f"{tuple(points.shape)} and {tuple(labels.shape)}"
            )
        return PromptSets(
            torch.cat([points.to(self.coords), self.coords], dim=1),
            torch.cat([labels.to(self.labels), self.labels], dim=1),
        )

    def to(self, device: torch.device) -> PromptSets:
        """These sets on ``device``."""
        return PromptSets(self.coords.to(device), self.labels.to(device))


def _pick_pixels(region: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct pixels of each ``(K, H, W)`` boolean region, uniformly: ``(K, k)`` flat
    indices. A region with fewer than ``k`` pixels repeats its first pick; every region must
    have at least one pixel."""
    flat = region.reshape(region.shape[0], -1)
    keys = torch.rand(flat.shape, generator=gen)
    keys = torch.where(flat, keys, torch.full_like(keys, -1.0))
    score, idx = keys.topk(k, dim=1)
    return torch.where(score >= 0, idx, idx[:, :1])


def _pixels_to_input(
    idx: torch.Tensor, side: int, scale: float, gen: torch.Generator
) -> torch.Tensor:
    """Flat indices of a ``side x side`` map to (X, Y) input pixels, uniform inside each pixel."""
    xy = torch.stack([idx % side, idx // side], dim=-1).float()
    return (xy + torch.rand(xy.shape, generator=gen)) * scale


def _check_masks(name: str, masks: torch.Tensor) -> None:
    if masks.ndim != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"{name} must be (K, L, L) square low-res maps, got {tuple(masks.shape)}")


def grid_points(
    k: int, image_size: int, gen: torch.Generator, valid_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """``k`` points stratified over the image: ``(k, 2)`` (X, Y) input pixels.

    The valid area (``valid_hw`` = (H, W) of the image before bottom/right padding, default the
    whole ``S x S``) is cut into a ``ceil(sqrt(k))``-per-side grid; ``k`` distinct cells are
    drawn and each gets a uniform point inside it: even cover, no two points in one cell.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    h, w = valid_hw or (image_size, image_size)
    if not (0 < h <= image_size and 0 < w <= image_size):
        raise ValueError(f"valid_hw {valid_hw} must lie within the {image_size} px input")
    n = math.ceil(math.sqrt(k))
    cells = torch.randperm(n * n, generator=gen)[:k]
    cell = torch.stack([cells % n, cells // n], dim=1).float()
    u = torch.rand(k, 2, generator=gen)
    return (cell + u) / n * torch.tensor([float(w), float(h)])


def _boxes_of(masks: torch.Tensor, scale: float) -> torch.Tensor:
    """``(K, 4)`` XYXY input-pixel boxes enclosing non-empty ``(K, L, L)`` masks."""
    side = masks.shape[-1]
    ar = torch.arange(side)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    x0 = torch.where(cols, ar, side).min(dim=1).values
    x1 = torch.where(cols, ar, -1).max(dim=1).values + 1
    y0 = torch.where(rows, ar, side).min(dim=1).values
    y1 = torch.where(rows, ar, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float() * scale


def initial_prompts(
    k: int,
    image_size: int,
    gen: torch.Generator,
    *,
    teacher_masks: torch.Tensor | None = None,
    box_rate: float = 0.5,
    valid_hw: tuple[int, int] | None = None,
) -> PromptSets:
    """The first round's ``k`` prompt sets, each of two tokens (a point and a pad, or a box).

    Without ``teacher_masks``: foreground points from :func:`grid_points`. With them (``(Q, L,
    L)`` bool, e.g. the teacher's masks of a point grid): ``k`` non-empty masks drawn with
    replacement; each becomes its bounding box (probability ``box_rate``) or a uniform point
    inside it. If no mask is non-empty (a blank wall), the grid is used.

    Returns:
        :class:`PromptSets` with ``(k, 2, 2)`` coords and ``(k, 2)`` labels.
    """
    if not 0 <= box_rate <= 1:
        raise ValueError(f"box_rate must be in [0, 1], got {box_rate}")
    pad = torch.tensor([[0.0, 0.0]]).expand(k, 1, 2)
    fg_pad = torch.tensor([float(LABEL_FG), float(LABEL_PAD)]).expand(k, 2)
    nonempty = None
    if teacher_masks is not None:
        _check_masks("teacher_masks", teacher_masks)
        nonempty = teacher_masks.flatten(1).any(dim=1).nonzero()[:, 0]
    if nonempty is None or len(nonempty) == 0:
        points = grid_points(k, image_size, gen, valid_hw)
        return PromptSets(torch.cat([points[:, None], pad], dim=1), fg_pad.clone())
    masks = teacher_masks[nonempty[torch.randint(len(nonempty), (k,), generator=gen)]]
    scale = image_size / masks.shape[-1]
    point = _pixels_to_input(_pick_pixels(masks, 1, gen), masks.shape[-1], scale, gen)
    is_box = torch.rand(k, generator=gen) < box_rate
    boxes = _boxes_of(masks, scale).reshape(k, 2, 2)
    coords = torch.where(is_box[:, None, None], boxes, torch.cat([point, pad], dim=1))
    box_labels = torch.tensor([float(LABEL_BOX_TL), float(LABEL_BOX_BR)]).expand(k, 2)
    labels = torch.where(is_box[:, None], box_labels, fg_pad)
    return PromptSets(coords, labels)


def _interior(masks: torch.Tensor) -> torch.Tensor:
    """``(K, L, L)`` masks eroded by one pixel (3x3), or as they are where that empties them."""
    eroded = -F.max_pool2d(-masks[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    keep = eroded.flatten(1).any(dim=1)
    return torch.where(keep[:, None, None], eroded, masks)


def hard_points(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gen: torch.Generator,
    k: int = 1,
    *,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard prompt sampling: ``k`` points per mask where student and teacher disagree.

    The points are uniform (distinct pixels) over the disagreement region (student mask XOR
    teacher mask, masks being logits > 0). Where the two agree everywhere, they come from the
    teacher mask's interior instead (a confirming foreground point), and where that mask is
    empty too, from anywhere. Each point's label is the teacher's there: foreground where the
    teacher's mask is on, background elsewhere.

    Args:
        student_logits: ``(K, L, L)`` low-res logits, one mask per prompt set.
        teacher_logits: the same shape.
        k: points per set.
        image_size: the encoder input side ``S``: the points are in input pixels. None gives
            them in the logits' own pixel frame (``L x L``).

    Returns:
        ``(K, k, 2)`` float (X, Y) points and ``(K, k)`` float labels (LABEL_FG / LABEL_BG).
    """
    _check_masks("student_logits", student_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    with torch.no_grad():
        teacher = teacher_logits > 0
        region = (student_logits > 0) ^ teacher
        for fallback in (_interior(teacher), torch.ones_like(teacher)):
            empty = ~region.flatten(1).any(dim=1)
            region = torch.where(empty[:, None, None], fallback, region)
        side = teacher.shape[-1]
        idx = _pick_pixels(region, k, gen)
        on = teacher.flatten(1).gather(1, idx)
        labels = torch.where(on, float(LABEL_FG), float(LABEL_BG))
        scale = 1.0 if image_size is None else image_size / side
        return _pixels_to_input(idx, side, scale, gen), labels
