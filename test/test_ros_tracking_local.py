"""The node's tracking in this process: the ``tracking.*`` parameters as ``ros2 param
describe`` shows them, runtime changes reaching the trackers, ``~/track`` request checks, and
the refusal of a call that deactivation caught (the DDS side is test_ros_tracking.py)."""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from geometry_msgs.msg import Point
from rcl_interfaces.msg import ParameterType
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.pipeline.frames import Frame
from segfast_ros.ros.calls import ServiceCalls
from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.harness import free_domain_id
from segfast_ros.ros.node import SegfastNode
from segfast_ros.ros.tracking import check_request
from segfast_ros.srv import Track
from segfast_ros.tracking.settings import TrackingSettings

SUCCESS = TransitionCallbackReturn.SUCCESS


@pytest.fixture
def node() -> Iterator[SegfastNode]:
    """A node on the demo model (SegEvery off), on a context of its own; not configured."""
    context = Context()
    rclpy.init(context=context, domain_id=free_domain_id())
    values = {"model_dir": "demo", "precision": "int8", "segevery.rate": 0.0}
    made = SegfastNode(
        context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
    )
    yield made
    made.destroy_node()
    rclpy.try_shutdown(context=context)


def test_every_tracking_setting_is_a_parameter_with_its_range(node: SegfastNode) -> None:
    """``tracking.<field>`` for each TrackingSettings field: its default, the range the
    trackers enforce (as ROS ranges), a description, changeable at runtime."""
    for f in dataclasses.fields(TrackingSettings):
        name = f"tracking.{f.name}"
        assert node.get_parameter(name).value == f.default, name
        described = node.describe_parameter(name)
        assert not described.read_only and len(described.description) > 20, name
        spec = f.metadata.get("range")
        if spec is None:
            assert described.type == ParameterType.PARAMETER_BOOL, name
            continue
        if spec.kind is int:
            (bounds,) = described.integer_range
            assert described.type == ParameterType.PARAMETER_INTEGER, name
        else:
            (bounds,) = described.floating_point_range
            assert described.type == ParameterType.PARAMETER_DOUBLE, name
        assert (bounds.from_value, bounds.to_value) == (spec.low, spec.high), name
        assert described.additional_constraints == spec.describe()
    (bounds,) = node.describe_parameter("tracking.max_targets").integer_range
    assert (bounds.from_value, bounds.to_value) == (1, 256)
    ids = node.describe_parameter("tracking.segevery_ids")
    assert node.get_parameter("tracking.segevery_ids").value is True
    assert ids.type == ParameterType.PARAMETER_BOOL and "TRACK_NONE" in ids.description


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("tracking.max_targets", 0, "tracking.max_targets out of range. Min: 1, Max: 256"),
        ("tracking.max_targets", 300, "Min: 1, Max: 256, value: 300"),
        ("tracking.match_iou", 0.99, "tracking.match_iou out of range Min: 0.05, Max: 0.95"),
        ("tracking.lost_score", -0.1, "Min: 0.0, Max: 1.0, value: -0.1"),
        ("tracking.max_area_change", 1.0, "Min: 1.1, Max: 100.0, value: 1.0"),
        ("tracking.min_hits", 2.5, "expected 'Type.INTEGER' got 'Type.DOUBLE'"),
        ("tracking.segevery_ids", 1, "expected 'Type.BOOL' got 'Type.INTEGER'"),
    ],
)
def test_out_of_range_tracking_values_are_refused_with_the_range(
    node: SegfastNode, name: str, value: Any, expected: str
) -> None:
    """rclpy refuses them from the declared ranges and types, before the node's check."""
    before = node.get_parameter(name).value
    (result,) = node.set_parameters([Parameter(name, value=value)])
    assert not result.successful
    assert expected in result.reason, result.reason
    assert node.get_parameter(name).value == before


def test_runtime_changes_reach_the_trackers_and_keep_them(node: SegfastNode) -> None:
    """Thresholds and segevery_ids change on the running trackers (no new tracker: targets
    and track IDs are kept); values set while unconfigured are used at configure."""
    node.set_parameters([Parameter("tracking.min_hits", value=4)])
    assert node.trigger_configure() == SUCCESS
    tracking = node.tracks.tracking
    assert tracking is not None and tracking.targets.settings.min_hits == 4
    changes = {"tracking.lost_score": 0.7, "tracking.use_mask_input": False}
    results = node.set_parameters([Parameter(k, value=v) for k, v in changes.items()])
    assert all(r.successful for r in results), results
    assert node.tracks.tracking is tracking
    settings = tracking.targets.settings
    assert (settings.lost_score, settings.use_mask_input, settings.min_hits) == (0.7, False, 4)
    assert tracking.segevery_ids
    assert node.set_parameters([Parameter("tracking.segevery_ids", value=False)])[0].successful
    assert not tracking.segevery_ids
    # Cleanup drops the trackers with the model; a new configure builds them from the values.
    assert node.trigger_cleanup() == SUCCESS
    assert node.tracks.tracking is None
    assert node.trigger_configure() == SUCCESS
    fresh = node.tracks.tracking
    assert fresh is not tracking and not fresh.segevery_ids
    assert fresh.targets.settings.lost_score == 0.7


def _request(action: int, **fields: Any) -> Track.Request:
    req = Track.Request(action=action)
    if "points" in fields:
        fields["points"] = [Point(x=x, y=y) for x, y in fields["points"]]
    if "stamp_ns" in fields:
        req.stamp.sec, req.stamp.nanosec = divmod(fields.pop("stamp_ns"), 1_000_000_000)
    for key, value in fields.items():
        setattr(req, key, value)
    return req


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (_request(4), "unknown action 4: expected ADD (0), REMOVE (1), CLEAR (2) or LIST (3)"),
        (_request(255), "unknown action 255"),
        (_request(Track.Request.REMOVE), "REMOVE needs the target ids"),
        (_request(Track.Request.REMOVE, ids=[1], boxes=[0.0, 0.0, 4.0, 4.0]), "got boxes"),
        (_request(Track.Request.LIST, ids=[1]), "LIST takes no other field, got ids"),
        (_request(Track.Request.CLEAR, stamp_ns=5), "CLEAR takes no other field, got stamp"),
        (
            _request(Track.Request.LIST, points=[(1.0, 2.0)], labels=[1], points_per_set=1),
            "got points, labels, points_per_set",
        ),
    ],
)
def test_requests_that_do_not_fit_their_action_are_refused(
    req: Track.Request, expected: str
) -> None:
    with pytest.raises(ValueError, match="") as caught:
        check_request(req)
    assert expected in str(caught.value)


def test_requests_that_fit_their_action_pass() -> None:
    assert check_request(_request(Track.Request.ADD, boxes=[0.0, 0.0, 4.0, 4.0])) == "ADD"
    assert check_request(_request(Track.Request.ADD)) == "ADD"  # the tracker says "no prompt"
    assert check_request(_request(Track.Request.REMOVE, ids=[3, 4])) == "REMOVE"
    assert check_request(_request(Track.Request.CLEAR)) == "CLEAR"
    assert check_request(_request(Track.Request.LIST)) == "LIST"


def test_a_call_that_deactivation_catches_is_refused_as_not_active(node: SegfastNode) -> None:
    """A ~/track call admitted while its worker is taken, then the workers stop (deactivate):
    it is answered "not active", never left hanging and never run."""
    calls = ServiceCalls(node, Health(node.get_logger()), lambda: 4, ReentrantCallbackGroup())
    calls.start(1)
    release = threading.Event()
    assert calls.pool is not None
    calls.pool.submit(release.wait)  # the one worker is busy
    ran: list[Any] = []

    def answer(req: Any, resp: Any, start: float) -> Any:
        ran.append(req)
        return resp

    req, resp = _request(Track.Request.LIST), Track.Response()
    pending = calls._admit(req, resp, answer, "track", "/segfast/track")
    pending.send(None)  # admitted: it waits for a worker
    stopper = threading.Thread(target=calls.stop, kwargs={"drain": False})
    stopper.start()  # cancels the waiting call, then waits for the running one
    release.set()
    stopper.join(10)
    with pytest.raises(StopIteration) as done:
        pending.send(None)
    answered = done.value.value
    assert not answered.success and not ran
    assert answered.message == (
        "not active: /segfast/track is being deactivated; call again once the node is active"
    )
    # With no workers at all, a call is refused at once the same way.
    fresh = calls._admit(_request(Track.Request.LIST), Track.Response(), answer, "track", "t")
    with pytest.raises(StopIteration) as done:
        fresh.send(None)
    assert done.value.value.message.startswith("not active: t is being deactivated")


def _frame(key_s: int, image: np.ndarray) -> Frame:
    header = Header(frame_id="cam")
    header.stamp.sec = key_s
    return Frame(key_s * 10**9, image, header)


def test_targets_get_the_pixels_of_the_frames_they_are_on(
    node: SegfastNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appearance cue's input in the node: ADD on the latest frame gets its image, on an
    older cached one none (the cache let its pixels go) and its catch-up step on the latest
    gets the latest's; the tracks worker steps every new frame with that frame's pixels."""
    assert node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == SUCCESS
    seq = generate_sequence(4, 3, (240, 320))
    tracking, calls = node.tracks.tracking, []
    assert tracking is not None
    targets = tracking.targets
    real_add, real_step = targets.add, targets.step

    def add(predictor: Any, key: int, *, image: Any = None, **kw: Any) -> Any:
        calls.append(("add", key, image))
        return real_add(predictor, key, image=image, **kw)

    def step(predictor: Any, key: int, image: Any = None) -> Any:
        calls.append(("step", key, image))
        return real_step(predictor, key, image)

    monkeypatch.setattr(targets, "add", add)
    monkeypatch.setattr(targets, "step", step)
    worker = node.tracks.worker
    assert worker is not None
    for i in range(2):
        node._frames._encode(_frame(i + 1, seq[i].image))
    assert worker.wait_idle(30)
    big = int(np.argmax(seq[0].masks.sum(axis=(1, 2))))
    box = [float(v) for v in seq[0].boxes[big]]
    req = _request(Track.Request.ADD, boxes=box, stamp_ns=10**9)  # the older cached frame
    resp = node.tracks._answer(req, Track.Response(), 0.0)
    assert resp.success, resp.message
    (a, b) = calls
    assert a[:2] == ("add", 10**9) and a[2] is None
    assert b[:2] == ("step", 2 * 10**9) and np.array_equal(b[2], seq[1].image)
    calls.clear()
    node._frames._encode(_frame(3, seq[2].image))
    assert worker.wait_idle(30)
    ((name, key, image),) = calls
    assert (name, key) == ("step", 3 * 10**9) and np.array_equal(image, seq[2].image)
    assert node.trigger_deactivate() == SUCCESS
