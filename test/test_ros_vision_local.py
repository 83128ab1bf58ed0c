"""The node's vision side in this process: ``~/prompts`` answers (PromptTopic) on the demo
model, the vision_msgs outputs (VisionOutputs) and their messages, and the node without
vision_msgs (the DDS side is test_ros_depth.py).

The parts run on a plain lifecycle node; the embedding cache is filled by encoding generated
RGB-D scenes with the demo model (real ONNX Runtime). Outputs are taken at the publisher: the
lifecycle publishers are swapped for recorders, the one fake here, so a test reads what would
go out without activating a node. Decoder calls are counted at the backend.
"""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rgbd_msgs import (
    clear_objects,
    depth_msg,
    detection,
    detections_msg,
    info_msg,
    mask_of,
    on_object,
)
from std_msgs.msg import Header
from tracking_frames import MODEL_DIR

from segfast_ros.bench.scene_depth import RGBDScene, generate_rgbd_scene
from segfast_ros.bench.tracking import CountingBackend
from segfast_ros.pipeline.frames import Frame, encode_frame
from segfast_ros.pipeline.render import mask_record
from segfast_ros.pipeline.spatial import Spatial
from segfast_ros.ros import vision
from segfast_ros.ros.calls import ServiceCalls
from segfast_ros.ros.depth import DepthInput
from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.harness import free_domain_id
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.node import SegfastNode
from segfast_ros.ros.prompts import PromptTopic
from segfast_ros.ros.tracking import TargetTracking
from segfast_ros.ros.vision import VisionOutputs
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.tracking.settings import TrackingSettings

HW = (240, 320)
#: The cached frames by stamp: another scene, then two frames of one scene (a still camera).
OTHER, KEY, LATEST = 1_000_000_000, 2_000_000_000, 2_100_000_000
SCENES = {OTHER: generate_rgbd_scene(2, HW), KEY: generate_rgbd_scene(1, HW)}
SCENES[LATEST] = SCENES[KEY]
FRAME = "camera_color_optical_frame"
VM = vision.vision_msgs_module()
needs_vision_msgs = pytest.mark.skipif(
    VM is None, reason="vision_msgs is not installed (make setup builds it from ../shared)"
)


class Recorder:
    """A publisher's stand-in: keeps what is published, and on which thread."""

    def __init__(self, subscribers: int = 0) -> None:
        self.messages: list[Any] = []
        self.threads: list[str] = []
        self.subscribers = subscribers

    def publish(self, msg: Any) -> None:
        self.messages.append(msg)
        self.threads.append(threading.current_thread().name)

    def get_subscription_count(self) -> int:
        return self.subscribers


class Logger:
    """The node's logger for a test: keeps the warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    warn = warning

    def info(self, text: str) -> None:
        pass

    def error(self, text: str) -> None:
        self.warnings.append(text)


@pytest.fixture(scope="module")
def backend() -> CountingBackend:
    return CountingBackend(OnnxRuntimeBackend.from_dir(MODEL_DIR, "fp32", intra_op_threads=1))


@pytest.fixture(scope="module")
def encoded(backend: CountingBackend) -> dict[int, Any]:
    """Each scene encoded once, by stamp."""
    out = {}
    for key, rgbd in SCENES.items():
        header = Header(frame_id=FRAME)
        header.stamp.sec, header.stamp.nanosec = divmod(key, 1_000_000_000)
        out[key] = encode_frame(Predictor(backend), Frame(key, rgbd.scene.image, header))
    return out


@pytest.fixture
def node() -> Iterator[LifecycleNode]:
    context = Context()
    rclpy.init(context=context, domain_id=free_domain_id())
    made = LifecycleNode("segfast_vision_test", context=context)
    made.logged = Logger()
    made.get_logger = lambda: made.logged
    yield made
    made.destroy_node()
    rclpy.try_shutdown(context=context)


def swap(publishers: dict[str, Any], **recorders: Recorder) -> dict[str, Any]:
    """Put recorders in place of ``publishers``' entries; the real ones, to put back."""
    real = dict(publishers)
    publishers.update(recorders)
    return real


class Parts(SimpleNamespace):
    """The vision side of a node, wired as the node shell wires it."""


@pytest.fixture
def parts(node: LifecycleNode, backend: CountingBackend, encoded: dict) -> Iterator[Parts]:
    health = Health(node.get_logger())
    frames = FrameIntake(node, health, None)
    frames.configure(Predictor(backend), 4)
    for key in sorted(encoded):
        frames.cache.put(encoded[key])
    calls = ServiceCalls(node, health, lambda: 4, ReentrantCallbackGroup())
    outputs = VisionOutputs(node, health)
    depth = DepthInput(node, health, None)  # off: ~/tracks stays 2D
    tracks = TargetTracking(node, health, calls, frames, lambda: backend, depth, outputs)
    tracks.configure(TrackingSettings(), True)
    outputs.create_publishers()
    spatial: list[Any] = [None]
    topic = PromptTopic(node, health, frames, tracks, lambda: backend, outputs, lambda: spatial[0])
    topic.configure(100, False)
    rec = {"prompted": Recorder(), "detections": Recorder()}
    real = swap(topic.publishers, **rec)
    out_rec = {k: Recorder(subscribers=1) for k in outputs.publishers}
    real_out = swap(outputs.publishers, **out_rec)
    yield Parts(
        topic=topic, outputs=outputs, tracks=tracks, frames=frames, spatial=spatial, rec=rec,
        out=out_rec, backend=backend, node=node,
    )  # fmt: skip
    topic.deactivate()
    topic.publishers.update(real)
    outputs.publishers.update(real_out)
    topic.release()
    outputs.release()
    tracks.release()
    frames.release()


def prompts(key: int, detections: list[Any]) -> Any:
    return detections_msg(VM, key, detections, "detector")


def gt_detections(rgbd: RGBDScene, which: list[int]) -> list[Any]:
    return [
        detection(VM, rgbd.scene.boxes[i], f"class{i}", 0.5 + 0.01 * i, f"det{i}") for i in which
    ]


def stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


# ---------------------------------------------------------------------------- ~/prompts


@needs_vision_msgs
def test_prompts_are_one_batch_on_their_frame_answered_in_order_with_the_detections_carried(
    parts: Parts,
) -> None:
    """GT boxes of one message on the oldest of three cached frames (another scene than the
    latest): one decoder call for all, the matched frame's header, masks on the prompted
    objects in order, the detector's class hypotheses and ids carried through, on the worker
    thread (not the caller's)."""
    rgbd = SCENES[OTHER]
    which = clear_objects(rgbd, 2)
    parts.topic.activate()
    calls, sets = parts.backend.decode_calls, parts.backend.prompt_sets
    parts.topic._on_prompts(prompts(OTHER, gt_detections(rgbd, which)))
    assert parts.topic.worker.wait_idle(30)
    assert (parts.backend.decode_calls - calls, parts.backend.prompt_sets - sets) == (1, 2)
    (msg,) = parts.rec["prompted"].messages
    (dets,) = parts.rec["detections"].messages
    assert parts.rec["prompted"].threads == ["segfast-prompts"]
    assert stamp_ns(msg.header) == OTHER and msg.header.frame_id == FRAME
    assert dets.header == msg.header
    assert msg.strategy == "prompts" and msg.decoder_prompts == 2
    assert [i.id for i in msg.instances] == [0, 1]
    for inst, obj in zip(msg.instances, which, strict=True):
        assert on_object(mask_of(inst), rgbd, obj), obj
        assert list(inst.prompt) == pytest.approx(list(rgbd.scene.boxes[obj]))
        assert inst.track_id == 0  # start_tracks off
    for det, inst, obj in zip(dets.detections, msg.instances, which, strict=True):
        assert det.id == f"det{obj}"
        (hyp,) = det.results
        assert hyp.hypothesis.class_id == f"class{obj}"
        assert hyp.hypothesis.score == pytest.approx(0.5 + 0.01 * obj)
        # The box is the mask's (the instance's ROI), not the prompt's.
        roi = inst.box
        assert det.bbox.size_x == roi.width and det.bbox.size_y == roi.height
        assert det.bbox.center.position.x == roi.x_offset + roi.width / 2
    assert parts.topic.counts["answered"] == 1 and parts.topic.counts["boxes"] == 2


@needs_vision_msgs
def test_a_stamp_not_cached_is_counted_warned_once_and_dropped(parts: Parts) -> None:
    rgbd = SCENES[KEY]
    calls = parts.backend.decode_calls
    for key in (5, 7):  # never received
        parts.topic._answer(prompts(key, gt_detections(rgbd, clear_objects(rgbd, 1))))
    assert parts.backend.decode_calls == calls
    assert not parts.rec["prompted"].messages and not parts.rec["detections"].messages
    assert parts.topic.counts["unmatched"] == 2
    values = parts.topic.diagnostics()
    assert values["prompts_unmatched"] == "2"
    assert "no cached frame with stamp 0.000000007" in values["prompts_last_problem"]
    dropped = [w for w in parts.node.logged.warnings if "~/prompts message dropped" in w]
    assert len(dropped) == 1, dropped  # throttled: one line for both
    assert "cache_size=4" in dropped[0]


@needs_vision_msgs
def test_an_empty_message_gets_an_empty_answer(parts: Parts) -> None:
    calls = parts.backend.decode_calls
    parts.topic._answer(prompts(KEY, []))
    parts.topic._answer(prompts(9, []))  # no such frame: the message's own header
    assert parts.backend.decode_calls == calls
    first, second = parts.rec["prompted"].messages
    assert (first.instances, first.decoder_prompts, first.strategy) == ([], 0, "prompts")
    assert first.header.frame_id == FRAME and stamp_ns(first.header) == KEY
    assert second.header.frame_id == "detector" and stamp_ns(second.header) == 9
    assert [d.detections for d in parts.rec["detections"].messages] == [[], []]
    assert parts.topic.counts["unmatched"] == 0


@needs_vision_msgs
def test_bad_boxes_are_skipped_and_counted_with_the_reason(parts: Parts) -> None:
    rgbd = SCENES[KEY]
    (good,) = clear_objects(rgbd, 1)
    bad = [
        detection(VM, [np.nan, 0, 10, 10], det_id="nan"),
        detection(VM, [50, 50, 50, 80], det_id="flat"),
        detection(VM, [400, 300, 450, 350], det_id="outside"),
    ]
    parts.topic._answer(prompts(KEY, [bad[0], *gt_detections(rgbd, [good]), *bad[1:]]))
    (msg,) = parts.rec["prompted"].messages
    (dets,) = parts.rec["detections"].messages
    assert len(msg.instances) == 1 and [d.id for d in dets.detections] == [f"det{good}"]
    assert on_object(mask_of(msg.instances[0]), rgbd, good)
    assert parts.topic.counts["boxes_skipped"] == 3
    problem = parts.topic.diagnostics()["prompts_last_problem"]
    assert "3 of 4 boxes skipped" in problem
    assert "'nan'): a box that is not finite" in problem
    assert "'flat'): a box of size 0.0x30.0; expected width and height > 0" in problem
    assert "'outside'): a box [400.0, 300.0, 450.0, 350.0] (XYXY) wholly outside" in problem

    # Past prompts.max_detections the lowest scores are left out.
    parts.topic.reconfigure(2, False)
    which = clear_objects(rgbd, 3)
    parts.topic._answer(prompts(KEY, gt_detections(rgbd, which)))
    kept = [d.id for d in parts.rec["detections"].messages[-1].detections]
    lowest = min(which)  # scores grow with the index
    assert kept == [f"det{i}" for i in which if i != lowest]
    assert parts.topic.counts["boxes_skipped"] == 4
    with pytest.raises(ValueError, match="prompts.max_detections must be >= 1, got 0"):
        parts.topic.reconfigure(0, False)


@needs_vision_msgs
def test_start_tracks_starts_only_boxes_no_target_covers(parts: Parts) -> None:
    """prompts.start_tracks: new boxes start targets on the prompt's frame, caught up to the
    latest cached frame as ~/track ADD does; boxes a target covers carry its ID instead."""
    rgbd = SCENES[KEY]
    first, second, third = clear_objects(rgbd, 3)
    parts.topic.reconfigure(100, True)
    targets = parts.tracks.tracking.targets
    parts.topic._answer(prompts(KEY, gt_detections(rgbd, [first, second])))
    ids = targets.ids()
    assert len(ids) == 2 and parts.topic.counts["tracks_started"] == 2
    msg = parts.rec["prompted"].messages[-1]
    assert [i.track_id for i in msg.instances] == ids
    # The detection ids stay the detector's.
    assert [d.id for d in parts.rec["detections"].messages[-1].detections] == [
        f"det{first}",
        f"det{second}",
    ]
    for target in targets.results():
        assert target.frame_key == LATEST  # caught up
        index = ids.index(target.target_id)
        assert on_object(target.mask, rgbd, (first, second)[index])

    # Again with a third object: the two followed ones are covered, only the third starts.
    parts.topic._answer(prompts(KEY, gt_detections(rgbd, [second, third, first])))
    assert len(targets) == 3 and parts.topic.counts["tracks_started"] == 3
    (new,) = set(targets.ids()) - set(ids)
    msg = parts.rec["prompted"].messages[-1]
    assert [i.track_id for i in msg.instances] == [ids[1], new, ids[0]]

    # No room past tracking.max_targets: counted and said, the answer still comes.
    targets.configure(TrackingSettings(max_targets=3))
    others = [i for i in clear_objects(rgbd, 6) if i not in (first, second, third)][:2]
    parts.topic._answer(prompts(KEY, gt_detections(rgbd, others)))
    assert len(targets) == 3 and parts.topic.counts["tracks_not_started"] == 2
    assert len(parts.rec["prompted"].messages[-1].instances) == 2
    assert "tracking.max_targets is 3" in parts.topic.diagnostics()["prompts_last_problem"]


@needs_vision_msgs
def test_prompted_instances_carry_3d_when_depth_is_on(parts: Parts) -> None:
    rgbd = SCENES[KEY]
    spatial = Spatial()
    spatial.set_colour_info(info_msg(rgbd.camera, KEY))
    spatial.put_depth(depth_msg(rgbd.depth, KEY + 4_000_000, "32FC1"))  # 4 ms off the colour
    parts.spatial[0] = spatial
    which = clear_objects(rgbd, 3)
    parts.topic._answer(prompts(KEY, gt_detections(rgbd, which)))
    (msg,) = parts.rec["prompted"].messages
    for inst, obj in zip(msg.instances, which, strict=True):
        p = inst.position_3d
        assert p.valid and p.num_points >= 20
        truth = rgbd.centroids[obj]
        error = np.linalg.norm(np.array([p.centroid.x, p.centroid.y, p.centroid.z]) - truth)
        assert error <= 0.05 * np.linalg.norm(truth), (obj, error)


# ------------------------------------------------------------------------- vision outputs


def lifted_records() -> tuple[list[Any], list[Any]]:
    """Records of three GT masks of the first scene, lifted with its depth (and points)."""
    rgbd = SCENES[KEY]
    which = clear_objects(rgbd, 3)
    records = [
        mask_record(rgbd.scene.masks[i], 0.9, 0.95, n, rgbd.scene.boxes[i])
        for n, i in enumerate(which)
    ]
    spatial = Spatial()
    spatial.set_colour_info(info_msg(rgbd.camera, KEY))
    spatial.put_depth(depth_msg(rgbd.depth, KEY))
    outcome = spatial.lift(KEY, HW, records, points=True)
    assert outcome.ok, outcome.reason
    return outcome.records, outcome.lifted


@needs_vision_msgs
def test_detections_mirror_the_instances_and_3d_goes_out_with_points(parts: Parts) -> None:
    import dataclasses

    records, lifted = lifted_records()
    records[1] = dataclasses.replace(records[1], track_id=7)
    header = Header(frame_id=FRAME)
    header.stamp.sec = 1
    parts.outputs.publish_instances(header, records, ["a", "b", "c"], lifted, voxel_m=0.0)
    (dets,) = parts.out["detections"].messages
    assert dets.header == header and [d.header for d in dets.detections] == [header] * 3
    assert [d.id for d in dets.detections] == ["", "7", ""]
    for det, rec, cls in zip(dets.detections, records, "abc", strict=True):
        x, y, w, h = rec.roi
        assert (det.bbox.size_x, det.bbox.size_y) == (w, h)
        assert (det.bbox.center.position.x, det.bbox.center.position.y) == (x + w / 2, y + h / 2)
        (hyp,) = det.results
        assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == (cls, pytest.approx(0.9))
    (dets3,) = parts.out["detections_3d"].messages
    assert dets3.header == header and [d.id for d in dets3.detections] == ["", "7", ""]
    for det, rec in zip(dets3.detections, records, strict=True):
        p = rec.position_3d
        (hyp,) = det.results
        got = hyp.pose.pose.position
        assert (got.x, got.y, got.z) == pytest.approx(p.centroid)
        size = det.bbox.size
        assert (size.x, size.y, size.z) == pytest.approx(np.subtract(p.max, p.min))
        assert det.bbox.center.orientation.w == 1.0
    (cloud,) = parts.out["points"].messages
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id"] and cloud.point_step == 16
    points = np.frombuffer(bytes(cloud.data), dtype=np.dtype("<f4,<f4,<f4,<u4"))
    assert len(points) == cloud.width == sum(len(item.points) for item in lifted)
    assert set(np.unique(points["f3"]).tolist()) == {1, 2, 3}  # ~/instances/label's labels
    ones = points[points["f3"] == 1]
    assert np.median(ones["f2"]) == pytest.approx(lifted[0].centroid[2], rel=0.02)

    # Nobody on ~/points: no cloud; a frame not lifted: no 3D message (not an empty one).
    parts.out["points"].subscribers = 0
    plain = [dataclasses.replace(r, position_3d=None) for r in records]
    parts.outputs.publish_instances(header, plain, None, lifted)
    assert len(parts.out["points"].messages) == 1
    assert len(parts.out["detections_3d"].messages) == 1
    assert len(parts.out["detections"].messages) == 2
    parts.outputs.publish_targets(header, records)
    (targets,) = parts.out["tracks_3d"].messages
    assert [d.id for d in targets.detections] == ["", "7", ""]


def test_without_vision_msgs_those_outputs_are_off_said_once_and_in_diagnostics(
    node: LifecycleNode, backend: CountingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vision_msgs missing is simulated: ``vision_msgs_module`` patched to return None (the
    module cannot be uninstalled for one test)."""
    monkeypatch.setattr(vision, "vision_msgs_module", lambda: None)
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    health = Health(node.get_logger())
    frames = FrameIntake(node, health, None)
    outputs = VisionOutputs(node, health)
    depth = DepthInput(node, health, None)
    tracks = TargetTracking(node, health, None, frames, lambda: backend, depth, outputs)
    topic = PromptTopic(node, health, frames, tracks, lambda: backend, outputs)
    assert not outputs.available and not topic.available
    for _ in range(2):  # configure, cleanup, configure
        outputs.create_publishers()
        topic.configure(100, False)
        topic.activate()
        assert list(outputs.publishers) == ["points"]
        assert topic.publishers == {} and topic.subscription is None and topic.worker is None
        topic.deactivate()
        topic.release()
        outputs.release()
    said = [w for w in node.logged.warnings if "vision_msgs" in w]
    expected = (
        "off: ~/detections, ~/detections_3d, ~/tracks/detections_3d, ~/prompts, "
        "~/prompted/detections: vision_msgs is not installed (rosdep install vision_msgs / "
        "apt ros-jazzy-vision-msgs)"
    )
    assert said == [expected]
    assert outputs.diagnostics()["vision_msgs"] == expected
    assert topic.diagnostics() == {"prompts": "off (vision_msgs is not installed)"}
    with pytest.raises(RuntimeError, match="vision_msgs is not installed"):
        outputs.detection2d_array(Header(), [])

    # ~/points needs only sensor_msgs: it still goes out.
    outputs.create_publishers()
    real = swap(outputs.publishers, points=Recorder(subscribers=1))
    records, lifted = lifted_records()
    outputs.publish_instances(Header(), records, None, lifted)
    assert len(outputs.publishers["points"].messages) == 1
    outputs.publishers.update(real)
    outputs.release()


def test_a_node_without_vision_msgs_runs_with_those_topics_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole node, vision_msgs hidden as above: it configures and activates, offers
    ~/points but none of the vision_msgs topics, and /diagnostics says which are off."""
    monkeypatch.setattr(vision, "vision_msgs_module", lambda: None)
    context = Context()
    rclpy.init(context=context, domain_id=free_domain_id())
    values = {"model_dir": "demo", "precision": "int8", "segevery.rate": 0.0}
    node = SegfastNode(
        context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        topics = {name for name, _ in node.get_topic_names_and_types()}
        assert {"/segfast/instances", "/segfast/points", "/segfast/tracks"} <= topics
        off = {"detections", "detections_3d", "tracks/detections_3d", "prompts", "prompted"}
        assert not topics & {f"/segfast/{name}" for name in off | {"prompted/detections"}}
        status = node.diagnostic_status()
        got = {kv.key: kv.value for kv in status.values}
        assert got["vision_msgs"].startswith("off: ~/detections, ~/detections_3d, ")
        assert got["prompts"] == "off (vision_msgs is not installed)"
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
