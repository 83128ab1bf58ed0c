"""The object-discovery detector of object-aware SegEvery (MobileSAMv2), run from ONNX.

MobileSAMv2 prompts SAM's decoder with the boxes of a YOLOv8 detector trained to find
*objects* (class-agnostic, ``ObjectAwareModel.pt``). This module runs such a detector from an
ONNX file with our own pre- and post-processing: no ultralytics (AGPL-3.0) and no torch. Any
YOLOv8 detection or segmentation export works; its first output must have the standard layout
:data:`YOLO_LAYOUT`.

What the reference does, and what we do (MobileSAMv2 ``Inference.py`` calls its
``ObjectAwareModel`` with ``imgsz=1024, conf=0.4, iou=0.9, retina_masks=True`` on ultralytics
8.0.x, through ``DetectionPredictor`` and its own ``PromptModelPredictor.postprocess``):

* **Letterbox.** The image is resized keeping its aspect ratio so that it fits ``imgsz`` (cv2
  ``INTER_LINEAR``, sizes rounded with Python's ``round``), then padded with gray 114 split
  evenly on both sides (``top = round(dh - 0.1)``, ``bottom = round(dh + 0.1)``). The reference
  runs a PyTorch model on one image, for which ultralytics pads only to the next multiple of the
  stride (32), not to a square ("rect" inference). An ONNX graph with a static input needs the
  square ``imgsz x imgsz`` instead. :class:`ObjectDetector` pads to the stride when the graph's
  height and width are dynamic, and to the square otherwise. The boxes map back the same way
  in both cases. (The detector can score objects near the padding slightly differently.)
* **Channel order.** The network takes RGB in 0..1, NCHW float32. Our API takes RGB images.
  Note that MobileSAMv2's ``Inference.py`` hands ultralytics an RGB *numpy* image, which
  ultralytics takes for BGR and flips, so the reference demo feeds the detector BGR by
  accident. ``input_channel_order="bgr"`` reproduces it bit for bit.
* **Decoding and NMS** of output 0, as ultralytics' ``non_max_suppression``: see
  :mod:`~.yolo`.
* **Border snap.** ``PromptModelPredictor.adjust_bboxes_to_image_border`` runs after NMS in the
  *letterbox* frame, before the boxes are scaled back. It sets ``x1 < 20 -> 0``,
  ``y1 < 20 -> 0``, ``x2 > W - 20 -> W`` and ``y2 > H - 20 -> H``, where ``W x H`` is the
  letterboxed tensor (the stride-padded one, as the reference runs). We test the same
  conditions in that frame, with ``border_snap_px`` in letterbox pixels, whatever padding our
  graph needed. A snapped edge then lies exactly on the image border in the original frame.
  (In the reference it can fall a fraction of a pixel short, through ultralytics' approximate
  un-padding.)
* **Back to the original frame.** We subtract the pad that was actually added, divide by the
  per-axis resize factor (``new_w / W``, ``new_h / H``), and clip to ``[0, W] x [0, H]``. This
  is the exact inverse of the letterbox. ultralytics' ``scale_boxes`` estimates the pad from
  the gain, which can be off by up to half a pixel.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from ..runtime.transforms import validate_rgb_image
from .yolo import YOLO_LAYOUT, decode_yolo, resolve_layout, static_dim

if TYPE_CHECKING:
    from ..runtime.onnx_backend import ProviderSpec

#: Gray that ultralytics pads letterboxed images with.
LETTERBOX_PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed image (all in pixels, integer sizes).

    Attributes:
        original_hw: ``(H, W)`` of the original image.
        resized_hw: ``(h, w)`` of the image after the aspect-keeping resize.
        pad_tl: ``(top, left)`` padding added before the resized image.
        shape_hw: ``(H_lb, W_lb)`` of the letterboxed image, padding included.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    pad_tl: tuple[int, int]
    shape_hw: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Per-axis resize factors ``(w / W, h / H)`` (equal up to the rounding of sizes)."""
        return (
            self.resized_hw[1] / self.original_hw[1],
            self.resized_hw[0] / self.original_hw[0],
        )


def letterbox_geometry(
    original_hw: tuple[int, int],
    target_hw: tuple[int, int],
    *,
    stride: int = 32,
    rect: bool = False,
) -> Letterbox:
    """Where an image goes in the letterboxed input, as ultralytics' ``LetterBox`` does it.

    Args:
        original_hw: ``(H, W)`` of the original image.
        target_hw: ``(H_t, W_t)`` the image must fit into (``(imgsz, imgsz)``).
        stride: the model's largest stride; with ``rect`` the padded sides are multiples of it.
        rect: pad only up to the next multiple of ``stride`` (ultralytics' ``auto=True``, its
            choice for a PyTorch model on one image), instead of to ``target_hw``.

    Returns:
        The :class:`Letterbox` (centred padding, ``top = round(dh - 0.1)``).
    """
    h, w = original_hw
    th, tw = target_hw
    r = min(th / h, tw / w)
    # Python's round (half to even, returns int), as the reference computes these sizes.
    new_w, new_h = round(w * r), round(h * r)
    dw, dh = tw - new_w, th - new_h
    if rect:
        dw, dh = dw % stride, dh % stride
    half_w, half_h = dw / 2, dh / 2
    top, bottom = round(half_h - 0.1), round(half_h + 0.1)
    left, right = round(half_w - 0.1), round(half_w + 0.1)
    return Letterbox(
        original_hw=(int(h), int(w)),
        resized_hw=(new_h, new_w),
        pad_tl=(top, left),
        shape_hw=(new_h + top + bottom, new_w + left + right),
    )


def letterbox_image(
    image: np.ndarray, geometry: Letterbox, pad_value: int = LETTERBOX_PAD_VALUE
) -> np.ndarray:
    """Resize (cv2 ``INTER_LINEAR``) and pad ``image`` as ``geometry`` says.

    Args:
        image: ``(H, W, 3)`` uint8, any channel order (the pad is gray).
        geometry: from :func:`letterbox_geometry` for this image's size.
        pad_value: gray level of the padding.

    Returns:
        ``(H_lb, W_lb, 3)`` uint8.
    """
    (h, w), (lh, lw) = geometry.resized_hw, geometry.shape_hw
    out = np.full((lh, lw, 3), pad_value, dtype=np.uint8)
    top, left = geometry.pad_tl
    dst = out[top : top + h, left : left + w]
    if image.shape[:2] == (h, w):
        dst[...] = image
    else:
        # Resize straight into the padded canvas; no intermediate copy.
        cv2.resize(image, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)
    return out


def boxes_to_letterbox(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Map ``(N, 4)`` XYXY boxes from the original frame into the letterbox frame (float64)."""
    sx, sy = geometry.scale_xy
    top, left = geometry.pad_tl
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2] * sx + left
    out[:, 1::2] = out[:, 1::2] * sy + top
    return out


def boxes_from_letterbox(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Map ``(N, 4)`` XYXY boxes from the letterbox frame back to the original frame.

    The exact inverse of the letterbox (pad actually added, per-axis scale), clipped to
    ``[0, W] x [0, H]``.

    Returns:
        ``(N, 4)`` float64 XYXY in original pixels.
    """
    sx, sy = geometry.scale_xy
    top, left = geometry.pad_tl
    h, w = geometry.original_hw
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, 0::2] = np.clip((out[:, 0::2] - left) / sx, 0.0, w)
    out[:, 1::2] = np.clip((out[:, 1::2] - top) / sy, 0.0, h)
    return out


@dataclass(frozen=True)
class Detections:
    """What the detector found in one image, best first.

    Attributes:
        boxes: ``(N, 4)`` float32 XYXY in original image pixels, inside ``[0, W] x [0, H]``.
        scores: ``(N,)`` float32 confidences (best class score).
        classes: ``(N,)`` int64 class indices.
        letterbox: the geometry the image was run at.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    letterbox: Letterbox

    def __len__(self) -> int:
        return len(self.boxes)


class ObjectDetector:
    """A YOLOv8 detector from ONNX: letterbox, run, decode, NMS, back to original pixels.

    Args:
        onnx_path: the detector graph. Input ``(1, 3, H, W)`` float32 RGB in 0..1. Output 0 in
            the layout :data:`YOLO_LAYOUT`; a second output (YOLOv8-seg prototypes) is ignored.
        imgsz: side the image is letterboxed to. None takes it from the graph's static input,
            else from ultralytics' ``imgsz`` metadata, else 1024 (MobileSAMv2's setting).
        conf: keep anchors whose best class score is ``> conf`` (MobileSAMv2: 0.4).
        iou: NMS suppresses boxes with IoU ``> iou`` with a better one (MobileSAMv2: 0.9).
        max_det: at most this many boxes after NMS (ultralytics' default 300).
        max_nms: at most this many boxes, the best-scored, enter NMS (ultralytics: 30000).
        stride: the model's largest stride (32 for YOLOv8), for stride padding.
        border_snap_px: boxes closer than this to the image border, in letterbox pixels, are
            snapped to it (MobileSAMv2: 20); 0 disables it.
        agnostic_nms: one NMS over all classes (default) instead of one per class.
        rect: pad to a multiple of ``stride`` (True) or to ``imgsz x imgsz`` (False). None
            chooses stride padding if the graph's height and width are dynamic.
        num_classes: ``nc``. None reads it from ultralytics' ``names`` metadata. Without that
            metadata, ``nc`` is inferred only when unambiguous: with a prototype output, or
            when ``4 + nc + 32`` cannot fit.
        input_channel_order: ``"rgb"`` (what the network was trained on) or ``"bgr"`` (what
            MobileSAMv2's ``Inference.py`` feeds it by accident; see the module docstring).
        providers: ONNX Runtime execution providers (``"cpu"``, ``"cuda"``, ...); None is CPU.
        intra_op_threads: ONNX Runtime threads; 0 lets it choose.

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
        ValueError: a threshold out of range, or a graph whose input or output does not have
            the expected layout (the message names :data:`YOLO_LAYOUT` and what it found).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        imgsz: int | None = None,
        conf: float = 0.4,
        iou: float = 0.9,
        max_det: int = 300,
        max_nms: int = 30000,
        stride: int = 32,
        border_snap_px: float = 20.0,
        agnostic_nms: bool = True,
        rect: bool | None = None,
        num_classes: int | None = None,
        input_channel_order: Literal["rgb", "bgr"] = "rgb",
        providers: Sequence[ProviderSpec] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        path = Path(onnx_path)
        _check_settings(
            path,
            conf=conf,
            iou=iou,
            max_det=max_det,
            max_nms=max_nms,
            stride=stride,
            border_snap_px=border_snap_px,
            input_channel_order=input_channel_order,
            intra_op_threads=intra_op_threads,
        )
        self.path = path
        self.conf, self.iou = float(conf), float(iou)
        self.max_det, self.max_nms, self.stride = int(max_det), int(max_nms), int(stride)
        self.border_snap_px = float(border_snap_px)
        self.agnostic_nms = agnostic_nms
        self.input_channel_order = input_channel_order
        self.session = _open_session(path, providers, intra_op_threads)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self._read_input(imgsz, rect, meta)
        self._read_output(num_classes, meta)

    # ---------------------------------------------------------------- load-time checks

    def _read_input(self, imgsz: int | None, rect: bool | None, meta: dict[str, str]) -> None:
        """The input's name, ``imgsz``, target size and padding mode, or a ValueError."""
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or static_dim(shape[1]) not in (3, None):
            found = [(i.name, i.shape) for i in inputs]
            raise ValueError(
                f"{self.path}: expected one image input (1, 3, H, W) float32 RGB in 0..1 and "
                f"output 0 {YOLO_LAYOUT}; found inputs {found}"
            )
        self.input_name = inputs[0].name
        in_h, in_w = static_dim(shape[2]), static_dim(shape[3])
        static_hw = (in_h, in_w) if in_h is not None and in_w is not None else None
        self.imgsz = self._resolve_imgsz(imgsz, static_hw, meta)
        self.target_hw = static_hw or (self.imgsz, self.imgsz)
        if rect and static_hw is not None:
            raise ValueError(
                f"{self.path} has a static input {static_hw}; rect=True (stride padding) needs "
                "dynamic height and width; use rect=None or False"
            )
        self.rect = static_hw is None if rect is None else rect

    def _read_output(self, num_classes: int | None, meta: dict[str, str]) -> None:
        """Output 0's name and layout (channels, ``nc``, ``nm``), or a ValueError."""
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        protos_nm = None
        if len(outputs) > 1 and len(outputs[1].shape) == 4:
            protos_nm = static_dim(outputs[1].shape[1])
        found = [(o.name, o.shape) for o in outputs]
        self.num_channels, self.num_classes, self.num_coefficients = resolve_layout(
            self.path, outputs[0].shape, found, num_classes, protos_nm, meta
        )

    def _resolve_imgsz(
        self,
        imgsz: int | None,
        static_hw: tuple[int, int] | None,
        meta: dict[str, str],
    ) -> int:
        if static_hw is not None:
            if imgsz is not None and imgsz != max(static_hw):
                raise ValueError(
                    f"{self.path} has a static input of {static_hw[0]}x{static_hw[1]} (H x W); "
                    f"imgsz={imgsz} cannot be used with it (leave imgsz=None)"
                )
            return max(static_hw)
        if imgsz is not None:
            if imgsz < self.stride or imgsz % self.stride:
                raise ValueError(f"imgsz must be a multiple of stride {self.stride}, got {imgsz}")
            return int(imgsz)
        try:
            sizes = ast.literal_eval(meta.get("imgsz", "None"))
        except (ValueError, SyntaxError):
            sizes = None
        if isinstance(sizes, (list, tuple)) and sizes and all(isinstance(s, int) for s in sizes):
            return int(max(sizes))
        return 1024

    # ---------------------------------------------------------------- inference

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox an RGB image into the network input.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            ``(1, 3, H_lb, W_lb)`` float32 in 0..1 (channel order per
            ``input_channel_order``), and its :class:`Letterbox`.
        """
        image = validate_rgb_image(image)
        geometry = letterbox_geometry(
            image.shape[:2], self.target_hw, stride=self.stride, rect=self.rect
        )
        boxed = letterbox_image(image, geometry)
        if self.input_channel_order == "bgr":
            boxed = boxed[..., ::-1]
        x = np.empty((1, 3, *geometry.shape_hw), dtype=np.float32)
        # Divide (not multiply by 1/255), as the reference does, so inputs match bitwise.
        np.divide(boxed.transpose(2, 0, 1), np.float32(255.0), out=x[0], dtype=np.float32)
        return x, geometry

    def __call__(self, image: np.ndarray) -> Detections:
        """Detect objects in one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            :class:`Detections` in original pixels, best first (possibly empty).

        Raises:
            ValueError: a malformed image, or a graph output not in :data:`YOLO_LAYOUT`.
        """
        x, geometry = self.preprocess(image)
        (raw,) = self.session.run([self.output_name], {self.input_name: x})
        return self.postprocess(raw, geometry)

    def postprocess(self, raw: np.ndarray, geometry: Letterbox) -> Detections:
        """Decode, filter and map back the raw output 0 of one image.

        Args:
            raw: ``(1, 4 + nc + nm, anchors)`` float, letterbox frame.
            geometry: the letterbox the image was run at.

        Returns:
            :class:`Detections`, best first.
        """
        raw = np.asarray(raw)
        if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[1] != self.num_channels:
            raise ValueError(
                f"{self.path}: output 0 must be {YOLO_LAYOUT} with "
                f"{self.num_channels} channels (nc={self.num_classes}, "
                f"nm={self.num_coefficients}), got shape {raw.shape}"
            )
        xyxy, scores, classes = decode_yolo(
            raw[0],
            self.num_classes,
            conf=self.conf,
            iou=self.iou,
            max_nms=self.max_nms,
            max_det=self.max_det,
            agnostic_nms=self.agnostic_nms,
        )
        if len(xyxy) == 0:
            return _empty(geometry)
        boxes = self._snap_and_unletterbox(xyxy, geometry)
        return Detections(
            boxes=boxes.astype(np.float32), scores=scores, classes=classes, letterbox=geometry
        )

    def _snap_and_unletterbox(self, xyxy: np.ndarray, geometry: Letterbox) -> np.ndarray:
        """Letterbox-frame XYXY to original pixels, with the reference's border snap."""
        out = boxes_from_letterbox(xyxy, geometry)
        if self.border_snap_px <= 0:
            return out
        # The reference snaps in its own (stride-padded) letterbox frame; express the boxes
        # there, whatever padding this graph needed, so the snap does not depend on it.
        ref = letterbox_geometry(
            geometry.original_hw, (self.imgsz, self.imgsz), stride=self.stride, rect=True
        )
        shift = np.array(ref.pad_tl[::-1] * 2) - np.array(geometry.pad_tl[::-1] * 2)
        in_ref = xyxy + shift
        ref_h, ref_w = ref.shape_hw
        t = self.border_snap_px
        h, w = geometry.original_hw
        out[in_ref[:, 0] < t, 0] = 0.0
        out[in_ref[:, 1] < t, 1] = 0.0
        out[in_ref[:, 2] > ref_w - t, 2] = w
        out[in_ref[:, 3] > ref_h - t, 3] = h
        return out


def _check_settings(
    path: Path,
    *,
    conf: float,
    iou: float,
    max_det: int,
    max_nms: int,
    stride: int,
    border_snap_px: float,
    input_channel_order: str,
    intra_op_threads: int,
) -> None:
    """A FileNotFoundError or ValueError for a missing file or an out-of-range setting."""
    if not path.is_file():
        raise FileNotFoundError(
            f"object detector ONNX file not found: {path} (convert MobileSAMv2's "
            "ObjectAwareModel.pt once with segfast_ros.export.convert_object_aware, or "
            f"export any YOLOv8 model to ONNX; its output must be {YOLO_LAYOUT})"
        )
    if not 0.0 <= conf < 1.0:
        raise ValueError(f"conf must be in [0, 1), got {conf}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    if max_det < 1 or max_nms < 1:
        raise ValueError(f"max_det and max_nms must be >= 1, got {max_det} and {max_nms}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if border_snap_px < 0:
        raise ValueError(f"border_snap_px must be >= 0, got {border_snap_px}")
    if input_channel_order not in ("rgb", "bgr"):
        raise ValueError(
            f"input_channel_order must be 'rgb' or 'bgr', got {input_channel_order!r}"
        )
    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")


def _open_session(
    path: Path, providers: Sequence[ProviderSpec] | None, intra_op_threads: int
) -> Any:
    """The ONNX Runtime session of the graph; a ValueError for a file it cannot load."""
    # onnxruntime loads on first use, as in the runtime: importing this module is cheap.
    from ..runtime.onnx_backend import (
        ProviderUnavailableError,
        create_session,
        resolve_providers,
    )

    resolved = resolve_providers(providers)
    try:
        return create_session(path, resolved, intra_op_threads)
    except ProviderUnavailableError:
        raise  # a GPU library problem, not a broken file
    except Exception as exc:  # onnxruntime raises several types for a broken file
        raise ValueError(f"{path} is not a loadable ONNX model: {exc}") from exc


def _empty(geometry: Letterbox) -> Detections:
    return Detections(
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros(0, np.float32),
        classes=np.zeros(0, np.int64),
        letterbox=geometry,
    )
