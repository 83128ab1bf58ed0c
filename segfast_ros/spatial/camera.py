"""Pinhole cameras from ``sensor_msgs/CameraInfo`` and depth resampled between two of them.

ROS's convention (REP 103/104): the optical frame has x right, y down, z forward; a point
``(X, Y, Z)`` projects to pixel ``u = fx X / Z + cx``, ``v = fy Y / Z + cy``, where integer
``(u, v)`` are pixel centres. Lens distortion is not modelled: RGB-D drivers publish depth
"aligned to color" on the rectified (or nearly distortion-free) colour geometry, and the
3D estimates here are medians over many pixels.

numpy only; the CameraInfo is duck-typed (rclpy or rosbags: ``k``, ``width``, ``height``,
``header.frame_id``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class CameraInfoError(ValueError):
    """A CameraInfo that cannot back-project pixels: what was wrong and what was expected."""


@dataclass(frozen=True)
class CameraModel:
    """The intrinsics of one image, in its pixels.

    Attributes:
        fx, fy: focal lengths in pixels (> 0).
        cx, cy: principal point in pixels (integer values are pixel centres).
        width, height: the image size the intrinsics belong to.
        frame_id: the optical frame (the CameraInfo's ``header.frame_id``).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    frame_id: str = ""

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise CameraInfoError(
                f"camera intrinsics must be finite with fx, fy > 0, got fx={self.fx}, "
                f"fy={self.fy}, cx={self.cx}, cy={self.cy}"
            )
        if self.width <= 0 or self.height <= 0:
            raise CameraInfoError(
                f"camera image size must be positive, got {self.width}x{self.height}"
            )

    @property
    def hw(self) -> tuple[int, int]:
        """``(height, width)`` of the image the intrinsics belong to."""
        return self.height, self.width

    def scaled_to(self, hw: tuple[int, int]) -> CameraModel:
        """The same camera (same field of view) rendered at ``hw = (H, W)`` pixels.

        Pixel edges scale, pixel centres do not: ``cx' = (cx + 0.5) * W' / W - 0.5``.
        """
        sy, sx = hw[0] / self.height, hw[1] / self.width
        return CameraModel(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=int(hw[1]),
            height=int(hw[0]),
            frame_id=self.frame_id,
        )

    def back_project(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``(N, 3)`` float64 points in the optical frame of pixels ``(u, v)`` at depths ``z``.

        Args:
            u, v: ``(N,)`` pixel columns and rows (centres at integers).
            z: ``(N,)`` depth along the optical axis, metres.
        """
        z = np.asarray(z, dtype=np.float64)
        x = (np.asarray(u, dtype=np.float64) - self.cx) * z / self.fx
        y = (np.asarray(v, dtype=np.float64) - self.cy) * z / self.fy
        return np.stack([x, y, z], axis=-1)

    def project(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel coordinates ``(u, v)`` of ``(N, 3)`` optical-frame points (Z > 0)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.stack(
            [self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], 1
        )

    def k(self) -> list[float]:
        """The row-major 3x3 ``K`` of a CameraInfo."""
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]


def camera_from_info(info: Any) -> CameraModel:
    """The :class:`CameraModel` of a ``sensor_msgs/CameraInfo`` (rclpy or rosbags).

    Raises:
        CameraInfoError: ``K`` all zero (an uncalibrated camera), not 9 finite numbers, with
            ``fx`` or ``fy`` not positive, or a zero ``width``/``height``; the message names
            the values and what was expected.
    """
    k = np.asarray(info.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise CameraInfoError(f"CameraInfo K must have 9 values (row-major 3x3), got {k.size}")
    if not np.any(k):
        raise CameraInfoError(
            "CameraInfo K is all zero (the camera is not calibrated); expected fx, fy > 0 at "
            "K[0], K[4] and the principal point at K[2], K[5]"
        )
    frame_id = str(getattr(getattr(info, "header", None), "frame_id", ""))
    return CameraModel(
        fx=float(k[0]),
        fy=float(k[4]),
        cx=float(k[2]),
        cy=float(k[5]),
        width=int(info.width),
        height=int(info.height),
        frame_id=frame_id,
    )


def resample_depth(depth: np.ndarray, source: CameraModel, target: CameraModel) -> np.ndarray:
    """Depth from one image's pixels into another's, both looking along the same optical axis.

    The depth image is "aligned to color" (same optical frame), only at other intrinsics (most
    often another resolution): each target pixel takes the nearest source pixel through the two
    cameras, ``u_s = fx_s / fx_t (u_t - cx_t) + cx_s``. Nearest, never interpolated: blending
    depth across an object's edge invents points between it and the background. Pixels that
    fall outside the source are NaN.

    Args:
        depth: ``(H_s, W_s)`` float32 metres, the size ``source`` describes.
        source: the depth image's camera.
        target: the camera whose pixels the result is in.

    Returns:
        ``(target.height, target.width)`` float32 metres.

    Raises:
        CameraInfoError: ``depth`` is not the size ``source`` describes.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != source.hw:
        raise CameraInfoError(
            f"depth image is {depth.shape[1]}x{depth.shape[0]} but its CameraInfo describes "
            f"{source.width}x{source.height}"
        )
    if source == target or (
        source.hw == target.hw
        and (source.fx, source.fy, source.cx, source.cy)
        == (target.fx, target.fy, target.cx, target.cy)
    ):
        return depth
    cols = np.rint(source.fx / target.fx * (np.arange(target.width) - target.cx) + source.cx)
    rows = np.rint(source.fy / target.fy * (np.arange(target.height) - target.cy) + source.cy)
    col_ok = (cols >= 0) & (cols < source.width)
    row_ok = (rows >= 0) & (rows < source.height)
    out = depth[
        np.clip(rows, 0, source.height - 1).astype(np.intp)[:, None],
        np.clip(cols, 0, source.width - 1).astype(np.intp)[None, :],
    ]
    if not (col_ok.all() and row_ok.all()):
        out = out.copy()
        out[~row_ok, :] = np.nan
        out[:, ~col_ok] = np.nan
    return out
