"""Persistent objects over real DDS: ``~/track``, ``~/tracks``, ``~/tracks/label``, and the
track IDs of SegEvery's ``~/instances``, on the demo model.

A client publishes a generated camera-motion sequence (exact masks and object identities),
adds two targets with boxes, follows them on ``~/tracks`` frame by frame, removes one, sends
bad requests, and drives the node through deactivate/activate and cleanup. One node for the
module; the tests run in file order (the first must see a node without frames).
"""

# ruff: noqa: E402, F401, F811 (imports after the skip; fixtures imported by name)
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from geometry_msgs.msg import Point
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from ros_node_fixtures import (
    demo_grid_params,
    domain_id,
    node_args,
    participant,
    publish_and_wait,
    run_node,
    set_param,
    wait_until_serving,
)
from sensor_msgs.msg import Image

from segfast_ros.bench.scenes import Scene, generate_sequence
from segfast_ros.masks import rle_to_mask
from segfast_ros.msg import Instance, InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, image_msg
from segfast_ros.ros.qos import SERVICE_QOS
from segfast_ros.srv import Segment, Track

NS = "/segfast_track"
NODE = f"{NS}/segfast"
HW = (144, 192)
#: A camera-motion sequence in which objects 7 and 12 stay in view throughout.
SEQUENCE = generate_sequence(0, 16, hw=HW)
OBJECTS = (7, 12)
CACHE = 4
STAMP0 = 100_000_000_000
#: Nanoseconds between the sequence's frames (10 Hz).
PERIOD = 100_000_000


def stamp(k: int) -> int:
    """Stamp (ns) of the sequence's frame ``k``."""
    return STAMP0 + k * PERIOD


@pytest.fixture(scope="module")
def node(domain_id: int, tmp_path_factory: pytest.TempPathFactory):
    params = demo_grid_params(**{"cache_size": CACHE})
    args = node_args(NS, params, image="camera/image")
    yield from run_node(args, domain_id, tmp_path_factory.mktemp("track") / "node.log")


@pytest.fixture(scope="module")
def client(node: NodeProcess, domain_id: int):
    """A client of the module's node: ~/track, ~/segment, and every output it publishes."""
    c = participant(domain_id)
    c.image_pub = c.node.create_publisher(Image, f"{NS}/camera/image", 2)
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.track = c.node.create_client(Track, f"{NODE}/track", qos_profile=SERVICE_QOS)
    c.set_params = c.node.create_client(SetParameters, f"{NODE}/set_parameters")
    c.tracks, c.labels, c.instances = [], [], []
    c.node.create_subscription(InstanceArray, f"{NODE}/tracks", c.tracks.append, 10)
    c.node.create_subscription(Image, f"{NODE}/tracks/label", c.labels.append, 10)
    c.node.create_subscription(InstanceArray, f"{NODE}/instances", c.instances.append, 10)
    try:
        wait_until_serving(c, node, c.segment, c.image_pub)
        yield c
    finally:
        c.close()


def track(c: Client, action: int, stamp_ns: int = 0, **fields: Any) -> Track.Response:
    """Call ~/track with ``action``; ``points`` as (x, y) pairs."""
    req = Track.Request(action=action)
    req.stamp.sec, req.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    req.points = [Point(x=float(x), y=float(y)) for x, y in fields.pop("points", [])]
    for key, value in fields.items():
        setattr(req, key, value)
    return c.call(c.track, req)


def listed(c: Client) -> list[int]:
    resp = track(c, Track.Request.LIST)
    assert resp.success, resp.message
    return list(resp.ids)


def ns_of(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def mask_of(inst: Instance) -> np.ndarray:
    size = [inst.mask_height, inst.mask_width]
    return rle_to_mask({"size": size, "counts": list(inst.rle_counts)})


def box_of(scene: Scene, obj: int) -> list[float]:
    return [float(v) for v in scene.boxes[list(scene.ids).index(obj)]]


def best_object(scene: Scene, mask: np.ndarray) -> tuple[int, float]:
    """The ground-truth object ``mask`` overlaps most (by IoU), and that IoU."""
    inter = (scene.masks & mask).sum(axis=(1, 2))
    union = (scene.masks | mask).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    best = int(np.argmax(iou))
    return int(scene.ids[best]), float(iou[best])


def tracks_for(c: Client, k: int, key: int = 0) -> tuple[InstanceArray, Image]:
    """Publish frame ``k`` (stamped ``key``, default :func:`stamp`) and return its ``~/tracks``
    and ``~/tracks/label`` messages."""
    key = key or stamp(k)

    def arrived() -> bool:
        return any(ns_of(m.header) == key for m in c.tracks) and any(
            ns_of(m.header) == key for m in c.labels
        )

    deadline = time.monotonic() + 30
    while not arrived():
        assert time.monotonic() < deadline, f"no ~/tracks for frame {k}"
        c.image_pub.publish(image_msg(SEQUENCE[k].image, key))  # best effort: resend
        try:
            c.spin_until(arrived, 3, f"~/tracks for frame {k}")
        except AssertionError:
            continue
    msg = next(m for m in c.tracks if ns_of(m.header) == key)
    label = next(m for m in c.labels if ns_of(m.header) == key)
    return msg, label


def check_frame(
    msg: InstanceArray, label: Image, k: int, ids: Sequence[int], objects: dict[int, int]
) -> None:
    """One frame's ~/tracks: header, the targets in ID order, masks on their own objects."""
    assert (ns_of(msg.header), msg.header.frame_id) == (stamp(k), "camera")
    assert (ns_of(label.header), label.header.frame_id) == (stamp(k), "camera")
    assert msg.strategy == "targets"
    assert [i.track_id for i in msg.instances] == sorted(ids)
    assert [i.id for i in msg.instances] == list(range(len(ids)))
    assert label.encoding == "mono16" and (label.height, label.width) == HW
    pixels = np.frombuffer(bytes(label.data), dtype=np.uint16).reshape(HW)
    assert set(np.unique(pixels).tolist()) <= {0, *ids}
    tracked = [i for i in msg.instances if i.track_state == Instance.TRACK_TRACKED]
    # Targets added on earlier frames: each tracked one was decoded on this one, and one
    # decoded here may have been found lost.
    assert len(tracked) <= msg.decoder_prompts <= len(msg.instances)
    for inst in msg.instances:
        if inst.track_state == Instance.TRACK_LOST:
            assert inst.area == 0 and list(inst.rle_counts) == [HW[0] * HW[1]]
            assert not (pixels == inst.track_id).any()
            continue
        assert inst.track_state == Instance.TRACK_TRACKED, inst.track_state
        mask = mask_of(inst)
        assert inst.area == mask.sum() > 0
        # Never reported on another object.
        assert best_object(SEQUENCE[k], mask)[0] == objects[inst.track_id], (k, inst.track_id)


# ---------------------------------------------------------------------------------- tests


def test_track_before_the_first_frame_is_a_clear_error(client: Client) -> None:
    resp = track(client, Track.Request.ADD, boxes=[10.0, 10.0, 40.0, 40.0])
    assert not resp.success and not resp.ids
    assert "no frame yet" in resp.message and "camera/image" in resp.message
    assert listed(client) == []


def test_two_targets_are_followed_with_stable_ids_then_one_is_removed(client: Client) -> None:
    """The issue's DDS test: add two targets with boxes on a published frame; ~/tracks has
    both, with the same IDs and each frame's header, on every following frame; after a
    REMOVE the removed one is gone from the next messages."""
    publish_and_wait(client, SEQUENCE[0].image, stamp(0))
    boxes = [v for obj in OBJECTS for v in box_of(SEQUENCE[0], obj)]
    resp = track(client, Track.Request.ADD, stamp(0), boxes=boxes)
    assert resp.success, resp.message
    ids = list(resp.ids)
    assert len(set(ids)) == 2 and 0 not in ids
    assert ns_of(resp.header) == stamp(0) and resp.header.frame_id == "camera"
    assert [t.track_id for t in resp.targets] == ids
    objects = dict(zip(ids, OBJECTS, strict=True))
    for target in resp.targets:
        assert target.track_state == Instance.TRACK_TRACKED
        obj, iou = best_object(SEQUENCE[0], mask_of(target))
        assert obj == objects[target.track_id] and iou > 0.3, (obj, iou)
    assert sorted(listed(client)) == sorted(ids)

    states = []
    for k in range(1, 6):
        msg, label = tracks_for(client, k)
        check_frame(msg, label, k, ids, objects)
        states.append([i.track_state for i in msg.instances])
    # Both objects stay in view with a clear outline: followed, not lost, on most frames.
    for column in zip(*states, strict=True):
        assert column.count(Instance.TRACK_TRACKED) >= 4, states

    removed, kept = ids
    resp = track(client, Track.Request.REMOVE, ids=[removed])
    assert resp.success and list(resp.ids) == [removed], resp.message
    for k in range(6, 9):
        check_frame(*tracks_for(client, k), k, [kept], objects)
    resp = track(client, Track.Request.LIST)
    assert list(resp.ids) == [kept] and [t.track_id for t in resp.targets] == [kept]
    assert ns_of(resp.header) == stamp(8)


def test_add_on_an_older_cached_frame_catches_up_to_the_latest(client: Client) -> None:
    """ADD on a stamp still in the cache: the new target is stepped through the newer cached
    frames, so the response (and the next ~/tracks) is at the latest frame."""
    for k in (9, 10, 11):
        publish_and_wait(client, SEQUENCE[k].image, stamp(k))
    resp = track(client, Track.Request.ADD, stamp(9), boxes=box_of(SEQUENCE[9], OBJECTS[0]))
    assert resp.success, resp.message
    assert ns_of(resp.header) == stamp(11)
    (new,) = resp.ids
    kept = next(i for i in listed(client) if i != new)
    msg, label = tracks_for(client, 12)
    check_frame(msg, label, 12, [kept, new], {kept: OBJECTS[1], new: OBJECTS[0]})


def test_add_waits_for_a_frame_still_being_encoded(client: Client) -> None:
    """Publish, then ask at once: the call waits for the encoder, as ~/segment does (without
    the wait every call would come before the embedding; a retry is only for a frame lost in
    transit, which the best-effort camera input allows)."""
    for _ in range(3):
        client.image_pub.publish(image_msg(SEQUENCE[13].image, stamp(13)))
        resp = track(client, Track.Request.ADD, stamp(13), boxes=[60.0, 40.0, 120.0, 100.0])
        if resp.success or "no cached frame" not in resp.message:
            break
    assert resp.success, resp.message
    assert ns_of(resp.header) == stamp(13)
    assert track(client, Track.Request.REMOVE, ids=list(resp.ids)).success


def test_bad_requests_are_refused_change_nothing_and_the_node_keeps_serving(
    client: Client, node: NodeProcess
) -> None:
    before = listed(client)
    assert before
    box = box_of(SEQUENCE[13], OBJECTS[1])
    cases = [
        ({"action": 9}, "unknown action 9: expected ADD (0), REMOVE (1), CLEAR (2) or LIST (3)"),
        ({"action": Track.Request.REMOVE, "ids": [999]}, "unknown target ids: 999"),
        ({"action": Track.Request.ADD, "ids": [999], "boxes": box}, "unknown target ids: 999"),
        ({"action": Track.Request.REMOVE}, "REMOVE needs the target ids"),
        ({"action": Track.Request.CLEAR, "ids": before[:1]}, "CLEAR takes no other field"),
        ({"action": Track.Request.ADD}, "no prompt"),
        ({"action": Track.Request.ADD, "boxes": [1.0, float("nan"), 9.0, 9.0]}, "NaN"),
        ({"action": Track.Request.ADD, "boxes": [0.0, 0.0, 400.0, 50.0]}, "outside the image"),
        (
            {"action": Track.Request.ADD, "points": [(5, 5), (9, 9)], "labels": [1]},
            "labels: expected one label per point (2 points), got 1",
        ),
        ({"action": Track.Request.ADD, "stamp_ns": stamp(0), "boxes": box}, "cache_size=4"),
        ({"action": Track.Request.ADD, "stamp_ns": 7, "boxes": box}, "no cached frame"),
    ]
    for fields, expected in cases:
        resp = track(client, fields.pop("action"), fields.pop("stamp_ns", 0), **fields)
        assert not resp.success and expected in resp.message, (expected, resp.message)
        assert not resp.ids and not resp.targets and ns_of(resp.header) == 0
        assert listed(client) == before, expected
    assert node.alive()

    # Past the limit; then a limit lowered below the targets followed keeps them all.
    limit = len(before)
    assert set_param(client, "tracking.max_targets", limit).successful
    resp = track(client, Track.Request.ADD, boxes=box)
    assert not resp.success and f"tracking.max_targets is {limit}" in resp.message
    assert set_param(client, "tracking.max_targets", 1).successful
    assert listed(client) == before
    client.spin_until(lambda: "below the" in node.log(), 10, "the max_targets warning")
    assert f"below the {limit} targets followed: they are kept" in node.log()
    refused = set_param(client, "tracking.max_targets", 0)
    assert not refused.successful and "Min: 1, Max: 256" in refused.reason
    assert set_param(client, "tracking.max_targets", 16).successful

    # A valid call works after all of it.
    resp = track(client, Track.Request.ADD, boxes=box)
    assert resp.success, resp.message
    assert sorted(listed(client)) == sorted([*before, *resp.ids])
    assert track(client, Track.Request.REMOVE, ids=list(resp.ids)).success


def test_segevery_instances_carry_track_ids(client: Client) -> None:
    """The same view in several frames: once born (tracking.min_hits frames), the instances
    keep their track IDs; tracking.segevery_ids false publishes TRACK_NONE."""

    def instances_for(k: int, key: int) -> InstanceArray:
        client.instances.clear()
        publish_and_wait(client, SEQUENCE[k].image, key)
        client.spin_until(
            lambda: any(ns_of(m.header) == key for m in client.instances), 30, "~/instances"
        )
        return next(m for m in client.instances if ns_of(m.header) == key)

    base = stamp(20)
    seen = [instances_for(14, base + i) for i in range(4)]
    assert all(m.instances for m in seen)
    first = seen[0].instances
    assert {i.track_state for i in first} <= {Instance.TRACK_TENTATIVE, Instance.TRACK_TRACKED}
    born = [sorted(i.track_id for i in m.instances if i.track_state == Instance.TRACK_TRACKED)
            for m in seen[2:]]  # fmt: skip
    assert born[0] and born[0] == born[1] and 0 not in born[0]
    assert [i.id for i in seen[-1].instances] == list(range(len(seen[-1].instances)))

    assert set_param(client, "tracking.segevery_ids", False).successful
    try:
        msg = instances_for(14, base + 10)
        assert {(i.track_id, i.track_state) for i in msg.instances} == {(0, Instance.TRACK_NONE)}
    finally:
        assert set_param(client, "tracking.segevery_ids", True).successful


def test_diagnostics_report_the_targets(client: Client) -> None:
    key = "targets"

    def values() -> dict[str, str]:
        for m in reversed(client.diagnostics):
            for s in m.status:
                if s.name.startswith(f"{NODE}:"):
                    return {kv.key: kv.value for kv in s.values}
        return {}

    client.diagnostics.clear()
    client.spin_until(lambda: key in values(), 10, "/diagnostics with the targets")
    got = values()
    assert int(got["targets"]) == len(listed(client)) >= 1
    assert int(got["tracks_published"]) >= 8 and int(got["track_calls"]) >= 10
    assert int(got["track_errors"]) >= 10 and got["tracks_errors"] == "0"
    assert float(got["tracks_ms_p50"]) > 0


def test_targets_survive_deactivate_and_go_at_cleanup(client: Client) -> None:
    """A deactivate/activate cycle keeps the planner's targets (followed again from the next
    frame); cleanup drops them with the model. ~/track is offered only while active."""
    change = client.node.create_client(ChangeState, f"{NODE}/change_state")
    get_state = client.node.create_client(GetState, f"{NODE}/get_state")

    def transition(tid: int) -> None:
        assert client.call(change, ChangeState.Request(transition=Transition(id=tid))).success

    kept = listed(client)
    transition(Transition.TRANSITION_DEACTIVATE)
    client.spin_until(lambda: not client.track.service_is_ready(), 10, "~/track to go")
    assert client.call(get_state, GetState.Request()).current_state.label == "inactive"
    transition(Transition.TRANSITION_ACTIVATE)
    client.spin_until(lambda: client.image_pub.get_subscription_count() > 0, 10, "resubscribe")
    assert listed(client) == kept
    msg, _ = tracks_for(client, 15, stamp(40))  # newer than the SegEvery test's frames
    assert [i.track_id for i in msg.instances] == kept

    transition(Transition.TRANSITION_DEACTIVATE)
    transition(Transition.TRANSITION_CLEANUP)
    transition(Transition.TRANSITION_CONFIGURE)
    transition(Transition.TRANSITION_ACTIVATE)
    assert listed(client) == []
