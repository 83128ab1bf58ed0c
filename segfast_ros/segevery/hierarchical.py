"""Hierarchical SegEvery (TinySAM): a sparse grid first, then only the dense points it missed.

Round 1 decodes a sparse grid (``points_per_side // 4`` per side). The pixels where a kept
round-1 mask is very confident (logit above ``high_score_thresh``) count as *covered*. Round 2
decodes the points of the dense ``points_per_side`` grid that fall outside the covered area, so
big, confidently segmented regions are not prompted again and again. One box NMS merges both
rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..runtime.predictor import Predictor
from ..runtime.transforms import Region, region_view
from .base import SegEveryResult
from .candidates import MaskCandidates, StageTimer, finish_candidates, predictor_image_hw
from .grid import PointGridParams, build_point_grid
from .settings import param


@dataclass
class HierarchicalResult(SegEveryResult):
    """A :class:`~.base.SegEveryResult` with the hierarchical strategy's counts.

    Attributes:
        round1_prompts: sparse grid points decoded.
        round2_prompts: dense grid points decoded (the ones not covered by round 1).
        skipped_prompts: dense grid points skipped because round 1 covered them.
    """

    round1_prompts: int = 0
    round2_prompts: int = 0
    skipped_prompts: int = 0


class Coverage:
    """TinySAM's "already covered" map: the confident pixels of the kept round-1 masks.

    A :class:`~.candidates.KeptLogits` hook: the decode pipeline hands it each upscale group's
    full-size logits (each mask's region where it may exceed ``high_score_thresh``), and the
    pixels of kept masks whose logit is above ``high_score_thresh`` join the map (exact, at full
    resolution, for one comparison per mask).

    Args:
        image_hw: ``(H, W)`` of the frame (the predictor's image: no crops).
        high_score_thresh: logit above which a pixel counts as covered.
    """

    def __init__(self, image_hw: tuple[int, int], high_score_thresh: float) -> None:
        self.covered = np.zeros(image_hw, dtype=bool)
        self.high_score_thresh = high_score_thresh

    @property
    def floor(self) -> float:
        """:class:`~.candidates.KeptLogits`' floor: only pixels above the threshold count."""
        return self.high_score_thresh

    def __call__(self, regions: Sequence[Region | None], kept: np.ndarray) -> None:
        """Add the confident pixels of the kept masks' regions."""
        for i in kept:
            region = regions[i]
            if region is not None:
                view = region_view(self.covered, region)
                view |= region.logits > self.high_score_thresh

    def uncovered(self, points: np.ndarray) -> np.ndarray:
        """The ``(K, 2)`` (X, Y) pixel points whose pixel is not covered.

        Points on the far edge belong to the last pixel.
        """
        h, w = self.covered.shape
        cols = np.minimum(points[:, 0].astype(np.int64), w - 1)
        rows = np.minimum(points[:, 1].astype(np.int64), h - 1)
        return points[~self.covered[rows, cols]]


@dataclass(frozen=True, kw_only=True)
class HierarchicalSegEvery(PointGridParams):
    """TinySAM's hierarchical segment-everything on the runtime :class:`Predictor`.

    Thresholds are the grid's (see :class:`~.grid.PointGridParams`, SAM's defaults) plus
    ``high_score_thresh``. The configuration is immutable and every call keeps its state in
    locals, so calls are independent and repeatable.

    How it differs from TinySAM's reference, on purpose:

    * Coverage is decided at full resolution: the kept round-1 masks are upscaled to the
      original frame anyway (for the stability score), so their ``logit > high_score_thresh``
      union costs one comparison per mask and is exact; a dense point is covered when the pixel
      under it is.
    * Round 2 is the plain dense SAM grid (``build_point_grid(points_per_side)``) minus the
      covered points, rather than the reference's neighbourhoods of the sparse points at dense
      stride; same density, simpler, and identical to what :class:`~.grid.GridSegEvery` would
      decode, so the two strategies are directly comparable.
    * A round that yields nothing, or a round 2 with every point covered, is a normal outcome
      (fewer or no instances), not an error.
    * No crop layers.

    Attributes (besides :class:`~.grid.PointGridParams`):
        high_score_thresh: mask logit above which a round-1 pixel counts as covered.
    """

    name: ClassVar[str] = "hierarchical"

    high_score_thresh: float = param(8.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.points_per_side < 4:
            raise ValueError(
                f"points_per_side must be >= 4 for the hierarchical strategy (its sparse grid "
                f"has points_per_side // 4 points per side), got {self.points_per_side}"
            )

    def __call__(
        self, predictor: Predictor, image: np.ndarray | None = None
    ) -> HierarchicalResult:
        """Segment everything in the predictor's current image.

        Args:
            predictor: with ``set_image`` (or ``set_embedding``) called for this frame.
            image: ignored (the strategy needs only the embedding).

        Returns:
            Instances best first; timings ``round1_decoder``, ``round1_postprocess``,
            ``coverage``, ``round2_decoder``, ``round2_postprocess``, their sums ``decoder``
            and ``postprocess``, ``nms``, ``total`` (``cleanup`` with
            ``min_mask_region_area``); ``decoder_prompts`` = both rounds' points.

        Raises:
            ValueError: no image set on the predictor.
        """
        start = time.perf_counter()
        hw = predictor_image_hw(predictor)
        scale = np.array([hw[1], hw[0]], dtype=np.float64)
        round1, round2, timer = StageTimer(), StageTimer(), StageTimer()

        sparse = build_point_grid(self.points_per_side // 4) * scale
        coverage = Coverage(hw, self.high_score_thresh)
        first = self._segment_points(predictor, sparse, round1, on_kept=coverage)

        with timer.stage("coverage"):
            dense = build_point_grid(self.points_per_side) * scale
            todo = coverage.uncovered(dense)

        second = self._segment_points(predictor, todo, round2)

        with timer.stage("nms"):
            merged = MaskCandidates.concat([first, second]).nms(self.box_nms_thresh)
        merged = finish_candidates(merged, self, timer)

        timings: dict[str, float] = {}
        for prefix, t in (("round1_", round1), ("round2_", round2)):
            for stage in ("decoder", "postprocess"):
                ms = t.ms.get(stage, 0.0)
                timings[prefix + stage] = ms
                timings[stage] = timings.get(stage, 0.0) + ms
        timings.update(timer.ms)
        timings["total"] = 1e3 * (time.perf_counter() - start)
        return HierarchicalResult(
            instances=merged.to_instances(),
            image_hw=hw,
            timings_ms=timings,
            decoder_prompts=len(sparse) + len(todo),
            strategy=self.name,
            round1_prompts=len(sparse),
            round2_prompts=len(todo),
            skipped_prompts=len(dense) - len(todo),
        )
