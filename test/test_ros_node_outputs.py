"""The segfast node over real DDS: SegEvery's outputs, bad frames, parameters, diagnostics, and
deactivation with calls in flight.

One node for the module, tests in file order (see ros_node_fixtures.py): the diagnostics test
counts the frames the tests before it published and rejected.
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_node_fixtures import (
    GRID_SIDE,
    NODE,
    NS,
    client,
    deep_client,
    domain_id,
    model_dir,
    node,
    publish_and_wait,
    request,
    set_param,
    tiled_boxes,
)
from ros_scenes import synthetic_scene

from segfast_ros.ros.harness import Client, NodeProcess, image_msg


def test_instances_and_label_carry_the_source_header(client: Client) -> None:
    rgb = synthetic_scene(seed=2)
    stamp = 2_000_000_456
    client.instances.clear()
    client.labels.clear()
    publish_and_wait(client, rgb, stamp, frame_id="cam_optical")

    def got_both() -> bool:
        return any(m.header.stamp.sec == 2 for m in client.instances) and any(
            m.header.stamp.sec == 2 for m in client.labels
        )

    client.spin_until(got_both, 30, "~/instances and ~/instances/label for the frame")
    msg = next(m for m in client.instances if m.header.stamp.sec == 2)
    label = next(m for m in client.labels if m.header.stamp.sec == 2)
    for header in (msg.header, label.header):
        assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (
            2,
            456,
            "cam_optical",
        )
    assert msg.strategy == "grid"
    assert msg.decoder_prompts == GRID_SIDE * GRID_SIDE
    assert label.encoding == "mono16" and (label.height, label.width) == (96, 128)
    labels = np.frombuffer(bytes(label.data), np.uint16).reshape(96, 128)
    assert labels.max() <= len(msg.instances)
    for inst in msg.instances:
        assert (inst.mask_height, inst.mask_width) == (96, 128)
        assert 0 < inst.area <= 96 * 128


def test_bad_frames_are_rejected_with_a_named_encoding(client: Client, node: NodeProcess) -> None:
    rgb = synthetic_scene(seed=3)
    bad = image_msg(rgb, 3_000_000_000)
    bad.encoding = "16UC1"
    client.image_pub.publish(bad)
    client.spin_until(lambda: "16UC1" in node.log(), 15, "a warning naming the encoding")
    line = next(x for x in node.log().splitlines() if "16UC1" in x)
    assert "rgb8" in line and "bgr8" in line  # the accepted encodings are named
    client.image_pub.publish(image_msg(rgb[:0], 3_000_000_001))
    client.spin_until(lambda: "128x0" in node.log(), 15, "a warning about the empty frame")
    # Still up, and a good frame after the bad ones is served.
    publish_and_wait(client, rgb, 3_000_000_002)
    assert node.alive()


def test_parameters_change_at_runtime_and_ranges_are_enforced(client: Client) -> None:
    result = set_param(client, "segevery.grid.points_per_side", 2)
    assert result.successful, result.reason
    client.instances.clear()
    publish_and_wait(client, synthetic_scene(seed=4), 4_000_000_000)
    client.spin_until(
        lambda: any(m.header.stamp.sec == 4 for m in client.instances), 30, "instances"
    )
    msg = next(m for m in client.instances if m.header.stamp.sec == 4)
    assert msg.decoder_prompts == 4

    for name, value, reason in [
        ("cache_size", 0, "cache_size"),
        ("segevery.rate", 100.0, "segevery.rate"),
        ("segevery.grid.pred_iou_thresh", 1.5, "pred_iou_thresh"),
        ("segevery.strategy", "everything", "segevery.strategy"),
        ("model_dir", "/tmp", "read-only"),
        ("segment.queue_depth", 64, "read-only"),
        ("segment.workers", 4, "read-only"),
        ("executor.threads", 8, "read-only"),
    ]:
        result = set_param(client, name, value)
        assert not result.successful, name
        assert reason in result.reason or "range" in result.reason, (name, result.reason)
    result = set_param(client, "segevery.strategy", "object_aware")
    assert not result.successful and "detector" in result.reason


def test_lifecycle_state_and_diagnostics(client: Client) -> None:
    state = client.call(client.get_state, GetState.Request(), resend_after=5.0).current_state
    assert state.label == "active"

    client.diagnostics.clear()

    def has_status() -> bool:
        return any(s.name.startswith(f"{NODE}:") for m in client.diagnostics for s in m.status)

    client.spin_until(has_status, 10, "/diagnostics from the node")
    status = next(s for m in client.diagnostics for s in m.status if s.name.startswith(f"{NODE}:"))
    values = {kv.key: kv.value for kv in status.values}
    for key in ("input_rate_hz", "encoder_ms_p50", "frames_dropped", "cache_size", "backend"):
        assert key in values
    assert values["backend"] == "onnxruntime"
    assert int(values["frames_encoded"]) >= 3
    assert int(values["rejected_frames"]) >= 1


def test_deactivate_releases_the_service_and_activate_restores_it(client: Client) -> None:
    change = client.node.create_client(ChangeState, f"{NODE}/change_state")

    def transition(tid: int) -> None:
        req = ChangeState.Request(transition=Transition(id=tid))
        assert client.call(change, req).success

    # Calls in flight when the node deactivates: the admitted ones are answered (masks, or
    # "not active" if no worker had started them) before the service goes, and nothing crashes.
    stamp = 5_500_000_000
    publish_and_wait(client, synthetic_scene(seed=5), stamp)
    segment = deep_client(client, f"{NODE}/segment")
    client.spin_until(segment.service_is_ready, 10, "~/segment")
    heavy = request(stamp, boxes=tiled_boxes(32), multimask=True, return_images=True)
    in_flight = [segment.call_async(heavy) for _ in range(20)]
    # Deactivate once the node is working through the burst (its first answer is back); a
    # request DDS had not yet handed over when the service went would get no answer at all.
    client.spin_until(lambda: any(f.done() for f in in_flight), 30, "the first answer")
    transition(Transition.TRANSITION_DEACTIVATE)
    client.spin_until(
        lambda: client.node.count_subscribers(f"{NS}/camera/image") == 0, 10, "unsubscribe"
    )
    answered = [f.result() for f in in_flight if f.done()]
    assert len(answered) > 1, "deactivation answered none of the admitted calls"
    for resp in answered:
        assert resp.success or resp.message.startswith(("not active:", "busy:")), resp.message
    client.node.destroy_client(segment)
    assert client.call(client.get_state, GetState.Request()).current_state.label == "inactive"
    transition(Transition.TRANSITION_ACTIVATE)
    client.spin_until(lambda: client.image_pub.get_subscription_count() > 0, 10, "resubscribe")
    publish_and_wait(client, synthetic_scene(seed=6), 6_000_000_000)
