"""Masks to 3D: each mask's robust centroid, extent and valid-depth numbers from aligned depth.

The depth image is "aligned to color": one depth value (metres along the optical axis) per
colour pixel, so a mask selects its depth pixels directly. For each instance:

1. its mask's pixels inside its ROI are decoded from the RLE's runs (:mod:`.roi_masks`);
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

A frame holds up to a hundred or so instances, most of them small, so every step runs for all
instances at once (one decode, one erosion, one gather of depth, one selection) and only the
order statistics loop over instances (one sort call each): the cost follows the number of mask
pixels more than the number of instances.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..masks import mask_run_lengths
from ..segevery.settings import check_bool, param, settings_from_dict, validate_params
from .camera import CameraModel
from .roi_masks import MaskPixels, checked_rois, mask_pixels

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
    pixels = mask_pixels(counts, boxes, camera.hw, settings.erode_px)
    return _lift_selected(_select(pixels, depth, settings), camera, settings, points)


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


@dataclass(frozen=True)
class _Selection:
    """The valid depth pixels each instance uses, all instances' one after another."""

    u: np.ndarray  # (n,) int32 image column of each point
    v: np.ndarray  # (n,) int32 image row
    z: np.ndarray  # (n,) float32 depth
    bounds: np.ndarray  # (N + 1,) instance i's points are [bounds[i], bounds[i + 1])
    pixels: np.ndarray  # (N,) pixels of the mask used (eroded, or plain on fallback)
    mean_uv: np.ndarray  # (2, N) float64 the plain mask's mean pixel (NaN when empty)


def _select(mask: MaskPixels, depth: np.ndarray, settings: LiftSettings) -> _Selection:
    """Every instance's valid pixels inside its eroded mask (its plain mask when erosion leaves
    fewer than ``min_points`` valid ones), for all instances at once."""
    depth_t = cv2.transpose(depth.astype(np.float32, copy=False))  # column-major, as the masks
    z = depth_t.reshape(-1).take(mask.index)
    lo = settings.min_m if settings.min_m > 0 else float(np.finfo(np.float32).tiny)
    with np.errstate(invalid="ignore"):
        keep = (z >= lo) & (z <= settings.max_m)
    bounds = mask.bounds
    area = np.diff(bounds)
    if mask.inner is None:
        pixels, counts = area, _segment_sums((keep,), bounds)[0]
    else:
        inner = mask.inner
        keep_inner = inner & keep
        pixels, counts = _segment_sums((inner, keep_inner), bounds)
        eroded = counts >= settings.min_points  # else: too few left, keep the edges
        if eroded.all():
            keep = keep_inner
        else:
            plain = _segment_sums((keep,), bounds)[0]
            keep &= inner | np.repeat(~eroded, area)
            pixels, counts = np.where(eroded, pixels, area), np.where(eroded, counts, plain)
    ends = np.zeros_like(bounds)
    np.cumsum(counts, out=ends[1:])
    chosen = np.flatnonzero(keep)
    index = mask.index.take(chosen)
    u = index // depth.shape[0]
    return _Selection(u, index - u * depth.shape[0], z.take(chosen), ends, pixels, mask.mean_uv)


def _segment_sums(rows: Sequence[np.ndarray], bounds: np.ndarray) -> np.ndarray:
    """``(k, N)`` int64: each of the ``k`` ``(n,)`` arrays summed over ``[bounds[i],
    bounds[i + 1])``; 0 for an empty segment."""
    out = np.zeros((len(rows), len(bounds) - 1), dtype=np.int64)
    some = np.flatnonzero(bounds[1:] > bounds[:-1])
    if len(some):  # the next non-empty segment starts where this one ends
        for k, row in enumerate(rows):
            out[k, some] = np.add.reduceat(row, bounds[some], dtype=np.int64)
    return out


def _lift_selected(
    sel: _Selection, camera: CameraModel, settings: LiftSettings, want: bool
) -> list[Lifted]:
    """Each instance's :class:`Lifted` from its selected pixels."""
    height, width = camera.hw
    rays_x = ((np.arange(width) - camera.cx) / camera.fx).astype(np.float32)
    rays_y = ((np.arange(height) - camera.cy) / camera.fy).astype(np.float32)
    xyz = np.empty((3, len(sel.z)), dtype=np.float32)
    np.multiply(rays_x.take(sel.u), sel.z, out=xyz[0])
    np.multiply(rays_y.take(sel.v), sel.z, out=xyz[1])
    xyz[2] = sel.z
    spans = list(itertools.pairwise(sel.bounds.tolist()))
    n = np.diff(sel.bounds)
    valid = n >= settings.min_points
    clouds = _clouds(xyz, spans) if want else None
    p = settings.extent_percentile
    boxes = None
    if settings.oriented_boxes:
        boxes = [
            _oriented_box(xyz[:, a:b].T, p) if ok else _NO_BOX
            for ok, (a, b) in zip(valid.tolist(), spans, strict=True)
        ]
    # Sorts each valid instance's points in place (the clouds are a copy).
    low, mid, high = _percentiles(xyz, sel.bounds, valid, (p, 50.0, 100.0 - p))
    z = mid[2]
    ray = (sel.mean_uv - [[camera.cx], [camera.cy]]) / [[camera.fx], [camera.fy]]
    fractions = np.divide(n, sel.pixels, out=np.zeros(len(n)), where=sel.pixels > 0)
    return _lifted(
        valid,
        n,
        fractions,
        np.stack([ray[0] * z, ray[1] * z, z], axis=1),
        low.T,
        high.T,
        boxes,
        clouds,
    )


def _lifted(
    valid: np.ndarray,
    n: np.ndarray,
    fractions: np.ndarray,
    centroids: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    boxes: list | None,
    clouds: list[np.ndarray] | None,
) -> list[Lifted]:
    """The :class:`Lifted` of each instance from ``(N,)`` and ``(N, 3)`` arrays."""
    out = []
    columns = (valid.tolist(), n.tolist(), fractions.tolist(), centroids.tolist(), low.tolist(),
               high.tolist(), boxes or [_NO_BOX] * len(n), clouds or [None] * len(n))  # fmt: skip
    for ok, count, fraction, centroid, lo, hi, obb, cloud in zip(*columns, strict=True):
        if not ok:
            out.append(Lifted(False, num_points=count, valid_fraction=fraction, points=cloud))
            continue
        out.append(
            Lifted(
                True,
                centroid=tuple(centroid),
                min=tuple(lo),
                max=tuple(hi),
                obb_center=obb[0],
                obb_orientation=obb[1],
                obb_size=obb[2],
                num_points=count,
                valid_fraction=fraction,
                points=cloud,
            )
        )
    return out


def _clouds(xyz: np.ndarray, spans: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Each instance's ``(n, 3)`` float32 points: views of one copy of ``xyz``."""
    rows = np.ascontiguousarray(xyz.T)
    return [rows[a:b] for a, b in spans]


#: Rows shorter than this are sorted by numpy, longer ones by cv2 (faster for each, measured).
_NUMPY_SORT_BELOW = 1024
_NO_BOX = (_ZERO3, (0.0, 0.0, 0.0, 1.0), _ZERO3)


def _percentiles(
    values: np.ndarray, bounds: np.ndarray, valid: np.ndarray, qs: Sequence[float]
) -> np.ndarray:
    """``(len(qs), 3, N)``: ``np.percentile(values[:, a:b], q, axis=1)`` (linear) of each
    segment ``[a, b) = [bounds[i], bounds[i + 1])`` that is ``valid`` (non-empty), else 0.

    Each segment of the ``(3, n)`` ``values`` is sorted in place, row by row: for a few
    thousand values cv2's sort is several times faster than numpy's here, and numpy's SIMD
    sort is the fastest for short rows; both beat a partition (np.partition costs about 5 ns a
    value per rank asked, and each percentile asks two). The ranks' values are then read and
    interpolated for all segments at once.
    """
    idx = np.flatnonzero(valid)
    starts, stops = bounds[idx], bounds[idx + 1]
    n = stops - starts
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (n[:, None] - 1)  # (m, k)
    below = pos.astype(np.int64)  # floor: pos >= 0
    above = np.minimum(below + 1, n[:, None] - 1)
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        block = values[:, start:stop]
        if stop - start < _NUMPY_SORT_BELOW:
            block.sort(axis=1)
        else:
            cv2.sort(block, cv2.SORT_EVERY_ROW | cv2.SORT_ASCENDING, dst=block)
    low = values[:, starts[:, None] + below].astype(np.float64)  # (3, m, k)
    high = values[:, starts[:, None] + above].astype(np.float64)
    out = np.zeros((len(qs), 3, len(valid)))
    out[:, :, idx] = (low + (high - low) * (pos - below)).transpose(2, 0, 1)
    return out


def _oriented_box(
    points: np.ndarray, p: float
) -> tuple[Vec3, tuple[float, float, float, float], Vec3]:
    """``(center, quaternion xyzw, size)`` of the ``[p, 100 - p]`` percentile box along the
    principal axes of ``(n, 3)`` points."""
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
    bounds = np.array([0, len(points)])
    low, high = _percentiles(local, bounds, np.ones(1, dtype=bool), (p, 100.0 - p))[:, :, 0]
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
