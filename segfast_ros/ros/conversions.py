"""Conversions between ROS messages and numpy: images in; masks, labels and instances out.

Plain functions, no Node. The pixel and instance work is ROS-free and shared with the offline
replay (:mod:`segfast_ros.pipeline.image_msgs`, :mod:`segfast_ros.pipeline.render`); this module
wraps it in rclpy messages (``sensor_msgs``, the generated ``segfast_ros.msg``), filling array
fields through the buffer protocol so that large images cost no per-element checks.

Frames: every array is in pixels of the source image, ``H x W``; boxes are XYXY pixel edges
(``x2 = last column + 1``) as in :mod:`segfast_ros.masks`; RGB images are
``(H, W, 3)`` uint8. Masks travel as COCO uncompressed RLE (``Instance.msg``).
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np
import numpy.typing as npt
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from segfast_ros.masks import Instance
from segfast_ros.msg import Instance as InstanceMsg
from segfast_ros.msg import Position3D
from segfast_ros.pipeline.frames import stamp_to_ns
from segfast_ros.pipeline.image_msgs import (
    ACCEPTED_ENCODINGS,
    ImageError,
    compressed_msg_to_rgb,
    image_fields,
    image_msg_to_rgb,
    rgb_pixels,
)
from segfast_ros.pipeline.render import (
    MAX_LABELS,
    InstanceRecord,
    instance_record,
    instances_to_label_image,
    overlay,
)
from segfast_ros.pipeline.render import box_to_roi as _roi

__all__ = [
    "ACCEPTED_ENCODINGS",
    "MAX_LABELS",
    "ImageError",
    "box_to_roi",
    "compressed_msg_to_rgb",
    "image_msg_to_rgb",
    "instance_to_msg",
    "instances_to_label_image",
    "labels_to_mono16_msg",
    "mask_to_mono8_msg",
    "overlay",
    "position_msg",
    "record_to_msg",
    "rgb_to_image_msg",
    "stamp_to_ns",
]

# ------------------------------------------------------------------------------ helpers


def _array(typecode: str, values: np.ndarray) -> array.array:
    """``values`` as an ``array.array`` of ``typecode``, copied once through the buffer protocol.

    Assigning an ``array.array`` of the field's own typecode skips rclpy's per-element checks,
    which cost seconds for a 1080p image.
    """
    values = np.ascontiguousarray(values, dtype=np.dtype(typecode))
    out = array.array(typecode)
    out.frombytes(memoryview(values.reshape(-1)).cast("B"))
    return out


def _image_msg(pixels: np.ndarray, header: Header, encoding: str) -> Image:
    """An Image of ``(H, W[, C])`` pixels in native byte order, rows unpadded."""
    fields = image_fields(pixels, encoding)
    data = fields.pop("data")
    msg = Image(header=header, **fields)
    msg.data = _array("B", data)
    return msg


# ----------------------------------------------------------------------------- images out


def rgb_to_image_msg(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    """Wrap an RGB array (an overlay, say) in a ``sensor_msgs/Image``.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        header: the source image's header (stamp, frame_id), used as is.
        encoding: ``"rgb8"`` or ``"bgr8"`` (channels swapped on the way).

    Returns:
        The message, rows unpadded (``step = 3 * W``).

    Raises:
        ImageError: another encoding, or ``rgb`` not ``(H, W, 3)`` uint8.
    """
    return _image_msg(rgb_pixels(rgb, encoding), header, encoding)


def mask_to_mono8_msg(mask: np.ndarray, header: Header) -> Image:
    """A ``mono8`` Image of one mask: 255 inside, 0 outside.

    Args:
        mask: ``(H, W)`` bool (nonzero is foreground).
        header: the source image's header.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a mask (H, W), got shape {mask.shape}")
    return _image_msg(np.where(mask, np.uint8(255), np.uint8(0)), header, "mono8")


def labels_to_mono16_msg(labels: np.ndarray, header: Header) -> Image:
    """A ``mono16`` Image of a label image (see :func:`instances_to_label_image`).

    Native byte order: ``is_bigendian`` is ``sys.byteorder == "big"``, ``step = 2 * W``.

    Args:
        labels: ``(H, W)`` uint16, 0 for the background.
        header: the source image's header.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint16:
        raise ValueError(f"expected labels (H, W) uint16, got {labels.shape} {labels.dtype}")
    return _image_msg(labels, header, "mono16")


# ------------------------------------------------------------------------------ instances


def box_to_roi(box: npt.ArrayLike, image_hw: tuple[int, int]) -> RegionOfInterest:
    """The smallest integer RegionOfInterest that holds an XYXY box, clipped to the image.

    See :func:`segfast_ros.pipeline.render.box_to_roi`; ``do_rectify`` is False.

    Raises:
        ValueError: a box that is not 4 finite numbers.
    """
    x, y, w, h = _roi(box, image_hw)
    return RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)


def position_msg(fields: dict[str, Any]) -> Position3D:
    """``Position3D.msg`` from :meth:`InstanceRecord.position_fields` (metres, optical frame)."""
    if not fields["valid"]:
        return Position3D()  # all zero, identity orientation, as the fields say
    x, y, z = fields["obb_position"]
    qx, qy, qz, qw = fields["obb_orientation"]
    return Position3D(
        valid=bool(fields["valid"]),
        centroid=Point(**dict(zip("xyz", fields["centroid"], strict=True))),
        min=Point(**dict(zip("xyz", fields["min"], strict=True))),
        max=Point(**dict(zip("xyz", fields["max"], strict=True))),
        obb_pose=Pose(
            position=Point(x=x, y=y, z=z), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw)
        ),
        obb_size=Vector3(**dict(zip("xyz", fields["obb_size"], strict=True))),
        num_points=int(fields["num_points"]),
        valid_fraction=float(fields["valid_fraction"]),
    )


def record_to_msg(rec: InstanceRecord) -> InstanceMsg:
    """``Instance.msg`` from a checked record; array fields filled without per-item checks.

    ``position_3d`` is the record's lift (:meth:`InstanceRecord.position_fields`): valid false
    and zeros when it was not lifted.
    """
    msg = InstanceMsg(
        **rec.scalar_fields(),
        box=RegionOfInterest(**rec.roi_fields()),
        position_3d=position_msg(rec.position_fields()),
    )
    msg.rle_counts = _array("I", rec.rle_counts)
    msg.prompt = _array("f", rec.prompt)
    return msg


def instance_to_msg(inst: Instance, index: int) -> InstanceMsg:
    """Convert a SegEvery :class:`~segfast_ros.masks.Instance` to ``Instance.msg``.

    Raises:
        ValueError: see :func:`segfast_ros.pipeline.render.instance_record`.
    """
    return record_to_msg(instance_record(inst, index))
