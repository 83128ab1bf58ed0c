"""A lifecycle manager drives the node from outside, and the QoS it offers is overridable.

The node starts with ``autostart:=false``, as under a lifecycle manager, and with standard
``qos_overrides.*`` parameters; a separate rclpy participant takes it through the standard
``change_state`` service (configure, activate, deactivate, cleanup), reads ``get_state``, and
sees on the DDS graph what each state offers: the outputs from configure on, ``~/segment``
and the image subscription only while active, with the QoS the overrides asked for.
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from ros_node_fixtures import (
    domain_id,
    model_dir,
    model_params,
    node_args,
    publish_and_wait,
    request,
    run_node,
)
from ros_scenes import synthetic_scene
from sensor_msgs.msg import Image

from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess
from segfast_ros.srv import Segment

NS = "/segfast_managed"
NODE = f"{NS}/segfast"
IMAGE = f"{NS}/camera/image"


@pytest.fixture(scope="module")
def managed(model_dir: Path, domain_id: int, tmp_path_factory: pytest.TempPathFactory):
    """The node, left unconfigured (autostart:=false), with two QoS overrides."""
    params = model_params(
        model_dir,
        **{
            "segevery.rate": 5.0,
            "segevery.grid.points_per_side": 2,
            "autostart": False,
            f"qos_overrides.{NODE}/overlay.publisher.reliability": "best_effort",
            f"qos_overrides.{IMAGE}.subscription.reliability": "reliable",
        },
    )
    args = node_args(NS, params, image="camera/image")
    yield from run_node(args, domain_id, tmp_path_factory.mktemp("managed") / "node.log")


@pytest.fixture(scope="module")
def manager(managed: NodeProcess, domain_id: int):
    """The lifecycle manager's side: clients of change_state, get_state and ~/segment."""
    c = Client(domain_id, "segfast_lifecycle_manager")
    c.change_state = c.node.create_client(ChangeState, f"{NODE}/change_state")
    c.get_state = c.node.create_client(GetState, f"{NODE}/get_state")
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.image_pub = c.node.create_publisher(Image, IMAGE, 2)
    c.instances: list[Any] = []
    c.node.create_subscription(InstanceArray, f"{NODE}/instances", c.instances.append, 10)
    try:
        c.spin_until(
            lambda: c.get_state.service_is_ready() or not managed.alive(),
            60,
            f"the node's lifecycle services; node log:\n{managed.log()}",
        )
        assert managed.alive(), managed.log()
        yield c
    finally:
        c.close()


def _state(manager: Client) -> str:
    return manager.call(
        manager.get_state, GetState.Request(), resend_after=5.0
    ).current_state.label


def _change(manager: Client, transition: int) -> bool:
    req = ChangeState.Request(transition=Transition(id=transition))
    return manager.call(manager.change_state, req).success


def _spin_for(manager: Client, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        manager.executor.spin_once(timeout_sec=0.05)


def _offered(manager: Client, topic: str) -> list[Any]:
    """The QoS of every publisher on ``topic``, as discovery reports it."""
    return [info.qos_profile for info in manager.node.get_publishers_info_by_topic(topic)]


def test_the_node_waits_unconfigured_without_autostart(
    managed: NodeProcess, manager: Client
) -> None:
    assert _state(manager) == "unconfigured"
    assert "autostart is false" in managed.log()
    assert not manager.segment.service_is_ready()
    assert manager.node.count_publishers(f"{NODE}/instances") == 0
    assert manager.node.count_subscribers(IMAGE) == 0


def test_configure_creates_the_outputs_with_their_qos(manager: Client) -> None:
    assert _change(manager, Transition.TRANSITION_CONFIGURE)
    assert _state(manager) == "inactive"
    topics = [f"{NODE}/instances", f"{NODE}/instances/label", f"{NODE}/overlay"]
    manager.spin_until(
        lambda: all(_offered(manager, t) for t in topics), 10, "the three outputs on the graph"
    )
    (instances,) = _offered(manager, topics[0])
    (label,) = _offered(manager, topics[1])
    (overlay,) = _offered(manager, topics[2])
    assert instances.reliability == ReliabilityPolicy.RELIABLE
    # What rviz's Image display and rosbag2 ask for: reliable, volatile.
    assert label.reliability == ReliabilityPolicy.RELIABLE
    assert label.durability == DurabilityPolicy.VOLATILE
    assert overlay.reliability == ReliabilityPolicy.BEST_EFFORT  # the override
    assert not manager.segment.service_is_ready()  # only while active


def test_activate_serves_segment_and_publishes(manager: Client) -> None:
    assert _change(manager, Transition.TRANSITION_ACTIVATE)
    assert _state(manager) == "active"
    manager.spin_until(manager.segment.service_is_ready, 10, "~/segment")
    manager.spin_until(lambda: manager.node.count_subscribers(IMAGE) > 0, 10, "the image input")
    (image,) = manager.node.get_subscriptions_info_by_topic(IMAGE)
    assert image.qos_profile.reliability == ReliabilityPolicy.RELIABLE  # the override
    manager.instances.clear()
    publish_and_wait(manager, synthetic_scene(seed=11), 11_000_000_000)
    manager.spin_until(lambda: bool(manager.instances), 30, "~/instances while active")
    resp = manager.call(manager.segment, request(11_000_000_000, boxes=[10.0, 8.0, 62.0, 52.0]))
    assert resp.success, resp.message


def test_deactivate_and_cleanup_take_the_service_and_outputs_away(manager: Client) -> None:
    assert _change(manager, Transition.TRANSITION_DEACTIVATE)
    assert _state(manager) == "inactive"
    manager.spin_until(lambda: not manager.segment.service_is_ready(), 10, "~/segment to go")
    manager.spin_until(lambda: manager.node.count_subscribers(IMAGE) == 0, 10, "unsubscribe")
    # Inactive: no SegEvery pass and no message, even with the outputs still on the graph.
    _spin_for(manager, 0.5)  # what was sent before the deactivation arrives
    seen = len(manager.instances)
    _spin_for(manager, 1.0)  # five SegEvery periods
    assert len(manager.instances) == seen
    assert manager.node.count_publishers(f"{NODE}/instances") == 1

    assert _change(manager, Transition.TRANSITION_CLEANUP)
    assert _state(manager) == "unconfigured"
    manager.spin_until(
        lambda: manager.node.count_publishers(f"{NODE}/instances") == 0, 10, "outputs to go"
    )
    # And the manager can bring it up again.
    assert _change(manager, Transition.TRANSITION_CONFIGURE)
    assert _change(manager, Transition.TRANSITION_ACTIVATE)
    manager.spin_until(manager.segment.service_is_ready, 10, "~/segment again")
