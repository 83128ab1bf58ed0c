"""From prompts to mask candidates, in small stages around one container.

The stages follow SAM's automatic mask generator (``MaskData``, ``_process_batch``,
``postprocess_small_regions``; its ``_process_crop`` is the grid strategy's), with all masks in
bounded memory:

* :func:`segment_prompts` validates the prompts and runs them batch by batch.
* Per batch (:meth:`_Decode.batch`): one decoder call at low resolution (:func:`decode_prompts`),
  then the predicted-IoU filter, before the expensive upscale.
* Per upscale group of the survivors (:meth:`_Decode.group`), at most ``upscale_budget`` pixels
  of float32 logits: upscale to the predictor's image only the rectangle where each mask may
  exceed its lowest threshold (:func:`~segfast_ros.runtime.transforms.upscale_regions`),
  threshold there (stability, area and box, each mask kept as its box:
  :func:`~.masks.threshold_regions`), the empty-mask, stability and crop-edge filters, the
  strategy's look at the logits, then RLE in the full frame from each box
  (:func:`~.masks.window_run_lengths`). A group is reduced to RLE before the next is upscaled,
  so memory is bounded by the budget (about 5 bytes per budget pixel: the logits and one mask
  frame) whatever the frame size and the number of prompts.
* :func:`finish_candidates`: the optional small-region clean-up (:func:`clean_small_regions`),
  then best first.

What flows between the stages is a :class:`MaskCandidates`. Two steps belong to one strategy
each and are handed in by it: a :class:`CropFrame` (grid's crop layers: masks pasted into the
full frame, masks cut by an inner crop edge dropped) and a :class:`KeptLogits` hook
(hierarchical's coverage map, which needs the full-size logits of the kept masks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..masks import (
    Instance,
    MaskWindows,
    box_near_crop_edge,
    lowest_threshold,
    mask_to_rle,
    masks_to_boxes,
    nms,
    remove_small_regions,
    rle_to_mask,
    threshold_regions,
    window_run_lengths,
)
from ..runtime.predictor import Predictor
from ..runtime.transforms import Region, upscale_group_size
from .settings import MaskFilter


class KeptLogits(Protocol):
    """A strategy's look at the full-size logits: called per upscale group with each mask's
    :class:`~segfast_ros.runtime.transforms.Region` (None for a mask with nothing above the
    lowest threshold; the predictor's image frame) and the ``(k,)`` indices of the masks kept
    from it, before the logits are freed."""

    #: The hook reads only pixels above this logit: the regions then hold every such pixel
    #: even when it is below the mask filter's lowest threshold.
    floor: float

    def __call__(self, regions: Sequence[Region | None], kept: np.ndarray) -> None: ...


@dataclass(frozen=True)
class MaskCandidates:
    """A batch of masks on their way to becoming :class:`~.masks.Instance` s (struct of arrays).

    Attributes:
        rles: ``K`` COCO uncompressed RLEs in the full image frame.
        boxes: ``(K, 4)`` float32 XYXY pixel edges.
        scores: ``(K,)`` float32 predicted IoU.
        stability: ``(K,)`` float32 stability score.
        areas: ``(K,)`` int64 mask pixels.
        prompts: ``(K, P)`` float32 prompt that produced each mask, full image pixels: ``P = 2``
            for an (X, Y) point, 4 for an XYXY box.
    """

    rles: list[dict[str, Any]]
    boxes: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    areas: np.ndarray
    prompts: np.ndarray

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def empty(cls, prompt_dim: int = 2) -> MaskCandidates:
        """No candidates; ``prompt_dim`` is ``P`` (2 for points, 4 for boxes)."""
        f = np.zeros(0, dtype=np.float32)
        return cls(
            [],
            np.zeros((0, 4), np.float32),
            f,
            f.copy(),
            np.zeros(0, np.int64),
            np.zeros((0, prompt_dim), np.float32),
        )

    @classmethod
    def concat(cls, parts: Sequence[MaskCandidates], prompt_dim: int = 2) -> MaskCandidates:
        """All candidates of ``parts`` in order; ``prompt_dim`` is for an empty ``parts``."""
        if not parts:
            return cls.empty(prompt_dim)
        return cls(
            [r for p in parts for r in p.rles],
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.stability for p in parts]),
            np.concatenate([p.areas for p in parts]),
            np.concatenate([p.prompts for p in parts]),
        )

    def take(self, indices: npt.ArrayLike) -> MaskCandidates:
        """The candidates at integer ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return MaskCandidates(
            [self.rles[i] for i in idx.tolist()],
            self.boxes[idx],
            self.scores[idx],
            self.stability[idx],
            self.areas[idx],
            self.prompts[idx],
        )

    def nms(self, iou_threshold: float) -> MaskCandidates:
        """Box NMS by predicted IoU (see :func:`~.masks.nms`); the result is sorted best first."""
        return self.take(nms(self.boxes, self.scores, iou_threshold))

    def nms_preferring(self, rank: npt.ArrayLike, iou_threshold: float) -> MaskCandidates:
        """Box NMS in which the lower ``rank`` wins, then the higher predicted IoU.

        Args:
            rank: ``(K,)`` per candidate, e.g. its crop's area or whether clean-up changed it.
            iou_threshold: see :func:`~.masks.nms`.

        Returns:
            The kept candidates, in that order of preference.
        """
        order = np.lexsort((-self.scores.astype(np.float64), np.asarray(rank)))
        # NMS keeps the highest score first: hand it the negated place in that order.
        priority = np.empty(len(order), dtype=np.float64)
        priority[order] = -np.arange(len(order), dtype=np.float64)
        return self.take(nms(self.boxes, priority, iou_threshold))

    def sorted_by_score(self) -> MaskCandidates:
        """Best (highest predicted IoU) first; ties keep their order."""
        return self.take(np.argsort(-self.scores.astype(np.float64), kind="stable"))

    def to_instances(self) -> list[Instance]:
        """One :class:`~.masks.Instance` per candidate, in order."""
        return [
            Instance(
                rle=self.rles[i],
                box=self.boxes[i].copy(),
                score=float(self.scores[i]),
                stability=float(self.stability[i]),
                area=int(self.areas[i]),
                prompt=self.prompts[i].copy(),
            )
            for i in range(len(self))
        ]


class StageTimer:
    """Accumulates wall time per named stage, in milliseconds.

    Example::

        timer = StageTimer()
        with timer.stage("decoder"):
            ...
        timer.ms  # {"decoder": 12.3}
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent inside the ``with`` block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1e3 * (time.perf_counter() - start)


def predictor_image_hw(predictor: Predictor) -> tuple[int, int]:
    """``(H, W)`` of the predictor's current image, or a ValueError if none is set."""
    if predictor.original_size is None:
        raise ValueError("no image is set: call predictor.set_image(image) first")
    return predictor.original_size


# ------------------------------------------------------------------------------ the crop step


@dataclass(frozen=True)
class CropFrame:
    """Where the predictor's image lies in the full image (SAM's crop layers).

    For a crop, masks are pasted into the full frame and masks near an inner crop edge are
    dropped (:func:`~.masks.box_near_crop_edge`); the full-image frame
    (:meth:`whole`) changes nothing.

    Attributes:
        box: XYXY int pixel edges of the predictor's image inside the full image.
        image_hw: ``(H, W)`` of the full image.
        edge_tolerance: pixels, see :func:`~.masks.box_near_crop_edge`.
    """

    box: tuple[int, int, int, int]
    image_hw: tuple[int, int]
    edge_tolerance: float = 20.0

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = (int(v) for v in self.box)
        object.__setattr__(self, "box", (x0, y0, x1, y1))
        object.__setattr__(self, "image_hw", (int(self.image_hw[0]), int(self.image_hw[1])))

    @classmethod
    def whole(cls, image_hw: tuple[int, int]) -> CropFrame:
        """The full image itself."""
        return cls((0, 0, image_hw[1], image_hw[0]), image_hw)

    @property
    def is_crop(self) -> bool:
        """Whether the box is smaller than the image."""
        return self.box != (0, 0, self.image_hw[1], self.image_hw[0])

    def check(self, predictor_hw: tuple[int, int]) -> None:
        """A ValueError unless the box has the size of the predictor's image."""
        x0, y0, x1, y1 = self.box
        if (y1 - y0, x1 - x0) != tuple(predictor_hw):
            raise ValueError(
                f"crop_box {list(self.box)} is {x1 - x0}x{y1 - y0} (W x H) but the predictor's "
                f"image is {predictor_hw[1]}x{predictor_hw[0]}"
            )

    def boxes_to_full(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` float32 XYXY boxes of the crop, in the full frame."""
        x0, y0 = self.box[:2]
        return boxes + np.array([x0, y0, x0, y0], dtype=np.float32)

    def prompts_to_full(self, prompts: np.ndarray) -> np.ndarray:
        """``(N, P)`` float64 points or boxes of the crop, as float32 in the full frame."""
        offset = np.array(list(self.box[:2]) * (prompts.shape[1] // 2), dtype=np.float64)
        return (prompts + offset).astype(np.float32)

    def cut_by_crop(self, boxes: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: which full-frame boxes touch an inner crop edge (none for the image)."""
        if not self.is_crop:
            return np.zeros(len(boxes), dtype=bool)
        return box_near_crop_edge(boxes, self.box, self.image_hw, self.edge_tolerance)

    def rles(self, masks: MaskWindows, kept: np.ndarray) -> list[dict[str, Any]]:
        """RLEs, in the full frame, of the crop's masks ``kept``, each from its window (the
        rest of the full frame is background)."""
        x0, y0 = self.box[:2]
        size = list(self.image_hw)
        out = []
        for i in kept.tolist():
            wx, wy = masks.origin(i)
            counts = window_run_lengths(masks.windows[i], (x0 + wx, y0 + wy), self.image_hw)
            out.append({"size": size, "counts": counts.tolist()})
        return out


# ------------------------------------------------------------------------------- the stages


def segment_prompts(
    predictor: Predictor,
    settings: MaskFilter,
    *,
    points: npt.ArrayLike | None = None,
    boxes: npt.ArrayLike | None = None,
    multimask_output: bool = True,
    batch_size: int = 64,
    frame: CropFrame | None = None,
    on_kept: KeptLogits | None = None,
    timer: StageTimer | None = None,
    upscale_budget: int | None = None,
) -> MaskCandidates:
    """Decode many single-prompt sets and keep the good masks, in bounded memory.

    Give exactly one of ``points`` and ``boxes``. Empty masks are always dropped; the other
    filters are ``settings``' (see the module docstring for the stages).

    Args:
        predictor: with the image (or the crop, see ``frame``) set.
        settings: the mask filter: ``pred_iou_thresh`` (``>``, 0 disables),
            ``stability_score_thresh`` (``>=``, 0 disables), ``stability_score_offset`` and
            ``mask_threshold`` are used here.
        points: ``(K, 2)`` (X, Y) pixels of the predictor's image, one foreground point per
            prompt set.
        boxes: ``(K, 4)`` XYXY pixels of the predictor's image, one box per prompt set.
        multimask_output: 3 masks per prompt (SAM's ambiguity-aware outputs) instead of 1.
        batch_size: prompt sets per decoder call.
        frame: the predictor's image as a crop of a larger image; its size must equal the
            predictor's image. None: the predictor's image is the full image.
        on_kept: called with each upscale group's logits and kept masks (see
            :data:`KeptLogits`).
        timer: stages ``decoder`` and ``postprocess`` are added to it.
        upscale_budget: pixels of full-size logits upscaled at once; None:
            :data:`~segfast_ros.runtime.transforms.UPSCALE_BUDGET_PIXELS`.

    Returns:
        The masks that passed every filter, in prompt order (prompt-major, then mask token),
        not yet NMS'd; prompts are recorded in full image pixels.

    Raises:
        ValueError: no image set, both or neither of points/boxes, a crop that does not
            match the predictor's image, or a budget below 1.
    """
    hw = predictor_image_hw(predictor)
    prompts = _prompt_array(points, boxes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    frame = CropFrame.whole(hw) if frame is None else frame
    frame.check(hw)
    group = upscale_group_size(hw, upscale_budget)
    timer = timer if timer is not None else StageTimer()
    run = _Decode(predictor, settings, multimask_output, frame, on_kept, group, timer)
    parts = [
        part
        for start in range(0, len(prompts), batch_size)
        for part in run.batch(prompts[start : start + batch_size])
    ]
    return MaskCandidates.concat(parts, prompts.shape[1])


def _prompt_array(points: npt.ArrayLike | None, boxes: npt.ArrayLike | None) -> np.ndarray:
    """``(K, 2)`` points or ``(K, 4)`` boxes as float64, or a ValueError."""
    if (points is None) == (boxes is None):
        raise ValueError("give exactly one of points (K, 2) and boxes (K, 4)")
    prompts = np.asarray(points if points is not None else boxes, dtype=np.float64)
    prompt_dim = 2 if points is not None else 4
    if prompts.size == 0:
        prompts = prompts.reshape(0, prompt_dim)
    if prompts.ndim != 2 or prompts.shape[1] != prompt_dim:
        kind = "points (K, 2)" if prompt_dim == 2 else "boxes (K, 4)"
        raise ValueError(f"expected {kind}, got shape {prompts.shape}")
    return prompts


def decode_prompts(
    predictor: Predictor, prompts: np.ndarray, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Low-res logits ``(K, M, L, L)`` and predicted IoU ``(K, M)`` of single-prompt sets.

    Args:
        predictor: with the image set.
        prompts: ``(K, 2)`` foreground points or ``(K, 4)`` XYXY boxes, the predictor's pixels.
        multimask_output: ``M = 3`` masks per prompt instead of 1.
    """
    if prompts.shape[1] == 2:
        return predictor.predict_low_res(
            point_coords=prompts[:, None, :],
            point_labels=np.ones((len(prompts), 1)),
            multimask_output=multimask_output,
        )
    return predictor.predict_low_res(box=prompts, multimask_output=multimask_output)


@dataclass(frozen=True)
class _Decode:
    """What one :func:`segment_prompts` call's stages share (SAM keeps it on ``self``)."""

    predictor: Predictor
    settings: MaskFilter
    multimask_output: bool
    frame: CropFrame
    on_kept: KeptLogits | None
    group_size: int  # masks upscaled at once, within the budget
    timer: StageTimer

    def batch(self, prompts: np.ndarray) -> list[MaskCandidates]:
        """One decoder call, the predicted-IoU filter, then the survivors group by group."""
        timer = self.timer
        with timer.stage("decoder"):
            low_res, iou = decode_prompts(self.predictor, prompts, self.multimask_output)
        with timer.stage("postprocess"):
            threshold = self.settings.pred_iou_thresh
            passed = iou > threshold if threshold > 0 else np.ones(iou.shape, bool)
            # (prompt, token) of each survivor; gathering them avoids copying all of low_res
            # (a strided view after the token selection) just to flatten it.
            rows, tokens = np.nonzero(passed)
            parts = []
            for g in range(0, len(rows), self.group_size):
                r, t = rows[g : g + self.group_size], tokens[g : g + self.group_size]
                part = self.group(low_res[r, t], iou[r, t], prompts[r])
                if part is not None:
                    parts.append(part)
        return parts

    def group(
        self, low_res: np.ndarray, iou: np.ndarray, prompts: np.ndarray
    ) -> MaskCandidates | None:
        """Upscale, threshold, filter and encode one group of masks (None if none is kept).

        Args:
            low_res: ``(G, L, L)`` low-res logits, ``G`` within the budget.
            iou: ``(G,)`` their predicted IoU.
            prompts: ``(G, P)`` their prompts, the predictor's pixels.
        """
        f = self.settings
        offset = f.stability_score_offset
        above = lowest_threshold(f.mask_threshold, offset)
        if self.on_kept is not None:
            above = min(above, self.on_kept.floor)
        regions = self.predictor.upscale_regions(low_res, above)  # within the budget
        masks = threshold_regions(regions, f.mask_threshold, offset, f.stability_score_thresh)
        stability, areas = masks.stability, masks.areas
        keep = areas > 0
        if f.stability_score_thresh > 0:
            keep &= stability >= f.stability_score_thresh
        boxes = self.frame.boxes_to_full(masks.boxes)
        keep &= ~self.frame.cut_by_crop(boxes)
        kept = np.flatnonzero(keep)
        if len(kept) == 0:
            return None
        if self.on_kept is not None:
            self.on_kept(regions, kept)
        del regions  # the float32 maps go before the RLE work
        return MaskCandidates(
            self.frame.rles(masks, kept),
            boxes[kept],
            iou[kept].astype(np.float32),
            stability[kept],
            areas[kept],
            self.frame.prompts_to_full(prompts[kept]),
        )


def clean_small_regions(
    candidates: MaskCandidates, min_area: int, nms_thresh: float
) -> MaskCandidates:
    """SAM's optional post-processing: fill small holes, drop small islands, NMS again.

    Each mask gets holes then islands smaller than ``min_area`` pixels removed (see
    :func:`~.masks.remove_small_regions`); its box and area are recomputed. Then box NMS runs
    again and prefers masks that did *not* change (then higher predicted IoU), since clean-up
    may have made two masks near-duplicates. ``min_area <= 0`` returns ``candidates`` unchanged.

    Returns:
        The kept candidates, in NMS order (unchanged masks first).
    """
    if min_area <= 0 or len(candidates) == 0:
        return candidates
    rles = list(candidates.rles)
    boxes = candidates.boxes.copy()
    areas = candidates.areas.copy()
    changed = np.zeros(len(candidates), dtype=bool)
    for i, rle in enumerate(candidates.rles):
        mask, holes = remove_small_regions(rle_to_mask(rle), min_area, "holes")
        mask, islands = remove_small_regions(mask, min_area, "islands")
        if holes or islands:
            changed[i] = True
            rles[i] = mask_to_rle(mask[None])[0]
            boxes[i] = masks_to_boxes(mask[None])[0]
            areas[i] = int(np.count_nonzero(mask))
    cleaned = dataclasses.replace(candidates, rles=rles, boxes=boxes, areas=areas)
    return cleaned.nms_preferring(changed, nms_thresh)


def finish_candidates(
    candidates: MaskCandidates, settings: MaskFilter, timer: StageTimer
) -> MaskCandidates:
    """The common tail of every strategy: optional small-region clean-up, then best first.

    ``settings.min_mask_region_area`` and ``settings.box_nms_thresh`` are used; the clean-up
    time goes to the ``cleanup`` stage of ``timer``.
    """
    if settings.min_mask_region_area > 0:
        with timer.stage("cleanup"):
            candidates = clean_small_regions(
                candidates, settings.min_mask_region_area, settings.box_nms_thresh
            )
    return candidates.sorted_by_score()
