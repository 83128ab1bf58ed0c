"""One prompted target between frames: where to prompt it next, and whether an answer is still it.

:class:`TargetState` is what :class:`~.targets.TargetTracker` keeps per target; the tracker
owns the IDs, the lock and the batching, this module the per-target geometry:

* **Prompt.** The box of the last good mask, moved by a constant-velocity prediction from the
  last two good frames (:data:`MOTION_GAIN`, at most :data:`MAX_EXTRAPOLATION` intervals
  ahead), padded by :data:`BOX_PAD` and clipped to the image. A predicted box whose visible
  part is thinner than :data:`MIN_VISIBLE_SIDE` pixels has left the view: lost, not decoded.
* **Clean-up.** Islands of a decoded mask under :data:`ISLAND_FRACTION` of its area are
  dropped: a speck far from the object would stretch the box, and the next prompt with it.
* **Lost checks** (:meth:`TargetState.lost_reason`): an empty mask; predicted IoU below
  ``tracking.lost_score``; stability below ``tracking.lost_stability``; an area more than
  ``tracking.max_area_change`` times larger or smaller than the last good one; an IoU with the
  last good mask below :data:`MIN_STEP_IOU` (it jumped to another object).
* **Appearance** (when the frames' images are given): the colour histogram of the mask the
  target was added (or prompted again) with, kept as it is (:mod:`.appearance`). A decoded mask
  loses the pixels of colours the target does not have (:data:`COLOUR_TRIM`), and a mask whose
  colours are less alike than ``tracking.min_appearance`` is lost: it slid onto an occluder or
  a neighbour. The model is not updated while tracking: a moving average followed the mask
  onto the occluder within a few frames (on tuning sequences the wrong-object rate fell from
  8.9% to 5.5% with an average at rate 0.1, to 1.2% anchored). A target prompted without an
  image (on an older cached frame, whose pixels the node let go) takes its model from the
  first step that has an image and passes the lost checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..masks import Instance, masks_to_boxes, remove_small_regions
from ..segany import PromptSetMasks
from . import appearance as colour
from .overlap import Footprints, iou_matrix
from .settings import TrackingSettings
from .states import TRACK_LOST, TRACK_TRACKED

#: Fraction of the predicted velocity added to the previous box (1 = constant velocity).
MOTION_GAIN: float = 1.0
#: The motion prediction extrapolates at most this many of the last two frames' intervals
#: (a target not stepped for a while is not thrown far on a stale velocity).
MAX_EXTRAPOLATION: float = 3.0
#: Padding added to each side of the prompt box, as a fraction of its width / height.
BOX_PAD: float = 0.05
#: A predicted box whose visible part (inside the image) is narrower or shorter than this many
#: pixels has left the view: the target is lost without a decode.
MIN_VISIBLE_SIDE: float = 2.0
#: A mask touching the image border with less than this fraction of the largest area the
#: target had is leaving the view: lost, rather than followed as a shrinking sliver.
EXIT_FRACTION: float = 0.2
#: Islands of a decoded mask smaller than this fraction of its area are dropped.
ISLAND_FRACTION: float = 0.1
#: A new mask overlapping the last good one less than this (IoU) is another object.
MIN_STEP_IOU: float = 0.05
#: Pixels of a decoded mask whose colour bin holds less than this fraction of the target's
#: appearance are dropped (the part of the mask on a differently coloured neighbour).
COLOUR_TRIM: float = 0.03


@dataclass(frozen=True)
class TargetResult:
    """One target on one frame.

    Attributes:
        target_id: 1..65535 (fits the ``mono16`` label image), never reused while in use.
        state: :data:`~.states.TRACK_TRACKED` or :data:`~.states.TRACK_LOST`.
        frame_key: stamp (ns) of the frame this result belongs to.
        mask: ``(H, W)`` bool; None when lost.
        box: ``(4,)`` float32 XYXY of the mask; when lost, where it was last seen.
        score: predicted IoU (0 when lost).
        stability: stability score (0 when lost).
        area: mask pixels (0 when lost).
        prompt: ``(4,)`` the box prompt decoded on this frame (or the add's box), or ``(0,)``.
    """

    target_id: int
    state: int
    frame_key: int
    mask: np.ndarray | None
    box: np.ndarray
    score: float
    stability: float
    area: int
    prompt: np.ndarray


@dataclass
class TargetState:
    """What the tracker keeps of one target between frames (not thread-safe on its own).

    Attributes:
        result: the latest result (on the latest frame it was stepped to).
        hw: ``(H, W)`` of its frames.
        box: ``(4,)`` float64 box of the last good mask.
        key: frame key of the last good mask.
        mask: the last good mask, ``(H, W)`` bool (kept while lost, for re-acquisition).
        velocity: ``(4,)`` box change per key unit; None before two good frames.
        interval: keys between the last two good frames.
        low_res: ``(L, L)`` logits of the last good mask (the next ``mask_input``), or None.
        lost_at: frame key it was lost on (while lost).
        lost_reason: why it was lost ("" while tracked), for logs.
        appearance: colour histogram of the target (:mod:`.appearance`), None without images.
        peak_area: the largest mask it had since it was prompted (for the exit check).
    """

    result: TargetResult
    hw: tuple[int, int]
    box: np.ndarray
    key: int
    mask: np.ndarray
    velocity: np.ndarray | None = None
    interval: int = 0
    low_res: np.ndarray | None = None
    lost_at: int = 0
    lost_reason: str = ""
    appearance: np.ndarray | None = None
    peak_area: int = 0

    @classmethod
    def prompted(
        cls,
        target_id: int,
        answer: PromptSetMasks,
        key: int,
        hw: tuple[int, int],
        image: np.ndarray | None = None,
    ) -> TargetState:
        """A target (new or prompted again) from its prompt's answer: no motion history;
        its appearance from ``image`` (the frame, when given)."""
        mask = main_regions(answer.masks[0])
        box = _box(mask)
        prompt = np.zeros(0) if answer.prompt is None else answer.prompt
        result = _result(target_id, TRACK_TRACKED, key, mask, box, answer, prompt)
        look = None if image is None else colour.colour_histogram(image, mask)
        return cls(
            result,
            hw,
            box,
            key,
            mask,
            low_res=answer.low_res,
            appearance=look,
            peak_area=int(np.count_nonzero(mask)),
        )

    @property
    def target_id(self) -> int:
        return self.result.target_id

    @property
    def state(self) -> int:
        return self.result.state

    @property
    def area(self) -> int:
        """Pixels of the last good mask."""
        return int(np.count_nonzero(self.mask))

    def prompt_box(self, key: int, hw: tuple[int, int]) -> tuple[np.ndarray | None, str]:
        """The box prompt on frame ``key``, or None and why the target cannot have one."""
        if tuple(hw) != tuple(self.hw):
            return None, f"the image size changed from {self.hw} to {tuple(hw)}"
        box = self.box.copy()
        if self.velocity is not None:
            ahead = min(key - self.key, MAX_EXTRAPOLATION * self.interval)
            box += MOTION_GAIN * ahead * self.velocity
        size = np.maximum(box[2:] - box[:2], 0.0)
        box += BOX_PAD * np.concatenate([-size, size])
        h, w = hw
        clipped = np.clip(box, 0.0, [w, h, w, h])
        if (clipped[2:] - clipped[:2] < MIN_VISIBLE_SIDE).any():
            return None, "left the view"
        return clipped, ""

    def follow(
        self,
        answer: PromptSetMasks,
        prompt: np.ndarray,
        key: int,
        settings: TrackingSettings,
        image: np.ndarray | None = None,
    ) -> None:
        """Take a step's answer on frame ``key``, or become lost when the checks say so."""
        mask, look = answer.masks[0], None
        seen = image is not None and self.appearance is not None and settings.min_appearance > 0
        if seen:
            # Pixels of colours the target does not have are a neighbour or an occluder.
            mask = mask & colour.target_colours(image, self.appearance, COLOUR_TRIM)
        mask = main_regions(mask)
        if seen and mask.any():
            look = colour.colour_histogram(image, mask)
        reason = self.lost_reason_of(mask, answer, settings) or self.appearance_reason(
            look, settings
        )
        if reason:
            self.lose(key, prompt, reason)
            return
        if self.appearance is None and image is not None:
            # Prompted on a frame without pixels: the first confident step with an image
            # gives the model (kept from then on, as one taken at the prompt).
            self.appearance = colour.colour_histogram(image, mask)
        box = _box(mask)
        self.interval = key - self.key
        self.velocity = (box - self.box) / self.interval
        self.box, self.key, self.mask, self.low_res = box, key, mask, answer.low_res
        self.peak_area = max(self.peak_area, int(np.count_nonzero(mask)))
        self.result = _result(self.target_id, TRACK_TRACKED, key, mask, box, answer, prompt)

    def lost_reason_of(
        self, mask: np.ndarray, answer: PromptSetMasks, settings: TrackingSettings
    ) -> str:
        """Why ``mask`` (the best of ``answer``, cleaned) is not the target ("" when it is)."""
        s = settings
        score, stability = float(answer.scores[0]), float(answer.stability[0])
        area, last = int(np.count_nonzero(mask)), self.area
        if area == 0:
            return "empty mask"
        if area < EXIT_FRACTION * self.peak_area and _touches_border(mask):
            return (
                f"leaving the view: {area} px at the image border, under {EXIT_FRACTION:g} of "
                f"its largest {self.peak_area} px"
            )
        if score < s.lost_score:
            return f"predicted IoU {score:.3f} < tracking.lost_score {s.lost_score:g}"
        if stability < s.lost_stability:
            return f"stability {stability:.3f} < tracking.lost_stability {s.lost_stability:g}"
        ratio = area / max(last, 1)
        if ratio > s.max_area_change or ratio * s.max_area_change < 1.0:
            return (
                f"area {area} px is {ratio:.3g} x the last {last} px; "
                f"tracking.max_area_change is {s.max_area_change:g}"
            )
        overlap = mask_iou(mask, self.mask)
        if overlap < MIN_STEP_IOU:
            return f"IoU {overlap:.3f} with the last mask < {MIN_STEP_IOU:g}"
        return ""

    def appearance_reason(self, look: np.ndarray | None, settings: TrackingSettings) -> str:
        """Why a mask of colour histogram ``look`` is not the target ("" when it may be)."""
        if look is None or self.appearance is None:
            return ""
        alike = colour.similarity(look, self.appearance)
        if alike < settings.min_appearance:
            return f"appearance {alike:.3f} < tracking.min_appearance {settings.min_appearance:g}"
        return ""

    def lose(self, key: int, prompt: np.ndarray, reason: str) -> None:
        """Lost on frame ``key`` (``prompt``: the box decoded there, or empty)."""
        self.result = _result(self.target_id, TRACK_LOST, key, None, self.box, None, prompt)
        self.lost_at, self.lost_reason, self.low_res = key, reason, None

    def still_lost(self, key: int) -> None:
        """Report the lost target on a newer frame ``key`` (not decoded)."""
        if self.result.frame_key < key:
            self.result = _result(
                self.target_id, TRACK_LOST, key, None, self.box, None, self.result.prompt
            )

    def resume(self, inst: Instance, mask: np.ndarray, key: int) -> None:
        """Tracked again from a SegEvery instance of frame ``key`` (no motion, no logits)."""
        self.box = np.asarray(inst.box, dtype=np.float64).reshape(4)
        self.key, self.mask = key, mask
        self.velocity, self.interval, self.low_res, self.lost_reason = None, 0, None, ""
        scores = (float(inst.score), float(inst.stability))
        self.result = _result(
            self.target_id, TRACK_TRACKED, key, mask, self.box, scores, np.zeros(0)
        )


def main_regions(mask: np.ndarray) -> np.ndarray:
    """``mask`` without the islands under :data:`ISLAND_FRACTION` of its area."""
    area = int(np.count_nonzero(mask))
    if not area:
        return mask
    return remove_small_regions(mask, int(ISLAND_FRACTION * area), "islands")[0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(H, W)`` masks (0 when both are empty)."""
    return float(iou_matrix(Footprints.from_masks(a[None]), Footprints.from_masks(b[None]))[0, 0])


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _box(mask: np.ndarray) -> np.ndarray:
    return masks_to_boxes(mask[None])[0].astype(np.float64)


def _result(
    target_id: int,
    state: int,
    key: int,
    mask: np.ndarray | None,
    box: np.ndarray,
    scores: PromptSetMasks | tuple[float, float] | None,
    prompt: np.ndarray,
) -> TargetResult:
    """A result; ``scores`` an answer (its best mask's), ``(score, stability)`` or None (0)."""
    if isinstance(scores, PromptSetMasks):
        scores = (float(scores.scores[0]), float(scores.stability[0]))
    score, stability = scores or (0.0, 0.0)
    return TargetResult(
        target_id=int(target_id),
        state=state,
        frame_key=int(key),
        mask=mask,
        box=np.asarray(box, dtype=np.float32).reshape(4),
        score=float(score),
        stability=float(stability),
        area=0 if mask is None else int(np.count_nonzero(mask)),
        prompt=np.asarray(prompt, dtype=np.float32).reshape(-1),
    )
