"""The segfast node over real DDS: ``~/segment`` answers, as the library's Predictor would.

The client publishes synthetic frames, calls ``~/segment`` and compares with the library's
Predictor on the same frame, sends bad prompts and bursts of calls. The first test must see a
node that has not received a frame yet, so the tests run in file order on one node (see
ros_node_fixtures.py; the outputs, parameters and lifecycle are in the other test_ros_node_*
files).
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

import subprocess
import sys
import time
from array import array

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from ros_node_fixtures import (
    NODE,
    NS,
    REPO,
    by_score,
    call_all,
    client,
    deep_client,
    domain_id,
    masks_of,
    model_dir,
    node,
    publish_and_wait,
    reference,
    request,
    set_param,
    tiled_boxes,
)
from ros_scenes import synthetic_scene
from sensor_msgs.msg import CompressedImage

from segfast_ros.ros.harness import Client, ros_env
from segfast_ros.runtime import Predictor


def test_segment_before_the_first_frame_is_a_clear_error(client: Client) -> None:
    resp = client.call(client.segment, request(points=[(5, 5)], labels=[1]))
    assert not resp.success
    assert "no frame yet" in resp.message and "camera/image" in resp.message


def test_segment_matches_the_predictor(client: Client, reference: Predictor) -> None:
    rgb = synthetic_scene(seed=1)
    stamp = 1_000_000_123
    publish_and_wait(client, rgb, stamp)
    reference.set_image(rgb)

    # Points, multimask: three masks, best first.
    pts, labels = [(30.0, 25.0), (100.0, 80.0)], [1, 0]
    resp = client.call(client.segment, request(stamp, points=pts, labels=labels, multimask=True))
    assert resp.success, resp.message
    assert (resp.header.stamp.sec, resp.header.stamp.nanosec) == (1, 123)
    assert resp.header.frame_id == "camera" and len(resp.results) == 1
    ref = reference.predict(np.array(pts), np.array(labels), multimask_output=True)
    got_masks, got_scores = masks_of(resp.results[0])
    ref_masks, ref_scores = by_score(ref.masks, ref.scores)
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-6)
    np.testing.assert_array_equal(got_masks, ref_masks)
    assert list(got_scores) == sorted(got_scores, reverse=True)

    # One box.
    box = [10.0, 8.0, 62.0, 52.0]
    resp = client.call(client.segment, request(stamp, boxes=box))
    assert resp.success, resp.message
    ref = reference.predict(box=np.array(box), multimask_output=False)
    got_masks, got_scores = masks_of(resp.results[0])
    np.testing.assert_array_equal(got_masks, ref.masks)
    np.testing.assert_allclose(got_scores, ref.scores, atol=1e-6)
    assert list(resp.results[0].masks[0].prompt) == box

    # A batch of boxes: one result per box, as the batched Predictor call.
    boxes = np.array([[10, 8, 62, 52], [70, 40, 110, 80], [5, 65, 45, 92]], dtype=np.float64)
    req = request(stamp, boxes=boxes.ravel().tolist(), return_images=True, return_low_res=True)
    resp = client.call(client.segment, req)
    assert resp.success, resp.message
    assert len(resp.results) == 3
    ref = reference.predict(box=boxes, multimask_output=False)
    for i, result in enumerate(resp.results):
        got_masks, _ = masks_of(result)
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
    req = request(stamp, boxes=box, mask_input=resp.results[0].low_res_logits)
    resp2 = client.call(client.segment, req)
    assert resp2.success, resp2.message
    ref2 = reference.predict(
        box=np.array(box), mask_input=ref.low_res_logits[0], multimask_output=False
    )
    np.testing.assert_array_equal(masks_of(resp2.results[0])[0], ref2.masks)


def test_200_concurrent_calls_are_all_answered(client: Client) -> None:
    """rclpy's default service queue (10) dropped most of 200 concurrent calls silently."""
    stamp = 2_000_000_500
    publish_and_wait(client, synthetic_scene(seed=2), stamp)
    segment = deep_client(client, f"{NODE}/segment")
    client.spin_until(segment.service_is_ready, 10, "~/segment")
    req = request(stamp, points=[(30.0, 25.0)], labels=[1], multimask=True)
    responses = call_all(client, segment, [req] * 200, timeout=120)
    for resp in responses:
        if resp.success:
            assert len(resp.results) == 1 and len(resp.results[0].masks) == 3
        else:
            assert resp.message.startswith("busy:") and "segment.queue_depth=32" in resp.message
    assert any(r.success for r in responses)
    client.node.destroy_client(segment)


def test_bad_prompts_get_clear_errors_and_the_node_keeps_answering(client: Client) -> None:
    latest = client.call(client.segment, request(points=[(5, 5)], labels=[1]))
    assert latest.success, latest.message
    cases = [
        (request(points=[(float("nan"), 3.0)], labels=[1]), "NaN"),
        (request(points=[(500.0, 3.0)], labels=[1]), "outside the image"),
        (request(boxes=[0.0, 0.0, 400.0, 50.0]), "outside the image"),
        (request(boxes=[0.0, 0.0, 10.0]), "multiple of 4"),
        (request(boxes=[20.0, 0.0, 10.0, 5.0]), "x0 <= x1"),
        (request(points=[(5, 5), (6, 6)], labels=[1]), "one label per point"),
        (request(points=[(5, 5)], labels=[7]), "foreground"),
        (request(points=[(5, 5)] * 3, labels=[1] * 3, points_per_set=2), "multiple of 2"),
        (request(points=[(5, 5)], labels=[1], mask_input=[0.0] * 10), "mask_input"),
        (request(), "no prompt"),
        (request(123_000_000_000, points=[(5, 5)], labels=[1]), "no cached frame with stamp"),
    ]
    for req, expected in cases:
        resp = client.call(client.segment, req)
        assert not resp.success, expected
        assert expected in resp.message, (expected, resp.message)
        again = client.call(client.segment, request(points=[(5, 5)], labels=[1]))
        assert again.success, again.message


def test_images_over_the_byte_cap_are_refused_before_decoding(client: Client) -> None:
    """At 8K a mono8 mask is 33 MB; a request for many as images is refused with its size."""
    stamp = 3_500_000_000
    publish_and_wait(client, synthetic_scene(seed=3), stamp)
    assert set_param(client, "segment.max_image_bytes", 2**20).successful
    try:
        req = request(stamp, boxes=tiled_boxes(64), multimask=True, return_images=True)
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
        assert set_param(client, "segment.max_image_bytes", 256 * 2**20).successful


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
    while not (resp := client.call(client.segment, request(5_000_000_000, boxes=box))).success:
        assert "no cached frame" in resp.message, resp.message
        assert time.monotonic() < deadline, resp.message
        client.compressed_pub.publish(msg)
    reference.set_image(rgb)  # PNG is lossless: the same pixels as the raw frame
    ref = reference.predict(box=np.array(box), multimask_output=False)
    np.testing.assert_array_equal(masks_of(resp.results[0])[0], ref.masks)


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
