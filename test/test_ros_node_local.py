"""The node in this process, for what a client over DDS cannot see or arrange: the CPU it runs
on, its entities and threads."""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.context import Context
from rclpy.parameter import Parameter

from segfast_ros.ros.harness import free_domain_id
from segfast_ros.ros.node import SegfastNode
from segfast_ros.runtime import onnx_backend


@pytest.fixture
def make_node() -> Iterator[Callable[..., SegfastNode]]:
    """``make_node(**parameters)``: a node on the demo model, on a context of its own."""
    made: list[tuple[SegfastNode, Context]] = []

    def make(**parameters: Any) -> SegfastNode:
        context = Context()
        rclpy.init(context=context, domain_id=free_domain_id())
        values = {"model_dir": "demo", "precision": "int8", "segevery.rate": 0.0, **parameters}
        node = SegfastNode(
            context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in values.items()],
        )
        made.append((node, context))
        return node

    yield make
    for node, context in made:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.fixture
def node(make_node: Callable[..., SegfastNode]) -> SegfastNode:
    return make_node()


def test_an_int8_model_that_saturates_here_is_a_standing_warn(
    node: SegfastNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load-time INT8 warning reaches the ROS log and keeps /diagnostics at WARN."""
    # As on an x86 CPU without VNNI, whatever this machine is.
    monkeypatch.setattr(onnx_backend, "saturates_on", lambda settings, cpu: True)
    node.trigger_configure()
    status = node.diagnostic_status()
    assert status.level == DiagnosticStatus.WARN, status
    assert "model: " in status.message and "saturate" in status.message, status.message
    values = {kv.key: kv.value for kv in status.values}
    assert "encoder.int8.onnx" in values["model_warnings"]
    node.trigger_cleanup()
    assert node.diagnostic_status().level == DiagnosticStatus.OK


def test_an_int8_model_that_suits_this_cpu_does_not_warn(
    node: SegfastNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_backend, "saturates_on", lambda settings, cpu: False)
    node.trigger_configure()
    status = node.diagnostic_status()
    assert status.level == DiagnosticStatus.OK, status
    assert {kv.key: kv.value for kv in status.values}["model_warnings"] == ""


def test_shutdown_releases_every_entity_and_thread(make_node: Callable[..., SegfastNode]) -> None:
    """What activate created (subscriptions, ~/segment, the SegEvery timer, the encoder,
    SegEvery and segment worker threads) is gone after on_shutdown, as main() calls it."""
    node = make_node(**{"segevery.rate": 5.0})
    node.trigger_configure()
    node.trigger_activate()
    names = {s.srv_name for s in node.services}
    assert any(n.endswith("/segment") for n in names), names
    assert list(node.subscriptions)
    timers = len(list(node.timers))  # diagnostics + SegEvery
    assert timers == 2
    ours = {t.name for t in threading.enumerate() if t.name.startswith("segfast-")}
    assert {"segfast-encoder", "segfast-segevery"} <= ours, ours
    # A segment worker thread exists once a call ran; make one run.
    node._segment_pool.submit(lambda: None).result()
    assert any(t.name.startswith("segfast-segment") for t in threading.enumerate())

    node.on_shutdown(None)  # what main() does when a signal ends the spin

    assert not any(s.srv_name.endswith("/segment") for s in node.services)
    assert not list(node.subscriptions)
    assert len(list(node.timers)) == 1  # diagnostics only, until destroy_node
    left = [t.name for t in threading.enumerate() if t.name.startswith("segfast-")]
    assert not left, f"threads still running after shutdown: {left}"
