"""Masks to 3D for the adapters: depth frames by stamp, the cameras, and the lift of a frame.

Each adapter (the node, the replay) keeps one :class:`Spatial`. Depth images go in as they
arrive (:meth:`Spatial.put_depth`), the colour and depth ``CameraInfo`` as they change, and
each colour frame's instance records come back with ``position_3d`` set
(:meth:`Spatial.lift`), or unchanged with a reason when there is no depth for the frame. It
never raises for missing, stale or mismatched depth: a robot keeps its 2D results.

Which camera back-projects: the colour CameraInfo (scaled when the colour image has another
size than it describes), else the depth CameraInfo when the depth image is the colour image's
size. Depth of another size, or of other intrinsics, is resampled into the colour image's
pixels through the two CameraInfos (:func:`segfast_ros.spatial.camera.resample_depth`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spatial.camera import CameraInfoError, CameraModel, camera_from_info, resample_depth
from ..spatial.lift import DEFAULT_SETTINGS, Lifted, LiftSettings, lift_masks
from .depth import DepthCache, DepthError, DepthFrame, depth_msg_to_metres
from .frames import stamp_to_ns
from .render import InstanceRecord

#: Two image sizes whose width and height ratios differ by more than this are not a scaling of
#: each other (a crop, or another camera), and a CameraInfo of one is not scaled to the other.
ASPECT_TOLERANCE: float = 0.01


@dataclass(frozen=True)
class LiftOutcome:
    """One frame's records after :meth:`Spatial.lift`.

    Attributes:
        records: the records in the same order; ``position_3d`` set (valid or not) when the
            frame was lifted, unchanged when it was not.
        lifted: each record's :class:`~segfast_ros.spatial.lift.Lifted`; [] when not lifted.
        depth_key: the stamp (ns) of the depth frame used; None when not lifted.
        reason: "" when lifted; else why not (no depth yet, the nearest depth too far, no
            CameraInfo, sizes that cannot be matched), as a diagnostic can show it.
    """

    records: list[InstanceRecord]
    lifted: list[Lifted]
    depth_key: int | None
    reason: str

    @property
    def ok(self) -> bool:
        """Whether the frame was lifted."""
        return not self.reason


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _size_mismatch(depth_hw: tuple[int, int], hw: tuple[int, int], missing: str) -> str:
    return (
        f"the depth image is {_wxh(depth_hw)} but the colour image {_wxh(hw)}, and there is no "
        f"{missing}"
    )


def fit_camera(camera: CameraModel, hw: tuple[int, int], what: str) -> CameraModel | str:
    """``camera`` at an image of ``hw`` pixels: itself, scaled, or why it cannot be.

    An image of another size is taken to be the same view at another resolution, so the
    camera is scaled (:meth:`CameraModel.scaled_to`), unless the aspect ratios differ by more
    than :data:`ASPECT_TOLERANCE` (a crop, or another camera's CameraInfo): then the reason.

    Args:
        what: names the image in the reason (``"colour"``, ``"depth"``).
    """
    if camera.hw == tuple(hw):
        return camera
    sx, sy = hw[1] / camera.width, hw[0] / camera.height
    if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
        return (
            f"the {what} CameraInfo describes {_wxh(camera.hw)} but the {what} image is "
            f"{_wxh(hw)}: not a scaling of it (the aspect ratios differ), so its intrinsics "
            f"cannot be used"
        )
    return camera.scaled_to(hw)


class Spatial:
    """What each adapter keeps for 3D: depth frames by stamp, the latest colour and depth
    CameraInfo, the lift settings. Thread-safe: depth and CameraInfo may arrive on other
    threads than the one that lifts.

    Args:
        settings: the lift's settings (erosion, depth range, ...).
        tolerance_ns: how far a depth stamp may be from the colour stamp, nanoseconds.
        cache_size: depth frames kept.
    """

    def __init__(
        self,
        settings: LiftSettings = DEFAULT_SETTINGS,
        tolerance_ns: int = 30_000_000,
        cache_size: int = 8,
    ) -> None:
        self._lock = threading.Lock()
        self._cache = DepthCache(cache_size)
        self._settings = settings
        self._tolerance_ns = 0
        self._colour: CameraModel | None = None
        self._depth_camera: CameraModel | None = None
        self._info_errors: dict[str, str] = {}
        self._counts: dict[str, int] = dict.fromkeys(
            ("depth_received", "depth_bad", "lifted_frames", "unmatched_frames"), 0
        )
        self.configure(settings, tolerance_ns, cache_size)

    @property
    def settings(self) -> LiftSettings:
        """The lift's settings."""
        with self._lock:
            return self._settings

    @property
    def tolerance_ns(self) -> int:
        """How far a depth stamp may be from the colour stamp, nanoseconds."""
        with self._lock:
            return self._tolerance_ns

    def configure(self, settings: LiftSettings, tolerance_ns: int, cache_size: int) -> None:
        """New settings, sync tolerance and cache size; cached depth frames are kept.

        Raises:
            ValueError: a negative tolerance or a cache size below 1 (nothing is changed).
        """
        if tolerance_ns < 0:
            raise ValueError(f"depth sync tolerance must be >= 0 ns, got {tolerance_ns}")
        if cache_size < 1:
            raise ValueError(f"depth cache size must be >= 1, got {cache_size}")
        self._cache.resize(cache_size)
        with self._lock:
            self._settings = settings
            self._tolerance_ns = int(tolerance_ns)

    def put_depth(self, msg: Any) -> DepthFrame:
        """Decode a depth ``sensor_msgs/Image`` and cache it by its header stamp.

        Raises:
            DepthError: an encoding other than 16UC1/32FC1 or bad sizes (counted in
                ``depth_bad``; the caller warns).
        """
        self._count("depth_received")
        try:
            depth = depth_msg_to_metres(msg)
        except DepthError:
            self._count("depth_bad")
            raise
        header = msg.header
        frame = DepthFrame(stamp_to_ns(header.stamp), depth, str(header.frame_id))
        self._cache.put(frame)
        return frame

    def set_colour_info(self, info: Any) -> None:
        """The colour image's ``CameraInfo``: the camera 3D points are in.

        Raises:
            CameraInfoError: K all zero, bad intrinsics or size. The previous good CameraInfo
                is kept, and :meth:`lift` names the error while there is none.
        """
        self._set_info("colour", info)

    def set_depth_info(self, info: Any) -> None:
        """The depth image's ``CameraInfo``, to resample depth of another size or intrinsics.

        Raises:
            CameraInfoError: as :meth:`set_colour_info`.
        """
        self._set_info("depth", info)

    def lift(
        self,
        key: int,
        hw: tuple[int, int],
        records: Sequence[InstanceRecord],
        *,
        points: bool = False,
    ) -> LiftOutcome:
        """Lift the masks of the colour frame stamped ``key`` (``hw`` pixels) with its depth.

        Args:
            key: the colour frame's stamp, nanoseconds.
            hw: the colour image's ``(H, W)``, the size of every record's mask.
            records: the frame's instances (their ``rle_counts`` and ``roi``).
            points: keep each instance's points (``Lifted.points``) for a point cloud.

        Raises:
            ValueError: a record whose mask is not ``hw`` (a caller's bug; missing, stale or
                mismatched depth never raises).
        """
        hw = (int(hw[0]), int(hw[1]))
        for rec in records:
            if tuple(rec.mask_hw) != hw:
                raise ValueError(
                    f"instance {rec.id} has a {_wxh(rec.mask_hw)} mask, the colour image is "
                    f"{_wxh(hw)}"
                )
        match = self._cache.match(key, self.tolerance_ns)
        if match.frame is None:
            return self._unlifted(records, match.reason)
        frame = match.frame
        geometry = self._geometry(frame, hw)
        if isinstance(geometry, str):
            return self._unlifted(records, geometry)
        camera, depth = geometry
        lifted = lift_masks(
            [rec.rle_counts for rec in records],
            [rec.roi for rec in records],
            depth,
            camera,
            self.settings,
            points=points,
        )
        self._count("lifted_frames")
        out = [dataclasses.replace(r, position_3d=p) for r, p in zip(records, lifted, strict=True)]
        return LiftOutcome(out, lifted, frame.key, "")

    def counters(self) -> dict[str, int]:
        """``depth_received`` (every message given to :meth:`put_depth`), ``depth_bad`` (of
        those, rejected), ``lifted_frames``, ``unmatched_frames`` (frames not lifted)."""
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        """Forget the depth frames, the CameraInfos and the counts (a restart)."""
        self._cache.clear()
        with self._lock:
            self._colour = self._depth_camera = None
            self._info_errors.clear()
            for name in self._counts:
                self._counts[name] = 0

    # -------------------------------------------------------------------------------- inside

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _unlifted(self, records: Sequence[InstanceRecord], reason: str) -> LiftOutcome:
        self._count("unmatched_frames")
        return LiftOutcome(list(records), [], None, reason)

    def _set_info(self, which: str, info: Any) -> None:
        try:
            camera = camera_from_info(info)
        except CameraInfoError as err:
            with self._lock:
                self._info_errors[which] = str(err)
            raise
        with self._lock:
            self._info_errors.pop(which, None)
            if which == "colour":
                self._colour = camera
            else:
                self._depth_camera = camera

    def _geometry(
        self, frame: DepthFrame, hw: tuple[int, int]
    ) -> tuple[CameraModel, np.ndarray] | str:
        """The camera to back-project with and the depth in the colour image's pixels, or why
        there are none."""
        with self._lock:
            colour, depth_camera = self._colour, self._depth_camera
            errors = dict(self._info_errors)
        target = None if colour is None else fit_camera(colour, hw, "colour")
        source = None if depth_camera is None else fit_camera(depth_camera, frame.hw, "depth")
        if isinstance(target, str):
            return target
        if isinstance(source, str):
            return source
        if target is None:
            if source is None:
                rejected = "".join(
                    f"; the {w} CameraInfo was rejected: {e}" for w, e in errors.items()
                )
                return f"no CameraInfo (colour or depth) to back-project the depth with{rejected}"
            if frame.hw != hw:
                return _size_mismatch(frame.hw, hw, "colour CameraInfo to scale it to")
            return source, frame.depth
        if source is None:
            if frame.hw != hw:
                return _size_mismatch(frame.hw, hw, "depth CameraInfo to scale it by")
            return target, frame.depth
        return target, resample_depth(frame.depth, source, target)
