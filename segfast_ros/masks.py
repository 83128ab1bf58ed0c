"""The toolbox every SegEvery strategy shares: RLE, boxes, NMS, stability, clean-up, decoding.

Everything here is vectorised numpy/cv2 (no per-pixel Python) and torch-free. Frames: masks and
boxes are in pixels of the *original* image unless a function says otherwise; boxes are XYXY
pixel edges (``x2 = last column + 1``, so ``x2 - x1`` is the width in pixels).

Sections:

* RLE: :func:`mask_to_rle`, :func:`rle_to_mask`, :func:`rle_area` (COCO uncompressed RLE, read
  by ``pycocotools.mask.frPyObjects``).
* Scores and boxes: :func:`stability_score`, :func:`threshold_logits`, :func:`masks_to_boxes`,
  :func:`box_area`, :func:`box_iou`, :func:`nms`, :func:`box_near_crop_edge`.
* Clean-up: :func:`remove_small_regions`, :func:`clean_small_regions`.
* Decoding: :class:`MaskCandidates` and :func:`segment_prompts`, the chunked
  decode -> IoU filter -> upscale -> stability filter -> RLE pipeline, for point prompts (grid,
  hierarchical) or box prompts (object-aware), in memory bounded by a pixel budget
  (:data:`~segfast_ros.runtime.transforms.UPSCALE_BUDGET_PIXELS`).
* Plumbing: :class:`StageTimer` and :func:`param` / :func:`validate_params` for the strategies'
  typed, range-checked keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from .runtime.transforms import upscale_group_size

if TYPE_CHECKING:
    from .runtime.predictor import Predictor


@dataclass(frozen=True)
class Instance:
    """One segmented instance, in the original image frame.

    Attributes:
        rle: COCO-style uncompressed RLE: ``{"size": [H, W], "counts": [int, ...]}``,
            column-major (Fortran order), starting with a run of zeros, as pycocotools reads it.
        box: ``(4,)`` float32 XYXY pixel edges of the mask: ``x1 = last column + 1``.
        score: the decoder's predicted IoU.
        stability: stability score of the mask logits (IoU of the masks thresholded at
            ``+offset`` and ``-offset``).
        area: mask pixels.
        prompt: ``(2,)`` (X, Y) point or ``(4,)`` XYXY box, original pixels, that produced it.
    """

    rle: dict
    box: np.ndarray
    score: float
    stability: float
    area: int
    prompt: np.ndarray


# ---------------------------------------------------------------------------------------- RLE


def mask_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode boolean masks as COCO uncompressed RLE.

    Args:
        masks: ``(N, H, W)`` bool (any dtype: nonzero is foreground).

    Returns:
        ``N`` dicts ``{"size": [H, W], "counts": [int, ...]}``: run lengths over the mask read
        column by column (Fortran order), alternating zeros and ones and starting with a run of
        zeros (``0`` when the first pixel is set), as ``pycocotools.mask.frPyObjects`` reads
        them.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
    size = [int(masks.shape[1]), int(masks.shape[2])]
    return [{"size": size, "counts": c.tolist()} for c in mask_run_lengths(masks)]


def mask_run_lengths(masks: np.ndarray) -> list[np.ndarray]:
    """The RLE counts of :func:`mask_to_rle` as int64 arrays (no Python lists).

    Args:
        masks: ``(N, H, W)`` bool (any dtype: nonzero is foreground).

    Returns:
        ``N`` int64 arrays of run lengths, column-major, starting with a run of zeros.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
    n, h, w = masks.shape
    if h * w == 0:
        return [np.zeros(1, dtype=np.int64) for _ in range(n)]
    return [_run_lengths(masks[i].astype(bool, copy=False)) for i in range(n)]


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Column-major run lengths of one ``(H, W)`` bool mask, without a transposed copy.

    A run starts at column-major index ``x * H + y`` where the pixel differs from the one
    before it in that order: the pixel above (``y > 0``), or the last pixel of the previous
    column (``y = 0``). Both comparisons read the mask in its own (row-major) layout; only the
    few boundaries are sorted. A transposed copy of an 8K mask took 100 ms, this about 15 ms.
    """
    h, w = mask.shape
    # flatnonzero and divmod: np.nonzero on a 2-D array is ten times slower.
    rows, cols = np.divmod(np.flatnonzero(mask[1:] != mask[:-1]), w)
    tops = np.flatnonzero(mask[0, 1:] != mask[-1, :-1]) + 1
    starts = np.sort(np.concatenate((cols * h + rows + 1, tops * h)))
    first = [0, 0] if mask[0, 0] else [0]  # a leading empty run when the mask starts set
    edges = np.concatenate((first, starts, [h * w]))
    return np.diff(edges).astype(np.int64, copy=False)


def rle_counts(rle: dict[str, Any]) -> np.ndarray:
    counts = rle.get("counts")
    if isinstance(counts, str | bytes):
        raise ValueError(
            "compressed RLE (string counts) is not supported; decode it with "
            "pycocotools.mask.decode, or pass uncompressed counts (a list of ints)"
        )
    return np.asarray(counts, dtype=np.int64).reshape(-1)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode one uncompressed COCO RLE (as made by :func:`mask_to_rle`).

    Returns:
        ``(H, W)`` bool, C-contiguous.

    Raises:
        ValueError: compressed (string) counts, or counts that do not sum to ``H * W``.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle_counts(rle)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(
            f"RLE counts sum to {int(counts.sum())}, expected H * W = {h * w} for size [{h}, {w}]"
        )
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    transposed = np.repeat(values, counts).reshape(w, h)
    if transposed.size == 0:
        return np.zeros((h, w), dtype=bool)
    # cv2 transposes bytes ten times faster than numpy's strided copy (8K: 11 ms vs 100 ms).
    return cv2.transpose(transposed).view(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixels of an uncompressed COCO RLE (the sum of its odd runs)."""
    return int(rle_counts(rle)[1::2].sum())


# ------------------------------------------------------------------------ scores and boxes


def stability_score(
    logits: np.ndarray, mask_threshold: float = 0.0, offset: float = 1.0
) -> np.ndarray:
    """Stability of mask logits: IoU of the masks thresholded at ``threshold +/- offset``.

    The ``+offset`` mask lies inside the ``-offset`` one, so the IoU is the ratio of their pixel
    counts. A mask whose ``-offset`` mask is empty (nothing near the threshold) scores 0: there
    is no mask to be stable, and 0 lets any positive stability threshold drop it (where a plain
    division would give NaN).

    Args:
        logits: ``(..., H, W)`` float mask logits (any frame).
        mask_threshold: logit above which a pixel belongs to the mask.
        offset: half-width of the threshold band.

    Returns:
        ``(...)`` float32 scores in ``[0, 1]``.
    """
    logits = np.asarray(logits)
    inter = np.count_nonzero(logits > mask_threshold + offset, axis=(-2, -1))
    union = np.count_nonzero(logits > mask_threshold - offset, axis=(-2, -1))
    return _stability(inter, union)


def _stability(inter: npt.ArrayLike, union: npt.ArrayLike) -> np.ndarray:
    """float32 ``inter / union`` pixel counts, 0 where ``union`` is 0 (see stability_score)."""
    inter, union = np.asarray(inter), np.asarray(union)
    score = np.divide(inter, union, out=np.zeros(np.shape(union)), where=union > 0)
    return score.astype(np.float32)


def threshold_logits(
    logits: np.ndarray,
    mask_threshold: float = 0.0,
    offset: float = 1.0,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks, stability scores and areas of full-size mask logits, in one pass per mask.

    Equal to ``logits > mask_threshold``, :func:`stability_score` and the masks' pixel counts,
    but each of the three comparisons is written into the mask's own output slot and counted
    there, so no full-size temporary exists besides the output (``stability_score`` on ``G``
    masks allocates ``G`` bool frames per comparison).

    Args:
        logits: ``(G, H, W)`` float logits.
        mask_threshold: logit above which a pixel is in the mask.
        offset: half-width of the stability band.
        out: optional ``(G, H, W)`` bool array to write the masks into.

    Returns:
        ``(G, H, W)`` bool masks (``out`` when given), ``(G,)`` float32 stability and ``(G,)``
        int64 areas.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"expected logits (G, H, W), got shape {logits.shape}")
    masks = np.empty(logits.shape, dtype=bool) if out is None else out
    if masks.shape != logits.shape or masks.dtype != bool:
        raise ValueError(f"out must be bool {logits.shape}, got {masks.dtype} {masks.shape}")
    inter = np.empty(len(logits), dtype=np.int64)
    union = np.empty(len(logits), dtype=np.int64)
    areas = np.empty(len(logits), dtype=np.int64)
    for i, frame in enumerate(logits):
        np.greater(frame, mask_threshold + offset, out=masks[i])
        inter[i] = np.count_nonzero(masks[i])
        np.greater(frame, mask_threshold - offset, out=masks[i])
        union[i] = np.count_nonzero(masks[i])
        np.greater(frame, mask_threshold, out=masks[i])
        areas[i] = np.count_nonzero(masks[i])
    return masks, _stability(inter, union), areas


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight XYXY boxes around boolean masks.

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        ``(N, 4)`` float32 XYXY pixel edges (``x2 = last column + 1``); all zeros for an empty
        mask.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
    h, w = masks.shape[1:]
    cols = masks.any(axis=1)  # (N, W)
    rows = masks.any(axis=2)  # (N, H)
    boxes = np.stack(
        [
            np.argmax(cols, axis=1),
            np.argmax(rows, axis=1),
            w - np.argmax(cols[:, ::-1], axis=1),
            h - np.argmax(rows[:, ::-1], axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    boxes[~cols.any(axis=1)] = 0.0
    return boxes


def box_area(boxes: npt.ArrayLike) -> np.ndarray:
    """``(N,)`` float64 areas of ``(N, 4)`` XYXY boxes (0 for inverted boxes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> np.ndarray:
    """Pairwise IoU of XYXY boxes.

    Args:
        boxes_a: ``(N, 4)`` XYXY; boxes_b: ``(M, 4)`` XYXY, same frame.

    Returns:
        ``(N, M)`` float64; 0 where the union is empty (two zero-area boxes do not overlap).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of XYXY boxes.

    Visits boxes by score, highest first (equal scores: lower index first), and drops every
    later box whose IoU with a kept one is *greater* than ``iou_threshold``. So 1.0 keeps
    everything, 0.0 keeps only boxes that overlap no kept box; zero-area boxes never suppress.

    Args:
        boxes: ``(N, 4)`` XYXY, any frame.
        scores: ``(N,)`` higher is better (NaN sorts last).
        iou_threshold: in ``[0, 1]``.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by score, highest first.
    """
    b = np.asarray(boxes, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise ValueError(
            f"expected boxes (N, 4) and scores (N,), got shapes {b.shape} and {s.shape}"
        )
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    order = np.argsort(-s, kind="stable")
    b = b[order]
    area = box_area(b)
    suppressed = np.zeros(len(b), dtype=bool)
    keep: list[int] = []
    # One vectorised pass per *kept* box over the boxes after it; suppressed ones are skipped
    # without work, so the cost is O(N * K), not a Python loop over all pairs.
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = b[i + 1 :]
        iw = np.minimum(b[i, 2], rest[:, 2]) - np.maximum(b[i, 0], rest[:, 0])
        ih = np.minimum(b[i, 3], rest[:, 3]) - np.maximum(b[i, 1], rest[:, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        union = area[i] + area[i + 1 :] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


def box_near_crop_edge(
    boxes: npt.ArrayLike,
    crop_box: Sequence[float],
    image_hw: tuple[int, int],
    tolerance: float = 20.0,
) -> np.ndarray:
    """Which boxes touch an edge of their crop that is not also an edge of the image.

    Such masks were probably cut by the crop; another crop (or the full image) sees them whole.

    Args:
        boxes: ``(N, 4)`` XYXY in the full image frame.
        crop_box: ``(4,)`` XYXY of the crop in the full image frame.
        image_hw: ``(H, W)`` of the full image.
        tolerance: pixels within which a box side counts as on an edge.

    Returns:
        ``(N,)`` bool, True for boxes to drop. Always False for the full-image crop.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box, dtype=np.float64)
    image = np.array([0.0, 0.0, image_hw[1], image_hw[0]])
    near_crop = np.abs(b - crop) <= tolerance
    near_image = np.abs(b - image) <= tolerance
    return (near_crop & ~near_image).any(axis=1)


# ------------------------------------------------------------------------------- clean-up


def remove_small_regions(
    mask: np.ndarray, min_area: int, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill small holes in, or remove small islands from, one mask (SAM's optional clean-up).

    Regions are 8-connected. In ``"holes"`` mode the regions are those of the background
    (including the one around the mask, if it is small). In ``"islands"`` mode, when every
    island is small the largest is kept, so a small mask is not erased.

    Args:
        mask: ``(H, W)`` bool.
        min_area: regions with fewer pixels than this are changed.
        mode: ``"holes"`` or ``"islands"``.

    Returns:
        The cleaned ``(H, W)`` bool mask (``mask`` itself when unchanged) and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    target = ~mask if mode == "holes" else mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(target.view(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < min_area
    if not small.any():
        return mask, False
    lut = np.zeros(n, dtype=bool)  # label 0 is the complement of `target`
    if mode == "holes":
        lut[1:] = small
        return mask | lut[labels], True
    keep = ~small
    if not keep.any():
        keep[int(np.argmax(sizes))] = True
    if keep.all():  # a single small island: kept as it is
        return mask, False
    lut[1:] = keep
    return lut[labels], True


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class MaskCandidates:
    """A batch of masks on their way to becoming :class:`~.base.Instance` s (struct of arrays).

    Attributes:
        rles: ``K`` COCO uncompressed RLEs in the full image frame.
        boxes: ``(K, 4)`` float32 XYXY pixel edges.
        scores: ``(K,)`` float32 predicted IoU.
        stability: ``(K,)`` float32 stability score.
        areas: ``(K,)`` int64 mask pixels.
        prompts: ``(K, P)`` float32 prompt that produced each mask, full image pixels: ``P = 2``
            for an (X, Y) point, 4 for an XYXY box.
    """

    rles: list[dict[str, Any]]
    boxes: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    areas: np.ndarray
    prompts: np.ndarray

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def empty(cls, prompt_dim: int = 2) -> MaskCandidates:
        """No candidates; ``prompt_dim`` is ``P`` (2 for points, 4 for boxes)."""
        f = np.zeros(0, dtype=np.float32)
        return cls(
            [],
            np.zeros((0, 4), np.float32),
            f,
            f.copy(),
            np.zeros(0, np.int64),
            np.zeros((0, prompt_dim), np.float32),
        )

    @classmethod
    def concat(cls, parts: Sequence[MaskCandidates], prompt_dim: int = 2) -> MaskCandidates:
        """All candidates of ``parts`` in order; ``prompt_dim`` is for an empty ``parts``."""
        if not parts:
            return cls.empty(prompt_dim)
        return cls(
            [r for p in parts for r in p.rles],
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.stability for p in parts]),
            np.concatenate([p.areas for p in parts]),
            np.concatenate([p.prompts for p in parts]),
        )

    def take(self, indices: npt.ArrayLike) -> MaskCandidates:
        """The candidates at integer ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return MaskCandidates(
            [self.rles[i] for i in idx.tolist()],
            self.boxes[idx],
            self.scores[idx],
            self.stability[idx],
            self.areas[idx],
            self.prompts[idx],
        )

    def nms(self, iou_threshold: float) -> MaskCandidates:
        """Box NMS by predicted IoU (see :func:`nms`); the result is sorted best first."""
        return self.take(nms(self.boxes, self.scores, iou_threshold))

    def sorted_by_score(self) -> MaskCandidates:
        """Best (highest predicted IoU) first; ties keep their order."""
        return self.take(np.argsort(-self.scores.astype(np.float64), kind="stable"))

    def to_instances(self) -> list[Instance]:
        """One :class:`~.base.Instance` per candidate, in order."""
        return [
            Instance(
                rle=self.rles[i],
                box=self.boxes[i].copy(),
                score=float(self.scores[i]),
                stability=float(self.stability[i]),
                area=int(self.areas[i]),
                prompt=self.prompts[i].copy(),
            )
            for i in range(len(self))
        ]


def clean_small_regions(
    candidates: MaskCandidates, min_area: int, nms_thresh: float
) -> MaskCandidates:
    """SAM's optional post-processing: fill small holes, drop small islands, NMS again.

    Each mask gets holes then islands smaller than ``min_area`` pixels removed (see
    :func:`remove_small_regions`); its box and area are recomputed. Then box NMS runs again and
    prefers masks that did *not* change (then higher predicted IoU), since clean-up may have
    made two masks near-duplicates. ``min_area <= 0`` returns ``candidates`` unchanged.

    Returns:
        The kept candidates, in NMS order (unchanged masks first).
    """
    if min_area <= 0 or len(candidates) == 0:
        return candidates
    rles = list(candidates.rles)
    boxes = candidates.boxes.copy()
    areas = candidates.areas.copy()
    changed = np.zeros(len(candidates), dtype=bool)
    for i, rle in enumerate(candidates.rles):
        mask, holes = remove_small_regions(rle_to_mask(rle), min_area, "holes")
        mask, islands = remove_small_regions(mask, min_area, "islands")
        if holes or islands:
            changed[i] = True
            rles[i] = mask_to_rle(mask[None])[0]
            boxes[i] = masks_to_boxes(mask[None])[0]
            areas[i] = int(np.count_nonzero(mask))
    cleaned = dataclasses.replace(candidates, rles=rles, boxes=boxes, areas=areas)
    # Rank by (unchanged first, then score) and hand NMS the negated rank as its score.
    order = np.lexsort((-candidates.scores.astype(np.float64), changed))
    priority = np.empty(len(order), dtype=np.float64)
    priority[order] = -np.arange(len(order), dtype=np.float64)
    return cleaned.take(nms(boxes, priority, nms_thresh))


# ------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class PromptMasks:
    """What :func:`segment_prompts` returns.

    Attributes:
        candidates: the masks that passed every filter, in prompt order (prompt-major, then
            mask token), not yet NMS'd.
        prompts_decoded: prompt sets the decoder evaluated.
        high_confidence: ``(H, W)`` bool union, over the kept candidates, of the pixels whose
            logit exceeds ``high_score_thresh`` (full image frame); None if not asked for.
    """

    candidates: MaskCandidates
    prompts_decoded: int
    high_confidence: np.ndarray | None = None


class StageTimer:
    """Accumulates wall time per named stage, in milliseconds.

    Example::

        timer = StageTimer()
        with timer.stage("decoder"):
            ...
        timer.ms  # {"decoder": 12.3}
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent inside the ``with`` block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1e3 * (time.perf_counter() - start)


def predictor_image_hw(predictor: Predictor) -> tuple[int, int]:
    """``(H, W)`` of the predictor's current image, or a ValueError if none is set."""
    if predictor.original_size is None:
        raise ValueError("no image is set: call predictor.set_image(image) first")
    return predictor.original_size


def finish_candidates(
    candidates: MaskCandidates,
    *,
    min_mask_region_area: int,
    box_nms_thresh: float,
    timer: StageTimer,
) -> MaskCandidates:
    """The common tail of every strategy: optional small-region clean-up, then best first."""
    if min_mask_region_area > 0:
        with timer.stage("cleanup"):
            candidates = clean_small_regions(candidates, min_mask_region_area, box_nms_thresh)
    return candidates.sorted_by_score()


def segment_prompts(
    predictor: Predictor,
    *,
    points: npt.ArrayLike | None = None,
    boxes: npt.ArrayLike | None = None,
    multimask_output: bool = True,
    batch_size: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    mask_threshold: float = 0.0,
    crop_box: Sequence[int] | None = None,
    image_hw: tuple[int, int] | None = None,
    crop_edge_tolerance: float = 20.0,
    high_score_thresh: float | None = None,
    timer: StageTimer | None = None,
    upscale_budget: int | None = None,
) -> PromptMasks:
    """Decode many single-prompt sets and keep the good masks, in bounded memory.

    Per chunk of ``batch_size`` prompts: one decoder call at low resolution, the predicted-IoU
    filter, then (only for the survivors, in groups of at most ``upscale_budget`` pixels of
    float32 logits, at least one mask) the upscale to the original frame, the stability filter,
    thresholding, boxes, the crop-edge filter and RLE. A group is reduced to RLE before the next
    is upscaled, so the memory is bounded by the budget (about 5 bytes per budget pixel: the
    logits and their masks) whatever the frame size and the number of prompts. Empty masks are
    always dropped. Give exactly one of ``points`` and ``boxes``.

    Args:
        predictor: with the image (or the crop, see ``crop_box``) set.
        points: ``(K, 2)`` (X, Y) pixels of the predictor's image, one foreground point per
            prompt set.
        boxes: ``(K, 4)`` XYXY pixels of the predictor's image, one box per prompt set.
        multimask_output: 3 masks per prompt (SAM's ambiguity-aware outputs) instead of 1.
        batch_size: prompt sets per decoder call.
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this; 0 disables the filter.
        stability_score_thresh: keep masks whose stability is ``>=`` this; 0 disables it.
        stability_score_offset: logit offset of :func:`stability_score`.
        mask_threshold: logit above which a pixel is in the mask.
        crop_box: XYXY ints of the predictor's image inside a larger image (crop layers); its
            size must equal the predictor's image. Masks are pasted into the full frame, and
            masks near an inner crop edge are dropped (:func:`box_near_crop_edge`). None: the
            predictor's image is the full image.
        image_hw: ``(H, W)`` of the full image; required with ``crop_box``.
        crop_edge_tolerance: pixels, see :func:`box_near_crop_edge`.
        high_score_thresh: if set, also return the union of the kept masks' pixels with logits
            above it (the hierarchical strategy's "already covered" map).
        timer: stages ``decoder`` and ``postprocess`` are added to it.
        upscale_budget: pixels of full-size logits upscaled at once; None:
            :data:`~segfast_ros.runtime.transforms.UPSCALE_BUDGET_PIXELS`.

    Returns:
        A :class:`PromptMasks`; prompts are recorded in full image pixels.

    Raises:
        ValueError: no image set, both or neither of points/boxes, a crop that does not
            match the predictor's image, or a budget below 1.
    """
    ph, pw = predictor_image_hw(predictor)
    if (points is None) == (boxes is None):
        raise ValueError("give exactly one of points (K, 2) and boxes (K, 4)")
    prompts = np.asarray(points if points is not None else boxes, dtype=np.float64)
    prompt_dim = 2 if points is not None else 4
    if prompts.size == 0:
        prompts = prompts.reshape(0, prompt_dim)
    if prompts.ndim != 2 or prompts.shape[1] != prompt_dim:
        kind = "points (K, 2)" if prompt_dim == 2 else "boxes (K, 4)"
        raise ValueError(f"expected {kind}, got shape {prompts.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if crop_box is None:
        x0, y0, x1, y1 = 0, 0, pw, ph
        full_hw = (ph, pw)
    else:
        if image_hw is None:
            raise ValueError("image_hw (H, W) of the full image is required with crop_box")
        x0, y0, x1, y1 = (int(v) for v in crop_box)
        full_hw = (int(image_hw[0]), int(image_hw[1]))
        if (y1 - y0, x1 - x0) != (ph, pw):
            raise ValueError(
                f"crop_box {list(crop_box)} is {x1 - x0}x{y1 - y0} (W x H) but the predictor's "
                f"image is {pw}x{ph}"
            )
    is_crop = (x0, y0, x1, y1) != (0, 0, full_hw[1], full_hw[0])
    offset = np.array([x0, y0] * (prompt_dim // 2), dtype=np.float64)
    timer = timer if timer is not None else StageTimer()
    covered = np.zeros(full_hw, dtype=bool) if high_score_thresh is not None else None
    group = upscale_group_size((ph, pw), upscale_budget)
    pasted: np.ndarray | None = None  # full-frame canvas for crop masks, made on first use

    parts: list[MaskCandidates] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        with timer.stage("decoder"):
            if prompt_dim == 2:
                low_res, iou = predictor.predict_low_res(
                    point_coords=chunk[:, None, :],
                    point_labels=np.ones((len(chunk), 1)),
                    multimask_output=multimask_output,
                )
            else:
                low_res, iou = predictor.predict_low_res(
                    box=chunk, multimask_output=multimask_output
                )
        with timer.stage("postprocess"):
            passed = iou > pred_iou_thresh if pred_iou_thresh > 0 else np.ones(iou.shape, bool)
            # (prompt, token) of each survivor; gathering them avoids copying all of low_res
            # (a strided view after the token selection) just to flatten it.
            rows, tokens = np.nonzero(passed)
            for g in range(0, len(rows), group):
                r, t = rows[g : g + group], tokens[g : g + group]
                logits = predictor.upscale(low_res[r, t])  # (G, ph, pw), within the budget
                masks, stab, areas = threshold_logits(
                    logits, mask_threshold, stability_score_offset
                )
                keep = areas > 0
                if stability_score_thresh > 0:
                    keep &= stab >= stability_score_thresh
                box = masks_to_boxes(masks) + np.array([x0, y0, x0, y0], dtype=np.float32)
                if is_crop:
                    keep &= ~box_near_crop_edge(
                        box, (x0, y0, x1, y1), full_hw, crop_edge_tolerance
                    )
                # Each group's arrays are released (del) before the next group is upscaled:
                # the next assignment alone would keep both groups alive for a moment.
                if not keep.any():
                    del logits, masks
                    continue
                kept = np.flatnonzero(keep)
                if covered is not None:
                    assert high_score_thresh is not None
                    region = covered[y0:y1, x0:x1]
                    for i in kept:
                        region |= logits[i] > high_score_thresh
                del logits  # the float32 maps go before the RLE work
                if is_crop and pasted is None:
                    pasted = np.zeros(full_hw, dtype=bool)
                # One mask at a time: masks[keep] would copy them all.
                rles = [_frame_rle(masks[i], pasted, (x0, y0, x1, y1)) for i in kept]
                del masks
                parts.append(
                    MaskCandidates(
                        rles,
                        box[kept],
                        iou[r, t][kept].astype(np.float32),
                        stab[kept],
                        areas[kept],
                        (prompts[start + r[kept]] + offset).astype(np.float32),
                    )
                )
    return PromptMasks(MaskCandidates.concat(parts, prompt_dim), len(prompts), covered)


def _frame_rle(
    mask: np.ndarray, canvas: np.ndarray | None, crop_box: tuple[int, int, int, int]
) -> dict[str, Any]:
    """RLE of one ``(h, w)`` mask in the full frame.

    With a ``canvas`` (the full frame, bool), the mask is a crop's: it is pasted at
    ``crop_box`` (XYXY), over the previous paste, the rest of the canvas staying empty.
    """
    if canvas is not None:
        x0, y0, x1, y1 = crop_box
        canvas[y0:y1, x0:x1] = mask
        mask = canvas
    return mask_to_rle(mask[None])[0]


# ------------------------------------------------------------------ strategy parameters


@dataclass(frozen=True)
class ParamRange:
    """The accepted values of one strategy keyword argument (see :func:`param`)."""

    kind: type
    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def describe(self) -> str:
        """``"an integer >= 1"``, ``"a number in [0, 1]"``, ``"a finite number"``."""
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return f"a finite {what.split()[-1]}" if self.kind is float else what

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to ``kind``, or a ValueError saying the value and the range."""
        if self.kind is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            converted: Any = int(value) if ok else None
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            converted = float(value) if ok else None
            ok = ok and math.isfinite(converted)
        if ok:
            low_ok = self.low is None or converted >= self.low
            high_ok = self.high is None or (
                converted < self.high if self.high_open else converted <= self.high
            )
            ok = low_ok and high_ok
        if not ok:
            kind = "" if isinstance(value, int | float) else f" ({type(value).__name__})"
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}{kind}")
        return converted


def param(
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
) -> Any:
    """A dataclass field for a strategy keyword argument, with its accepted range.

    The type is that of ``default`` (``int`` or ``float``); :func:`validate_params` checks and
    converts the values in ``__post_init__``. Example::

        points_per_side: int = param(32, low=1)
        pred_iou_thresh: float = param(0.88, low=0.0, high=1.0)
    """
    kind = int if isinstance(default, int) and not isinstance(default, bool) else float
    return dataclasses.field(
        default=default, metadata={"range": ParamRange(kind, low, high, high_open)}
    )


def validate_params(obj: Any) -> None:
    """Check (and convert to int/float) every :func:`param` field of frozen dataclass ``obj``.

    Raises:
        ValueError: ``"<name> must be <range>, got <value>"`` for the first bad field.
    """
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("range")
        if spec is not None:
            object.__setattr__(obj, f.name, spec.check(f.name, getattr(obj, f.name)))
