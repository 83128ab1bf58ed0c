"""The masked points as one labelled cloud (for a ``sensor_msgs/PointCloud2``), voxel-thinned.

A 640x480 frame's masks hold up to some 300 000 depth points; a planner or a viewer rarely wants
them all. Each instance's points are averaged per voxel (a cube of ``voxel_m``) on their own, so
two touching objects never share a point, and every point keeps its instance's id.

numpy only; points are in the camera's optical frame, metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .lift import Lifted


def voxel_downsample(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """The mean point of every occupied voxel (cube of side ``voxel_m``, aligned to 0).

    Args:
        points: ``(N, 3)`` finite points, metres.
        voxel_m: voxel side, metres; 0 returns the points as they are (as float32).

    Returns:
        ``(M, 3)`` float32, ``M <= N``, ordered by voxel.

    Raises:
        ValueError: ``points`` not ``(N, 3)``, or ``voxel_m`` negative or not finite.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected points (N, 3), got shape {pts.shape}")
    if not (isinstance(voxel_m, int | float) and math.isfinite(voxel_m) and voxel_m >= 0):
        raise ValueError(f"voxel_m must be a finite number >= 0 (metres), got {voxel_m!r}")
    if voxel_m == 0 or len(pts) == 0:
        return np.ascontiguousarray(pts, dtype=np.float32)
    return _voxel_means(pts, np.zeros(len(pts), dtype=np.int64), voxel_m)[0]


def _voxel_means(
    points: np.ndarray, labels: np.ndarray, voxel_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean point per occupied ``(label, voxel)``, and its label: every label's points are
    downsampled on their own, all in one sort. Ordered by label, then voxel."""
    axes = np.ascontiguousarray(points.T, dtype=np.float64)  # (3, N): each axis contiguous
    cells = np.floor(axes / voxel_m).astype(np.int64)
    cells -= cells.min(axis=1, keepdims=True)
    span = cells.max(axis=1) + 1
    per_label = int(span[0]) * int(span[1]) * int(span[2])
    if float(per_label) * (float(labels.max()) + 1) >= 2.0**62:
        # A cloud spanning kilometres at millimetre voxels: (label, cell) rows as keys.
        rows = np.column_stack((labels, cells.T))
        unique, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
        kept = unique[:, 0]
        inverse = inverse.reshape(-1)
    else:
        keys = labels * per_label + (cells[0] * span[1] + cells[1]) * span[2] + cells[2]
        # Stable: the keys come in long sorted runs (label by label, column by column), which
        # a merge sort takes as they are.
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        new = np.empty(len(keys), dtype=bool)
        new[0], new[1:] = True, ordered[1:] != ordered[:-1]
        inverse = np.empty(len(keys), dtype=np.intp)
        inverse[order] = np.cumsum(new) - 1
        kept = ordered[new] // per_label
        counts = np.bincount(inverse)
    out = np.empty((len(counts), 3), dtype=np.float32)
    for axis in range(3):
        out[:, axis] = np.bincount(inverse, weights=axes[axis], minlength=len(counts)) / counts
    return out, kept


def cloud_points(
    lifted: Sequence[Lifted], ids: Sequence[int], voxel_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """One cloud of every valid instance's points, each instance downsampled on its own.

    Args:
        lifted: from :func:`~.lift.lift_masks` with ``points=True``; instances that are not
            valid or carry no points are left out.
        ids: one id per instance (a track ID, or the instance's index), in ``[0, 2**32)``.
        voxel_m: voxel side, metres (0: every point).

    Returns:
        ``(M, 3)`` float32 xyz and ``(M,)`` uint32 id of each point.

    Raises:
        ValueError: ``ids`` not one per instance or out of range, or a bad ``voxel_m``.
    """
    if len(ids) != len(lifted):
        raise ValueError(f"got {len(lifted)} lifted instances but {len(ids)} ids: one id each")
    id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if id_array.size and (id_array.min() < 0 or id_array.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"ids must be in [0, 2**32), got {ids!r}")
    kept = [
        i
        for i, one in enumerate(lifted)
        if one.valid and one.points is not None and len(one.points)
    ]
    voxel_downsample(np.zeros((0, 3)), voxel_m)  # refuse a bad voxel_m even with no points
    if not kept:
        return np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.uint32)
    points = np.concatenate([lifted[i].points for i in kept])
    index = np.repeat(np.arange(len(kept)), [len(lifted[i].points) for i in kept])
    if voxel_m > 0:
        points, index = _voxel_means(points, index, voxel_m)
    return np.ascontiguousarray(points, dtype=np.float32), id_array[kept][index].astype(np.uint32)
