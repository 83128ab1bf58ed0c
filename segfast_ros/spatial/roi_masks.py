"""Many instances' mask pixels inside their ROIs, from column-major RLE, in a few numpy calls
for all instances together.

:func:`lift_masks <.lift.lift_masks>` reads each mask only inside its ROI. The RLE's runs of
mask pixels (every other run; run ends are cumulative sums) are clipped to their ROI's
columns, split where they wrap from one column into the next, clipped to the ROI's rows, and
expanded into pixel coordinates with ``np.repeat``: no dense mask is decoded to be searched.
Erosion needs pixels' neighbours, so the masks are drawn into one small canvas (each ROI's
columns as rows, its rows plus the erosion margin as columns, instances apart by twice the
margin), eroded in one cv2 call, and read back at the mask pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def checked_rois(rois: Sequence[Sequence[int]], hw: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` int64 ``(x, y, w, h)``, each inside the ``(H, W)`` image.

    Raises:
        ValueError: a ROI that is not 4 integers, negative, or reaching outside the image.
    """
    height, width = hw
    try:
        out = np.array(rois, dtype=np.int64).reshape(len(rois), 4)
    except (TypeError, ValueError, OverflowError):
        out = None
    if out is not None:
        x, y, w, h = out.T
        bad = (x < 0) | (y < 0) | (w < 0) | (h < 0) | (x + w > width) | (y + h > height)
        if not bad.any():
            return out
    for i, roi in enumerate(rois):  # say which one is wrong
        if len(roi) != 4:
            raise ValueError(
                f"ROI {i} {tuple(roi)} is not 4 integers (x_offset, y_offset, width, height)"
            )
        x, y, w, h = (int(v) for v in roi)
        if x < 0 or y < 0 or w < 0 or h < 0 or x + w > width or y + h > height:
            raise ValueError(
                f"ROI {i} (x_offset, y_offset, width, height) = {tuple(roi)} is not inside the "
                f"{width}x{height} image"
            )
    raise ValueError(f"ROIs must be integers (x_offset, y_offset, width, height), got {rois!r}")


@dataclass(frozen=True)
class MaskPixels:
    """Every instance's mask pixels inside its ROI, instance after instance, each column-major
    (column by column, top to bottom), like the RLE.

    Attributes:
        index: ``(n,)`` int32 column-major flat index ``u H + v`` of each pixel (column ``u``,
            row ``v``), as the RLE counts.
        bounds: ``(N + 1,)`` int64: instance ``i``'s pixels are ``[bounds[i], bounds[i + 1])``.
        mean_uv: ``(2, N)`` float64 each instance's mean pixel ``(u, v)``; NaN when empty.
        inner: ``(n,)`` bool: the pixel is in the mask eroded by ``erode_px`` (a square
            kernel), eroded as the whole image's mask would be, outside the ROI being
            background and beyond the image's edge not eroding (cv2's default); None when
            ``erode_px`` is 0.
    """

    index: np.ndarray
    bounds: np.ndarray
    mean_uv: np.ndarray
    inner: np.ndarray | None


def mask_pixels(
    counts: Sequence[np.ndarray], rois: np.ndarray, hw: tuple[int, int], erode_px: int
) -> MaskPixels:
    """Decode every instance's mask inside its ROI (and its erosion) in one pass.

    Args:
        counts: per instance, column-major run lengths over the ``(H, W)`` image, starting with
            a background run.
        rois: ``(N, 4)`` from :func:`checked_rois`.
        hw: ``(H, W)``.
        erode_px: erosion in pixels (the kernel is ``2 erode_px + 1`` square); 0: none.

    Raises:
        ValueError: an instance's counts that are empty, negative or do not sum to ``H * W``.
    """
    which, a, b, col = _pieces(counts, rois, hw)
    n = len(rois)
    size = b - a
    first = np.zeros(len(size) + 1, dtype=np.int64)
    np.cumsum(size, out=first[1:])
    at = np.searchsorted(which, np.arange(n + 1))  # instance i's pieces [at[i], at[i + 1])
    bounds = first[at]
    # Piece p's pixels: col H + a, col H + a + 1, ... at first[p], first[p] + 1, ...
    offset = (col * hw[0] + a - first[:-1]).astype(np.int32)
    index = np.arange(first[-1], dtype=np.int32) + np.repeat(offset, size)
    # Each instance's mean pixel, from its pieces (a column's rows a .. b - 1 each).
    sums = np.stack([col * size, (a + b - 1) * size / 2.0])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_uv = np.stack([np.bincount(which, s, minlength=n) for s in sums]) / np.diff(bounds)
    inner = None
    if erode_px and len(index):
        inner = _eroded_at(which, col, a, size, rois, hw, erode_px)
    return MaskPixels(index, bounds, mean_uv, inner)


def _pieces(
    counts: Sequence[np.ndarray], rois: np.ndarray, hw: tuple[int, int]
) -> tuple[np.ndarray, ...]:
    """``(instance, first row, end row, column)`` of every piece of mask: a run of mask pixels
    within one column and the ROI, instance after instance, column-major."""
    height, width = hw
    area = height * width
    n = len(counts)
    lengths = np.fromiter((len(c) for c in counts), dtype=np.int64, count=n)
    runs = np.concatenate([np.asarray(c).reshape(-1) for c in counts]).astype(np.int64)
    if (lengths == 0).any() or (runs < 0).any():
        bad = int(np.flatnonzero(lengths == 0)[0]) if (lengths == 0).any() else -1
        what = f"instance {bad} has none" if bad >= 0 else "a count is negative"
        raise ValueError(f"RLE counts must be non-negative run lengths; {what}")
    ends = np.cumsum(runs)  # instance i's runs lie in [i HW, (i + 1) HW)
    last = np.cumsum(lengths) - 1
    sums = np.diff(ends[last], prepend=0)
    if (sums != area).any():
        bad = int(np.flatnonzero(sums != area)[0])
        raise ValueError(
            f"RLE counts of instance {bad} sum to {int(sums[bad])}, expected H * W = {area}"
        )
    which = np.repeat(np.arange(n), lengths)
    odd = ((np.arange(len(runs)) - (last - lengths + 1)[which]) & 1).astype(bool)  # mask runs
    which, ends, runs = which[odd], ends[odd], runs[odd]
    x, y, w, h = (rois[which, k] for k in range(4))
    base = which * area
    start = np.maximum(ends - runs - base, x * height)  # clipped to the ROI's columns
    stop = np.minimum(ends - base, (x + w) * height)
    keep = stop > start
    which, start, stop, y, h = which[keep], start[keep], stop[keep], y[keep], h[keep]
    # One piece per column a run covers.
    first_col, last_col = start // height, (stop - 1) // height
    spans = last_col - first_col + 1
    run = np.repeat(np.arange(len(spans)), spans)
    col = first_col[run] + np.arange(len(run)) - np.repeat(np.cumsum(spans) - spans, spans)
    top = np.maximum(start[run] - col * height, y[run])  # clipped to the ROI's rows
    bottom = np.minimum(np.minimum(stop[run] - col * height, height), y[run] + h[run])
    keep = bottom > top
    return which[run][keep], top[keep], bottom[keep], col[keep]


def _eroded_at(
    which: np.ndarray,
    col: np.ndarray,
    a: np.ndarray,
    size: np.ndarray,
    rois: np.ndarray,
    hw: tuple[int, int],
    margin: int,
) -> np.ndarray:
    """``(n,)`` bool: whether each mask pixel survives erosion by ``margin``, the pixels in the
    pieces' order (instance ``which``, image column ``col``, rows ``a .. a + size - 1``).

    The masks are drawn into one canvas: instance ``i``'s ROI columns are rows, ``margin``
    rows apart from the next instance's on either side; its columns are a window of the image
    column holding the ROI's rows and ``margin`` more on either side, kept inside the image, so
    that where the window meets the image's top or bottom it meets the canvas's edge, which
    does not erode. Rows beyond the image's left or right edge are ones (no erosion there).
    The canvas read row by row visits the pixels in the pieces' order.
    """
    height, width = hw
    x, y, w, h = (rois[:, k] for k in range(4))
    span = min(int((h + 2 * margin).max()), height)  # the canvas's columns
    top = np.clip(y - margin, 0, height - span)  # each window's first image row
    slots = w + 2 * margin
    first = np.zeros(len(rois) + 1, dtype=np.int64)
    np.cumsum(slots, out=first[1:])
    row0 = first[:-1] + margin - x  # canvas row of image column u is row0 + u
    # The canvas as runs: before each piece the background since the previous one.
    start = (row0[which] + col) * span + (a - top[which])
    runs = np.empty(2 * len(start) + 1, dtype=np.int64)
    runs[1:-1:2] = size
    runs[0:-1:2] = start - np.concatenate(([0], start[:-1] + size[:-1]))
    runs[-1] = int(first[-1]) * span - start[-1] - size[-1]
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    canvas = np.repeat(values, runs).reshape(-1, span)
    row_u = np.arange(int(first[-1])) - np.repeat(row0, slots)
    beyond = np.flatnonzero((row_u < 0) | (row_u >= width))
    canvas[beyond] = 1
    eroded = cv2.erode(canvas, np.ones((2 * margin + 1, 2 * margin + 1), dtype=np.uint8))
    canvas[beyond] = 0
    return eroded.view(bool)[canvas.view(bool)]
