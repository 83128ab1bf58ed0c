"""Mask utilities every SegEvery strategy shares: RLE, boxes, NMS, stability, clean-up.

Pure functions of arrays: vectorised numpy/cv2 (no per-pixel Python), no model; of the runtime
only the :class:`~segfast_ros.runtime.transforms.Region` of upscaled logits.
Frames: masks and boxes are in pixels of the *original* image unless a function says otherwise;
boxes are XYXY pixel edges (``x2 = last column + 1``, so ``x2 - x1`` is the width in pixels).

Sections:

* :class:`Instance`, one segmented instance, what every strategy returns.
* RLE: :func:`mask_to_rle`, :func:`rle_to_mask`, :func:`rle_area` (COCO uncompressed RLE, read
  by ``pycocotools.mask.frPyObjects``); :func:`window_run_lengths` (a mask's, from its box).
* Scores and boxes: :func:`stability_score`, :func:`threshold_windows` (masks, stability,
  areas and boxes, each mask kept as its box; :func:`threshold_regions` from upscaled regions),
  :func:`masks_to_boxes`,
  :func:`box_area`, :func:`box_iou`, :func:`nms`, :func:`box_near_crop_edge`.
* Clean-up: :func:`remove_small_regions`.

The decode pipeline that turns prompts into filtered candidates with these is
:mod:`segfast_ros.segevery.candidates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from .runtime.transforms import Region


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
    """Column-major run lengths of one ``(H, W)`` bool mask: those of its box
    (:func:`window_run_lengths`), as the rest of the frame is background."""
    box = _tight_box(mask)
    if box is None:
        return np.array([mask.size], dtype=np.int64)
    y0, y1, x0, x1 = box
    return window_run_lengths(mask[y0:y1, x0:x1], (x0, y0), mask.shape)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: the rows and columns of a 2-D bool mask's pixels; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return y0, y1, int(cols[0]), int(cols[-1]) + 1


def window_run_lengths(
    window: np.ndarray, origin: tuple[int, int], hw: tuple[int, int]
) -> np.ndarray:
    """:func:`mask_to_rle`'s int64 counts of an ``(H, W)`` frame that is background outside
    the ``(h, w)`` ``window`` (nonzero is foreground) at ``origin = (x0, y0)``; a ValueError
    when the window does not lie inside the frame.

    The work is the window's, not the frame's. A run edge is where a pixel differs from the
    one above it (background above and below the window), read in the window's own row-major
    layout; only the few edges are sorted into column-major order (a transposed copy of an 8K
    mask took 100 ms, this 15). Where the window spans every row, a run that ends a column and
    one that starts the next meet at one index, which is no edge at all.
    """
    window = np.asarray(window)
    h, w = window.shape
    x0, y0 = int(origin[0]), int(origin[1])
    fh, fw = int(hw[0]), int(hw[1])
    if x0 < 0 or y0 < 0 or x0 + w > fw or y0 + h > fh:
        raise ValueError(
            f"a {w}x{h} (W x H) window at (x0, y0) = ({x0}, {y0}) does not lie inside the "
            f"{fw}x{fh} frame"
        )
    total = fh * fw
    if h * w == 0:
        return np.array([total], dtype=np.int64)
    window = window.astype(bool, copy=False)
    # flatnonzero and divmod: np.nonzero on a 2-D array is ten times slower.
    row, col = np.divmod(np.flatnonzero(window[1:] != window[:-1]), w)
    top, bottom = np.flatnonzero(window[0]), np.flatnonzero(window[-1])
    at = [(col + x0) * fh + (row + y0 + 1), (top + x0) * fh + y0, (bottom + x0) * fh + y0 + h]
    edges = np.sort(np.concatenate(at))
    if h == fh:  # an end of column and the next start at the same index cancel
        same = np.flatnonzero(edges[1:] == edges[:-1])
        edges = np.delete(edges, np.concatenate((same, same + 1)))
    if edges.size and edges[-1] == total:  # a run that ends with the frame
        edges = edges[:-1]
    return np.diff(np.concatenate(([0], edges, [total]))).astype(np.int64, copy=False)


def rle_counts(rle: dict[str, Any]) -> np.ndarray:
    """The run lengths of an uncompressed COCO RLE as a flat int64 array.

    Raises:
        ValueError: compressed (string) counts, which only pycocotools decodes.
    """
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


@dataclass(frozen=True)
class MaskWindows:
    """Thresholded masks, each kept as the window of its box (struct of arrays).

    Attributes:
        windows: ``G`` bool arrays: mask ``i`` inside ``boxes[i]``; ``(0, 0)`` when not made.
        boxes: ``(G, 4)`` float32 XYXY pixel edges (all zeros for an empty mask).
        stability: ``(G,)`` float32.
        areas: ``(G,)`` int64 mask pixels.
    """

    windows: list[np.ndarray]
    boxes: np.ndarray
    stability: np.ndarray
    areas: np.ndarray

    def origin(self, i: int) -> tuple[int, int]:
        """``(x0, y0)``: the top-left pixel of mask ``i``'s window."""
        return int(self.boxes[i, 0]), int(self.boxes[i, 1])

    @staticmethod
    def concat(parts: Sequence[MaskWindows]) -> MaskWindows:
        """The masks of ``parts``, in order."""
        return MaskWindows(
            [w for p in parts for w in p.windows],
            np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
            np.concatenate([p.stability for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.areas for p in parts]).astype(np.int64, copy=False),
        )


def threshold_windows(
    logits: np.ndarray, mask_threshold: float = 0.0, offset: float = 1.0, min_stability: float = 0
) -> MaskWindows:
    """Masks, boxes, stability scores and areas of ``(G, H, W)`` float logits (``logits >
    mask_threshold``, :func:`stability_score`, :func:`masks_to_boxes`), each kept as its box:
    one pass over each full frame finds the pixels above the lowest threshold, whose rows and
    columns bound the rest of the work (a few percent of the frame for SegEvery's masks). A
    mask less stable than ``min_stability`` (one a filter drops) is not made: area 0, no box."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"expected logits (G, H, W), got shape {logits.shape}")
    return threshold_regions(
        [Region(frame, 0, 0) for frame in logits], mask_threshold, offset, min_stability
    )


def lowest_threshold(mask_threshold: float, offset: float) -> float:
    """The lowest of the mask threshold and the stability band's edges: below it no pixel
    counts for a mask or its stability score."""
    return min(mask_threshold - offset, mask_threshold, mask_threshold + offset)


def threshold_regions(
    regions: Sequence[Region | None],
    mask_threshold: float = 0.0,
    offset: float = 1.0,
    min_stability: float = 0,
) -> MaskWindows:
    """:func:`threshold_windows` of masks given as regions: the logits of a rectangle outside
    which every pixel is at most :func:`lowest_threshold` (``runtime.transforms.
    upscale_regions``), or None for a mask with no pixel above it. Boxes are in the frame's
    pixels."""
    g = len(regions)
    low = lowest_threshold(mask_threshold, offset)
    windows: list[np.ndarray] = []
    boxes = np.zeros((g, 4), dtype=np.float32)
    inter, union, areas = (np.zeros(g, dtype=np.int64) for _ in range(3))
    empty = Region(np.zeros((0, 0), np.float32), 0, 0)
    for i, region in enumerate(regions):
        window = np.zeros((0, 0), dtype=bool)
        region = region or empty
        frame, oy, ox = region.logits, region.y0, region.x0
        loose = np.greater(frame, low)
        region_box = _tight_box(loose)
        if region_box is not None:
            ry0, ry1, rx0, rx1 = region_box
            sub, band = frame[ry0:ry1, rx0:rx1], loose[ry0:ry1, rx0:rx1]
            if low != mask_threshold - offset:  # loose is the band's low side unless offset < 0
                np.greater(sub, mask_threshold - offset, out=band)
            union[i] = np.count_nonzero(band)
            inter[i] = np.count_nonzero(np.greater(sub, mask_threshold + offset, out=band))
            stable = _stability(inter[i], union[i]) >= min_stability
            # The mask reuses the band's buffer; unmade (unstable): empty, no box.
            mask = np.greater(sub, mask_threshold, out=band) if stable else band[:0, :0]
            box = _tight_box(mask)
            if box is not None:
                y0, y1, x0, x1 = box
                window = mask[y0:y1, x0:x1]
                areas[i] = np.count_nonzero(window)
                boxes[i] = (ox + rx0 + x0, oy + ry0 + y0, ox + rx0 + x1, oy + ry0 + y1)
        windows.append(window)
    return MaskWindows(windows, boxes, _stability(inter, union), areas)


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
