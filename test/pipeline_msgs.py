"""Image and CameraInfo messages for the pipeline tests, in each library the pipeline reads.

``namespace``: plain ``types.SimpleNamespace`` (duck typing alone); ``rclpy``: the real
``sensor_msgs.msg`` classes (``uint8[]`` as ``array.array``); ``rosbags``: the offline replay's
dataclasses (``uint8[]`` as a numpy array). A flavour whose library is not importable skips.
"""

from __future__ import annotations

import array
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segfast_ros.spatial.camera import CameraModel

FLAVOURS = ("namespace", "rclpy", "rosbags")


def _rclpy_types() -> Any:
    return pytest.importorskip(
        "sensor_msgs.msg", reason="rclpy's sensor_msgs is not importable (ROS 2 wheels missing)"
    )


def _rosbags_types() -> dict[str, Any]:
    pytest.importorskip("rosbags", reason="rosbags is not installed")
    from segfast_ros.replay.bags import typestore

    return typestore().types


def _header(flavour: str, stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    if flavour == "namespace":
        return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)
    if flavour == "rclpy":
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)
    types = _rosbags_types()
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_msg(flavour: str, fields: dict[str, Any], stamp_ns: int = 0, frame_id: str = "") -> Any:
    """A ``sensor_msgs/Image`` with ``fields`` (as :func:`image_fields` returns them)."""
    data = np.asarray(fields["data"], dtype=np.uint8).reshape(-1)
    values = {**fields, "is_bigendian": bool(fields["is_bigendian"])}
    if flavour == "namespace":
        return SimpleNamespace(header=_header(flavour, stamp_ns, frame_id), **values)
    header = _header(flavour, stamp_ns, frame_id)
    if flavour == "rclpy":
        values["data"] = array.array("B", data.tobytes())
        return _rclpy_types().Image(header=header, **values)
    values["data"] = data
    values["is_bigendian"] = int(values["is_bigendian"])
    return _rosbags_types()["sensor_msgs/msg/Image"](header=header, **values)


def camera_info_msg(
    flavour: str, camera: CameraModel, k: list[float] | None = None, stamp_ns: int = 0
) -> Any:
    """A ``sensor_msgs/CameraInfo`` of ``camera`` (or with another ``k``, e.g. all zero)."""
    k = camera.k() if k is None else k
    header = _header(flavour, stamp_ns, camera.frame_id)
    if flavour == "namespace":
        return SimpleNamespace(header=header, width=camera.width, height=camera.height, k=k)
    if flavour == "rclpy":
        return _rclpy_types().CameraInfo(
            header=header, width=camera.width, height=camera.height, k=k
        )
    types = _rosbags_types()
    return types["sensor_msgs/msg/CameraInfo"](
        header=header,
        height=camera.height,
        width=camera.width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(k, dtype=np.float64),
        r=np.eye(3).reshape(-1),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )
