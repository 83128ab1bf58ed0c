"""A target's appearance: a coarse colour histogram of the pixels under its mask.

Real trackers keep an appearance model beside the geometry: a mask that keeps its place but
changes colour has slid onto an occluder or a neighbour. The model here is a normalized
joint RGB histogram with :data:`BINS` bins per channel (coarse, so the scene's lighting
gradients and an object's texture stay in one or two bins), compared with the Bhattacharyya
coefficient (1 = the same distribution, 0 = no colour in common). A target's model is taken
once, from the mask it was added (or prompted again) with, and not updated while it is tracked
(see :mod:`.target_state`).

numpy/cv2 only.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Histogram bins per RGB channel.
BINS: int = 4


def colour_histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``(BINS**3,)`` float32 normalized RGB histogram of ``image`` under ``mask``.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool, the same size.

    Returns:
        The histogram (sums to 1), or None when the mask is empty.

    Raises:
        ValueError: an image that is not ``(H, W, 3)`` uint8, or a mask of another size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} {image.dtype}")
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"image {image.shape[:2]} and mask {mask.shape} must have the same (H, W)"
        )
    m = mask.astype(np.uint8)
    hist = cv2.calcHist([image], [0, 1, 2], m, [BINS] * 3, [0, 256] * 3).ravel()
    total = float(hist.sum())
    return (hist / total).astype(np.float32) if total > 0 else None


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya coefficient of two normalized histograms, in [0, 1]."""
    return float(np.sqrt(a * b).sum())


def bin_index(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` int: the histogram bin of every pixel of an ``(H, W, 3)`` uint8 image."""
    q = (image.astype(np.int32) * BINS) >> 8
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def target_colours(image: np.ndarray, model: np.ndarray, min_weight: float) -> np.ndarray:
    """``(H, W)`` bool: pixels whose colour bin holds at least ``min_weight`` of ``model``."""
    return (model >= min_weight)[bin_index(image)]
