"""The YOLOv8 detection output of the object-aware detector: its layout and its decoding.

:func:`resolve_layout` reads the layout of output 0 from the graph, :func:`decode_yolo` turns one
image's output into boxes in the letterbox frame. Pure numpy/cv2; the ONNX session, the
letterbox and the way back to the original frame are :class:`~.detector.ObjectDetector`'s (its
module says what the MobileSAMv2 reference does around them). What the reference does here, and
what we do:

* **Decoding.** Output 0 is ``[1, 4 + nc + nm, anchors]``: box centre and size (cx, cy, w, h)
  in letterbox pixels, ``nc`` class scores (already sigmoid), then ``nm`` mask coefficients
  (32 for YOLOv8-seg, 0 for detection), which are ignored. A segmentation export has a second
  output, the prototypes ``(1, 32, 160, 160)``, also ignored. MobileSAMv2's fork drops the
  prototype branch, so its export has one output with ``nm = 32``.
* **NMS**, as ultralytics' ``non_max_suppression``: keep anchors whose best class score is
  ``> conf``. Keep at most ``max_nms`` of them by score. Suppress boxes whose IoU with a
  better-scored box is ``> iou``. Keep at most ``max_det``. We run it with
  ``cv2.dnn.NMSBoxes`` (float IoU, strict ``>``, the same as torchvision's ``nms``).
  ultralytics' default is per-class NMS (``agnostic_nms=False``). The MobileSAMv2 detector has
  one class, so per-class and class-agnostic NMS agree; we default to class-agnostic
  (``agnostic_nms=True``), so that a multi-class detector never gives SAM two prompts for one
  object.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: The output layout the detector must emit, as quoted in error messages.
YOLO_LAYOUT = "[1, 4 + nc (+ 32 mask coefficients), anchors]"

#: Mask coefficients of a YOLOv8-seg head (``Segment(nm=32)``), also without the proto branch.
YOLOV8_SEG_COEFFICIENTS = 32


def static_dim(dim: Any) -> int | None:
    """A graph dimension as a positive int, or None when it is dynamic (a name or None)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def num_classes_from_metadata(meta: dict[str, str]) -> int | None:
    """``nc`` from ultralytics' ``names`` metadata (a dict literal ``{0: 'object'}``)."""
    text = meta.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            names = json.loads(text)
        except ValueError:
            return None
    return len(names) if isinstance(names, (dict, list, tuple)) and names else None


def resolve_layout(
    path: Path,
    shape: list[Any],
    found: list[tuple[str, list[Any]]],
    num_classes: int | None,
    protos_nm: int | None,
    meta: dict[str, str],
) -> tuple[int, int, int]:
    """``(4 + nc + nm, nc, nm)`` of output 0, or a ValueError naming the layout.

    Args:
        path: the graph's file, for messages.
        shape: output 0's shape (ints, or names/None for dynamic axes).
        found: ``(name, shape)`` of every output, for messages.
        num_classes: ``nc`` if the caller knows it; None reads ultralytics' ``names``
            metadata, else infers it when unambiguous (see :class:`~.detector.ObjectDetector`).
        protos_nm: the prototypes' channel count when there is a prototype output.
        meta: the graph's custom metadata.
    """

    def bad(why: str) -> ValueError:
        return ValueError(
            f"{path}: output 0 must be {YOLO_LAYOUT} (YOLOv8 layout: box cx, cy, w, h "
            f"in letterbox pixels, then nc class scores, then optional mask coefficients); "
            f"{why}; found outputs {found}"
        )

    if len(shape) != 3:
        raise bad(f"it has rank {len(shape)}, not 3")
    channels, anchors = static_dim(shape[1]), static_dim(shape[2])
    if channels is None:
        raise bad("its channel dimension (axis 1) is not static")
    if anchors is not None and anchors < channels:
        raise bad(
            f"axis 1 ({channels}) is larger than axis 2 ({anchors}): this looks like the "
            "transposed [1, anchors, 4 + nc] layout"
        )
    if channels < 5:
        raise bad(f"{channels} channels leave no room for 4 box values and a class score")

    nc = num_classes if num_classes is not None else num_classes_from_metadata(meta)
    if nc is None:
        if protos_nm is not None:
            nc = channels - 4 - protos_nm
        elif channels - 4 - YOLOV8_SEG_COEFFICIENTS < 1:
            nc = channels - 4  # too few channels for mask coefficients
        else:
            raise bad(
                f"{channels} channels could be nc={channels - 4} classes or "
                f"nc={channels - 4 - YOLOV8_SEG_COEFFICIENTS} classes plus 32 mask "
                "coefficients, and the file has no ultralytics 'names' metadata; pass "
                "num_classes"
            )
    if nc < 1:
        raise bad(f"nc must be >= 1, got {nc}")
    nm = channels - 4 - nc
    if nm < 0:
        raise bad(f"{channels} channels are fewer than 4 + nc = {4 + nc}")
    allowed = {0, YOLOV8_SEG_COEFFICIENTS} | ({protos_nm} if protos_nm else set())
    if nm not in allowed:
        raise bad(
            f"{channels} channels = 4 + nc {nc} + {nm}, but mask coefficients must number "
            f"{sorted(allowed)}"
        )
    return channels, nc, nm


def decode_yolo(
    pred: np.ndarray,
    num_classes: int,
    *,
    conf: float,
    iou: float,
    max_nms: int,
    max_det: int,
    agnostic_nms: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one image's output, as ultralytics' ``non_max_suppression`` keeps them.

    Args:
        pred: ``(4 + nc + nm, anchors)`` output 0 of one image, letterbox frame.
        num_classes: ``nc``.
        conf: keep anchors whose best class score is ``> conf``.
        iou: NMS drops boxes with IoU ``> iou`` with a better-scored one.
        max_nms: at most this many anchors, the best-scored, enter NMS.
        max_det: at most this many boxes after NMS.
        agnostic_nms: one NMS over all classes instead of one per class.

    Returns:
        ``(N, 4)`` float64 XYXY letterbox pixels, ``(N,)`` float32 scores and ``(N,)`` int64
        classes, best first.
    """
    # Work on score rows first: most anchors fail the threshold, so only the survivors'
    # columns are ever gathered (the mask coefficients never are).
    if num_classes == 1:
        scores = pred[4]
        classes = None
    else:
        class_rows = pred[4 : 4 + num_classes]
        classes = class_rows.argmax(axis=0)
        scores = np.take_along_axis(class_rows, classes[None], axis=0)[0]
    keep = np.flatnonzero(scores > np.float32(conf))
    if len(keep) > max_nms:
        keep = keep[np.argsort(-scores[keep], kind="stable")[:max_nms]]
    if len(keep) == 0:
        return np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64)
    cxcywh = pred[:4, keep].T.astype(np.float64)
    kept_scores = scores[keep].astype(np.float32)
    kept_classes = (
        np.zeros(len(keep), np.int64) if classes is None else classes[keep].astype(np.int64)
    )
    xywh = cxcywh.copy()  # top-left corner and size: what cv2's NMS takes
    xywh[:, :2] -= cxcywh[:, 2:] / 2
    if agnostic_nms or num_classes == 1:
        chosen = cv2.dnn.NMSBoxes(xywh, kept_scores, conf, iou)
    else:
        chosen = cv2.dnn.NMSBoxesBatched(
            xywh, kept_scores, kept_classes.astype(np.int32), conf, iou
        )
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)[:max_det]
    xyxy = np.concatenate([xywh[chosen, :2], xywh[chosen, :2] + xywh[chosen, 2:]], axis=1)
    return xyxy, kept_scores[chosen], kept_classes[chosen]
