"""Small synthetic frames for the ROS tests."""

from __future__ import annotations

import numpy as np


def synthetic_scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """An RGB frame with a few flat-coloured shapes on a textured background."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 40 + 100).astype(np.uint8)
    img[10:50, 15:60] = (220, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 60) ** 2 + (xx - 90) ** 2 < 20**2] = (30, 200, 40)
    img[70:90, 10:40] = (40, 40, 210)
    return img
