"""The segfast node over real DDS, each test with a node process of its own: a model that does
not load, object_aware without a detector, a queue depth of one, and ``segfast bench-node``.
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.srv import GetState
from ros_node_fixtures import (
    call_all,
    deep_client,
    domain_id,
    model_dir,
    model_params,
    node_args,
    participant,
    publish_and_wait,
    request,
    tiled_boxes,
)
from ros_scenes import synthetic_scene
from sensor_msgs.msg import Image

from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, image_msg


@pytest.fixture(scope="module")
def client(domain_id: int):
    """A participant that keeps /diagnostics; each test starts the node it talks to."""
    c = participant(domain_id)
    yield c
    c.close()


def _statuses(client: Client, node: str) -> list[Any]:
    """The /diagnostics statuses ``node`` (fully qualified) published, as the client kept them."""
    return [s for msg in client.diagnostics for s in msg.status if s.name.startswith(f"{node}:")]


def test_a_missing_model_fails_configure_and_the_node_stays_up(
    client: Client, domain_id: int, tmp_path: Path
) -> None:
    ns = "/segfast_broken"
    args = node_args(ns, {"model_dir": tmp_path / "nowhere"})
    proc = NodeProcess(args, domain_id, tmp_path / "broken.log")
    try:
        get_state = client.node.create_client(GetState, f"{ns}/segfast/get_state")
        state = client.call(get_state, GetState.Request()).current_state
        assert state.label == "unconfigured"
        log = proc.log()
        assert "configure failed" in log and "nowhere" in log and "segfast export" in log

        def error_status() -> bool:
            return any(
                s.level == s.ERROR and "nowhere" in s.message
                for s in _statuses(client, f"{ns}/segfast")
            )

        client.spin_until(error_status, 10, "an ERROR diagnostic naming the model folder")
        assert proc.alive()
    finally:
        assert proc.stop() == 0


def test_object_aware_without_a_detector_falls_back_to_grid(
    client: Client, model_dir: Path, domain_id: int, tmp_path: Path
) -> None:
    ns = "/segfast_fallback"
    params = {
        "segevery.strategy": "object_aware",
        "segevery.grid.points_per_side": 2,
        "segevery.rate": 5.0,
    }
    proc = NodeProcess(
        node_args(ns, model_params(model_dir, **params)), domain_id, tmp_path / "fallback.log"
    )
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
        client.diagnostics.clear()
        client.spin_until(
            lambda: len(_statuses(client, f"{ns}/segfast")) >= 2, 10, "the node's diagnostics"
        )
        for status in _statuses(client, f"{ns}/segfast"):
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
    params = {"segevery.rate": 0.0, "segment.queue_depth": 1, "segment.workers": 1}
    proc = NodeProcess(
        node_args(ns, model_params(model_dir, **params)), domain_id, tmp_path / "busy.log"
    )
    try:
        pub = client.node.create_publisher(Image, f"{ns}/image", 2)
        segment = deep_client(client, f"{ns}/segfast/segment")
        client.spin_until(segment.service_is_ready, 60, f"the busy node; log:\n{proc.log()}")
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30, "its image subscriber")
        stamp = 9_000_000_000
        publish_and_wait(client, synthetic_scene(seed=9), stamp, segment=segment, pub=pub)
        # 64 boxes, 3 masks each, as images: each call takes a while, so calls pile up.
        heavy = request(stamp, boxes=tiled_boxes(64), multimask=True, return_images=True)
        responses = call_all(client, segment, [heavy] * 40, timeout=120)
        done = [r for r in responses if r.success]
        busy = [r for r in responses if not r.success]
        assert done and busy, [r.message for r in responses]
        assert all(len(r.results) == 64 and len(r.results[0].images) == 3 for r in done)
        for r in busy:
            assert r.message == (
                "busy: 1 ~/segment or ~/track calls are running or waiting, the most this node "
                "holds (segment.queue_depth=1); call again later"
            )
        client.node.destroy_client(segment)
    finally:
        assert proc.stop() == 0


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
