"""Masks to 3D and vision_msgs over real DDS: a node process on the demo model with
``depth.enabled``, fed colour, aligned ``16UC1`` depth and the colour CameraInfo by a client
in this process, with the stamp jitter of a real RGB-D driver (each depth image a few
milliseconds off its colour frame, within ``depth.sync_tolerance``).

Checked: ``~/detections_3d`` centroids against the generator's exact ones for the objects the
model segments; ``~/detections`` mirrors ``~/instances`` (header, order, boxes, scores, ids);
a ``Detection2DArray`` of ground-truth boxes on ``~/prompts`` for an older frame comes back on
``~/prompted`` and ``~/prompted/detections`` for that frame. One node for the module; the
tests run in file order. The node without vision_msgs is test_ros_vision_local.py's (the
module is hidden in-process there).
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")
vm = pytest.importorskip(
    "vision_msgs.msg", reason="vision_msgs is not installed (make setup builds it from ../shared)"
)

from rgbd_msgs import (
    best_object,
    clear_objects,
    depth_msg,
    detection,
    detections_msg,
    info_msg,
    mask_of,
    on_object,
)
from ros_node_fixtures import (
    demo_grid_params,
    domain_id,
    node_args,
    participant,
    publish_and_wait,
    run_node,
    wait_until_serving,
)
from sensor_msgs.msg import CameraInfo, Image

from segfast_ros.bench.scene_depth import RGBDScene, generate_rgbd_scene
from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, image_msg
from segfast_ros.srv import Segment

NS = "/segfast_depth"
NODE = f"{NS}/segfast"
HW = (240, 320)
#: Two RGB-D frames of different scenes, by colour stamp; each depth stamp is a few ms off.
SCENES = {100_000_000_000: generate_rgbd_scene(5, HW), 100_100_000_000: generate_rgbd_scene(6, HW)}
JITTER_NS = {100_000_000_000: 7_000_000, 100_100_000_000: -4_000_000}
#: Centroid error allowed with the model's own masks, as a fraction of the object's distance
#: (the geometry's own goal is 2% with exact masks: the eval's; masks leak a little here).
CENTROID_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def node(domain_id: int, tmp_path_factory: pytest.TempPathFactory):
    params = demo_grid_params(**{"cache_size": 4, "depth.enabled": True})
    args = [
        *node_args(NS, params, image="camera/color/image_raw"),
        *("-r", "depth:=camera/aligned_depth_to_color/image_raw"),
        *("-r", "camera_info:=camera/color/camera_info"),
    ]
    yield from run_node(args, domain_id, tmp_path_factory.mktemp("depth") / "node.log")


@pytest.fixture(scope="module")
def client(node: NodeProcess, domain_id: int):
    """A camera (colour, depth, camera_info), a detector on ~/prompts, and every output."""
    c = participant(domain_id)
    cam = f"{NS}/camera"
    c.image_pub = c.node.create_publisher(Image, f"{cam}/color/image_raw", 2)
    c.depth_pub = c.node.create_publisher(Image, f"{cam}/aligned_depth_to_color/image_raw", 2)
    c.info_pub = c.node.create_publisher(CameraInfo, f"{cam}/color/camera_info", 2)
    c.prompts_pub = c.node.create_publisher(vm.Detection2DArray, f"{NODE}/prompts", 10)
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.got = {name: [] for name in ("instances", "detections", "detections_3d", "prompted")}
    c.got["prompted/detections"] = []
    types = {"instances": InstanceArray, "prompted": InstanceArray}
    types.update(dict.fromkeys(("detections", "prompted/detections"), vm.Detection2DArray))
    types["detections_3d"] = vm.Detection3DArray
    for name, msg_type in types.items():
        c.node.create_subscription(msg_type, f"{NODE}/{name}", c.got[name].append, 10)
    try:
        wait_until_serving(c, node, c.segment, c.image_pub)
        for pub in (c.depth_pub, c.info_pub):
            c.spin_until(lambda p=pub: p.get_subscription_count() > 0, 30, pub.topic_name)
        yield c
    finally:
        c.close()


def ns_of(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def first_for(c: Client, name: str, key: int, timeout: float = 20.0) -> Any:
    """The first message on ``~/<name>`` whose header stamp is ``key``."""
    c.spin_until(
        lambda: any(ns_of(m.header) == key for m in c.got[name]), timeout, f"~/{name} at {key}"
    )
    return next(m for m in c.got[name] if ns_of(m.header) == key)


def lifted_pass(c: Client, key: int) -> tuple[Any, Any]:
    """A SegEvery pass on frame ``key`` made with depth: its ~/instances and ~/detections_3d
    (the last of each: a frame sent again is segmented again)."""
    instances = [
        m
        for m in c.got["instances"]
        if ns_of(m.header) == key and any(i.position_3d.valid for i in m.instances)
    ]
    dets = [m for m in c.got["detections_3d"] if ns_of(m.header) == key]
    if not instances or not dets:
        raise LookupError(f"no lifted SegEvery pass on frame {key} yet")
    return instances[-1], dets[-1]


def publish_frame(c: Client, node: NodeProcess, key: int) -> None:
    """The camera's messages of frame ``key`` until the node has lifted it: CameraInfo and
    depth (stamped with the driver's jitter) first, then colour.

    The node takes the camera best effort, as drivers are taken, so a message may be lost (on
    this loaded machine, or before discovery completes both ways); the camera then sends its
    frame again, and the node encodes and segments it anew.
    """
    rgbd = SCENES[key]
    frame_id = rgbd.camera.frame_id
    for _ in range(5):
        c.info_pub.publish(info_msg(rgbd.camera, key))
        c.depth_pub.publish(depth_msg(rgbd.depth, key + JITTER_NS[key], "16UC1", frame_id))
        publish_and_wait(c, rgbd.scene.image, key, frame_id=frame_id)
        try:
            c.spin_until(lambda: _lifted(c, key), 5.0, f"a lifted pass on {key}")
            return
        except AssertionError:
            continue
    raise AssertionError(f"frame {key} never lifted; node log:\n{node.log()}")


def _lifted(c: Client, key: int) -> bool:
    try:
        lifted_pass(c, key)
    except LookupError:
        return False
    return True


# ---------------------------------------------------------------------------------- tests


def test_segevery_frames_come_with_3d_detections_near_the_ground_truth(
    client: Client, node: NodeProcess
) -> None:
    """Each frame's ~/instances and ~/detections_3d share the colour header; the 3D
    detections are the instances whose position_3d is valid, in order; for the objects the
    model segments well (IoU >= 0.7 with one) and whose depth is mostly valid, the centroid is
    within CENTROID_TOLERANCE of the object's distance."""
    checked = 0
    for key, rgbd in SCENES.items():
        publish_frame(client, node, key)
        instances, dets3 = lifted_pass(client, key)
        assert dets3.header == instances.header
        assert dets3.header.frame_id == rgbd.camera.frame_id
        valid = [i for i in instances.instances if i.position_3d.valid]
        assert valid and len(dets3.detections) == len(valid)
        for inst, det in zip(valid, dets3.detections, strict=True):
            assert det.id == (str(inst.track_id) if inst.track_id else "")
            (hyp,) = det.results
            c = inst.position_3d.centroid
            p = hyp.pose.pose.position
            assert (p.x, p.y, p.z) == (c.x, c.y, c.z)
            assert det.bbox.size.z >= 0 and det.bbox.center.orientation.w == 1.0
            obj, iou = best_object(rgbd, mask_of(inst))
            if iou < 0.7 or rgbd.depth_valid_fraction[obj] < 0.5:
                continue
            truth = rgbd.centroids[obj]
            error = float(np.linalg.norm(np.array([p.x, p.y, p.z]) - truth))
            assert error <= CENTROID_TOLERANCE * np.linalg.norm(truth), (key, obj, error)
            checked += 1
    assert checked >= 3


def test_detections_mirror_the_instances(client: Client) -> None:
    for key in SCENES:
        instances = first_for(client, "instances", key)
        dets = first_for(client, "detections", key)
        assert dets.header == instances.header
        assert len(dets.detections) == len(instances.instances) > 0
        for det, inst in zip(dets.detections, instances.instances, strict=True):
            assert det.header == instances.header
            assert det.id == (str(inst.track_id) if inst.track_id else "")
            box = inst.box
            assert (det.bbox.size_x, det.bbox.size_y) == (box.width, box.height)
            assert det.bbox.center.position.x == box.x_offset + box.width / 2
            assert det.bbox.center.position.y == box.y_offset + box.height / 2
            (hyp,) = det.results
            assert hyp.hypothesis.score == pytest.approx(inst.score)


def test_a_detector_s_boxes_on_prompts_come_back_for_their_frame(client: Client) -> None:
    """GT boxes of the older frame (another scene than the latest) on ~/prompts: ~/prompted
    and ~/prompted/detections carry that frame's header, one instance per box in order, each
    mask on its object (with its 3D position), each detection the detector's class and id."""
    key = min(SCENES)
    rgbd = SCENES[key]
    which = clear_objects(rgbd, 3)
    boxes = [detection(vm, rgbd.scene.boxes[i], f"class{i}", 0.9, f"yolo-{i}") for i in which]
    client.prompts_pub.publish(detections_msg(vm, key, boxes, "detector"))
    prompted = first_for(client, "prompted", key)
    dets = first_for(client, "prompted/detections", key)
    assert prompted.header.frame_id == rgbd.camera.frame_id and dets.header == prompted.header
    assert prompted.strategy == "prompts" and len(prompted.instances) == len(which)
    for inst, det, obj in zip(prompted.instances, dets.detections, which, strict=True):
        assert on_object(mask_of(inst), rgbd, obj), (obj, best_object(rgbd, mask_of(inst)))
        assert inst.position_3d.valid
        assert det.id == f"yolo-{obj}"
        (hyp,) = det.results
        assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == (f"class{obj}", 0.9)
    # An unknown stamp is dropped, not answered, and the node stays up.
    client.prompts_pub.publish(detections_msg(vm, 5, boxes))
    with pytest.raises(AssertionError, match="timed out"):
        first_for(client, "prompted", 5, timeout=1.0)
