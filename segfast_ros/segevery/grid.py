"""Grid SegEvery: SAM's automatic mask generator, one foreground point per grid cell.

Every point of a ``points_per_side x points_per_side`` grid is decoded (3 masks each); masks
are filtered by predicted IoU (before the upscale, which is the expensive part), then by
stability, and duplicates are removed by box NMS. Optional crop layers re-run the grid on
overlapping crops of the image, each with its own embedding, for small objects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..masks import (
    MaskCandidates,
    PromptMasks,
    StageTimer,
    box_area,
    finish_candidates,
    nms,
    param,
    predictor_image_hw,
    segment_prompts,
    validate_params,
)
from ..runtime.predictor import Predictor
from .base import SegEveryResult


def build_point_grid(points_per_side: int) -> np.ndarray:
    """SAM's point grid in normalised image coordinates.

    Point ``(i, j)`` sits at the centre of cell ``(i, j)``: ``((i + 0.5) / n, (j + 0.5) / n)``.

    Returns:
        ``(n * n, 2)`` float64 (X, Y) in ``(0, 1)``; rows by Y, then X (X varies fastest).
        Multiply by ``(W, H)`` for pixels.
    """
    n = int(points_per_side)
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    side = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(side, side)  # (n, n) each, rows by Y
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def generate_crop_boxes(
    image_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """The crops of SAM's multi-crop mode: the full image, then ``2**i x 2**i`` per layer ``i``.

    Crops of layer ``i`` overlap by ``overlap_ratio * min(H, W) * 2 / 2**i`` pixels (rounded
    down), and together cover the image.

    Returns:
        ``(box, layer)`` pairs, ``box`` XYXY int pixel edges, layer 0 (the full image) first.
    """
    h, w = image_hw
    crops = [((0, 0, w, h), 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(h, w) * 2 / per_side)
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        x_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for y0 in y_starts:
            for x0 in x_starts:
                crops.append(((x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)), layer))
    return crops


@dataclass(frozen=True, kw_only=True)
class PointGridParams:
    """Keyword arguments shared by the point-grid strategies (grid and hierarchical).

    Attributes:
        points_per_side: the grid has ``points_per_side**2`` points.
        points_per_batch: points decoded per decoder call (bounds the decoder's memory).
        pred_iou_thresh: keep masks with predicted IoU ``>`` this (0 disables the filter).
        stability_score_thresh: keep masks with stability ``>=`` this (0 disables the filter).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks is dropped.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels
            in every kept mask, then NMS again (costly on big images: every kept RLE is decoded).
        mask_threshold: logit above which a pixel is in the mask.
    """

    points_per_side: int = param(32, low=1)
    points_per_batch: int = param(64, low=1)
    pred_iou_thresh: float = param(0.88, low=0.0, high=1.0)
    stability_score_thresh: float = param(0.95, low=0.0, high=1.0)
    stability_score_offset: float = param(1.0, low=0.0)
    box_nms_thresh: float = param(0.7, low=0.0, high=1.0)
    min_mask_region_area: int = param(0, low=0)
    mask_threshold: float = param(0.0)

    def __post_init__(self) -> None:
        validate_params(self)

    def _segment_points(
        self,
        predictor: Predictor,
        points: np.ndarray,
        timer: StageTimer,
        *,
        crop_box: tuple[int, int, int, int] | None = None,
        image_hw: tuple[int, int] | None = None,
        crop_edge_tolerance: float = 20.0,
        high_score_thresh: float | None = None,
    ) -> PromptMasks:
        """Decode and filter ``points`` (``(K, 2)`` pixels of the predictor's image) with
        these thresholds; see :func:`~.masks.segment_prompts` for the other arguments."""
        return segment_prompts(
            predictor,
            points=points,
            multimask_output=True,
            batch_size=self.points_per_batch,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            stability_score_offset=self.stability_score_offset,
            mask_threshold=self.mask_threshold,
            crop_box=crop_box,
            image_hw=image_hw,
            crop_edge_tolerance=crop_edge_tolerance,
            high_score_thresh=high_score_thresh,
            timer=timer,
        )

    def _finish(self, candidates: MaskCandidates, timer: StageTimer) -> MaskCandidates:
        """Optional small-region clean-up, then best first."""
        return finish_candidates(
            candidates,
            min_mask_region_area=self.min_mask_region_area,
            box_nms_thresh=self.box_nms_thresh,
            timer=timer,
        )


@dataclass(frozen=True, kw_only=True)
class GridSegEvery(PointGridParams):
    """SAM's automatic mask generator on the runtime :class:`Predictor` (no torch).

    Defaults are SAM's. The configuration is immutable; every call keeps its state in locals,
    so one instance may serve many frames (and threads).

    Attributes (besides :class:`PointGridParams`):
        crop_n_layers: extra crop layers; layer ``i`` re-runs the grid on ``2**i x 2**i``
            overlapping crops, each encoded afresh (needs the RGB ``image`` in ``__call__``).
        crop_nms_thresh: box IoU for the NMS between crops (which prefers masks from smaller
            crops, seen at higher resolution).
        crop_overlap_ratio: overlap of neighbouring crops as a fraction of the short image side
            (scaled by ``2 / 2**i`` for layer ``i``).
        crop_n_points_downscale_factor: layer ``i`` uses
            ``max(1, points_per_side // factor**i)`` points per side.
        crop_edge_tolerance: pixels within which a mask's box touching an inner crop edge
            is taken as cut by the crop and dropped.
    """

    name: ClassVar[str] = "grid"

    crop_n_layers: int = param(0, low=0)
    crop_nms_thresh: float = param(0.7, low=0.0, high=1.0)
    crop_overlap_ratio: float = param(512 / 1500, low=0.0, high=1.0, high_open=True)
    crop_n_points_downscale_factor: int = param(1, low=1)
    crop_edge_tolerance: float = param(20.0, low=0.0)

    def __call__(self, predictor: Predictor, image: np.ndarray | None = None) -> SegEveryResult:
        """Segment everything in the predictor's current image.

        Args:
            predictor: with ``set_image`` (or ``set_embedding``) called for this frame.
            image: the same frame, ``(H, W, 3)`` uint8 RGB; needed only with crop layers.

        Returns:
            Instances best first; timings ``decoder``, ``postprocess``, ``nms``, ``total``
            (plus ``encoder`` for crops, ``cleanup`` with ``min_mask_region_area``);
            ``decoder_prompts`` = grid points decoded over all crops.

        Raises:
            ValueError: no image set on the predictor, or crop layers without a matching image.
        """
        start = time.perf_counter()
        timer = StageTimer()
        hw = predictor_image_hw(predictor)
        if self.crop_n_layers > 0 and (image is None or tuple(np.shape(image)[:2]) != hw):
            got = None if image is None else tuple(np.shape(image))
            raise ValueError(
                f"crop_n_layers={self.crop_n_layers} encodes crops of the image: pass the "
                f"frame set on the predictor as image (H, W, 3) = {(*hw, 3)}, got {got}"
            )
        crops = generate_crop_boxes(hw, self.crop_n_layers, self.crop_overlap_ratio)
        per_crop: list[MaskCandidates] = []
        crop_areas: list[np.ndarray] = []
        decoded = 0
        for box, layer in crops:
            x0, y0, x1, y1 = box
            crop_predictor = predictor
            if layer > 0:
                assert image is not None
                # A fresh predictor on the same backend: the caller's keeps its embedding.
                crop_predictor = Predictor(predictor.backend)
                with timer.stage("encoder"):
                    crop_predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
            n = max(1, self.points_per_side // self.crop_n_points_downscale_factor**layer)
            points = build_point_grid(n) * np.array([x1 - x0, y1 - y0], dtype=np.float64)
            out = self._segment_points(
                crop_predictor,
                points,
                timer,
                crop_box=box,
                image_hw=hw,
                crop_edge_tolerance=self.crop_edge_tolerance,
            )
            decoded += out.prompts_decoded
            with timer.stage("nms"):
                found = out.candidates.nms(self.box_nms_thresh)
            per_crop.append(found)
            crop_areas.append(np.full(len(found), box_area([box])[0]))

        merged = MaskCandidates.concat(per_crop)
        if len(crops) > 1 and len(merged):
            with timer.stage("nms"):
                # Between crops, the mask from the smaller crop wins (then the higher score).
                order = np.lexsort((-merged.scores.astype(np.float64), np.concatenate(crop_areas)))
                priority = np.empty(len(order), dtype=np.float64)
                priority[order] = -np.arange(len(order), dtype=np.float64)
                merged = merged.take(nms(merged.boxes, priority, self.crop_nms_thresh))
        merged = self._finish(merged, timer)
        timings = {"decoder": 0.0, "postprocess": 0.0, "nms": 0.0, **timer.ms}
        timings["total"] = 1e3 * (time.perf_counter() - start)
        return SegEveryResult(
            instances=merged.to_instances(),
            image_hw=hw,
            timings_ms=timings,
            decoder_prompts=decoded,
            strategy=self.name,
        )
