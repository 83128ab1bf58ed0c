"""Ctrl-C and SIGTERM end the node cleanly, every time.

A terminal's Ctrl-C under ``ros2 launch`` reaches the node twice: from the process group and
from launch, the second often while the node is cleaning up. Each case here starts the real
node process (the demo model, SegEvery running on frames), signals it as launch and a terminal
do, and requires exit code 0 and no traceback. The release of everything the node started is
checked in-process, where the node's entities and threads can be seen (test_ros_node_local).
"""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from ros_scenes import synthetic_scene
from sensor_msgs.msg import Image

from segfast_ros.ros.harness import Client, NodeProcess, free_domain_id, image_msg

NS = "/segfast_signals"
#: Delays between the two SIGINTs, spread over the 0-200 ms that launch and a terminal produce.
SECOND_SIGINT_S = (0.0, 0.05, 0.1, 0.15, 0.2)


def _busy_node(tmp_path: Path, name: str, domain_id: int) -> NodeProcess:
    """The demo-model node with a dense grid SegEvery (hundreds of ms a pass) at 10 Hz."""
    args = [
        "-r", f"__ns:={NS}",
        "-p", "model_dir:=demo",
        "-p", "segevery.rate:=10.0",
        "-p", "segevery.grid.points_per_side:=16",
    ]  # fmt: skip
    return NodeProcess(args, domain_id, tmp_path / f"{name}.log")


def _feed_until_busy(node: NodeProcess, client: Client, pub) -> None:
    """Wait for the node to be active, then keep it encoding and segmenting for a moment."""
    deadline = time.monotonic() + 60
    while "active:" not in node.log():
        assert node.alive() and time.monotonic() < deadline, node.log()
        time.sleep(0.05)
    client.spin_until(lambda: pub.get_subscription_count() > 0, 30, "the image subscriber")
    for i in range(1, 6):
        pub.publish(image_msg(synthetic_scene(seed=i), i * 100_000_000))
        client.executor.spin_once(timeout_sec=0.1)


def _finish(node: NodeProcess) -> tuple[int, str]:
    code = node.proc.wait(30)
    node.stop()  # closes the log
    return code, node.log()


@pytest.fixture
def client():
    domain = free_domain_id()
    c = Client(domain, "segfast_signal_client")
    c.domain_id = domain
    c.pub = c.node.create_publisher(Image, f"{NS}/image", 2)
    yield c
    c.close()


def _assert_clean(code: int, log: str, signal_name: str) -> None:
    assert code == 0, f"exit code {code}:\n{log}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    # What rclpy and Python print when a callback met a destroyed entity during the clean-up.
    assert "never retrieved" not in log and "never awaited" not in log, log
    assert f"segfast: {signal_name} received, shutting down" in log, log


@pytest.mark.parametrize("delay", SECOND_SIGINT_S)
def test_two_sigints_exit_zero_without_a_traceback(
    client: Client, tmp_path: Path, delay: float
) -> None:
    node = _busy_node(tmp_path, f"sigint_{delay}", client.domain_id)
    _feed_until_busy(node, client, client.pub)
    node.proc.send_signal(signal.SIGINT)
    time.sleep(delay)
    node.proc.send_signal(signal.SIGINT)
    _assert_clean(*_finish(node), "SIGINT")


def test_a_sigint_during_clean_up_is_ignored(client: Client, tmp_path: Path) -> None:
    """The second signal arrives after the node said it is shutting down, while it waits for
    the running SegEvery pass and the encoder; then a third, for good measure."""
    node = _busy_node(tmp_path, "cleanup", client.domain_id)
    _feed_until_busy(node, client, client.pub)
    node.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while "shutting down" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.002)
    for _ in range(2):
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _assert_clean(*_finish(node), "SIGINT")


@pytest.mark.parametrize("repeat", range(2))
def test_sigterm_exits_zero_without_a_traceback(
    client: Client, tmp_path: Path, repeat: int
) -> None:
    node = _busy_node(tmp_path, f"sigterm_{repeat}", client.domain_id)
    _feed_until_busy(node, client, client.pub)
    node.proc.send_signal(signal.SIGTERM)
    _assert_clean(*_finish(node), "SIGTERM")
