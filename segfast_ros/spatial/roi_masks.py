"""Many instances' masks inside their ROIs, from column-major RLE, at little cost per instance.

:func:`lift_masks <.lift.lift_masks>` reads each mask only inside its ROI. Decoding an RLE
for a ROI's columns is a slice of its runs (run ends are cumulative sums), so all instances
are decoded at once: their runs are concatenated, clipped to their ROI's column range and
expanded in one ``np.repeat``. Each mask is then a view ``(w, H)`` of that buffer, its ROI
rows a slice: masks stay column-major (transposed, ``(w, h)``), as the RLE is, and the depth
maps they select from are transposed once per frame to match.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np


def checked_rois(rois: Sequence[Sequence[int]], hw: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` int64 ``(x, y, w, h)``, each inside the ``(H, W)`` image.

    Raises:
        ValueError: a ROI that is not 4 integers, negative, or reaching outside the image.
    """
    height, width = hw
    out = np.zeros((len(rois), 4), dtype=np.int64)
    for i, roi in enumerate(rois):
        x, y, w, h = (int(v) for v in roi)
        if x < 0 or y < 0 or w < 0 or h < 0 or x + w > width or y + h > height:
            raise ValueError(
                f"ROI {i} (x_offset, y_offset, width, height) = {tuple(roi)} is not inside the "
                f"{width}x{height} image"
            )
        out[i] = x, y, w, h
    return out


def decode_columns(
    counts: Sequence[np.ndarray], rois: np.ndarray, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every instance's mask over its ROI's full columns, decoded in one pass.

    Args:
        counts: per instance, column-major run lengths over the ``(H, W)`` image, starting with
            a background run.
        rois: ``(N, 4)`` from :func:`checked_rois`.
        hw: ``(H, W)``.

    Returns:
        ``(buffer, offsets)``: uint8 0/1; instance ``i``'s columns ``x .. x + w - 1`` are
        ``buffer[offsets[i]:offsets[i + 1]].reshape(w, H)`` (one column per row).

    Raises:
        ValueError: an instance's counts that are empty or do not sum to ``H * W``.
    """
    height, width = hw
    area = height * width
    n = len(counts)
    lengths = np.fromiter((len(c) for c in counts), dtype=np.int64, count=n)
    runs = np.concatenate([np.asarray(c).reshape(-1) for c in counts]).astype(np.int64)
    # Each instance's runs cover H * W positions, so instance i's lie in [i HW, (i + 1) HW).
    if (lengths == 0).any() or (runs < 0).any():
        bad = int(np.flatnonzero(lengths == 0)[0]) if (lengths == 0).any() else -1
        what = f"instance {bad} has none" if bad >= 0 else "a count is negative"
        raise ValueError(f"RLE counts must be non-negative run lengths; {what}")
    ends = np.cumsum(runs)
    last = np.cumsum(lengths) - 1
    sums = np.diff(ends[last], prepend=0)
    if (sums != area).any():
        bad = int(np.flatnonzero(sums != area)[0])
        raise ValueError(
            f"RLE counts of instance {bad} sum to {int(sums[bad])}, expected H * W = {area}"
        )
    base = np.arange(n, dtype=np.int64) * area + rois[:, 0] * height
    low = np.repeat(base, lengths)
    high = np.repeat(base + rois[:, 2] * height, lengths)
    # Each run clipped to its instance's column range (runs outside it get length 0).
    clipped = np.minimum(ends, high) - np.maximum(ends - runs, low)
    np.maximum(clipped, 0, out=clipped)
    first = np.repeat(last - lengths + 1, lengths)
    parity = ((np.arange(len(runs)) - first) & 1).astype(np.uint8)  # odd runs are the mask
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(rois[:, 2] * height, out=offsets[1:])
    return np.repeat(parity, clipped), offsets


def erode_t(
    mask_t: np.ndarray, roi: Sequence[int], hw: tuple[int, int], kernel: np.ndarray
) -> np.ndarray:
    """A transposed ROI mask ``(w, h)`` eroded as the whole image's mask would be.

    Outside the ROI is background, except beyond the image's edge, which does not erode
    (cv2's default border): a mask cut by the image edge keeps its pixels there. The kernel is
    square, so eroding the transposed mask is the transposed erosion.
    """
    m = kernel.shape[0] // 2
    x, y, w, h = roi
    before_u, after_u = min(m, x), min(m, hw[1] - x - w)
    before_v, after_v = min(m, y), min(m, hw[0] - y - h)
    if before_u == after_u == before_v == after_v == m:  # inside the image: one call
        # Contiguous: on a strided view cv2 splits the work over threads, slower for small masks.
        mask_t = np.ascontiguousarray(mask_t)
        return cv2.erode(mask_t, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    padded = cv2.copyMakeBorder(
        mask_t, before_u, after_u, before_v, after_v, cv2.BORDER_CONSTANT, value=0
    )
    return cv2.erode(padded, kernel)[before_u : before_u + w, before_v : before_v + h]


@functools.lru_cache(maxsize=4)
def pixel_indices_t(hw: tuple[int, int]) -> np.ndarray:
    """``(W, H)`` int32: the column-major flat index ``u H + v`` of every pixel (read-only).

    A mask's selected pixels' indices are then one boolean gather of a view of it.
    """
    height, width = hw
    out = np.arange(height * width, dtype=np.int32).reshape(width, height)
    out.flags.writeable = False
    return out
