"""Small generated frames for the ROS and replay tests: :func:`segfast_ros.bench.scenes.frame`
at the size the tests assert on (96x128: mono8 mask images, the empty-frame warning)."""

from __future__ import annotations

import numpy as np

from segfast_ros.bench.scenes import frame

#: ``(H, W)`` of the tests' frames.
SIZE = (96, 128)


def synthetic_scene(seed: int = 0) -> np.ndarray:
    """The generated ``SIZE`` frame of ``seed`` (``(H, W, 3)`` uint8 RGB)."""
    return frame(SIZE, seed)
