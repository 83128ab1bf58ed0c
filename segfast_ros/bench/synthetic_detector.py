"""Detector ONNX graphs that emit fixed boxes in the YOLOv8 layout, for benchmarks and tests.

(``~.detector`` below is :mod:`segfast_ros.segevery.detector`.) A fixture of the benchmarks
and tests, so it lives in ``bench``, above what it uses: the detector's letterbox (to place the
boxes where the detector reads them) and :func:`~segfast_ros.masks.box_iou` (to spread them).
Writing a graph needs ``onnx``, imported on use.

A graph written here is *not* a detector: whatever image it is given, its output 0 is the same
constant ``[1, 4 + nc + nm, anchors]`` tensor (:data:`~.detector.YOLO_LAYOUT`). It lets
:class:`~.detector.ObjectDetector` and the object-aware SegEvery run their real pre- and
post-processing (letterbox, decoding, thresholds, NMS, border snap) on boxes known in advance,
and a benchmark prompt the decoder with exactly as many boxes as a real scene gives. No torch
and no ultralytics are needed: only ``onnx`` and numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..masks import box_iou
from ..segevery.detector import boxes_to_letterbox, letterbox_geometry

#: Zero-score anchors appended after the boxes. A real YOLOv8 head has far more anchors than
#: channels (21504 at 1024 px), and the detector relies on ``anchors > channels`` to tell the
#: layout from its transpose, so the graphs always have at least this many extra.
FILLER_ANCHORS = 64


def xyxy_to_cxcywh(xyxy: npt.ArrayLike) -> np.ndarray:
    """``(N, 4)`` XYXY boxes to ``(N, 4)`` float64 (centre X, centre Y, width, height)."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.stack(
        [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
        axis=1,
    )


def yolo_output(boxes_cxcywh: npt.ArrayLike, scores: npt.ArrayLike, *, nm: int = 0) -> np.ndarray:
    """The raw output 0 of a YOLOv8 head that found exactly these boxes.

    Args:
        boxes_cxcywh: ``(N, 4)`` boxes in letterbox pixels (cx, cy, w, h).
        scores: ``(N,)`` or ``(N, nc)`` class scores in 0..1 (already sigmoid, as YOLOv8's).
        nm: mask coefficient channels (32 for YOLOv8-seg), filled with 5.0, a value that would
            pass any threshold if a decoder mistook them for class scores.

    Returns:
        ``(1, 4 + nc + nm, N + FILLER_ANCHORS)`` float32; the filler anchors are small
        (10 px) boxes with zero scores.
    """
    boxes = np.asarray(boxes_cxcywh, np.float32).reshape(-1, 4)
    n = len(boxes)
    cls = np.asarray(scores, np.float32).reshape(n, -1)
    nc = cls.shape[1]
    out = np.zeros((1, 4 + nc + nm, n + FILLER_ANCHORS), np.float32)
    out[0, :4, n:] = 10.0
    out[0, :4, :n] = boxes.T
    out[0, 4 : 4 + nc, :n] = cls.T
    out[0, 4 + nc :, :] = 5.0
    return out


def write_constant_detector(
    path: str | Path,
    output0: np.ndarray,
    *,
    input_hw: tuple[int, int] | None = None,
    names: dict[int, str] | None = None,
    protos_nm: int | None = None,
) -> Path:
    """Write an ONNX graph that takes an image and returns ``output0``, whatever the image.

    Args:
        path: the ``.onnx`` file to write (its folder must exist).
        output0: the constant output 0, float32, any shape (tests of malformed layouts pass
            shapes the detector must reject).
        input_hw: static ``(H, W)`` of the ``(1, 3, H, W)`` input; None makes both dynamic.
        names: ultralytics' ``names`` metadata (``{0: "object"}``); None writes none.
        protos_nm: if set, add a second output ``(1, protos_nm, 160, 160)`` of zeros, like
            YOLOv8-seg's prototypes.

    Returns:
        ``path``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = np.asarray(output0, np.float32)
    h, w = input_hw if input_hw is not None else ("height", "width")
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])
    # The output depends on the input (times 0), so the graph really consumes the image and
    # onnxruntime cannot fold the input away.
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Reshape", ["mean", "shape111"], ["mean111"]),
        helper.make_node("Mul", ["mean111", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(out, "const"),
        numpy_helper.from_array(np.ones(out.ndim, np.int64), "shape111"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
    ]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))]
    if protos_nm is not None:
        protos_shape = [1, protos_nm, 160, 160]
        nodes.append(helper.make_node("Identity", ["protos_const"], ["output1"]))
        inits.append(numpy_helper.from_array(np.zeros(protos_shape, np.float32), "protos_const"))
        outputs.append(helper.make_tensor_value_info("output1", TensorProto.FLOAT, protos_shape))
    graph = helper.make_graph(nodes, "fixed_boxes", [image], outputs, inits)
    # ReduceMean with an ``axes`` attribute is opset <= 17; IR 8 loads in every onnxruntime
    # this project supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "names", str(names)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_fixed_box_detector(
    path: str | Path,
    boxes_cxcywh: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    nm: int = 0,
    protos: bool = False,
    input_hw: tuple[int, int] | None = None,
    names: dict[int, str] | None = None,
) -> Path:
    """A detector ONNX graph that emits these fixed boxes in the YOLOv8 layout, for benchmarks
    and tests; it is not a detector.

    Args:
        path: the ``.onnx`` file to write.
        boxes_cxcywh: ``(N, 4)`` boxes in *letterbox* pixels (cx, cy, w, h); see
            :func:`write_detector_for_image` for boxes in original image pixels.
        scores: ``(N,)`` or ``(N, nc)`` class scores.
        nm: mask coefficient channels (see :func:`yolo_output`).
        protos: add YOLOv8-seg's prototype output ``(1, nm, 160, 160)``.
        input_hw: static input ``(H, W)``; None makes it dynamic.
        names: ultralytics ``names`` metadata (None: none).

    Returns:
        ``path``.
    """
    out = yolo_output(boxes_cxcywh, scores, nm=nm)
    return write_constant_detector(
        path, out, input_hw=input_hw, names=names, protos_nm=nm if protos else None
    )


def write_detector_for_image(
    path: str | Path,
    image_hw: tuple[int, int],
    boxes_xyxy: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    imgsz: int = 1024,
    static: bool = False,
    nm: int = 32,
    protos: bool = True,
    names: dict[int, str] | None = None,
) -> Path:
    """A fixed-box graph that an :class:`~.detector.ObjectDetector` (``imgsz``, default
    letterbox) reads back as ``boxes_xyxy`` on any image of size ``image_hw``.

    The boxes are placed where the detector's letterbox puts them: stride-padded for a dynamic
    input, the ``imgsz x imgsz`` square for a static one. Boxes closer than the detector's
    ``border_snap_px`` to the border come back snapped, as real detections do.

    Args:
        path: the ``.onnx`` file to write.
        image_hw: ``(H, W)`` of the images the detector will be run on.
        boxes_xyxy: ``(N, 4)`` XYXY in original image pixels.
        scores: ``(N,)`` or ``(N, nc)`` class scores; the detector keeps scores ``> conf``.
        imgsz: the detector's letterbox side (ObjectDetector's default for a dynamic graph
            without metadata is 1024).
        static: a static ``(imgsz, imgsz)`` input instead of a dynamic one.
        nm: mask coefficient channels; with the default 32 and ``protos``, the graph has the
            outputs of a YOLOv8-seg export, as MobileSAMv2's detector has.
        protos: add the prototype output.
        names: ``names`` metadata; None writes ``{i: "class<i>"}`` for the ``nc`` classes, so
            the detector need not guess ``nc``.

    Returns:
        ``path``.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    geometry = letterbox_geometry(image_hw, (imgsz, imgsz), rect=not static)
    cls = np.asarray(scores, np.float32).reshape(len(boxes), -1)
    if names is None:
        names = {i: f"class{i}" for i in range(cls.shape[1])}
    return write_fixed_box_detector(
        path,
        xyxy_to_cxcywh(boxes_to_letterbox(boxes, geometry)),
        cls,
        nm=nm,
        protos=protos,
        input_hw=(imgsz, imgsz) if static else None,
        names=names,
    )


def spread_boxes(
    image_hw: tuple[int, int],
    n: int,
    *,
    seed: int = 0,
    min_side: float = 0.04,
    max_side: float = 0.5,
    max_iou: float = 0.5,
) -> np.ndarray:
    """``n`` distinct boxes spread over an image, of varied sizes, as a scene's objects are.

    Side lengths are log-uniform in ``[min_side, max_side]`` times the image side (many small
    objects, a few big ones); centres are uniform. A candidate overlapping an accepted box
    with IoU ``> max_iou`` is redrawn, so a detector's NMS (MobileSAMv2: IoU 0.9) keeps them
    all, even after its border snap.

    Args:
        image_hw: ``(H, W)`` in pixels.
        n: number of boxes, >= 0.
        seed: the random generator's seed (the same seed gives the same boxes).
        min_side: smallest side, as a fraction of the image's side (0 < min_side <= max_side).
        max_side: largest side, as a fraction of the image's side (<= 1).
        max_iou: largest IoU between two boxes, in (0, 1).

    Returns:
        ``(n, 4)`` float64 XYXY in original pixels, inside ``[0, W] x [0, H]``.

    Raises:
        ValueError: an argument out of range, or ``n`` boxes that do not fit under
            ``max_iou`` (the message says how many did).
    """
    h, w = image_hw
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < min_side <= max_side <= 1.0:
        raise ValueError(f"expected 0 < min_side <= max_side <= 1, got {min_side}, {max_side}")
    if not 0.0 < max_iou < 1.0:
        raise ValueError(f"max_iou must be in (0, 1), got {max_iou}")
    rng = np.random.default_rng(seed)
    boxes = np.zeros((0, 4), np.float64)
    # Enough tries for hundreds of boxes at the defaults; a bounded loop never hangs.
    for _ in range(100 * max(n, 1)):
        if len(boxes) == n:
            break
        side = np.exp(rng.uniform(np.log(min_side), np.log(max_side), 2)) * (w, h)
        centre = rng.uniform(0.0, 1.0, 2) * (w, h)
        box = np.clip(np.concatenate([centre - side / 2, centre + side / 2]), 0, [w, h, w, h])
        if len(boxes) and box_iou(box[None], boxes).max() > max_iou:
            continue
        boxes = np.concatenate([boxes, box[None]])
    if len(boxes) < n:
        raise ValueError(
            f"only {len(boxes)} of {n} boxes fit in {w}x{h} px with IoU <= {max_iou}; ask for "
            "fewer boxes, smaller sides or a larger max_iou"
        )
    return boxes
