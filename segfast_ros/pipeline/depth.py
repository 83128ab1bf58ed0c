"""Depth images: ``sensor_msgs/Image`` fields to metres and back, and a stamp-keyed cache.

A depth camera publishes depth "aligned to color" as ``16UC1`` in millimetres (RealSense,
OpenNI; 0 where it has no measurement) or ``32FC1`` in metres (ZED; NaN or inf where it has
none). Both become ``(H, W)`` float32 metres with NaN where there is no depth. Frames are kept
by header stamp in a :class:`DepthCache`, and a colour frame takes the depth frame nearest its
stamp within a tolerance (``message_filters``' approximate-time idea, for one pair of topics).

The message fields are read as :mod:`.image_msgs` reads them (rclpy or rosbags, padded rows);
nothing here imports ROS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .frames import StampCache
from .image_msgs import ImageError, image_fields, image_rows

#: ``sensor_msgs/Image`` encodings of depth that :func:`depth_msg_to_metres` reads.
DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "32FC1")

# Each encoding's pixel type; the byte order comes from the message's is_bigendian.
_DEPTH_TYPES: dict[str, str] = {"16UC1": "u2", "32FC1": "f4"}

_EXPECTED = "expected 16UC1 (millimetres) or 32FC1 (metres)"

#: Largest depth a ``16UC1`` image holds, in millimetres.
MAX_16UC1_MM: int = 65535


class DepthError(ValueError):
    """A depth image that cannot become metres: its encoding, size or data."""


def depth_msg_to_metres(msg: Any) -> np.ndarray:
    """Convert a depth ``sensor_msgs/Image`` (rclpy or rosbags) to metres.

    ``16UC1`` is millimetres (0, no measurement, becomes NaN); ``32FC1`` is metres, kept as it
    is (NaN, inf, 0 or negative values stay, and the lift ignores them). ``is_bigendian`` is
    honoured; rows may be padded (``step >= width * bytes per pixel``).

    Returns:
        ``(H, W)`` float32 metres, a new writable array (it does not share ``msg.data``).

    Raises:
        DepthError: another encoding (a colour or ``mono16`` image on the depth topic), a zero
            width or height, ``step`` smaller than a row, or fewer than ``step * height``
            bytes of data; the message names what was wrong and what was expected.
    """
    encoding = msg.encoding
    if encoding not in _DEPTH_TYPES:
        hint = " (encodings are case-sensitive)" if encoding.upper() in _DEPTH_TYPES else ""
        raise DepthError(f"depth encoding {encoding!r} is not supported{hint}; {_EXPECTED}")
    dtype = np.dtype((">" if msg.is_bigendian else "<") + _DEPTH_TYPES[encoding])
    try:
        rows = image_rows(msg, dtype.itemsize)
    except ImageError as err:
        raise DepthError(f"depth image: {err}") from None
    h, w = rows.shape[0], rows.shape[1] // dtype.itemsize
    # A copy of the rows without their padding, then read in the message's byte order.
    values = np.ascontiguousarray(rows).view(dtype).reshape(h, w)
    if encoding == "32FC1":
        return values.astype(np.float32)  # a copy, native byte order
    metres = values.astype(np.float32) * np.float32(0.001)
    metres[values == 0] = np.nan
    return metres


def depth_fields(depth_m: np.ndarray, encoding: str) -> dict[str, Any]:
    """The ``sensor_msgs/Image`` fields (all but ``header``) to write a depth image.

    ``16UC1``: millimetres rounded to the nearest, and 0 (no measurement) where the depth is
    NaN, infinite or negative; depths beyond 65.535 m are clipped to 65535 mm. ``32FC1``:
    float32 metres as they are. Native byte order, unpadded rows, as
    :func:`.image_msgs.image_fields` writes them.

    Args:
        depth_m: ``(H, W)`` metres, any float or integer type.
        encoding: one of :data:`DEPTH_ENCODINGS`.

    Raises:
        DepthError: another encoding, or ``depth_m`` not 2-D with both sides > 0.
    """
    if encoding not in _DEPTH_TYPES:
        raise DepthError(f"cannot write depth encoding {encoding!r}; {_EXPECTED}")
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or 0 in depth.shape or not np.issubdtype(depth.dtype, np.number):
        raise DepthError(
            f"expected depth as an (H, W) array of metres with H, W > 0, got shape "
            f"{depth.shape} {depth.dtype}"
        )
    if encoding == "32FC1":
        return image_fields(depth.astype(np.float32, copy=False), encoding)
    mm = np.rint(depth.astype(np.float64) * 1000.0)
    with np.errstate(invalid="ignore"):
        mm[~np.isfinite(depth) | (mm < 0)] = 0.0
    pixels = np.minimum(mm, MAX_16UC1_MM).astype(np.uint16)
    return image_fields(pixels, encoding)


# ---------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class DepthFrame:
    """One depth image in metres.

    Attributes:
        key: its header stamp, integer nanoseconds (:func:`.frames.stamp_to_ns`).
        depth: ``(H, W)`` float32 metres, NaN where there is no measurement.
        frame_id: its header ``frame_id`` (the optical frame it is aligned to).
    """

    key: int
    depth: np.ndarray
    frame_id: str = ""

    @property
    def hw(self) -> tuple[int, int]:
        """``(height, width)`` of the depth image."""
        return int(self.depth.shape[0]), int(self.depth.shape[1])


@dataclass(frozen=True)
class DepthMatch:
    """The depth frame for a colour stamp, or why there is none.

    Attributes:
        frame: the depth frame nearest the stamp within the tolerance; None when none is.
        offset_ns: the nearest depth frame's stamp minus the colour stamp (also when it is too
            far to match); None when no depth frame is cached.
        reason: "" when matched; else why not, with the distance and the tolerance in seconds.
    """

    frame: DepthFrame | None
    offset_ns: int | None
    reason: str


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


class DepthCache(StampCache[DepthFrame]):
    """The last ``capacity`` depth frames by stamp, thread-safe; the oldest received goes first.

    A :class:`.frames.StampCache` as the embedding cache is: a frame with a stamp already
    cached replaces it, and when a bag loops (stamps go back) the frames received last are
    the ones kept. A colour frame takes the frame whose stamp is nearest (:meth:`match`).

    Args:
        capacity: frames to keep (at least 1).
    """

    _name = "depth cache"

    def match(self, key: int, tolerance_ns: int) -> DepthMatch:
        """The cached frame whose stamp is nearest ``key``, if within ``tolerance_ns``.

        Of two frames equally near, the earlier stamp wins (it was measured before the colour
        image, not after it).

        Raises:
            ValueError: a negative tolerance.
        """
        if tolerance_ns < 0:
            raise ValueError(f"depth sync tolerance must be >= 0 ns, got {tolerance_ns}")
        with self._lock:
            count = len(self._items)
            nearest = min(self._items, key=lambda k: (abs(k - key), k), default=None)
            frame = None if nearest is None else self._items[nearest]
        if frame is None:
            return DepthMatch(None, None, "no depth image received yet")
        offset = frame.key - key
        if abs(offset) <= tolerance_ns:
            return DepthMatch(frame, offset, "")
        side = "after" if offset > 0 else "before"
        return DepthMatch(
            None,
            offset,
            f"no depth image within {_seconds(tolerance_ns)} of the colour frame: the nearest "
            f"of {count} cached is {_seconds(abs(offset))} {side} it",
        )
