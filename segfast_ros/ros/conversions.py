"""Conversions between ROS messages and numpy: images in; masks, labels and instances out.

Plain functions, no Node: they need the message packages (``sensor_msgs``, the generated
``segfast_ros.msg``), numpy and cv2, never torch or a ROS graph, so the node stays a thin adapter
and these are tested on their own.

Frames: every array is in pixels of the source image, ``H x W``; boxes are XYXY pixel edges
(``x2 = last column + 1``) as in :mod:`segfast_ros.everything.masks`; RGB images are
``(H, W, 3)`` uint8. Masks travel as COCO uncompressed RLE (``Instance.msg``).
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from segfast_ros.everything.base import Instance
from segfast_ros.everything.masks import (
    mask_run_lengths,
    masks_to_boxes,
    rle_counts,
    rle_to_mask,
)
from segfast_ros.msg import Instance as InstanceMsg


class ImageError(ValueError):
    """An image message that cannot become an RGB array: its encoding, size or data."""


#: ``sensor_msgs/Image`` encodings :func:`image_msg_to_rgb` reads (case-sensitive, as in ROS).
ACCEPTED_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

#: Most instances a ``mono16`` label image can tell apart (label 0 is the background).
MAX_LABELS: int = 65535

# Bytes per pixel and the cv2 conversion to RGB (None: the rows already are RGB).
_DECODE: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}

# Encodings :func:`rgb_to_image_msg` writes, with the conversion from RGB.
_ENCODE: dict[str, int | None] = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR}

# The golden-ratio conjugate: successive multiples mod 1 spread hues evenly whatever the count.
_GOLDEN = 0.6180339887498949

# ------------------------------------------------------------------------------ helpers


def _as_uint8(data: Any) -> np.ndarray:
    """A message's ``uint8[]`` field as a flat uint8 array, viewing its buffer when it has one.

    rclpy stores ``uint8[]`` as ``array.array('B')`` (``bytes`` in some code paths); both are
    viewed without a copy. Anything else (a list of ints) is converted.
    """
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


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
    """An Image of C-contiguous ``(H, W[, C])`` pixels in native byte order, rows unpadded."""
    pixels = np.ascontiguousarray(pixels)
    msg = Image(
        header=header,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        encoding=encoding,
        is_bigendian=pixels.dtype.itemsize > 1 and sys.byteorder == "big",
        step=int(pixels.strides[0]),
    )
    msg.data = _array("B", pixels.view(np.uint8))
    return msg


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


# ------------------------------------------------------------------------------ images in


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to an RGB array.

    Reads :data:`ACCEPTED_ENCODINGS`; rows may be padded (``step >= width * channels``).
    ``mono8`` is replicated to three channels, alpha is dropped. ``is_bigendian`` does not
    matter for 8-bit encodings.

    Args:
        msg: the image; ``msg.data`` holds at least ``step * height`` bytes.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous. For ``rgb8`` without row padding it is a
        read-only view of ``msg.data`` (no copy): copy it before writing into it.

    Raises:
        ImageError: another encoding (encodings are case-sensitive), a zero width or height,
            ``step`` smaller than a row, or fewer than ``step * height`` bytes of data.
    """
    encoding = msg.encoding
    if encoding not in _DECODE:
        hint = " (encodings are case-sensitive)" if encoding.lower() in _DECODE else ""
        raise ImageError(
            f"unsupported image encoding {encoding!r}{hint}; accepted: "
            f"{', '.join(ACCEPTED_ENCODINGS)}"
        )
    channels, code = _DECODE[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"{encoding} image is {w}x{h} (width x height); both must be > 0")
    row = w * channels
    if step < row:
        raise ImageError(
            f"{encoding} image of width {w} has step {step}, less than width * {channels} = "
            f"{row} bytes per row"
        )
    data = _as_uint8(msg.data)
    if data.size < step * h:
        raise ImageError(
            f"{encoding} image {w}x{h} with step {step} needs step * height = {step * h} bytes "
            f"of data, got {data.size}"
        )
    # A strided view that skips the row padding; cv2 reads it without a copy.
    rows = data[: step * h].reshape(h, step)[:, :row]
    if code is not None:
        pixels = rows if channels == 1 else rows.reshape(h, w, channels)
        return cv2.cvtColor(pixels, code)
    rgb = np.ascontiguousarray(rows.reshape(h, w, 3))
    if np.may_share_memory(rgb, data):
        rgb.flags.writeable = False  # a view of the message: writes would change msg.data
    return rgb


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, anything cv2 reads) to RGB.

    The channel order is cv2's (BGR), as image_transport's compressed plugin writes it; gray
    is replicated to three channels and alpha dropped. EXIF orientation is ignored.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous.

    Raises:
        ImageError: no data, bytes cv2 cannot decode (the message names ``msg.format``), or a
            decoded image that is not 8-bit with 1, 3 or 4 channels (a 16-bit PNG is usually
            depth).
    """
    fmt = msg.format
    data = _as_uint8(msg.data)
    if data.size == 0:
        raise ImageError(f"CompressedImage (format {fmt!r}) has no data")
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        decoded, reason = None, f": {exc}"
    else:
        reason = ""
    if decoded is None:
        depth = "compressedDepth" in fmt
        hint = " (compressedDepth is depth, not a colour image)" if depth else ""
        raise ImageError(
            f"cannot decode {data.size} bytes of CompressedImage (format {fmt!r}){hint}; "
            f"expected an 8-bit colour or gray JPEG or PNG{reason}"
        )
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[..., 0]
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    code = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(channels)
    if decoded.dtype != np.uint8 or code is None:
        raise ImageError(
            f"CompressedImage (format {fmt!r}) decoded to a {decoded.dtype} image with "
            f"{channels} channels; expected uint8 with 1, 3 or 4 channels"
        )
    return cv2.cvtColor(decoded, code)


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
    if encoding not in _ENCODE:
        raise ImageError(f"cannot write encoding {encoding!r}; expected one of {list(_ENCODE)}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an RGB image (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    code = _ENCODE[encoding]
    return _image_msg(rgb if code is None else cv2.cvtColor(rgb, code), header, encoding)


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
    return _image_msg(labels.astype(np.uint16, copy=False), header, "mono16")


def stamp_to_ns(stamp: Time) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds (exact; a cache key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ------------------------------------------------------------------------------ instances


def box_to_roi(box: npt.ArrayLike, image_hw: tuple[int, int]) -> RegionOfInterest:
    """The smallest integer RegionOfInterest that holds an XYXY box, clipped to the image.

    ``x_offset = floor(x1)``, ``width = ceil(x2) - x_offset`` (likewise for y), each clipped to
    ``[0, W]`` (``[0, H]``), so an empty box gives a zero-size RoI. ``do_rectify`` is False.

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
    return RegionOfInterest(
        x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0, do_rectify=False
    )


def instance_to_msg(inst: Instance, index: int) -> InstanceMsg:
    """Convert a SegEvery :class:`~segfast_ros.everything.base.Instance` to ``Instance.msg``.

    Args:
        inst: its ``rle`` must be uncompressed (counts a list of ints).
        index: the instance's position in its array (``id``).

    Returns:
        The message: RLE counts as uint32, the box as a :func:`box_to_roi` RegionOfInterest,
        ``mask_height, mask_width`` from the RLE size, the prompt as float32.

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
    return _instance_msg(
        index, inst.score, inst.stability, inst.box, int(inst.area), (h, w), counts, inst.prompt
    )


def _instance_msg(
    index: int,
    score: float,
    stability: float,
    box: npt.ArrayLike,
    area: int,
    hw: tuple[int, int],
    counts: np.ndarray,
    prompt: npt.ArrayLike | None,
) -> InstanceMsg:
    """``Instance.msg`` from checked parts; array fields are filled without per-item checks."""
    msg = InstanceMsg(
        id=int(index),
        score=float(score),
        stability=float(stability),
        box=box_to_roi(box, hw),
        area=int(area),
        mask_height=int(hw[0]),
        mask_width=int(hw[1]),
    )
    msg.rle_counts = _array("I", counts)
    msg.prompt = _array("f", _prompt_array(prompt))
    return msg


def mask_instance_msg(
    mask: np.ndarray,
    score: float,
    stability: float,
    index: int,
    prompt: npt.ArrayLike | None = None,
) -> InstanceMsg:
    """``Instance.msg`` of one boolean mask (a Segment response), its RLE, box and area computed.

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
    return _instance_msg(index, score, stability, box, area, masks.shape[1:], counts, prompt)


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
    labels = np.zeros((h, w), dtype=np.uint16)
    # Worst first, so that each better instance paints over the ones it overlaps.
    for i in range(len(instances) - 1, -1, -1):
        np.copyto(labels, np.uint16(i + 1), where=rle_to_mask(instances[i].rle))
    return labels


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
    rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5, boundaries: bool = True
) -> np.ndarray:
    """Blend a label image over an RGB image, a distinct fixed colour per label.

    Vectorised (a colour lookup table and whole-image blends), about as fast for 100 labels as
    for one.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` non-negative ints below ``2**16`` (uint16 from
            :func:`instances_to_label_image`), 0 for the background, which stays unchanged.
        alpha: weight of the label colour, in ``[0, 1]``.
        boundaries: draw each instance's outermost pixels in its full colour.

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
    if labels.size == 0:
        return rgb.copy()
    # np.take and cv2.copyTo: several times faster than fancy indexing and np.copyto(where=).
    colour = np.take(_palette(), labels, axis=0)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)
    foreground = labels != 0
    out = rgb.copy()
    out = cv2.copyTo(blended, foreground.view(np.uint8), out)
    if boundaries:
        # A pixel is on a boundary if a 4-neighbour has another label.
        edge = np.zeros_like(foreground)
        dx = labels[:, 1:] != labels[:, :-1]
        dy = labels[1:] != labels[:-1]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:] |= dy
        edge[:-1] |= dy
        edge &= foreground
        out = cv2.copyTo(colour, edge.view(np.uint8), out)
    return out
