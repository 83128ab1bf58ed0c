"""Object-aware SegEvery (MobileSAMv2): detector boxes become the decoder's prompts.

Instead of a dense grid of points (SAM: 1024 prompts x 3 masks), an object-discovery detector
proposes boxes, typically 20-150 for a real scene. Each box is one prompt set, decoded for a
single mask (token 0), ``prompts_per_batch`` boxes per decoder call: 64 here, where MobileSAMv2
uses 320, because a call's low-res logits are held until post-processed, so 64 bounds that
memory whatever the detector finds. The decoder graph takes the one image embedding for all the
boxes of a call (its input is never copied per prompt), though its working memory grows with
the boxes (the ONNX Runtime backend splits CPU calls to a budget). MobileSAMv2 keeps every
mask: there is no grid, and by default no IoU, stability or NMS filter. Each filter can be
switched on here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..runtime.predictor import Predictor
from .base import SegEveryResult, require_image
from .candidates import StageTimer, finish_candidates, predictor_image_hw, segment_prompts
from .detector import ObjectDetector
from .settings import MaskFilter, mask_filter_defaults, param

if TYPE_CHECKING:
    from ..runtime.onnx_backend import ProviderSpec


@dataclass(frozen=True, kw_only=True)
class BoxPrompts:
    """The prompts of object-aware SegEvery (its first keyword arguments).

    Attributes:
        detector: an :class:`~.detector.ObjectDetector`, or the path of its ONNX file (then
            built with the detector settings of :class:`ObjectAwareSegEvery`).
        prompts_per_batch: boxes decoded per decoder call (MobileSAMv2: 320). The logits of
            a call, ``(B, 4, 256, 256)`` float32 for MobileSAM (1 MiB per box), are held until
            post-processed; results do not depend on it. A backend may split a call further
            (ONNX Runtime on the CPU: 8 sets of full-size MobileSAM).
    """

    detector: ObjectDetector | str | Path
    prompts_per_batch: int = param(64, low=1)


# MaskFilter is named first so that BoxPrompts' fields come first (dataclass fields follow the
# bases from the last one), as the keyword arguments and node parameters have always been.
@dataclass(frozen=True, kw_only=True)
@mask_filter_defaults(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
class ObjectAwareSegEvery(MaskFilter, BoxPrompts):
    """MobileSAMv2's "segment everything": one box prompt per detected object.

    The configuration is immutable and every call keeps its state in locals, so one instance
    may serve many frames. The ONNX Runtime session of the detector is shared.

    Keyword arguments: the :class:`BoxPrompts`, then the :class:`~.settings.MaskFilter` with
    MobileSAMv2's defaults, which keep every mask: ``pred_iou_thresh`` 0 and
    ``stability_score_thresh`` 0 (no filter), ``box_nms_thresh`` 1.0 (no NMS; below 1 an NMS
    runs, and again after the clean-up of ``min_mask_region_area``). Then:

    Attributes:
        multimask_output: decode SAM's 3 ambiguity-aware masks per box instead of the single
            mask (MobileSAMv2 uses the single mask; its decoder was trained for it).
        conf: detector confidence threshold, only with a path (None: the detector's 0.4).
        iou: detector NMS IoU threshold, only with a path (None: the detector's 0.9).
        max_det: most boxes the detector keeps, only with a path (None: 300).
        border_snap_px: detector border snap, only with a path (None: 20 letterbox pixels).
        providers: ONNX Runtime providers of the detector, only with a path (None: CPU).

    Raises:
        ValueError: a value out of its range, or detector settings next to a ready detector.
        FileNotFoundError: the detector path does not exist.
    """

    name: ClassVar[str] = "object_aware"

    multimask_output: bool = False
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    border_snap_px: float | None = None
    providers: Sequence[ProviderSpec] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        settings = {
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
            "border_snap_px": self.border_snap_px,
            "providers": self.providers,
        }
        given = {k: v for k, v in settings.items() if v is not None}
        if isinstance(self.detector, ObjectDetector):
            if given:
                raise ValueError(
                    f"{sorted(given)} configure a detector built from a path; a ready "
                    "ObjectDetector was passed, so set them on it instead"
                )
            return
        if not isinstance(self.detector, str | Path):
            raise ValueError(
                "detector must be an ObjectDetector or the path of its ONNX file, got "
                f"{type(self.detector).__name__}"
            )
        # Frozen dataclass: replace the path by the detector built from it, once.
        object.__setattr__(self, "detector", ObjectDetector(self.detector, **given))

    def __call__(self, predictor: Predictor, image: np.ndarray | None = None) -> SegEveryResult:
        """Segment every object the detector finds in the predictor's current image.

        Args:
            predictor: with ``set_image`` (or ``set_embedding``) called for this frame.
            image: the same frame, ``(H, W, 3)`` uint8 RGB, for the detector (required).

        Returns:
            Instances best first (by predicted IoU), each with its detector box (XYXY original
            pixels) as ``prompt``. Timings (ms): ``detector``, ``decoder``, ``postprocess``,
            ``nms``, ``total`` (and ``cleanup`` with ``min_mask_region_area``).
            ``decoder_prompts`` is the number of boxes decoded.

        Raises:
            ValueError: no image set on the predictor, or ``image`` missing or not the frame
                the predictor holds.
        """
        start = time.perf_counter()
        hw = predictor_image_hw(predictor)
        require_image(image, hw, "object_aware runs a detector on the frame", " uint8 RGB")
        detector = self.detector
        assert isinstance(detector, ObjectDetector)
        timer = StageTimer()
        with timer.stage("detector"):
            found = detector(image)
        candidates = segment_prompts(
            predictor,
            self,
            boxes=found.boxes,
            multimask_output=self.multimask_output,
            batch_size=self.prompts_per_batch,
            timer=timer,
        )
        if self.box_nms_thresh < 1.0:
            with timer.stage("nms"):
                candidates = candidates.nms(self.box_nms_thresh)
        candidates = finish_candidates(candidates, self, timer)
        timings = {"detector": 0.0, "decoder": 0.0, "postprocess": 0.0, "nms": 0.0, **timer.ms}
        timings["total"] = 1e3 * (time.perf_counter() - start)
        return SegEveryResult(
            instances=candidates.to_instances(),
            image_hw=hw,
            timings_ms=timings,
            decoder_prompts=len(found.boxes),
            strategy=self.name,
        )
