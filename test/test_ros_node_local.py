"""The node in this process, for what a client over DDS cannot arrange: the CPU it runs on."""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.context import Context
from rclpy.parameter import Parameter

from segfast_ros.ros.harness import free_domain_id
from segfast_ros.ros.node import SegfastNode
from segfast_ros.runtime import onnx_backend


@pytest.fixture
def node():
    context = Context()
    rclpy.init(context=context, domain_id=free_domain_id())
    node = SegfastNode(
        context=context,
        parameter_overrides=[
            Parameter("model_dir", value="demo"),
            Parameter("precision", value="int8"),
            Parameter("segevery.rate", value=0.0),
        ],
    )
    yield node
    node.destroy_node()
    rclpy.try_shutdown(context=context)


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
