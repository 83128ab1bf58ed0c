"""The object-aware detector: letterbox math, YOLOv8 output decoding, thresholds, NMS, border
snap and bad graphs, on tiny ONNX files that emit known boxes in the YOLOv8 layout."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segfast_ros.bench.synthetic_detector import (
    FILLER_ANCHORS,
    write_constant_detector,
    write_detector_for_image,
    write_fixed_box_detector,
    xyxy_to_cxcywh,
    yolo_output,
)
from segfast_ros.segevery.detector import (
    YOLO_LAYOUT,
    ObjectDetector,
    boxes_from_letterbox,
    boxes_to_letterbox,
    letterbox_geometry,
    letterbox_image,
)


def write_malformed(
    path: Path,
    *,
    transpose: bool = False,
    channels: int | None = None,
    names: dict[int, str] | None = None,
) -> Path:
    """A one-box graph whose output 0 breaks the YOLOv8 layout: transposed to
    ``[1, anchors, channels]``, or with ``channels`` channels (box rows only, zero scores)."""
    out = yolo_output([[10, 10, 5, 5]], [[0.9]])
    if channels is not None:
        out = np.zeros((1, channels, out.shape[2]), np.float32)
        out[0, :4] = 10.0
    if transpose:
        out = out.transpose(0, 2, 1).copy()
    return write_constant_detector(path, out, names=names)


def detector_for(
    tmp_path: Path,
    image_hw: tuple[int, int],
    boxes_xyxy: Sequence[Sequence[float]],
    scores: Sequence[Sequence[float]] | Sequence[float],
    *,
    static: bool = False,
    name: str = "det.onnx",
    nm: int = 32,
    protos: bool = True,
    **kwargs: object,
) -> ObjectDetector:
    """A detector that finds ``boxes_xyxy`` (original pixels) in any image of ``image_hw``."""
    path = write_detector_for_image(
        tmp_path / name, image_hw, boxes_xyxy, scores, static=static, nm=nm, protos=protos
    )
    return ObjectDetector(path, **kwargs)


def image(hw: tuple[int, int], value: int = 90) -> np.ndarray:
    return np.full((*hw, 3), value, np.uint8)


# ------------------------------------------------------------------------ letterbox


def test_letterbox_geometry_follows_ultralytics() -> None:
    # 480x640 (H x W): scale 1.6 to 768x1024; already a stride multiple, so rect adds nothing.
    rect = letterbox_geometry((480, 640), (1024, 1024), rect=True)
    assert rect.resized_hw == (768, 1024) and rect.pad_tl == (0, 0)
    assert rect.shape_hw == (768, 1024)
    square = letterbox_geometry((480, 640), (1024, 1024), rect=False)
    assert square.pad_tl == (128, 0) and square.shape_hw == (1024, 1024)
    # 770x769: width 769 * 1024/770 = 1022.67 rounds to 1023; the 1 px of padding goes right
    # (left = round(0.5 - 0.1) = 0, right = round(0.5 + 0.1) = 1).
    odd = letterbox_geometry((770, 769), (1024, 1024), rect=True)
    assert odd.resized_hw == (1024, 1023) and odd.pad_tl == (0, 0)
    assert odd.shape_hw == (1024, 1024)
    # A small image is scaled up (ultralytics' scaleup=True) and padded to 32 in rect mode.
    small = letterbox_geometry((100, 50), (1024, 1024), rect=True)
    assert small.resized_hw == (1024, 512) and small.shape_hw == (1024, 512)
    tall = letterbox_geometry((1000, 310), (1024, 1024), rect=True)
    assert tall.resized_hw == (1024, 317)
    assert tall.shape_hw == (1024, 320) and tall.pad_tl == (0, 1)


@pytest.mark.parametrize("hw", [(480, 640), (770, 769), (1000, 310), (1024, 1024)])
@pytest.mark.parametrize("rect", [True, False])
def test_box_round_trip_through_the_letterbox(hw: tuple[int, int], rect: bool) -> None:
    geometry = letterbox_geometry(hw, (1024, 1024), rect=rect)
    h, w = hw
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (50, 4)) * [w, h, w, h]
    boxes = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)
    boxes = np.concatenate([boxes, [[0, 0, w, h]]])
    back = boxes_from_letterbox(boxes_to_letterbox(boxes, geometry), geometry)
    np.testing.assert_allclose(back, boxes, atol=1e-9)
    # The image corners land on the resized region's corners.
    corners = boxes_to_letterbox(np.array([[0, 0, w, h]]), geometry)[0]
    top, left = geometry.pad_tl
    np.testing.assert_allclose(
        corners, [left, top, left + geometry.resized_hw[1], top + geometry.resized_hw[0]]
    )


def test_letterbox_image_pads_with_gray_around_the_resized_image() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[..., 0] = 200
    geometry = letterbox_geometry(img.shape[:2], (1024, 1024), rect=False)
    out = letterbox_image(img, geometry)
    assert out.shape == (1024, 1024, 3) and out.dtype == np.uint8
    assert (out[:128] == 114).all() and (out[-128:] == 114).all()
    assert (out[128:-128, :, 0] == 200).all() and (out[128:-128, :, 1:] == 0).all()


# ------------------------------------------------------------------------ decoding


def test_decodes_known_boxes_of_a_seg_export(tmp_path: Path) -> None:
    """nc=1 with 32 mask coefficients and a prototype output: the coefficients (5.0 each)
    are ignored and the boxes come back in original pixels, best first."""
    hw = (480, 640)
    boxes = [[100, 50, 300, 200], [350, 220, 600, 400], [30.5, 300.25, 90.75, 350.5]]
    scores = [0.6, 0.95, 0.5]
    det = detector_for(tmp_path, hw, boxes, scores)
    assert (det.num_classes, det.num_coefficients, det.rect) == (1, 32, True)
    found = det(image(hw))
    order = [1, 0, 2]
    np.testing.assert_allclose(found.boxes, np.asarray(boxes)[order], atol=1e-3)
    np.testing.assert_allclose(found.scores, np.asarray(scores)[order], rtol=1e-6)
    assert found.classes.tolist() == [0, 0, 0]
    assert found.boxes.dtype == np.float32 and found.letterbox.shape_hw == (768, 1024)


@pytest.mark.parametrize("hw", [(480, 640), (770, 769)])
def test_static_square_graph_gives_the_same_boxes(tmp_path: Path, hw: tuple[int, int]) -> None:
    boxes = [[100, 50, 300, 200], [200, 220, 400, 400]]
    scores = [0.8, 0.7]
    dynamic = detector_for(tmp_path, hw, boxes, scores, name="dyn.onnx")
    static = detector_for(tmp_path, hw, boxes, scores, static=True, name="static.onnx")
    assert dynamic.rect and not static.rect
    a, b = dynamic(image(hw)), static(image(hw))
    assert b.letterbox.shape_hw == (1024, 1024)
    np.testing.assert_allclose(a.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(b.boxes, boxes, atol=1e-3)


def test_confidence_threshold_is_strict(tmp_path: Path) -> None:
    hw = (480, 640)
    boxes = [[10 + 60 * i, 100, 50 + 60 * i, 200] for i in range(4)]
    det = detector_for(tmp_path, hw, boxes, [0.39, 0.4, 0.41, 0.9], border_snap_px=0)
    found = det(image(hw))
    np.testing.assert_allclose(found.scores, [0.9, 0.41], rtol=1e-6)
    loose = detector_for(tmp_path, hw, boxes, [0.39, 0.4, 0.41, 0.9], conf=0.1, name="b.onnx")
    assert len(loose(image(hw))) == 4


def test_nms_at_iou_0_9(tmp_path: Path) -> None:
    hw = (1024, 1024)
    a = [100, 100, 300, 300]
    b = [100, 100, 300, 290]  # IoU with a: 0.95 -> suppressed at 0.9
    c = [100, 100, 300, 270]  # IoU with a: 0.85, with b: 0.89 -> kept
    d = [600, 600, 800, 800]
    det = detector_for(tmp_path, hw, [a, b, c, d], [0.9, 0.8, 0.7, 0.6])
    found = det(image(hw))
    np.testing.assert_allclose(found.boxes, [a, c, d], atol=1e-3)
    strict = detector_for(tmp_path, hw, [a, b, c, d], [0.9, 0.8, 0.7, 0.6], iou=0.8, name="s.onnx")
    np.testing.assert_allclose(strict(image(hw)).boxes, [a, d], atol=1e-3)


def test_max_det_keeps_the_best(tmp_path: Path) -> None:
    hw = (1024, 1024)
    boxes = [[100 * i + 30, 100, 100 * i + 90, 200] for i in range(8)]
    scores = [0.5, 0.9, 0.6, 0.95, 0.7, 0.55, 0.8, 0.65]
    found = detector_for(tmp_path, hw, boxes, scores, max_det=3)(image(hw))
    np.testing.assert_allclose(found.scores, [0.95, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(found.boxes, np.asarray(boxes)[[3, 1, 6]], atol=1e-3)


def test_multi_class_detector_without_masks(tmp_path: Path) -> None:
    """nc=3, no coefficients: the class is the argmax, the confidence its score; NMS is
    class-agnostic by default and per class on request."""
    hw = (480, 640)
    a, b = [100, 100, 300, 300], [100, 100, 300, 295]  # IoU 0.975
    scores = [[0.1, 0.7, 0.2], [0.8, 0.1, 0.05]]
    agnostic = detector_for(tmp_path, hw, [a, b], scores, nm=0, protos=False)
    assert (agnostic.num_classes, agnostic.num_coefficients) == (3, 0)
    found = agnostic(image(hw))
    assert found.classes.tolist() == [0] and np.allclose(found.scores, [0.8])
    per_class = detector_for(
        tmp_path, hw, [a, b], scores, nm=0, protos=False, agnostic_nms=False, name="pc.onnx"
    )
    found = per_class(image(hw))
    assert found.classes.tolist() == [0, 1]
    np.testing.assert_allclose(found.boxes, [b, a], atol=1e-3)


def test_border_snap_in_the_reference_letterbox_frame(tmp_path: Path) -> None:
    """480x640 runs at 768x1024 (scale 1.6): 20 letterbox px are 12.5 original px. Edges
    closer than that to the border snap to it; a static square graph (128 px of padding above
    and below) snaps the same boxes, as the reference frame is the stride-padded one."""
    hw = (480, 640)
    boxes = [
        [10, 5, 300, 470],  # x1 16 lb px < 20: 0; y1 8 < 20: 0; y2 752 > 748: 480
        [13, 13, 630, 467],  # x1 20.8, y1 20.8: kept; x2 1008 > 1004: 640; y2 747.2: kept
        [200, 200, 400, 400],  # far from every border
    ]
    expected = [[0, 0, 300, 480], [13, 13, 640, 467], [200, 200, 400, 400]]
    for static in (False, True):
        det = detector_for(
            tmp_path, hw, boxes, [0.9, 0.8, 0.7], static=static, name=f"snap{static}.onnx"
        )
        np.testing.assert_allclose(det(image(hw)).boxes, expected, atol=1e-3)
    off = detector_for(tmp_path, hw, boxes, [0.9, 0.8, 0.7], border_snap_px=0, name="off.onnx")
    np.testing.assert_allclose(off(image(hw)).boxes, boxes, atol=1e-3)


def test_boxes_are_clipped_to_the_image(tmp_path: Path) -> None:
    hw = (480, 640)
    geometry = letterbox_geometry(hw, (1024, 1024), rect=True)
    lb = np.array([[-40.0, 300.0, 200.0, 900.0]])  # beyond the left and bottom edges
    path = write_fixed_box_detector(
        tmp_path / "clip.onnx", xyxy_to_cxcywh(lb), [[0.9]], names={0: "object"}
    )
    found = ObjectDetector(path, border_snap_px=0)(image(hw))
    expected = boxes_from_letterbox(lb, geometry)
    np.testing.assert_allclose(found.boxes, expected, atol=1e-3)
    assert found.boxes[0, 0] == 0 and found.boxes[0, 3] == 480


def test_no_detections_is_an_empty_result(tmp_path: Path) -> None:
    hw = (300, 200)
    found = detector_for(tmp_path, hw, [[10, 10, 50, 50]], [0.1])(image(hw))
    assert len(found) == 0
    assert found.boxes.shape == (0, 4) and found.scores.shape == (0,)
    assert found.classes.shape == (0,)


def test_network_input_is_rgb_in_0_1(tmp_path: Path) -> None:
    """A probe graph scores anchor 0 with the mean of input channel 0 and anchor 1 with
    channel 2: a red image is found by anchor 0 only, unless BGR order is asked for."""
    a = 2 + FILLER_ANCHORS
    box = np.zeros((1, 4, a), np.float32)
    box[0, :, :2] = np.array([[512.0, 384.0], [512.0, 384.0], [100.0, 100.0], [100.0, 100.0]])
    src = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),  # 1x3
        helper.make_node("Gather", ["means", "idx"], ["picked"], axis=1),  # 1x2: R, B
        helper.make_node("Pad", ["picked", "pads"], ["row"]),  # 1 x A
        helper.make_node("Reshape", ["row", "shape"], ["score"]),  # 1 x 1 x A
        helper.make_node("Concat", ["box", "score"], ["output0"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(box, "box"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "idx"),
        numpy_helper.from_array(np.array([0, 0, 0, FILLER_ANCHORS], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, a], np.int64), "shape"),
    ]
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, a])
    model = helper.make_model(
        helper.make_graph(nodes, "probe", [src], [out], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    path = tmp_path / "probe.onnx"
    onnx.save(model, str(path))
    red = np.zeros((1024, 1024, 3), np.uint8)
    red[..., 0] = 255
    found = ObjectDetector(path, border_snap_px=0)(red)
    np.testing.assert_allclose(found.scores, [1.0])
    np.testing.assert_allclose(found.boxes, [[462, 462, 562, 562]], atol=1e-3)
    swapped = ObjectDetector(path, border_snap_px=0, input_channel_order="bgr")(red)
    np.testing.assert_allclose(swapped.boxes, [[334, 334, 434, 434]], atol=1e-3)


# ------------------------------------------------------------------------ bad graphs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx.*4 \+ nc"):
        ObjectDetector(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        ObjectDetector(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(transpose=True), r"transposed \[1, anchors, 4 \+ nc\]"),
        (dict(channels=4), r"4 channels leave no room"),
        (dict(channels=5, names={0: "a", 1: "b"}), r"fewer than 4 \+ nc = 6"),
        (dict(channels=40, names={0: "object"}), r"4 \+ nc 1 \+ 35"),
        (dict(channels=37), r"pass num_classes"),
    ],
)
def test_malformed_layout_names_the_expected_layout(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    path = write_malformed(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(ValueError) as err:
        ObjectDetector(path)
    assert YOLO_LAYOUT in str(err.value)
    assert err.match(message)


def test_ambiguous_channels_resolve_with_num_classes(tmp_path: Path) -> None:
    """37 channels without metadata: 1 class + 32 coefficients, once num_classes says so."""
    path = write_fixed_box_detector(tmp_path / "amb.onnx", [[300, 300, 100, 100]], [[0.9]], nm=32)
    det = ObjectDetector(path, num_classes=1, border_snap_px=0)
    assert (det.num_classes, det.num_coefficients) == (1, 32)
    np.testing.assert_allclose(det(image((1024, 1024))).boxes, [[250, 250, 350, 350]], atol=1e-3)


def test_wrong_input_rank(tmp_path: Path) -> None:
    src = helper.make_tensor_value_info("images", TensorProto.FLOAT, [3, 64, 64])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [3, 64, 64])
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["images"], ["output0"])], "g", [src], [out]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "rank.onnx"))
    with pytest.raises(ValueError, match=r"one image input \(1, 3, H, W\)"):
        ObjectDetector(tmp_path / "rank.onnx")


def test_bad_thresholds_and_images(tmp_path: Path) -> None:
    path = write_fixed_box_detector(
        tmp_path / "ok.onnx", [[10, 10, 5, 5]], [[0.9]], names={0: "o"}
    )
    for kwargs, message in [
        (dict(conf=1.5), "conf must be"),
        (dict(iou=0.0), "iou must be"),
        (dict(max_det=0), "max_det"),
        (dict(border_snap_px=-1), "border_snap_px"),
        (dict(imgsz=1000), "multiple of stride"),
        (dict(input_channel_order="rbg"), "input_channel_order"),
    ]:
        with pytest.raises(ValueError, match=message):
            ObjectDetector(path, **kwargs)
    static = write_fixed_box_detector(
        tmp_path / "st.onnx", [[10, 10, 5, 5]], [[0.9]], input_hw=(640, 640), names={0: "o"}
    )
    with pytest.raises(ValueError, match="static input of 640x640"):
        ObjectDetector(static, imgsz=1024)
    with pytest.raises(ValueError, match="rect=True"):
        ObjectDetector(static, rect=True)
    assert ObjectDetector(static).imgsz == 640
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        ObjectDetector(path)(np.zeros((20, 20), np.uint8))


# ------------------------------------------------------------------------ converter


@pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed"
)
def test_converter_says_how_to_get_ultralytics(tmp_path: Path) -> None:
    from segfast_ros.export.convert_object_aware import convert_object_aware

    with pytest.raises(ImportError, match=r"pip install ultralytics \(AGPL-3.0\)"):
        convert_object_aware(tmp_path / "ObjectAwareModel.pt", tmp_path / "out.onnx")
