"""rclpy messages of generated RGB-D scenes for the node's 3D and vision_msgs tests (not a test
module): depth images, CameraInfo, and a detector's ``Detection2DArray`` of boxes."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from segfast_ros.bench.scene_depth import camera_info_fields
from segfast_ros.pipeline.depth import depth_fields
from segfast_ros.spatial.camera import CameraModel


def stamped(msg: Any, stamp_ns: int, frame_id: str) -> Any:
    """``msg`` with its header's stamp and frame_id set."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def depth_msg(
    depth_m: np.ndarray, stamp_ns: int, encoding: str = "16UC1", frame_id: str = ""
) -> Image:
    """A depth ``sensor_msgs/Image`` (16UC1 millimetres or 32FC1 metres) of ``depth_m``."""
    fields = depth_fields(depth_m, encoding)
    data = fields.pop("data")
    msg = Image(**fields)
    msg.data = array("B", data.tobytes())  # array: no per-byte check in the setter
    return stamped(msg, stamp_ns, frame_id)


def info_msg(camera: CameraModel, stamp_ns: int) -> CameraInfo:
    """The ``sensor_msgs/CameraInfo`` of ``camera`` (its frame_id), stamped."""
    return stamped(CameraInfo(**camera_info_fields(camera)), stamp_ns, camera.frame_id)


def detection(vm: Any, box: Any, class_id: str = "", score: float = 0.0, det_id: str = "") -> Any:
    """A ``vision_msgs/Detection2D`` of an XYXY box, one hypothesis (``vm``: vision_msgs.msg)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    det = vm.Detection2D(id=det_id)
    det.bbox.center.position.x, det.bbox.center.position.y = (x0 + x1) / 2, (y0 + y1) / 2
    det.bbox.size_x, det.bbox.size_y = x1 - x0, y1 - y0
    hyp = vm.ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = class_id, score
    det.results = [hyp]
    return det


def detections_msg(vm: Any, stamp_ns: int, detections: list[Any], frame_id: str = "") -> Any:
    """A ``vision_msgs/Detection2DArray`` of ``detections``, stamped."""
    return stamped(vm.Detection2DArray(detections=detections), stamp_ns, frame_id)
