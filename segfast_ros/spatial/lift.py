"""Masks to 3D: each mask's robust centroid, extent and valid-depth numbers from aligned depth.

The depth image is "aligned to color": one depth value (metres along the optical axis) per
colour pixel, so a mask selects its depth pixels directly. For each instance:

1. its RLE is decoded only for the columns of its ROI (cumulative run ends, sliced);
2. the mask is eroded by ``erode_px`` within the ROI plus that margin: pixels at a mask's edge
   mix the object's depth with the background's (flying pixels, a mask a pixel too wide);
   erosion falls back to the plain mask when it would leave fewer than ``min_points`` valid
   points (small or thin objects);
3. the depth pixels under it that are valid (finite, inside ``[min_m, max_m]``, never 0) are
   back-projected through the colour camera;
4. the centroid's depth Z is the median of those valid depths (a few wrong depths do not
   move it); its X and Y are the ray through the plain mask's pixel centroid (mean u, mean v)
   at that depth. A per-axis median of the points would not do: for a lopsided shape (an L, a
   handle) the median pixel column and row are not the shape's centre, and on a surface facing
   the camera the visible surface's mean is the ray through the pixel centroid. The plain mask
   (all its pixels, valid depth or not) gives that centroid: erosion and holes in the depth
   would shift it;
5. the axis-aligned box is the ``[p, 100 - p]`` per-axis percentiles of the points, and the
   optional oriented box the same percentiles along the points' principal axes (PCA).

Everything is in the camera's optical frame (x right, y down, z forward; REP 103), metres.
Pixels outside an instance's ROI are not read (for the tight boxes of SegEvery and the
trackers the ROI holds the whole mask). numpy and cv2 only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..masks import mask_run_lengths
from ..segevery.settings import check_bool, param, settings_from_dict, validate_params
from .camera import CameraModel
from .roi_masks import checked_rois, decode_columns, erode_t, pixel_indices_t

Vec3 = tuple[float, float, float]
_ZERO3: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True, kw_only=True)
class LiftSettings:
    """How a mask and an aligned depth image become a 3D position.

    Checked on construction: a value out of range raises a ValueError naming the field, the
    accepted range and the value. Build one from node parameters or a config file with
    :meth:`from_dict`; change one field with ``dataclasses.replace``.

    Attributes:
        erode_px: pixels peeled off each mask's edge before its depth is read, so depth from
            the background just outside the object (mask a pixel too wide, flying pixels at
            depth edges) does not enter the estimate. 0 uses the mask as it is. Small objects
            fall back to the plain mask when erosion would leave fewer than min_points.
        min_m: nearest valid depth, metres. Closer readings (and 0, the usual no-data value)
            are ignored; set it to the sensor's minimum range.
        max_m: farthest valid depth, metres. Farther readings are ignored; set it to the
            sensor's useful range (stereo depth gets noisy far away).
        min_points: least valid depth points a mask needs for a 3D position; with fewer its
            position_3d is published with valid false (num_points and valid_fraction still
            say what was found).
        extent_percentile: the 3D boxes span the [p, 100 - p] percentiles of the points along
            each axis, so a few stray points do not inflate them. 0 spans all points.
        oriented_boxes: also fit an oriented 3D box (principal axes of the points): tighter
            around tilted or elongated objects than the axis-aligned box, a little more work.
    """

    erode_px: int = param(3, low=0, high=50)
    min_m: float = param(0.1, low=0.0, high=1000.0)
    max_m: float = param(20.0, low=0.001, high=1000.0)
    min_points: int = param(20, low=1, high=10_000_000)
    extent_percentile: float = param(2.0, low=0.0, high=25.0)
    oriented_boxes: bool = False

    def __post_init__(self) -> None:
        validate_params(self)
        check_bool("oriented_boxes", self.oriented_boxes)
        if self.max_m <= self.min_m:
            raise ValueError(
                f"max_m must be greater than min_m, got min_m={self.min_m}, max_m={self.max_m}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LiftSettings:
        """Settings from ``{field: value}`` (missing fields keep their defaults).

        Raises:
            ValueError: an unknown field (the message lists the accepted ones), or a value out
                of its range or of the wrong type (names the field and the range).
        """
        return settings_from_dict(cls, values, "depth")


DEFAULT_SETTINGS = LiftSettings()


@dataclass(frozen=True)
class Lifted:
    """One mask in 3D (the fields of ``Position3D.msg``), optical frame, metres.

    Attributes:
        valid: at least ``min_points`` valid depth points were found; the geometry fields are
            zeros otherwise.
        centroid: ``Z`` the median of the valid depths inside the (eroded) mask, ``X, Y`` the
            ray through the plain mask's pixel centroid at that depth:
            ``X = (mean u - cx) Z / fx``, ``Y = (mean v - cy) Z / fy``.
        min: axis-aligned box corner, the ``extent_percentile`` percentile per axis.
        max: the other corner, the ``100 - extent_percentile`` percentile.
        obb_center: the oriented box's centre (zeros unless ``oriented_boxes``).
        obb_orientation: its rotation, quaternion ``(x, y, z, w)``: the box's x axis is the
            points' longest principal axis, z the shortest.
        obb_size: its edge lengths along its own x, y, z.
        num_points: valid depth points used.
        valid_fraction: ``num_points`` over the pixels of the mask used (eroded, or plain when
            erosion fell back); 0 for an empty mask.
        points: ``(num_points, 3)`` float32 points when asked for (``points=True``), else None.
    """

    valid: bool
    centroid: Vec3 = _ZERO3
    min: Vec3 = _ZERO3
    max: Vec3 = _ZERO3
    obb_center: Vec3 = _ZERO3
    obb_orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    obb_size: Vec3 = _ZERO3
    num_points: int = 0
    valid_fraction: float = 0.0
    points: np.ndarray | None = field(default=None, compare=False, repr=False)


def lift_masks(
    counts: Sequence[np.ndarray],
    rois: Sequence[tuple[int, int, int, int]],
    depth: np.ndarray,
    camera: CameraModel,
    settings: LiftSettings = DEFAULT_SETTINGS,
    *,
    points: bool = False,
) -> list[Lifted]:
    """Each mask's 3D position from an aligned depth image.

    Args:
        counts: per instance, column-major RLE run lengths over the whole ``(H, W)`` image,
            starting with a background run (``InstanceRecord.rle_counts``).
        rois: per instance ``(x_offset, y_offset, width, height)`` holding its mask
            (``InstanceRecord.roi``); only these pixels are read.
        depth: ``(H, W)`` float metres at the colour image's pixels (``== camera.hw``, the
            masks' size); 0, NaN, inf and values outside ``[min_m, max_m]`` are no data.
        camera: the colour camera (pixels to rays).
        settings: erosion, valid range, minimum points, extent percentile, oriented boxes.
        points: also return each instance's valid points (``Lifted.points``).

    Returns:
        One :class:`Lifted` per instance, in order.

    Raises:
        ValueError: depth not 2-D float of ``camera.hw``, counts and rois of different
            lengths, a ROI outside the image, or counts that do not sum to ``H * W``.
    """
    depth = _checked_depth(depth, camera)
    if len(counts) != len(rois):
        raise ValueError(f"got {len(counts)} RLE counts but {len(rois)} ROIs; expected one each")
    if not len(counts):
        return []
    boxes = checked_rois(rois, camera.hw)
    buffer, offsets = decode_columns(counts, boxes, camera.hw)
    frame = _Frame(depth, camera, settings)
    chosen = [
        frame.select(buffer[offsets[i] : offsets[i + 1]], roi)
        for i, roi in enumerate(boxes.tolist())
    ]
    # One gather of every instance's points: (3, sum of n), instance i's at bounds[i]:[i + 1].
    bounds = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum([len(c[0]) for c in chosen], out=bounds[1:])
    xyz = frame.xyz.take(np.concatenate([c[0] for c in chosen]), axis=1)
    return [
        frame.lifted(xyz[:, bounds[i] : bounds[i + 1]], pixels, ray, points)
        for i, (_, pixels, ray) in enumerate(chosen)
    ]


def mask_refs(masks: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """``(counts, rois)`` for :func:`lift_masks` from ``(N, H, W)`` dense masks (tight ROIs)."""
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
    counts = [c.astype(np.uint32) for c in mask_run_lengths(masks)]
    rois = []
    for m in masks:
        cols = np.flatnonzero(m.any(axis=0))
        rows = np.flatnonzero(m.any(axis=1))
        if cols.size == 0:
            rois.append((0, 0, 0, 0))
        else:
            x0, y0 = int(cols[0]), int(rows[0])
            rois.append((x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0))
    return counts, rois


def lift_dense(
    masks: np.ndarray,
    depth: np.ndarray,
    camera: CameraModel,
    settings: LiftSettings = DEFAULT_SETTINGS,
    *,
    points: bool = False,
) -> list[Lifted]:
    """:func:`lift_masks` for ``(N, H, W)`` dense bool masks."""
    counts, rois = mask_refs(masks)
    return lift_masks(counts, rois, depth, camera, settings, points=points)


# ------------------------------------------------------------------------------ one mask


def _checked_depth(depth: np.ndarray, camera: CameraModel) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(
            f"depth must be a 2-D float image in metres, got shape {depth.shape} dtype "
            f"{depth.dtype} (16UC1 millimetres: convert with pipeline.depth.depth_msg_to_metres)"
        )
    if depth.shape != camera.hw:
        raise ValueError(
            f"depth is {depth.shape[1]}x{depth.shape[0]} but the camera (and masks) are "
            f"{camera.width}x{camera.height}; resample it first (spatial.camera.resample_depth)"
        )
    return depth


class _Frame:
    """One depth image ready for lifting, column-major like the RLE (see :mod:`.roi_masks`):
    which pixels are valid and their points, computed once for all instances."""

    def __init__(self, depth: np.ndarray, camera: CameraModel, settings: LiftSettings) -> None:
        self.settings = settings
        self.hw = camera.hw
        self.fx, self.fy, self.cx, self.cy = camera.fx, camera.fy, camera.cx, camera.cy
        height, width = self.hw
        depth_t = cv2.transpose(depth.astype(np.float32, copy=False))  # (W, H)
        lo = settings.min_m if settings.min_m > 0 else float(np.finfo(np.float32).tiny)
        with np.errstate(invalid="ignore"):
            self.valid_t = (depth_t >= lo) & (depth_t <= settings.max_m)
        # X, Y, Z of every pixel, flat column-major (u H + v): one gather reads all masks' points.
        xyz = np.empty((3, width, height), dtype=np.float32)
        rays_x = ((np.arange(width) - camera.cx) / camera.fx).astype(np.float32)
        rays_y = ((np.arange(height) - camera.cy) / camera.fy).astype(np.float32)
        np.multiply(depth_t, rays_x[:, None], out=xyz[0])
        np.multiply(depth_t, rays_y[None, :], out=xyz[1])
        xyz[2] = depth_t
        self.xyz = xyz.reshape(3, width * height)
        self.index_t = pixel_indices_t(self.hw)
        e = settings.erode_px
        self.kernel = np.ones((2 * e + 1, 2 * e + 1), dtype=np.uint8) if e > 0 else None
        p = settings.extent_percentile
        self.quantiles = (p, 50.0, 100.0 - p)

    def select(
        self, columns: np.ndarray, roi: list[int]
    ) -> tuple[np.ndarray, int, tuple[float, float]]:
        """``(flat column-major indices of the valid pixels used, pixels of the mask used, the
        ray (x/z, y/z) through the plain mask's pixel centroid)``.

        Args:
            columns: the instance's ``(w * H,)`` decoded ROI columns.
            roi: ``[x, y, w, h]``.
        """
        x, y, w, h = roi
        height = self.hw[0]
        if w == 0 or h == 0:
            return np.zeros(0, dtype=np.int64), 0, (0.0, 0.0)
        mask_t = columns.reshape(w, height)[:, y : y + h]
        ray = self.centroid_ray(mask_t, x, y)
        ok = self.valid_t[x : x + w, y : y + h]
        sel = None
        if self.kernel is not None:
            eroded = erode_t(mask_t, roi, self.hw, self.kernel).view(bool)
            sel = np.logical_and(eroded, ok)
            if np.count_nonzero(sel) >= self.settings.min_points:
                pixels = np.count_nonzero(eroded)
            else:
                sel = None  # too few left: a small or thin object keeps its edge pixels
        if sel is None:
            sel = np.logical_and(mask_t.view(bool), ok)
            pixels = np.count_nonzero(mask_t)
        return self.index_t[x : x + w, y : y + h][sel], int(pixels), ray

    def centroid_ray(self, mask_t: np.ndarray, x: int, y: int) -> tuple[float, float]:
        """``(x/z, y/z)`` of the ray through a ``(w, h)`` ROI mask's mean pixel."""
        total = np.count_nonzero(mask_t)
        if total == 0:
            return 0.0, 0.0
        per_u = np.count_nonzero(mask_t, axis=1)
        per_v = np.count_nonzero(mask_t, axis=0)
        mean_u = x + float(per_u @ np.arange(len(per_u))) / total
        mean_v = y + float(per_v @ np.arange(len(per_v))) / total
        return (mean_u - self.cx) / self.fx, (mean_v - self.cy) / self.fy

    def lifted(self, xyz: np.ndarray, pixels: int, ray: tuple[float, float], want: bool) -> Lifted:
        """The instance's :class:`Lifted` from its ``(3, n)`` valid points."""
        n = xyz.shape[1]
        fraction = n / pixels if pixels else 0.0
        cloud = np.ascontiguousarray(xyz.T) if want else None
        if n < self.settings.min_points:
            return Lifted(False, num_points=n, valid_fraction=fraction, points=cloud)
        obb = _oriented_box(xyz.T, self.quantiles) if self.settings.oriented_boxes else _NO_BOX
        # xyz is this instance's slice of a gather made for this call: reordered in place.
        low, (_, _, z), high = _quantiles(xyz, self.quantiles, in_place=True)
        return Lifted(
            True,
            centroid=(ray[0] * z, ray[1] * z, z),
            min=low,
            max=high,
            obb_center=obb[0],
            obb_orientation=obb[1],
            obb_size=obb[2],
            num_points=n,
            valid_fraction=fraction,
            points=cloud,
        )


#: Fewer points than this are sorted rather than partitioned: numpy's SIMD sort is faster there.
_SORT_BELOW = 2048
_NO_BOX = (_ZERO3, (0.0, 0.0, 0.0, 1.0), _ZERO3)


def _quantiles(values: np.ndarray, qs: Sequence[float], *, in_place: bool = False) -> list[Vec3]:
    """``np.percentile(values, q, axis=1)`` (linear) for each ``q``.

    Args:
        values: ``(3, n)``, ``n >= 1``; each row reordered when ``in_place``.
    """
    n = values.shape[1]
    pos = [q / 100.0 * (n - 1) for q in qs]
    below = [int(p) for p in pos]  # floor: p >= 0
    above = [b + 1 if b + 1 < n else b for b in below]
    ordered = values if in_place else values.copy()
    if n < _SORT_BELOW:
        ordered.sort(axis=1)
    else:
        ordered.partition(sorted(set(below + above)), axis=1)
    picked = ordered[:, below + above].T.tolist()
    k = len(pos)
    out = []
    for i in range(k):
        lo, hi, t = picked[i], picked[k + i], pos[i] - below[i]
        out.append(
            (lo[0] + (hi[0] - lo[0]) * t, lo[1] + (hi[1] - lo[1]) * t, lo[2] + (hi[2] - lo[2]) * t)
        )
    return out


def _oriented_box(
    points: np.ndarray, qs: Sequence[float]
) -> tuple[Vec3, tuple[float, float, float, float], Vec3]:
    """``(center, quaternion xyzw, size)`` of the percentile box along the principal axes.

    ``qs``: the ``(p, ..., 100 - p)`` percentiles of :class:`_Frame` (first and last used).
    """
    mean = points.mean(axis=0, dtype=np.float64)
    centred = points - mean  # float64
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, ::-1].copy()  # columns: longest spread first
    for i in (0, 1):  # each axis points where its largest component is positive
        if axes[np.argmax(np.abs(axes[:, i])), i] < 0:
            axes[:, i] = -axes[:, i]
    (ax, ay, az), (bx, by, bz) = axes[:, 0].tolist(), axes[:, 1].tolist()
    axes[:, 2] = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)  # right-handed
    local = axes.T @ centred.T  # (3, n), each axis contiguous
    low, high = (np.asarray(v) for v in _quantiles(local, (qs[0], qs[-1]), in_place=True))
    center = mean + axes @ ((low + high) / 2.0)
    return _vec(center), rotation_quaternion(axes), _vec(high - low)


def _vec(v: np.ndarray) -> Vec3:
    return float(v[0]), float(v[1]), float(v[2])


def rotation_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(x, y, z, w)``, ``w >= 0``, of a 3x3 rotation matrix."""
    m = np.asarray(r, dtype=np.float64)
    t = m[0, 0] + m[1, 1] + m[2, 2]
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s)
    v = np.asarray(q)
    v = v / np.linalg.norm(v)
    if v[3] < 0:
        v = -v
    return float(v[0]), float(v[1]), float(v[2]), float(v[3])
