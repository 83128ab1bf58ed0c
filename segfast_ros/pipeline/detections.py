"""``vision_msgs`` detections as plain values, both ways, and ``PointCloud2`` fields.

Out: each instance record becomes a :class:`Detection2DRecord` (``vision_msgs/Detection2D``:
its box, score and track ID) and, when lifted, a :class:`Detection3DRecord`
(``vision_msgs/Detection3D``: its centroid and 3D box). In: a ``vision_msgs/Detection2D`` from
a detector becomes a box prompt (:func:`prompt_boxes`). Masked points go out as
``sensor_msgs/PointCloud2`` fields (:func:`cloud_fields`).

vision_msgs is not imported here: messages in are duck-typed (rclpy or rosbags), and each
adapter wraps the values out in its own message types, so that everything else works where
vision_msgs is not installed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .render import InstanceRecord

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Hypothesis:
    """``vision_msgs/ObjectHypothesis``: a class and its score."""

    class_id: str
    score: float


@dataclass(frozen=True)
class Detection2DRecord:
    """``vision_msgs/Detection2D`` fields (its header is the frame's).

    Attributes:
        id: the track ID as a string, "" for an untracked instance.
        center: box centre ``(x, y)``, pixels (pixel edges: the box of column 0 alone is
            centred at 0.5).
        size: box ``(width, height)``, pixels.
        results: the class hypotheses, best first.
    """

    id: str
    center: tuple[float, float]
    size: tuple[float, float]
    results: tuple[Hypothesis, ...]


@dataclass(frozen=True)
class Detection3DRecord:
    """``vision_msgs/Detection3D`` fields, metres in the colour camera's optical frame.

    Attributes:
        id: the track ID as a string, "" for an untracked instance.
        results: the class hypotheses; each one's pose position is ``position``.
        position: the robust centroid.
        bbox_center, bbox_orientation, bbox_size: the ``BoundingBox3D``: the axis-aligned
            extent (identity orientation), or the oriented box.
    """

    id: str
    results: tuple[Hypothesis, ...]
    position: Vec3
    bbox_center: Vec3
    bbox_orientation: tuple[float, float, float, float]
    bbox_size: Vec3


def detection_id(rec: InstanceRecord) -> str:
    """A record's ``Detection*.id``: its track ID, or "" when it has none."""
    return str(rec.track_id) if rec.track_id else ""


def _class_ids(records: Sequence[InstanceRecord], class_ids: Sequence[str] | None) -> list[str]:
    if class_ids is None:
        return [""] * len(records)
    if len(class_ids) != len(records):
        raise ValueError(f"got {len(class_ids)} class ids for {len(records)} instances")
    return [str(c) if c else "" for c in class_ids]


def detections_2d(
    records: Sequence[InstanceRecord], class_ids: Sequence[str] | None = None
) -> list[Detection2DRecord]:
    """One :class:`Detection2DRecord` per record, in the same order (as ``~/instances``).

    The box is the record's ROI: centre ``(x + w/2, y + h/2)``, size ``(w, h)``. One
    hypothesis: the class id (or "") with the record's score.

    Raises:
        ValueError: ``class_ids`` of another length than ``records``.
    """
    out = []
    for rec, class_id in zip(records, _class_ids(records, class_ids), strict=True):
        x, y, w, h = (float(v) for v in rec.roi)
        out.append(
            Detection2DRecord(
                id=detection_id(rec),
                center=(x + w / 2.0, y + h / 2.0),
                size=(w, h),
                results=(Hypothesis(class_id, float(rec.score)),),
            )
        )
    return out


def detections_3d(
    records: Sequence[InstanceRecord],
    class_ids: Sequence[str] | None = None,
    *,
    oriented: bool = False,
) -> list[Detection3DRecord]:
    """A :class:`Detection3DRecord` for each record whose ``position_3d`` is valid, in order.

    The box is the axis-aligned extent, or with ``oriented`` the oriented box (the
    axis-aligned one for a lift made without oriented boxes, whose size is zero).

    Raises:
        ValueError: ``class_ids`` of another length than ``records``.
    """
    out = []
    for rec, class_id in zip(records, _class_ids(records, class_ids), strict=True):
        p = rec.position_fields()
        if not p["valid"]:
            continue
        if oriented and any(p["obb_size"]):
            box = (p["obb_position"], p["obb_orientation"], p["obb_size"])
        else:
            lo, hi = p["min"], p["max"]
            box = (
                tuple((a + b) / 2.0 for a, b in zip(lo, hi, strict=True)),
                (0.0, 0.0, 0.0, 1.0),
                tuple(b - a for a, b in zip(lo, hi, strict=True)),
            )
        out.append(
            Detection3DRecord(
                detection_id(rec), (Hypothesis(class_id, float(rec.score)),), p["centroid"], *box
            )
        )
    return out


# ------------------------------------------------------------------------------- prompts in


@dataclass(frozen=True)
class PromptBoxes:
    """The box prompts of one ``vision_msgs/Detection2DArray``.

    Attributes:
        boxes: ``(N, 4)`` float32 XYXY pixel edges, clipped to the image.
        results: each kept detection's hypotheses (class id, score), carried through.
        ids: each kept detection's ``id``.
        skipped: why each detection that gave no box was left out.
    """

    boxes: np.ndarray
    results: list[tuple[Hypothesis, ...]]
    ids: list[str]
    skipped: list[str]


def _hypotheses(det: Any) -> tuple[Hypothesis, ...]:
    return tuple(
        Hypothesis(str(r.hypothesis.class_id), float(r.hypothesis.score)) for r in det.results
    )


def _detection_box(det: Any, hw: tuple[int, int]) -> np.ndarray | str:
    """A detection's XYXY box clipped to the image, or why it has none."""
    bbox = det.bbox
    cx, cy = float(bbox.center.position.x), float(bbox.center.position.y)
    w, h, theta = float(bbox.size_x), float(bbox.size_y), float(bbox.center.theta)
    if not all(math.isfinite(v) for v in (cx, cy, w, h, theta)):
        return f"a box that is not finite (centre ({cx}, {cy}), size {w}x{h}, theta {theta})"
    if w <= 0 or h <= 0:
        return f"a box of size {w}x{h}; expected width and height > 0"
    # A rotated box prompts with the axis-aligned box around it (SAM's boxes are upright).
    c, s = abs(math.cos(theta)), abs(math.sin(theta))
    half_w, half_h = (w * c + h * s) / 2.0, (w * s + h * c) / 2.0
    box = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dtype=np.float64)
    clipped = np.clip(box, 0.0, [hw[1], hw[0], hw[1], hw[0]])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return (
            f"a box [{box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f}] (XYXY) wholly "
            f"outside the {hw[1]}x{hw[0]} image"
        )
    return clipped.astype(np.float32)


def prompt_boxes(detections: Sequence[Any], hw: tuple[int, int], max_boxes: int) -> PromptBoxes:
    """Box prompts from ``vision_msgs/Detection2D`` messages (rclpy or rosbags), in order.

    Reads ``bbox.center.position.x/.y``, ``bbox.center.theta``, ``bbox.size_x/.size_y``,
    ``results[i].hypothesis.class_id/.score`` and ``id``. A rotated box becomes the
    axis-aligned box around it; boxes are clipped to the image. A box that is not finite, has
    a size <= 0 or lies wholly outside the image is skipped with its reason. Beyond
    ``max_boxes`` the lowest-scoring detections (by their best hypothesis) are skipped.

    Args:
        detections: the array's ``detections``.
        hw: ``(H, W)`` of the image the boxes are in (the cached frame's).
        max_boxes: most boxes to decode (>= 1).

    Raises:
        ValueError: ``max_boxes`` below 1 or an image size that is not positive.
    """
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"image size must be positive, got {hw[1]}x{hw[0]} (width x height)")
    kept: list[tuple[int, np.ndarray, tuple[Hypothesis, ...], str]] = []
    skipped = []
    for i, det in enumerate(detections):
        box = _detection_box(det, hw)
        if isinstance(box, str):
            skipped.append(f"detection {i} (id {str(det.id)!r}): {box}")
        else:
            kept.append((i, box, _hypotheses(det), str(det.id)))
    if len(kept) > max_boxes:
        order = sorted(
            range(len(kept)),
            key=lambda j: -max((hyp.score for hyp in kept[j][2]), default=0.0),
        )
        keep = sorted(order[:max_boxes])
        skipped.append(
            f"{len(kept) - max_boxes} of {len(kept)} detections with the lowest scores: at most "
            f"{max_boxes} boxes are decoded per message"
        )
        kept = [kept[j] for j in keep]
    boxes = np.array([k[1] for k in kept], dtype=np.float32).reshape(-1, 4)
    return PromptBoxes(boxes, [k[2] for k in kept], [k[3] for k in kept], skipped)


# ------------------------------------------------------------------------------ point cloud

#: ``sensor_msgs/PointField`` datatypes.
FLOAT32, UINT32 = 7, 6

#: The cloud's ``(name, offset, datatype, count)`` fields: xyz metres and the instance id.
CLOUD_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, FLOAT32, 1),
    ("y", 4, FLOAT32, 1),
    ("z", 8, FLOAT32, 1),
    ("id", 12, UINT32, 1),
)

_CLOUD_DTYPE = np.dtype(
    {"names": ["x", "y", "z", "id"], "formats": ["=f4", "=f4", "=f4", "=u4"], "itemsize": 16}
)


def cloud_fields(xyz: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """The ``sensor_msgs/PointCloud2`` fields (all but ``header``) of points with ids.

    An unorganised cloud (``height`` 1, ``width`` N) of 16-byte points: ``x``, ``y``, ``z``
    float32 and ``id`` uint32 (the instance's track ID or index), native byte order.
    ``fields`` holds ``(name, offset, datatype, count)`` tuples for the adapter's PointFields;
    ``data`` is a flat uint8 array. ``is_dense`` is False when a point is not finite.

    Raises:
        ValueError: ``xyz`` not ``(N, 3)``, or ``ids`` not ``(N,)`` non-negative integers.
    """
    xyz = np.asarray(xyz)
    ids = np.asarray(ids)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or ids.shape != (len(xyz),):
        raise ValueError(f"expected points (N, 3) and ids (N,), got {xyz.shape} and {ids.shape}")
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise ValueError(f"expected non-negative integer ids (uint32), got {ids.dtype} values")
    points = np.empty(len(xyz), dtype=_CLOUD_DTYPE)
    for axis, name in enumerate("xyz"):
        points[name] = xyz[:, axis]
    points["id"] = ids
    return {
        "height": 1,
        "width": len(points),
        "fields": list(CLOUD_FIELDS),
        "is_bigendian": sys.byteorder == "big",
        "point_step": _CLOUD_DTYPE.itemsize,
        "row_step": _CLOUD_DTYPE.itemsize * len(points),
        "data": points.view(np.uint8).reshape(-1),
        "is_dense": bool(np.isfinite(xyz).all()),
    }
