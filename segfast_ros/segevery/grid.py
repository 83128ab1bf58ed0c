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

from ..masks import box_area
from ..runtime.predictor import Predictor
from .base import SegEveryResult, require_image
from .candidates import (
    CropFrame,
    KeptLogits,
    MaskCandidates,
    StageTimer,
    finish_candidates,
    predictor_image_hw,
    segment_prompts,
)
from .settings import MaskFilter, param


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
class PointGrid:
    """The grid and its decoder batches (the point-grid strategies' first keyword arguments).

    Attributes:
        points_per_side: the grid has ``points_per_side**2`` points.
        points_per_batch: points decoded per decoder call (bounds the decoder's memory).
    """

    points_per_side: int = param(32, low=1)
    points_per_batch: int = param(64, low=1)


# MaskFilter is named first so that PointGrid's fields come first (dataclass fields follow the
# bases from the last one), as the keyword arguments and node parameters have always been.
@dataclass(frozen=True, kw_only=True)
class PointGridParams(MaskFilter, PointGrid):
    """Keyword arguments shared by the point-grid strategies (grid and hierarchical).

    The :class:`PointGrid` and the :class:`~.settings.MaskFilter` (SAM's defaults), checked on
    construction.
    """

    def _segment_points(
        self,
        predictor: Predictor,
        points: np.ndarray,
        timer: StageTimer,
        *,
        frame: CropFrame | None = None,
        on_kept: KeptLogits | None = None,
    ) -> MaskCandidates:
        """Decode and filter ``points`` (``(K, 2)`` pixels of the predictor's image), 3 masks
        each, with this filter; see :func:`~.candidates.segment_prompts` for the rest."""
        return segment_prompts(
            predictor,
            self,
            points=points,
            multimask_output=True,
            batch_size=self.points_per_batch,
            frame=frame,
            on_kept=on_kept,
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
        if self.crop_n_layers > 0:
            require_image(
                image, hw, f"crop_n_layers={self.crop_n_layers} encodes crops of the image"
            )
        crops = generate_crop_boxes(hw, self.crop_n_layers, self.crop_overlap_ratio)
        per_crop = []
        for box, layer in crops:
            frame = CropFrame(box, hw, self.crop_edge_tolerance)
            per_crop.append((frame, self._process_crop(predictor, image, frame, layer, timer)))
        merged = finish_candidates(self._merge_crops(per_crop, timer), self, timer)
        timings = {"decoder": 0.0, "postprocess": 0.0, "nms": 0.0, **timer.ms}
        timings["total"] = 1e3 * (time.perf_counter() - start)
        return SegEveryResult(
            instances=merged.to_instances(),
            image_hw=hw,
            timings_ms=timings,
            decoder_prompts=sum(decoded for _, (_, decoded) in per_crop),
            strategy=self.name,
        )

    def _process_crop(
        self,
        predictor: Predictor,
        image: np.ndarray | None,
        frame: CropFrame,
        layer: int,
        timer: StageTimer,
    ) -> tuple[MaskCandidates, int]:
        """One crop: encode it (layers > 0), decode its grid, NMS within the crop.

        Returns:
            The crop's candidates (full frame, best first) and the points decoded.
        """
        x0, y0, x1, y1 = frame.box
        if layer > 0:
            assert image is not None
            # A fresh predictor on the same backend: the caller's keeps its embedding.
            predictor = Predictor(predictor.backend)
            with timer.stage("encoder"):
                predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
        n = max(1, self.points_per_side // self.crop_n_points_downscale_factor**layer)
        points = build_point_grid(n) * np.array([x1 - x0, y1 - y0], dtype=np.float64)
        found = self._segment_points(predictor, points, timer, frame=frame)
        with timer.stage("nms"):
            return found.nms(self.box_nms_thresh), len(points)

    def _merge_crops(
        self, per_crop: list[tuple[CropFrame, tuple[MaskCandidates, int]]], timer: StageTimer
    ) -> MaskCandidates:
        """All crops' candidates; with crop layers, an NMS between crops that prefers the mask
        from the smaller crop (seen at a higher resolution), then the higher score."""
        merged = MaskCandidates.concat([found for _, (found, _) in per_crop])
        if len(per_crop) > 1 and len(merged):
            areas = [np.full(len(found), box_area([f.box])[0]) for f, (found, _) in per_crop]
            with timer.stage("nms"):
                merged = merged.nms_preferring(np.concatenate(areas), self.crop_nms_thresh)
        return merged
