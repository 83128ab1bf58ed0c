"""SegEvery and SegAny output as the world sees it: label images, overlays, Instance.msg fields.

numpy and cv2 only. The ROS node wraps these values in rclpy messages
(:mod:`segfast_ros.ros.conversions`), the offline replay in rosbags messages, so both publish
the same bytes for the same instances.

Frames: every array is in pixels of the source image, ``H x W``; boxes are XYXY pixel edges
(``x2 = last column + 1``) as in :mod:`segfast_ros.masks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..masks import Instance, mask_run_lengths, masks_to_boxes, rle_counts, window_run_lengths
from ..segany import PromptSetMasks
from ..spatial.lift import Lifted
from ..spatial.roi_masks import mask_pixels

# What Position3D.msg holds for an instance not lifted, or whose lift is not valid.
_NOT_LIFTED = Lifted(False)

#: Most instances a ``mono16`` label image can tell apart (label 0 is the background).
MAX_LABELS: int = 65535

# The golden-ratio conjugate: successive multiples mod 1 spread hues evenly whatever the count.
_GOLDEN = 0.6180339887498949

#: Pixels blended at once by :func:`overlay`. Its temporaries (colours, blend, edges) take about
#: 10 bytes per pixel: over a whole 8K frame that was 420 MB on top of the output; in bands of
#: 1 Mi pixels it is 10 MB, and the blend is no slower.
OVERLAY_BAND_PIXELS: int = 1024 * 1024


# ------------------------------------------------------------------------ Instance.msg fields


@dataclass(frozen=True)
class InstanceRecord:
    """The fields of ``segfast_ros/msg/Instance`` as plain values, checked.

    Attributes:
        id: index of the instance in its array.
        score: predicted IoU.
        stability: stability score.
        roi: ``(x_offset, y_offset, width, height)`` of the ``RegionOfInterest`` box.
        area: mask pixels.
        mask_hw: ``(mask_height, mask_width)``.
        rle_counts: uint32 column-major run lengths (COCO uncompressed RLE counts).
        prompt: float32, 0, 2 (X, Y) or 4 (XYXY) values.
        track_id: identity across frames (a SegEvery track or a prompted target), 0 for none.
        track_state: one of :mod:`segfast_ros.tracking.states` (``Instance.TRACK_*``).
        position_3d: the mask lifted with depth (:func:`segfast_ros.spatial.lift.lift_masks`),
            valid or not; None when it was not lifted (no depth for the frame, or not asked).
    """

    id: int
    score: float
    stability: float
    roi: tuple[int, int, int, int]
    area: int
    mask_hw: tuple[int, int]
    rle_counts: np.ndarray
    prompt: np.ndarray
    track_id: int = 0
    track_state: int = 0
    position_3d: Lifted | None = None

    def scalar_fields(self) -> dict[str, int | float]:
        """``id``, ``track_id``, ``track_state``, ``score``, ``stability``, ``area``,
        ``mask_height``, ``mask_width``."""
        return {
            "id": self.id,
            "track_id": self.track_id,
            "track_state": self.track_state,
            "score": self.score,
            "stability": self.stability,
            "area": self.area,
            "mask_height": self.mask_hw[0],
            "mask_width": self.mask_hw[1],
        }

    def roi_fields(self) -> dict[str, int | bool]:
        """The ``box`` (``sensor_msgs/RegionOfInterest``) fields."""
        x, y, w, h = self.roi
        return {"x_offset": x, "y_offset": y, "width": w, "height": h, "do_rectify": False}

    def position_fields(self) -> dict[str, Any]:
        """The ``position_3d`` (``segfast_ros/msg/Position3D``) fields as plain values.

        ``valid``, ``centroid``, ``min``, ``max``, ``obb_position``, ``obb_size`` as ``(x, y,
        z)`` metres in the colour optical frame, ``obb_orientation`` as a quaternion ``(x, y,
        z, w)``, ``num_points``, ``valid_fraction``. As Position3D.msg says, every field but
        ``valid`` is zero (the orientation the identity) when the instance was not lifted or
        its lift is not valid.
        """
        lifted = self.position_3d
        if lifted is None or not lifted.valid:
            lifted = _NOT_LIFTED
        return {
            "valid": bool(lifted.valid),
            "centroid": _floats(lifted.centroid),
            "min": _floats(lifted.min),
            "max": _floats(lifted.max),
            "obb_position": _floats(lifted.obb_center),
            "obb_orientation": _floats(lifted.obb_orientation),
            "obb_size": _floats(lifted.obb_size),
            "num_points": int(lifted.num_points),
            "valid_fraction": float(lifted.valid_fraction),
        }


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    """Plain Python floats (message fields refuse numpy scalars in some libraries)."""
    return tuple(float(v) for v in values)


def box_to_roi(box: npt.ArrayLike, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The smallest integer region ``(x_offset, y_offset, width, height)`` that holds a box.

    ``x_offset = floor(x1)``, ``width = ceil(x2) - x_offset`` (likewise for y), each clipped to
    ``[0, W]`` (``[0, H]``), so an empty box gives a zero-size region.

    Args:
        box: ``(4,)`` XYXY pixel edges (``x2 = last column + 1``).
        image_hw: ``(H, W)`` of the image the box is in.

    Raises:
        ValueError: a box that is not 4 finite numbers.
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise ValueError(f"expected a box of 4 finite XYXY numbers, got {b.tolist()}")
    h, w = int(image_hw[0]), int(image_hw[1])
    x0 = min(max(math.floor(b[0]), 0), w)
    y0 = min(max(math.floor(b[1]), 0), h)
    x1 = min(max(math.ceil(b[2]), x0), w)
    y1 = min(max(math.ceil(b[3]), y0), h)
    return x0, y0, x1 - x0, y1 - y0


def _prompt_array(prompt: npt.ArrayLike | None) -> np.ndarray:
    """``(P,)`` float32 prompt, ``P`` in ``{0, 2, 4}`` (none, an (X, Y) point, an XYXY box)."""
    if prompt is None:
        return np.zeros(0, dtype=np.float32)
    p = np.asarray(prompt, dtype=np.float32).reshape(-1)
    if p.size not in (0, 2, 4):
        raise ValueError(
            f"expected a prompt of 0, 2 (X, Y) or 4 (XYXY) values, got {p.size}: {p.tolist()}"
        )
    return p


def _record(
    index: int,
    score: float,
    stability: float,
    box: npt.ArrayLike,
    area: int,
    hw: tuple[int, int],
    counts: np.ndarray,
    prompt: npt.ArrayLike | None,
) -> InstanceRecord:
    return InstanceRecord(
        id=int(index),
        score=float(score),
        stability=float(stability),
        roi=box_to_roi(box, hw),
        area=int(area),
        mask_hw=(int(hw[0]), int(hw[1])),
        rle_counts=np.ascontiguousarray(counts, dtype=np.uint32),
        prompt=_prompt_array(prompt),
    )


def instance_record(inst: Instance, index: int) -> InstanceRecord:
    """The ``Instance.msg`` fields of a SegEvery :class:`~segfast_ros.masks.Instance`.

    Args:
        inst: its ``rle`` must be uncompressed (counts a list of ints).
        index: the instance's position in its array (``id``).

    Raises:
        ValueError: compressed RLE, counts that are negative, above ``2**32 - 1`` or do not sum
            to ``H * W``, or a prompt that is not 0, 2 or 4 numbers.
    """
    h, w = (int(v) for v in inst.rle["size"])
    counts = rle_counts(inst.rle)
    if counts.sum() != h * w or (counts < 0).any() or (counts > np.iinfo(np.uint32).max).any():
        raise ValueError(
            f"RLE counts must be in [0, 2**32) and sum to H * W = {h * w} for size [{h}, {w}], "
            f"got sum {int(counts.sum())}, min {counts.min(initial=0)}, max "
            f"{counts.max(initial=0)}"
        )
    return _record(
        index, inst.score, inst.stability, inst.box, int(inst.area), (h, w), counts, inst.prompt
    )


def mask_record(
    mask: np.ndarray,
    score: float,
    stability: float,
    index: int,
    prompt: npt.ArrayLike | None = None,
) -> InstanceRecord:
    """The ``Instance.msg`` fields of one boolean mask (a SegAny answer): RLE, box and area.

    Args:
        mask: ``(H, W)`` bool, source image pixels.
        score: the decoder's predicted IoU.
        stability: the mask's stability score.
        index: ``id`` of the instance.
        prompt: ``(2,)`` (X, Y) point or ``(4,)`` XYXY box, pixels; None (or empty) when the
            mask came from several points.
    """
    masks = np.asarray(mask, dtype=bool)
    if masks.ndim != 2:
        raise ValueError(f"expected a mask (H, W), got shape {masks.shape}")
    masks = masks[None]
    (counts,) = mask_run_lengths(masks)
    area = int(counts[1::2].sum())
    box = masks_to_boxes(masks)[0]
    return _record(index, score, stability, box, area, masks.shape[1:], counts, prompt)


def answer_records(answer: PromptSetMasks, first_id: int = 0) -> list[InstanceRecord]:
    """The masks of one SegAny prompt set as ``Instance.msg`` fields, best first.

    Args:
        answer: one prompt set's masks, scores and stability scores.
        first_id: ``id`` of its first mask (the node counts per set, the replay across sets).
    """
    windows = answer.windows
    if windows is None:
        return [
            mask_record(mask, float(score), float(stab), first_id + j, answer.prompt)
            for j, (mask, score, stab) in enumerate(
                zip(answer.masks, answer.scores, answer.stability, strict=True)
            )
        ]
    hw = answer.masks.shape[1:]
    return [  # RLE, box and area from each mask's box, not from the whole frame
        _record(
            first_id + j,
            float(answer.scores[j]),
            float(windows.stability[j]),
            windows.boxes[j],
            int(windows.areas[j]),
            hw,
            window_run_lengths(windows.windows[j], windows.origin(j), hw),
            answer.prompt,
        )
        for j in range(len(windows.windows))
    ]


# ------------------------------------------------------------------------------ label images


def instances_to_label_image(instances: Sequence[Instance], hw: tuple[int, int]) -> np.ndarray:
    """Paint instances into a label image: 0 background, instance ``i`` is label ``i + 1``.

    Where instances overlap the earlier one wins: SegEvery returns them best first.

    Args:
        instances: with uncompressed RLE of size ``hw``.
        hw: ``(H, W)`` of the image.

    Returns:
        ``(H, W)`` uint16.

    Raises:
        ValueError: more than :data:`MAX_LABELS` instances, or an RLE of another size.
    """
    h, w = int(hw[0]), int(hw[1])
    if len(instances) > MAX_LABELS:
        raise ValueError(
            f"a uint16 label image holds at most {MAX_LABELS} instances, got {len(instances)}"
        )
    for i, inst in enumerate(instances):
        size = [int(v) for v in inst.rle["size"]]
        if size != [h, w]:
            raise ValueError(f"instance {i} has an RLE of size {size}, expected [{h}, {w}]")
    if h * w == 0 or not instances:
        return np.zeros((h, w), dtype=np.uint16)
    # Painted from the RLE runs, column by column as they run: the work is the instances'
    # areas, not a decoded full frame per instance; one transpose at the end.
    whole = np.tile(np.array([0, 0, w, h], dtype=np.int64), (len(instances), 1))
    pixels = mask_pixels([rle_counts(inst.rle) for inst in instances], whole, (h, w), 0)
    columns = np.zeros(h * w, dtype=np.uint16)
    # Worst first, so that each better instance paints over the ones it overlaps.
    for i in range(len(instances) - 1, -1, -1):
        columns[pixels.index[pixels.bounds[i] : pixels.bounds[i + 1]]] = i + 1
    return cv2.transpose(columns.reshape(w, h))


# -------------------------------------------------------------------------------- overlay


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    """``(MAX_LABELS + 1, 3)`` uint8 RGB, one colour per label (a golden-ratio hue walk).

    Hues of neighbouring labels are far apart; value alternates so that hues that come round
    close again still differ in brightness. Label 0 (background) is black and unused.
    """
    i = np.arange(MAX_LABELS + 1, dtype=np.float64)
    hue = (0.08 + i * _GOLDEN) % 1.0 * 360.0
    sat = np.full_like(i, 0.8)
    val = np.where(i % 2 == 0, 1.0, 0.8)
    hsv = np.stack([hue, sat, val], axis=-1).astype(np.float32)[None]
    lut = np.round(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] * 255.0).astype(np.uint8)
    lut[0] = 0
    lut.flags.writeable = False
    return lut


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.5,
    boundaries: bool = True,
    *,
    band_pixels: int = OVERLAY_BAND_PIXELS,
) -> np.ndarray:
    """Blend a label image over an RGB image, a distinct fixed colour per label.

    Vectorised (a colour lookup table and blends over bands of rows), about as fast for 100
    labels as for one; besides the output, memory is bounded by ``band_pixels``.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` non-negative ints below ``2**16`` (uint16 from
            :func:`instances_to_label_image`), 0 for the background, which stays unchanged.
        alpha: weight of the label colour, in ``[0, 1]``.
        boundaries: draw each instance's outermost pixels in its full colour.
        band_pixels: pixels processed at once (whole rows, at least one).

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: shapes or dtypes as not described, label values out of range, or alpha
            outside ``[0, 1]``.
    """
    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB image (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if labels.shape != rgb.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"expected integer labels of shape {rgb.shape[:2]}, got {labels.shape} {labels.dtype}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if labels.dtype not in (np.uint8, np.uint16):
        if labels.size and (labels.min() < 0 or labels.max() > MAX_LABELS):
            raise ValueError(
                f"labels must be in [0, {MAX_LABELS}], got [{labels.min()}, {labels.max()}]"
            )
        labels = labels.astype(np.uint16)
    out = rgb.copy()
    if labels.size == 0:
        return out
    h, w = labels.shape
    rows = max(1, int(band_pixels) // w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        # A band of rows, with one row of context above and below for the boundaries.
        c0, c1 = max(0, y0 - 1), min(h, y1 + 1)
        _overlay_band(rgb[y0:y1], labels[c0:c1], y0 - c0, alpha, boundaries, out[y0:y1])
    return out


def _overlay_band(
    rgb: np.ndarray,
    context: np.ndarray,
    top: int,
    alpha: float,
    boundaries: bool,
    out: np.ndarray,
) -> None:
    """Blend one band of rows into ``out`` (a C-contiguous view of the output's rows).

    ``context`` holds the band's labels plus up to one row above (``top`` = 1) and below.
    """
    n = len(rgb)
    labels = context[top : top + n]
    # np.take and cv2.copyTo: several times faster than fancy indexing and np.copyto(where=).
    colour = np.take(_palette(), labels, axis=0)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)
    foreground = labels != 0
    _copy_where(blended, foreground, out)
    if boundaries:
        # A pixel is on a boundary if a 4-neighbour has another label.
        edge = np.zeros(context.shape, dtype=bool)
        dx = context[:, 1:] != context[:, :-1]
        dy = context[1:] != context[:-1]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:] |= dy
        edge[:-1] |= dy
        band_edge = edge[top : top + n]
        band_edge &= foreground
        _copy_where(colour, band_edge, out)


def _copy_where(src: np.ndarray, where: np.ndarray, dst: np.ndarray) -> None:
    """``dst[where] = src[where]`` for ``(n, W, 3)`` uint8 images, in place (cv2.copyTo)."""
    result = cv2.copyTo(src, np.ascontiguousarray(where).view(np.uint8), dst)
    if result is not dst and not np.shares_memory(result, dst):
        dst[...] = result  # cv2 allocated anew (it does not for a matching dst)
