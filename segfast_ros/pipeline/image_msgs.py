"""``sensor_msgs/Image`` and ``CompressedImage`` fields to RGB and back. numpy/cv2 only.

These functions read and write the message *fields* (``encoding``, ``height``, ``width``,
``step``, ``data``; ``format``, ``data``), whichever library made the object: rclpy messages in
the node, rosbags dataclasses in the offline replay. They follow cv_bridge's conventions, so
neither ROS nor cv_bridge is needed here.
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from ..runtime.transforms import check_image_pixels

#: ``sensor_msgs/Image`` encodings :func:`image_msg_to_rgb` reads (case-sensitive, as in ROS).
ACCEPTED_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

# Bytes per pixel and the cv2 conversion to RGB (None: the rows already are RGB).
_DECODE: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}

# Encodings :func:`rgb_pixels` writes, with the conversion from RGB.
_ENCODE: dict[str, int | None] = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR}


class ImageError(ValueError):
    """An image message that cannot become an RGB array: its encoding, size or data."""


def _as_uint8(data: Any) -> np.ndarray:
    """A message's ``uint8[]`` field as a flat uint8 array, viewing its buffer when it has one.

    rclpy stores ``uint8[]`` as ``array.array('B')`` (``bytes`` in some code paths), rosbags as
    a numpy array; all are viewed without a copy. Anything else (a list of ints) is converted.
    """
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_rows(msg: Any, bytes_per_pixel: int) -> np.ndarray:
    """An Image message's pixel rows as a ``(height, width * bytes_per_pixel)`` uint8 view.

    The row padding (``step`` beyond a row) is skipped by striding, without a copy. The
    message's size fields are checked first, so that a frame over the pixel limit costs nothing.

    Raises:
        ImageError: a zero width or height, too many pixels, ``step`` smaller than a row, or
            fewer than ``step * height`` bytes of data; the message names ``msg.encoding``.
    """
    encoding = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"{encoding} image is {w}x{h} (width x height); both must be > 0")
    try:  # before any conversion: a frame over the limit must not cost another copy first
        check_image_pixels(h, w)
    except ValueError as err:
        raise ImageError(f"{encoding} {err}") from None
    row = w * bytes_per_pixel
    if step < row:
        raise ImageError(
            f"{encoding} image of width {w} has step {step}, less than width * "
            f"{bytes_per_pixel} = {row} bytes per row"
        )
    data = _as_uint8(msg.data)
    if data.size < step * h:
        raise ImageError(
            f"{encoding} image {w}x{h} with step {step} needs step * height = {step * h} bytes "
            f"of data, got {data.size}"
        )
    return data[: step * h].reshape(h, step)[:, :row]


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` (rclpy or rosbags) to an RGB array.

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
    rows = image_rows(msg, channels)
    h, w = rows.shape[0], rows.shape[1] // channels
    if code is not None:
        pixels = rows if channels == 1 else rows.reshape(h, w, channels)
        return cv2.cvtColor(pixels, code)
    rgb = np.ascontiguousarray(rows.reshape(h, w, 3))
    if np.may_share_memory(rgb, rows):
        rgb.flags.writeable = False  # a view of the message: writes would change msg.data
    return rgb


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (rclpy or rosbags) to RGB.

    JPEG, PNG, anything cv2 reads.

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


def rgb_pixels(rgb: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """An RGB array's pixels in ``encoding`` (``rgb8`` or ``bgr8``), for an outgoing Image.

    Raises:
        ImageError: another encoding, or ``rgb`` not ``(H, W, 3)`` uint8.
    """
    if encoding not in _ENCODE:
        raise ImageError(f"cannot write encoding {encoding!r}; expected one of {list(_ENCODE)}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an RGB image (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    code = _ENCODE[encoding]
    return rgb if code is None else cv2.cvtColor(rgb, code)


def image_fields(pixels: np.ndarray, encoding: str) -> dict[str, Any]:
    """The ``sensor_msgs/Image`` fields (all but ``header``) of ``(H, W[, C])`` pixels.

    Rows are unpadded and multi-byte pixels in native byte order (``is_bigendian`` says
    which), as cv_bridge writes them. ``data`` is a flat uint8 numpy array (a view when the
    pixels are C-contiguous); rclpy callers convert it to ``array.array``.
    """
    pixels = np.ascontiguousarray(pixels)
    return {
        "height": int(pixels.shape[0]),
        "width": int(pixels.shape[1]),
        "encoding": encoding,
        "is_bigendian": pixels.dtype.itemsize > 1 and sys.byteorder == "big",
        "step": int(pixels.strides[0]),
        "data": pixels.view(np.uint8).reshape(-1),
    }
