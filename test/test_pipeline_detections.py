"""pipeline.detections: vision_msgs detections out of instance records, box prompts in, and
PointCloud2 fields, as plain values; read from namespace, rclpy and rosbags messages alike."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segfast_ros.pipeline.detections import (
    CLOUD_FIELDS,
    Detection2DRecord,
    Detection3DRecord,
    Hypothesis,
    cloud_fields,
    detection_id,
    detections_2d,
    detections_3d,
    prompt_boxes,
)
from segfast_ros.pipeline.render import mask_record
from segfast_ros.spatial.lift import Lifted

HW = (48, 64)
DETECTION_FLAVOURS = ("namespace", "rclpy", "rosbags")


def _record(rows: tuple[int, int], cols: tuple[int, int], score: float, track: int = 0):
    mask = np.zeros(HW, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return dataclasses.replace(mask_record(mask, score, 0.9, 0), track_id=track)


def _lifted(valid: bool = True, obb: bool = False) -> Lifted:
    if not valid:
        return Lifted(False, num_points=3, valid_fraction=0.01)
    extra = {}
    if obb:
        extra = {
            "obb_center": (0.1, 0.2, 2.05),
            "obb_orientation": (0.0, 0.0, 0.3826834, 0.9238795),
            "obb_size": (0.4, 0.2, 0.1),
        }
    return Lifted(
        True, centroid=(0.1, 0.2, 2.0), min=(-0.1, 0.0, 1.9), max=(0.3, 0.5, 2.2),
        num_points=100, valid_fraction=0.9, **extra,
    )  # fmt: skip


# ----------------------------------------------------------------------------- 2D and 3D out


def test_detections_2d_mirror_the_records_box_score_and_track() -> None:
    records = [_record((10, 20), (5, 25), 0.8, track=12), _record((0, 48), (0, 1), 0.5)]
    assert detections_2d(records) == [
        Detection2DRecord("12", (15.0, 15.0), (20.0, 10.0), (Hypothesis("", 0.8),)),
        # One column wide at the left edge: its pixel-edge box is centred at 0.5.
        Detection2DRecord("", (0.5, 24.0), (1.0, 48.0), (Hypothesis("", 0.5),)),
    ]
    named = detections_2d(records, ["cup", ""])
    assert [d.results[0].class_id for d in named] == ["cup", ""]
    assert detection_id(records[0]) == "12" and detection_id(records[1]) == ""
    with pytest.raises(ValueError, match="got 1 class ids for 2 instances"):
        detections_2d(records, ["cup"])
    assert detections_2d([]) == []


def test_detections_3d_only_for_valid_lifts_with_the_aabb() -> None:
    records = [
        dataclasses.replace(_record((10, 20), (5, 25), 0.8, track=3), position_3d=_lifted()),
        _record((0, 5), (0, 5), 0.7, track=4),  # not lifted
        dataclasses.replace(_record((30, 40), (30, 40), 0.6), position_3d=_lifted(False)),
    ]
    (det,) = detections_3d(records, ["cup", "bowl", "plate"])
    assert det.id == "3" and det.results == (Hypothesis("cup", 0.8),)
    assert det.position == (0.1, 0.2, 2.0)
    np.testing.assert_allclose(det.bbox_center, (0.1, 0.25, 2.05))
    np.testing.assert_allclose(det.bbox_size, (0.4, 0.5, 0.3))
    assert det.bbox_orientation == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="got 2 class ids for 3 instances"):
        detections_3d(records, ["a", "b"])


def test_detections_3d_oriented_takes_the_obb_when_there_is_one() -> None:
    with_obb = dataclasses.replace(_record((1, 9), (1, 9), 0.9), position_3d=_lifted(obb=True))
    (det,) = detections_3d([with_obb], oriented=True)
    assert det == Detection3DRecord(
        "", (Hypothesis("", 0.9),), (0.1, 0.2, 2.0), (0.1, 0.2, 2.05),
        (0.0, 0.0, 0.3826834, 0.9238795), (0.4, 0.2, 0.1),
    )  # fmt: skip
    # A lift made without oriented boxes has none: its axis-aligned box stands in.
    without = dataclasses.replace(with_obb, position_3d=_lifted())
    (aabb,) = detections_3d([without], oriented=True)
    assert aabb == detections_3d([without])[0] and aabb.bbox_size != (0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------ prompts in


def _detection(flavour: str, cx, cy, w, h, theta=0.0, hyps=(("person", 0.9),), id="d"):
    """A vision_msgs/Detection2D in the given library."""
    if flavour == "namespace":
        results = [
            SimpleNamespace(hypothesis=SimpleNamespace(class_id=c, score=s)) for c, s in hyps
        ]
        center = SimpleNamespace(position=SimpleNamespace(x=cx, y=cy), theta=theta)
        return SimpleNamespace(
            bbox=SimpleNamespace(center=center, size_x=w, size_y=h), results=results, id=id
        )
    if flavour == "rclpy":
        vm = pytest.importorskip(
            "vision_msgs.msg", reason="vision_msgs is not built into this environment"
        )
        det = vm.Detection2D(id=id)
        det.bbox.center.position.x, det.bbox.center.position.y = float(cx), float(cy)
        det.bbox.center.theta, det.bbox.size_x, det.bbox.size_y = float(theta), float(w), float(h)
        for c, s in hyps:
            hyp = vm.ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = c, float(s)
            det.results.append(hyp)
        return det
    return _rosbags_detection(cx, cy, w, h, theta, hyps, id)


def _rosbags_detection(cx, cy, w, h, theta, hyps, id) -> Any:
    pytest.importorskip("rosbags", reason="rosbags is not installed")
    from segfast_ros.replay.bags import typestore

    t = typestore().types
    if "vision_msgs/msg/Detection2D" not in t:
        pytest.skip("the replay's typestore has no vision_msgs types (vision_msgs not found)")
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](0, 0), frame_id="")
    pose = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](0.0, 0.0, 0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](0.0, 0.0, 0.0, 1.0),
        ),
        covariance=np.zeros(36),
    )
    results = [
        t["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=c, score=float(s)),
            pose=pose,
        )
        for c, s in hyps
    ]
    center = t["vision_msgs/msg/Pose2D"](
        position=t["vision_msgs/msg/Point2D"](x=float(cx), y=float(cy)), theta=float(theta)
    )
    bbox = t["vision_msgs/msg/BoundingBox2D"](center=center, size_x=float(w), size_y=float(h))
    return t["vision_msgs/msg/Detection2D"](header=header, results=results, bbox=bbox, id=id)


@pytest.mark.parametrize("flavour", DETECTION_FLAVOURS)
def test_prompt_boxes_from_detections(flavour: str) -> None:
    dets = [
        _detection(flavour, 20.0, 10.0, 10.0, 6.0, hyps=(("cup", 0.8), ("mug", 0.1)), id="a"),
        _detection(flavour, 30.0, 30.0, 10.0, 4.0, theta=math.pi / 2, id="b"),  # stands upright
        _detection(flavour, 60.0, 2.0, 20.0, 10.0, hyps=(), id="c"),  # over the corner: clipped
    ]
    boxes = prompt_boxes(dets, HW, 10)
    assert boxes.boxes.dtype == np.float32 and boxes.boxes.shape == (3, 4)
    np.testing.assert_allclose(
        boxes.boxes, [[15, 7, 25, 13], [28, 25, 32, 35], [50, 0, 64, 7]], atol=1e-5
    )
    assert boxes.ids == ["a", "b", "c"] and boxes.skipped == []
    assert boxes.results == [
        (Hypothesis("cup", pytest.approx(0.8)), Hypothesis("mug", pytest.approx(0.1))),
        (Hypothesis("person", pytest.approx(0.9)),),
        (),
    ]


def test_a_rotated_box_prompts_with_its_axis_aligned_hull() -> None:
    det = _detection("namespace", 30.0, 20.0, 10.0, 10.0, theta=math.pi / 4)
    half = 5.0 * math.sqrt(2.0)
    np.testing.assert_allclose(
        prompt_boxes([det], HW, 1).boxes, [[30 - half, 20 - half, 30 + half, 20 + half]], atol=1e-5
    )


def test_bad_detections_are_skipped_with_their_reasons() -> None:
    dets = [
        _detection("namespace", float("nan"), 5.0, 4.0, 4.0, id="nan"),
        _detection("namespace", 5.0, 5.0, 0.0, 4.0, id="flat"),
        _detection("namespace", -30.0, 5.0, 10.0, 10.0, id="left"),
        _detection("namespace", 5.0, 5.0, 4.0, 4.0, id="ok"),
        _detection("namespace", 5.0, 5.0, 4.0, 4.0, theta=float("inf"), id="spin"),
    ]
    out = prompt_boxes(dets, HW, 10)
    assert out.ids == ["ok"] and len(out.boxes) == 1
    assert out.skipped == [
        "detection 0 (id 'nan'): a box that is not finite (centre (nan, 5.0), size 4.0x4.0, "
        "theta 0.0)",
        "detection 1 (id 'flat'): a box of size 0.0x4.0; expected width and height > 0",
        "detection 2 (id 'left'): a box [-35.0, 0.0, -25.0, 10.0] (XYXY) wholly outside the "
        "64x48 image",
        "detection 4 (id 'spin'): a box that is not finite (centre (5.0, 5.0), size 4.0x4.0, "
        "theta inf)",
    ]


def test_beyond_max_boxes_the_lowest_scores_are_skipped_and_the_order_kept() -> None:
    scores = [0.3, 0.9, 0.1, 0.6, 0.5]
    dets = [
        _detection("namespace", 10.0 + i, 10.0, 4.0, 4.0, hyps=(("x", s),), id=str(i))
        for i, s in enumerate(scores)
    ]
    out = prompt_boxes(dets, HW, 3)
    assert out.ids == ["1", "3", "4"] and out.boxes.shape == (3, 4)
    assert out.skipped == [
        "2 of 5 detections with the lowest scores: at most 3 boxes are decoded per message"
    ]
    empty = prompt_boxes([], HW, 3)
    assert empty.boxes.shape == (0, 4) and empty.ids == [] and empty.skipped == []
    with pytest.raises(ValueError, match="max_boxes must be >= 1, got 0"):
        prompt_boxes(dets, HW, 0)
    with pytest.raises(ValueError, match=r"image size must be positive, got 64x0"):
        prompt_boxes(dets, (0, 64), 3)


# ------------------------------------------------------------------------------ point cloud


def test_cloud_fields_pack_xyz_and_id() -> None:
    xyz = np.array([[0.1, -0.2, 1.5], [1.0, 2.0, 3.0], [-4.0, 0.5, 7.25]], np.float32)
    ids = np.array([3, 3, 70000], np.uint32)
    fields = cloud_fields(xyz, ids)
    assert (fields["height"], fields["width"], fields["point_step"], fields["row_step"]) == (
        1, 3, 16, 48,
    )  # fmt: skip
    assert fields["fields"] == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("id", 12, 6, 1)]
    assert fields["is_dense"] is True and fields["is_bigendian"] is (np.little_endian is False)
    data = np.asarray(fields["data"], np.uint8)
    assert data.size == 48
    order = ">" if fields["is_bigendian"] else "<"
    points = data.reshape(3, 16)
    np.testing.assert_array_equal(points[:, :12].copy().view(order + "f4"), xyz)
    np.testing.assert_array_equal(points[:, 12:].copy().view(order + "u4").ravel(), ids)
    xyz[1, 2] = np.nan
    assert cloud_fields(xyz, ids)["is_dense"] is False
    empty = cloud_fields(np.zeros((0, 3), np.float32), np.zeros(0, np.uint32))
    assert empty["width"] == 0 and empty["row_step"] == 0 and empty["data"].size == 0


def test_cloud_fields_refuse_bad_shapes_and_ids() -> None:
    with pytest.raises(ValueError, match=r"expected points \(N, 3\) and ids \(N,\), got \(2, 2\)"):
        cloud_fields(np.zeros((2, 2)), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(3,\)"):
        cloud_fields(np.zeros((2, 3)), np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="expected non-negative integer ids"):
        cloud_fields(np.zeros((1, 3)), np.array([-1]))
    with pytest.raises(ValueError, match="expected non-negative integer ids"):
        cloud_fields(np.zeros((1, 3)), np.array([0.5]))


def test_cloud_fields_fill_a_real_point_cloud2() -> None:
    msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy's sensor_msgs is not importable")
    fields = cloud_fields(np.ones((4, 3), np.float32), np.arange(4, dtype=np.uint32))
    values = {k: v for k, v in fields.items() if k not in ("fields", "data")}
    cloud = msgs.PointCloud2(
        fields=[
            msgs.PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in CLOUD_FIELDS
        ],
        data=fields["data"].tobytes(),
        **values,
    )
    assert len(cloud.data) == cloud.row_step == 64 and cloud.fields[3].datatype == 6
    assert msgs.PointField.FLOAT32 == 7 and msgs.PointField.UINT32 == 6
