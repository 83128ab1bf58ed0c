"""The segfast node over real DDS: a node process, and this process as its client.

The node runs the small ``tinyvit_s256`` model (seeded random weights, exported to ONNX). The
client publishes synthetic frames, calls ``~/segment`` and compares with the library's
Predictor on the same frame, reads ``~/instances``, sends bad input, and changes parameters.
The first test must see a node that has not received a frame yet, so the tests run in file
order on one node.
"""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

# Without ROS 2 the node cannot run; with it, the interfaces must be built (`make setup`), so
# a missing segfast_ros.msg fails here instead of skipping.
rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Point
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from ros_scenes import synthetic_scene
from sensor_msgs.msg import CompressedImage, Image

from segfast_ros.masks import rle_to_mask
from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, free_domain_id, image_msg, ros_env
from segfast_ros.ros.node import SERVICE_QOS
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.srv import Segment

REPO = Path(__file__).resolve().parents[1]
NS = "/segfast_test"
NODE = f"{NS}/segfast"
GRID_SIDE = 4


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir: Path) -> Path:
    return tiny_onnx_dir


@pytest.fixture(scope="module")
def domain_id() -> int:
    return free_domain_id()


@pytest.fixture(scope="module")
def node(model_dir: Path, domain_id: int, tmp_path_factory: pytest.TempPathFactory):
    args = [
        "-r", f"__ns:={NS}",
        "-r", "image:=camera/image",
        "-p", f"model_dir:={model_dir}",
        "-p", "precision:=fp32",
        "-p", "segevery.rate:=5.0",
        "-p", f"segevery.grid.points_per_side:={GRID_SIDE}",
        "-p", "segevery.grid.pred_iou_thresh:=0.0",
        "-p", "segevery.grid.stability_score_thresh:=0.0",
        "-p", "diagnostics_period:=0.5",
        "-p", "use_compressed:=true",
    ]  # fmt: skip
    proc = NodeProcess(args, domain_id, tmp_path_factory.mktemp("node") / "node.log")
    yield proc
    code = proc.stop()
    assert code == 0, f"node exited with {code}:\n{proc.log()}"


@pytest.fixture(scope="module")
def client(node: NodeProcess, domain_id: int):
    c = Client(domain_id)
    c.image_pub = c.node.create_publisher(Image, f"{NS}/camera/image", 2)
    c.compressed_pub = c.node.create_publisher(CompressedImage, f"{NS}/camera/image/compressed", 2)
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.set_params = c.node.create_client(SetParameters, f"{NODE}/set_parameters")
    c.get_state = c.node.create_client(GetState, f"{NODE}/get_state")
    c.instances: list[Any] = []
    c.labels: list[Any] = []
    c.diagnostics: list[Any] = []
    c.node.create_subscription(InstanceArray, f"{NODE}/instances", c.instances.append, 10)
    c.node.create_subscription(Image, f"{NODE}/instances/label", c.labels.append, 10)
    c.node.create_subscription(
        DiagnosticArray, "/diagnostics", c.diagnostics.append, qos_profile_sensor_data
    )
    try:
        c.spin_until(
            lambda: c.segment.service_is_ready() or not node.alive(),
            60,
            f"the node's ~/segment service; node log:\n{node.log()}",
        )
        assert node.alive(), f"the node exited:\n{node.log()}"
        c.spin_until(lambda: c.image_pub.get_subscription_count() > 0, 30, "the image subscriber")
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Predictor:
    """The library's Predictor on the same ONNX files, in this process."""
    return Predictor(OnnxRuntimeBackend.from_dir(model_dir, "fp32"))


def _request(stamp_ns: int = 0, **fields: Any) -> Segment.Request:
    req = Segment.Request()
    req.stamp.sec, req.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    points = fields.pop("points", [])
    req.points = [Point(x=float(x), y=float(y)) for x, y in points]
    for key, value in fields.items():
        setattr(req, key, value)
    return req


def _publish_and_wait(client: Client, rgb: np.ndarray, stamp_ns: int, **kw: Any) -> None:
    """Publish a frame and wait until ~/segment answers for its stamp (encoded and cached)."""
    client.image_pub.publish(image_msg(rgb, stamp_ns, **kw))
    deadline = time.monotonic() + 30
    probe = _request(stamp_ns, points=[(1, 1)], labels=[1])
    while True:
        resp = client.call(client.segment, probe)
        if resp.success:
            return
        assert "no cached frame" in resp.message, resp.message
        if time.monotonic() > deadline:
            raise AssertionError(f"frame {stamp_ns} never became available: {resp.message}")
        client.image_pub.publish(image_msg(rgb, stamp_ns, **kw))  # best effort: resend


def _masks(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """Decoded masks and scores of one SegmentResult."""
    masks = [
        rle_to_mask({"size": [m.mask_height, m.mask_width], "counts": list(m.rle_counts)})
        for m in result.masks
    ]
    return np.stack(masks), np.array([m.score for m in result.masks], dtype=np.float32)


def _sorted(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    return masks[order], scores[order]


def _set_param(client: Client, name: str, value: Any) -> Any:
    kinds = {
        bool: (ParameterType.PARAMETER_BOOL, "bool_value"),
        int: (ParameterType.PARAMETER_INTEGER, "integer_value"),
        float: (ParameterType.PARAMETER_DOUBLE, "double_value"),
        str: (ParameterType.PARAMETER_STRING, "string_value"),
    }
    kind, field = kinds[type(value)]
    pv = ParameterValue(type=kind)
    setattr(pv, field, value)
    req = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return client.call(client.set_params, req).results[0]


# ---------------------------------------------------------------------------- tests


def test_segment_before_the_first_frame_is_a_clear_error(client: Client) -> None:
    resp = client.call(client.segment, _request(points=[(5, 5)], labels=[1]))
    assert not resp.success
    assert "no frame yet" in resp.message and "camera/image" in resp.message


def test_segment_matches_the_predictor(client: Client, reference: Predictor) -> None:
    rgb = synthetic_scene(seed=1)
    stamp = 1_000_000_123
    _publish_and_wait(client, rgb, stamp)
    reference.set_image(rgb)

    # Points, multimask: three masks, best first.
    pts, labels = [(30.0, 25.0), (100.0, 80.0)], [1, 0]
    resp = client.call(client.segment, _request(stamp, points=pts, labels=labels, multimask=True))
    assert resp.success, resp.message
    assert (resp.header.stamp.sec, resp.header.stamp.nanosec) == (1, 123)
    assert resp.header.frame_id == "camera" and len(resp.results) == 1
    ref = reference.predict(np.array(pts), np.array(labels), multimask_output=True)
    got_masks, got_scores = _masks(resp.results[0])
    ref_masks, ref_scores = _sorted(ref.masks, ref.scores)
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-6)
    np.testing.assert_array_equal(got_masks, ref_masks)
    assert list(got_scores) == sorted(got_scores, reverse=True)

    # One box.
    box = [10.0, 8.0, 62.0, 52.0]
    resp = client.call(client.segment, _request(stamp, boxes=box))
    assert resp.success, resp.message
    ref = reference.predict(box=np.array(box), multimask_output=False)
    got_masks, got_scores = _masks(resp.results[0])
    np.testing.assert_array_equal(got_masks, ref.masks)
    np.testing.assert_allclose(got_scores, ref.scores, atol=1e-6)
    assert list(resp.results[0].masks[0].prompt) == box

    # A batch of boxes: one result per box, as the batched Predictor call.
    boxes = np.array([[10, 8, 62, 52], [70, 40, 110, 80], [5, 65, 45, 92]], dtype=np.float64)
    req = _request(stamp, boxes=boxes.ravel().tolist(), return_images=True, return_low_res=True)
    resp = client.call(client.segment, req)
    assert resp.success, resp.message
    assert len(resp.results) == 3
    ref = reference.predict(box=boxes, multimask_output=False)
    for i, result in enumerate(resp.results):
        got_masks, _ = _masks(result)
        np.testing.assert_array_equal(got_masks[0], ref.masks[i, 0])
        image = result.images[0]
        assert (image.encoding, image.height, image.width) == ("mono8", 96, 128)
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(96, 128)
        np.testing.assert_array_equal(pixels == 255, ref.masks[i, 0])
        lr = result.low_res_size
        np.testing.assert_allclose(
            np.asarray(result.low_res_logits).reshape(lr, lr), ref.low_res_logits[i, 0], atol=1e-5
        )

    # The low-res logits go back in as mask_input.
    req = _request(stamp, boxes=box, mask_input=resp.results[0].low_res_logits)
    resp2 = client.call(client.segment, req)
    assert resp2.success, resp2.message
    ref2 = reference.predict(
        box=np.array(box), mask_input=ref.low_res_logits[0], multimask_output=False
    )
    np.testing.assert_array_equal(_masks(resp2.results[0])[0], ref2.masks)


def _call_all(client: Client, segment: Any, requests: list[Any], timeout: float) -> list[Any]:
    """Send every request at once, then spin until each has its response (or time out)."""
    futures = [segment.call_async(req) for req in requests]
    client.spin_until(
        lambda: all(f.done() for f in futures),
        timeout,
        f"all {len(futures)} responses ({sum(f.done() for f in futures)} came)",
    )
    return [f.result() for f in futures]


def _deep_client(client: Client, service: str) -> Any:
    """A ~/segment client that keeps every response, as a caller with many calls in flight
    must: rclpy's default client keeps the last 10, and a burst of answers overflows it."""
    return client.node.create_client(Segment, service, qos_profile=SERVICE_QOS)


def test_200_concurrent_calls_are_all_answered(client: Client) -> None:
    """rclpy's default service queue (10) dropped most of 200 concurrent calls silently."""
    stamp = 2_000_000_500
    _publish_and_wait(client, synthetic_scene(seed=2), stamp)
    segment = _deep_client(client, f"{NODE}/segment")
    client.spin_until(segment.service_is_ready, 10, "~/segment")
    req = _request(stamp, points=[(30.0, 25.0)], labels=[1], multimask=True)
    responses = _call_all(client, segment, [req] * 200, timeout=120)
    for resp in responses:
        if resp.success:
            assert len(resp.results) == 1 and len(resp.results[0].masks) == 3
        else:
            assert resp.message.startswith("busy:") and "segment.queue_depth=32" in resp.message
    assert any(r.success for r in responses)
    client.node.destroy_client(segment)


def test_instances_and_label_carry_the_source_header(client: Client) -> None:
    rgb = synthetic_scene(seed=2)
    stamp = 2_000_000_456
    client.instances.clear()
    client.labels.clear()
    _publish_and_wait(client, rgb, stamp, frame_id="cam_optical")

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


def test_bad_prompts_get_clear_errors_and_the_node_keeps_answering(client: Client) -> None:
    latest = client.call(client.segment, _request(points=[(5, 5)], labels=[1]))
    assert latest.success, latest.message
    cases = [
        (_request(points=[(float("nan"), 3.0)], labels=[1]), "NaN"),
        (_request(points=[(500.0, 3.0)], labels=[1]), "outside the image"),
        (_request(boxes=[0.0, 0.0, 400.0, 50.0]), "outside the image"),
        (_request(boxes=[0.0, 0.0, 10.0]), "multiple of 4"),
        (_request(boxes=[20.0, 0.0, 10.0, 5.0]), "x0 <= x1"),
        (_request(points=[(5, 5), (6, 6)], labels=[1]), "one label per point"),
        (_request(points=[(5, 5)], labels=[7]), "foreground"),
        (_request(points=[(5, 5)] * 3, labels=[1] * 3, points_per_set=2), "multiple of 2"),
        (_request(points=[(5, 5)], labels=[1], mask_input=[0.0] * 10), "mask_input"),
        (_request(), "no prompt"),
        (_request(123_000_000_000, points=[(5, 5)], labels=[1]), "no cached frame with stamp"),
    ]
    for req, expected in cases:
        resp = client.call(client.segment, req)
        assert not resp.success, expected
        assert expected in resp.message, (expected, resp.message)
        again = client.call(client.segment, _request(points=[(5, 5)], labels=[1]))
        assert again.success, again.message


def test_images_over_the_byte_cap_are_refused_before_decoding(client: Client) -> None:
    """At 8K a mono8 mask is 33 MB; a request for many as images is refused with its size."""
    stamp = 3_500_000_000
    _publish_and_wait(client, synthetic_scene(seed=3), stamp)
    assert _set_param(client, "segment.max_image_bytes", 2**20).successful
    try:
        boxes = [float(v) for i in range(64) for v in (i % 8 * 8, i // 8 * 8, 60.0, 60.0)]
        req = _request(stamp, boxes=boxes, multimask=True, return_images=True)
        resp = client.call(client.segment, req)
        assert not resp.success
        assert resp.message == (
            "return_images: 64 prompt sets x 3 masks of 128x96 mono8 = 2 MiB of images, more "
            "than segment.max_image_bytes = 1 MiB; ask for fewer sets or single masks, leave "
            "return_images off (every mask also comes as RLE), or raise the parameter"
        )
        req.return_images = False  # the same masks as RLE only: answered
        assert client.call(client.segment, req).success
    finally:
        assert _set_param(client, "segment.max_image_bytes", 256 * 2**20).successful


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
    _publish_and_wait(client, rgb, 3_000_000_002)
    assert node.alive()


def test_parameters_change_at_runtime_and_ranges_are_enforced(client: Client) -> None:
    result = _set_param(client, "segevery.grid.points_per_side", 2)
    assert result.successful, result.reason
    client.instances.clear()
    _publish_and_wait(client, synthetic_scene(seed=4), 4_000_000_000)
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
    ]:
        result = _set_param(client, name, value)
        assert not result.successful, name
        assert reason in result.reason or "range" in result.reason, (name, result.reason)
    result = _set_param(client, "segevery.strategy", "object_aware")
    assert not result.successful and "detector" in result.reason


def test_lifecycle_state_and_diagnostics(client: Client) -> None:
    state = client.call(client.get_state, GetState.Request()).current_state
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


def test_compressed_frames_are_decoded(client: Client, reference: Predictor) -> None:
    rgb = synthetic_scene(seed=5)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="png")
    msg.header.stamp.sec = 5
    msg.data = array("B", png.tobytes())
    client.compressed_pub.publish(msg)
    box = [10.0, 8.0, 62.0, 52.0]
    deadline = time.monotonic() + 30
    while not (resp := client.call(client.segment, _request(5_000_000_000, boxes=box))).success:
        assert "no cached frame" in resp.message, resp.message
        assert time.monotonic() < deadline, resp.message
        client.compressed_pub.publish(msg)
    reference.set_image(rgb)  # PNG is lossless: the same pixels as the raw frame
    ref = reference.predict(box=np.array(box), multimask_output=False)
    np.testing.assert_array_equal(_masks(resp.results[0])[0], ref.masks)


def test_deactivate_releases_the_service_and_activate_restores_it(client: Client) -> None:
    change = client.node.create_client(ChangeState, f"{NODE}/change_state")

    def transition(tid: int) -> None:
        req = ChangeState.Request(transition=Transition(id=tid))
        assert client.call(change, req).success

    # Calls in flight when the node deactivates: the admitted ones are answered (masks, or
    # "not active" if no worker had started them) before the service goes, and nothing crashes.
    stamp = 5_500_000_000
    _publish_and_wait(client, synthetic_scene(seed=5), stamp)
    segment = _deep_client(client, f"{NODE}/segment")
    client.spin_until(segment.service_is_ready, 10, "~/segment")
    boxes = [float(v) for i in range(32) for v in (i % 8 * 8, i // 8 * 8, 60.0, 60.0)]
    heavy = _request(stamp, boxes=boxes, multimask=True, return_images=True)
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
    _publish_and_wait(client, synthetic_scene(seed=6), 6_000_000_000)


def test_a_missing_model_fails_configure_and_the_node_stays_up(
    client: Client, domain_id: int, tmp_path: Path
) -> None:
    ns = "/segfast_broken"
    proc = NodeProcess(
        ["-r", f"__ns:={ns}", "-p", f"model_dir:={tmp_path / 'nowhere'}"],
        domain_id,
        tmp_path / "broken.log",
    )
    try:
        get_state = client.node.create_client(GetState, f"{ns}/segfast/get_state")
        state = client.call(get_state, GetState.Request()).current_state
        assert state.label == "unconfigured"
        log = proc.log()
        assert "configure failed" in log and "nowhere" in log and "segfast export" in log

        def error_status() -> bool:
            return any(
                s.level == s.ERROR and "nowhere" in s.message
                for m in client.diagnostics
                for s in m.status
                if s.name.startswith(f"{ns}/segfast:")
            )

        client.spin_until(error_status, 10, "an ERROR diagnostic naming the model folder")
        assert proc.alive()
    finally:
        assert proc.stop() == 0


def test_object_aware_without_a_detector_falls_back_to_grid(
    client: Client, model_dir: Path, domain_id: int, tmp_path: Path
) -> None:
    ns = "/segfast_fallback"
    args = [
        "-r", f"__ns:={ns}",
        "-p", f"model_dir:={model_dir}",
        "-p", "precision:=fp32",
        "-p", "segevery.strategy:=object_aware",
        "-p", "segevery.grid.points_per_side:=2",
        "-p", "segevery.rate:=5.0",
    ]  # fmt: skip
    proc = NodeProcess(args, domain_id, tmp_path / "fallback.log")
    try:
        pub = client.node.create_publisher(Image, f"{ns}/image", 2)
        got: list[Any] = []
        client.node.create_subscription(InstanceArray, f"{ns}/segfast/instances", got.append, 5)
        client.spin_until(lambda: pub.get_subscription_count() > 0, 60, "the fallback node")
        deadline = time.monotonic() + 30
        while not got:
            assert time.monotonic() < deadline, proc.log()
            pub.publish(image_msg(synthetic_scene(seed=7), 7_000_000_000))
            client.spin_until(lambda: True, 1, "")
            client.executor.spin_once(timeout_sec=0.5)
        assert got[0].strategy == "grid" and got[0].decoder_prompts == 4
        assert "object_aware SegEvery unavailable" in proc.log()
        assert "segevery.object_aware.detector is empty" in proc.log()

        # /diagnostics says WARN with the reason for as long as the fallback lasts, not only
        # in the start-up log.
        def fallback_statuses() -> list[Any]:
            return [
                s
                for msg in client.diagnostics
                for s in msg.status
                if s.name.startswith(f"{ns}/segfast:")
            ]

        client.diagnostics.clear()
        client.spin_until(lambda: len(fallback_statuses()) >= 2, 10, "the node's diagnostics")
        for status in fallback_statuses():
            assert status.level == DiagnosticStatus.WARN, status
            assert "object_aware unavailable, using grid" in status.message, status.message
            assert "detector is empty" in status.message, status.message
            values = {kv.key: kv.value for kv in status.values}
            assert values["segevery_strategy"] == "grid"
            assert "detector is empty" in values["segevery_fallback"]
    finally:
        assert proc.stop() == 0


def test_calls_past_the_queue_depth_are_refused_as_busy(
    client: Client, model_dir: Path, domain_id: int, tmp_path: Path
) -> None:
    """One worker, room for one call: of a burst of slow calls, the node answers every one,
    with masks or with a busy refusal that names the limit."""
    ns = "/segfast_busy"
    args = [
        "-r", f"__ns:={ns}",
        "-p", f"model_dir:={model_dir}",
        "-p", "precision:=fp32",
        "-p", "segevery.rate:=0.0",
        "-p", "segment.queue_depth:=1",
        "-p", "segment.workers:=1",
    ]  # fmt: skip
    proc = NodeProcess(args, domain_id, tmp_path / "busy.log")
    try:
        pub = client.node.create_publisher(Image, f"{ns}/image", 2)
        segment = _deep_client(client, f"{ns}/segfast/segment")
        client.spin_until(segment.service_is_ready, 60, f"the busy node; log:\n{proc.log()}")
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30, "its image subscriber")
        rgb, stamp = synthetic_scene(seed=9), 9_000_000_000
        probe = _request(stamp, points=[(1, 1)], labels=[1])
        deadline = time.monotonic() + 30
        while not client.call(segment, probe).success:
            assert time.monotonic() < deadline, proc.log()
            pub.publish(image_msg(rgb, stamp))
        # 64 boxes, 3 masks each, as images: each call takes a while, so calls pile up.
        boxes = [float(v) for i in range(64) for v in (i % 8 * 8, i // 8 * 8, 60.0, 60.0)]
        heavy = _request(stamp, boxes=boxes, multimask=True, return_images=True)
        responses = _call_all(client, segment, [heavy] * 40, timeout=120)
        done = [r for r in responses if r.success]
        busy = [r for r in responses if not r.success]
        assert done and busy, [r.message for r in responses]
        assert all(len(r.results) == 64 and len(r.results[0].images) == 3 for r in done)
        for r in busy:
            assert r.message == (
                "busy: 1 ~/segment calls are running or waiting, the most this node holds "
                "(segment.queue_depth=1); call again later"
            )
        client.node.destroy_client(segment)
    finally:
        assert proc.stop() == 0


def test_the_planner_example_gets_masks_over_dds(client: Client, domain_id: int) -> None:
    """examples/planner_client.py, the README's second demo, against the running node."""
    example = [sys.executable, str(REPO / "examples/planner_client.py"), "--frames", "2"]
    run = subprocess.run(
        [*example, "--node", NODE, "--topic", f"{NS}/camera/image"],
        env=ros_env(domain_id),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("box prompt -> mask of") == 2
    assert "SegEvery messages on /segfast_test/segfast/instances" in run.stdout


def test_bench_node_concurrent_mode_counts_every_answer(model_dir: Path, tmp_path: Path) -> None:
    """``segfast bench-node --concurrent``: its own node, calls at once, every one counted."""
    from segfast_ros.bench.node import bench_concurrent, format_concurrency

    rows = bench_concurrent(
        model_dir,
        "fp32",
        synthetic_scene(seed=3),
        in_flight=(1, 12),
        queue_depth=4,
        workers=1,
        log_path=tmp_path / "bench.log",
    )
    assert [r.in_flight for r in rows] == [1, 12]
    for r in rows:
        assert r.answered == r.in_flight and r.unanswered == 0
        assert r.with_masks + r.busy == r.answered
        assert 0 < r.p50_ms <= r.p95_ms <= r.max_ms
    assert "in flight" in format_concurrency(rows).splitlines()[0]
