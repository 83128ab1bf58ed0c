"""Generated RGB-D scenes for the node's 3D and vision_msgs tests (not a test module): their
rclpy messages (depth images, CameraInfo, a detector's ``Detection2DArray`` of boxes) and
ground-truth look-ups."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from segfast_ros.bench.scene_depth import RGBDScene, camera_info_fields
from segfast_ros.masks import rle_to_mask
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


# ------------------------------------------------------------------------------ ground truth


def clear_objects(rgbd: RGBDScene, count: int) -> list[int]:
    """The ``count`` largest unoccluded instances with mostly valid depth: a box prompt on one
    gives a clear mask and a valid 3D position."""
    scene = rgbd.scene
    areas = scene.masks.sum(axis=(1, 2))
    good = [
        i
        for i in np.argsort(-areas)
        if rgbd.depth_valid_fraction[i] >= 0.6 and scene.visible_fraction[i] == 1.0
    ]
    return [int(i) for i in good[:count]]


def mask_of(inst: Any) -> np.ndarray:
    """The mask of an ``Instance.msg``."""
    size = [inst.mask_height, inst.mask_width]
    return rle_to_mask({"size": size, "counts": list(inst.rle_counts)})


def best_object(rgbd: RGBDScene, mask: np.ndarray) -> tuple[int, float]:
    """The ground-truth instance ``mask`` overlaps most (by IoU), and that IoU."""
    inter = (rgbd.scene.masks & mask).sum(axis=(1, 2))
    union = (rgbd.scene.masks | mask).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    return int(np.argmax(iou)), float(iou.max())


def on_object(mask: np.ndarray, rgbd: RGBDScene, obj: int) -> bool:
    """``mask`` is on ground-truth instance ``obj``: it overlaps no other as well, and well."""
    return best_object(rgbd, mask)[0] == obj and best_object(rgbd, mask)[1] > 0.5
