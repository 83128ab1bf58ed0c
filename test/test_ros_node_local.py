"""The node in this process, for what a client over DDS cannot see or arrange: the CPU it runs
on, its entities and threads, the QoS they got, and failures injected into its transitions."""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from segfast_ros.ros import node as node_module
from segfast_ros.ros.harness import free_domain_id
from segfast_ros.ros.node import SegfastNode
from segfast_ros.ros.segevery_publisher import SegEveryPublisher
from segfast_ros.ros.segment_service import SegmentService
from segfast_ros.runtime import onnx_backend

SUCCESS = TransitionCallbackReturn.SUCCESS


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


def _activate_with_every_thread(node: SegfastNode) -> None:
    """Configure and activate ``node``, and check that what activate creates is there:
    subscriptions, ~/segment, the SegEvery timer, the encoder, SegEvery and segment workers."""
    assert node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == SUCCESS
    names = {s.srv_name for s in node.services}
    assert any(n.endswith("/segment") for n in names), names
    assert list(node.subscriptions)
    timers = len(list(node.timers))  # diagnostics + SegEvery
    assert timers == 2
    ours = {t.name for t in threading.enumerate() if t.name.startswith("segfast-")}
    assert {"segfast-encoder", "segfast-segevery"} <= ours, ours
    # A segment worker thread exists once a call ran; make one run.
    node.segment_pool.submit(lambda: None).result()
    assert any(t.name.startswith("segfast-segment") for t in threading.enumerate())


def _assert_released(node: SegfastNode) -> None:
    """Nothing activate or configure created is left: entities, outputs, model, threads."""
    assert not any(s.srv_name.endswith("/segment") for s in node.services)
    assert not list(node.subscriptions)
    assert len(list(node.timers)) == 1  # diagnostics only, until destroy_node
    assert not [p.topic_name for p in node.publishers if p.topic_name.startswith("/segfast/")]
    left = [t.name for t in threading.enumerate() if t.name.startswith("segfast-")]
    assert not left, f"threads still running: {left}"
    assert node.segment_pool is None
    assert {kv.key: kv.value for kv in node.diagnostic_status().values}["model"] == ""


def test_shutdown_releases_every_entity_and_thread(make_node: Callable[..., SegfastNode]) -> None:
    """The shutdown transition, as main() triggers it when a signal ends the spin."""
    node = make_node(**{"segevery.rate": 5.0})
    _activate_with_every_thread(node)
    assert node.trigger_shutdown() == SUCCESS
    _assert_released(node)


def test_destroy_node_releases_what_no_transition_did(
    make_node: Callable[..., SegfastNode],
) -> None:
    """A context shut down from outside leaves no shutdown transition possible (it could not
    be announced): destroy_node releases the threads all the same."""
    node = make_node(**{"segevery.rate": 5.0})
    _activate_with_every_thread(node)
    rclpy.try_shutdown(context=node.context)
    node.destroy_node()
    left = [t.name for t in threading.enumerate() if t.name.startswith("segfast-")]
    assert not left, f"threads still running after destroy_node: {left}"


def _fail_after(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> None:
    """Make ``cls.method`` do its work and then raise, as a bug half-way through would."""
    real = getattr(cls, method)

    def fail(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        raise RuntimeError(f"injected failure after {method}")

    monkeypatch.setattr(cls, method, fail)


def test_an_error_in_configure_is_logged_and_on_error_releases_the_model(
    node: SegfastNode, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """configure raises once the model and the outputs exist: ERROR, on_error releases them,
    and the node is unconfigured again (a second configure succeeds)."""
    _fail_after(monkeypatch, SegEveryPublisher, "create_publishers")
    assert node.trigger_configure() == TransitionCallbackReturn.ERROR
    _assert_released(node)
    log = capfd.readouterr().err
    assert "configure failed: RuntimeError: injected failure after create_publishers" in log
    assert "Traceback" in log and "a transition from unconfigured failed" in log
    status = node.diagnostic_status()
    assert status.level == DiagnosticStatus.ERROR and "injected failure" in status.message

    monkeypatch.undo()
    assert node.trigger_configure() == SUCCESS  # only possible from unconfigured
    assert node.diagnostic_status().level == DiagnosticStatus.OK


def test_an_error_in_activate_releases_what_configure_and_activate_took(
    node: SegfastNode, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _fail_after(monkeypatch, SegmentService, "start")
    assert node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.ERROR
    _assert_released(node)  # the encoder thread, subscriptions and ~/segment too
    log = capfd.readouterr().err
    assert "activate failed: RuntimeError: injected failure after start" in log
    assert "a transition from inactive failed" in log
    monkeypatch.undo()
    assert node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == SUCCESS


def test_qos_override_parameters_set_the_outputs_and_the_input(
    make_node: Callable[..., SegfastNode],
) -> None:
    """Defaults from ros/qos.py, and the standard qos_overrides parameters over them (depth
    and history are only visible in-process: DDS discovery does not carry them)."""
    node = make_node(
        **{
            "qos_overrides./segfast/overlay.publisher.depth": 3,
            "qos_overrides./segfast/instances.publisher.reliability": "best_effort",
            "qos_overrides./image.subscription.reliability": "reliable",
        }
    )
    node.trigger_configure()
    node.trigger_activate()
    pubs = {p.topic_name: p.qos_profile for p in node.publishers}
    instances, label = pubs["/segfast/instances"], pubs["/segfast/instances/label"]
    overlay = pubs["/segfast/overlay"]
    assert (instances.reliability, instances.depth) == (ReliabilityPolicy.BEST_EFFORT, 2)
    assert (label.reliability, label.depth) == (ReliabilityPolicy.RELIABLE, 1)
    assert label.durability == DurabilityPolicy.VOLATILE
    assert (overlay.reliability, overlay.depth) == (ReliabilityPolicy.RELIABLE, 3)
    (image,) = [s.qos_profile for s in node.subscriptions if s.topic_name == "/image"]
    assert (image.reliability, image.depth) == (ReliabilityPolicy.RELIABLE, 1)
    # The overrides are read-only parameters, described as rclpy describes them.
    described = node.describe_parameter("qos_overrides./segfast/overlay.publisher.depth")
    assert described.read_only
    # A cleanup and a second configure declare them again without complaint.
    node.trigger_deactivate()
    node.trigger_cleanup()
    assert node.trigger_configure() == SUCCESS


def test_executor_threads_is_a_read_only_parameter_with_a_floor(node: SegfastNode) -> None:
    assert node.executor_threads == 4
    described = node.describe_parameter("executor.threads")
    assert described.read_only and "lifecycle transitions" in described.description
    (bounds,) = described.integer_range
    assert (bounds.from_value, bounds.to_value) == (2, 64)


@pytest.mark.parametrize("sim_time", [True, False])
def test_sim_time_without_a_clock_is_said_once(
    make_node: Callable[..., SegfastNode], monkeypatch: pytest.MonkeyPatch, sim_time: bool
) -> None:
    """Under use_sim_time, no /clock within SIM_CLOCK_WAIT_S wall seconds: one warning that
    says what waits for it and how to give it; nothing without sim time."""
    monkeypatch.setattr(node_module, "SIM_CLOCK_WAIT_S", 0.2)
    node = make_node(use_sim_time=sim_time)
    said: list[str] = []
    monkeypatch.setattr(node.get_logger(), "warn", lambda text, **_: said.append(text))
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    executor.remove_node(node)
    clock_warnings = [t for t in said if "/clock" in t]
    if sim_time:
        assert len(clock_warnings) == 1, said
        assert "ros2 bag play --clock" in clock_warnings[0] and "SegEvery" in clock_warnings[0]
    else:
        assert clock_warnings == []
