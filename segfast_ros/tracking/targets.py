"""Prompted targets: objects a planner adds once and gets a mask for on every frame after.

A target is added from a prompt set (points and/or a box, as ``srv/Segment.srv`` lays them
out) on one frame's embedding. On each later frame every target still followed is decoded in
ONE batched decoder call: its prompt is its previous mask's box moved by a constant-velocity
prediction from its last two frames (clipped to the image, padded a little), with its previous
low-res logits as ``mask_input`` (``tracking.use_mask_input``). The answer is checked; a target
whose predicted IoU, stability, area change or overlap with its previous mask says it is not
the same object any more, or whose predicted box has left the image, is *lost*: reported with
no mask and the box where it was last seen, and not decoded again until it is re-acquired (a
SegEvery instance that overlaps its last mask, :meth:`TargetTracker.reacquire`, or the planner
prompting it again, ``add(ids=...)``).

Single points: a set of one point (no box) is decoded with SAM's three multimask outputs and
the one of highest predicted IoU is kept, as SAM recommends for an ambiguous single click;
every other set (a box, or several points) takes the single-mask output. The choice is per
call (the decoder's output selection is shared by a batch): a request's sets all have the same
layout, so all or none of them are single points.

The decoder's mask-input flag is shared by a batch, so the previous logits go in only when
every target decoded on the frame has them; a target re-acquired from SegEvery has none until
its first step (its next prompt is the instance's box alone).

What the choices were worth, measured on generated moving-object sequences with the demo model
(tuning seeds 5,000,000+, re-acquisition on; the held-out ones are ``segfast eval-tracking``'s),
before the colour cue: mean IoU 0.73x an oracle that prompts the true box on every frame with
the previous logits as ``mask_input``, 0.62x without them; picking among the three multimask
outputs the one most like the previous mask did worse than the single-mask output (0.58x
against 0.74x). The colour cue (:mod:`.target_state`) then took the held-out figures from 0.58x
to 0.85x of the oracle and from 9.7% to under 2% of frames on another object. The oracle itself
overlaps another object better than its own on about 5% of frames: crossings and the model's
leaky masks set that floor, so staying under it means reporting lost, not following the box.

No ROS, no torch: the node's ``~/track`` service and the offline replay both use it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..masks import Instance, rle_to_mask
from ..runtime.predictor import Predictor
from ..segany import PromptSetMasks, decode_prompt_sets, prompt_kwargs
from . import appearance as colour
from .associate import match
from .overlap import Footprints, iou_matrix
from .settings import TrackingSettings
from .states import TRACK_LOST, TRACK_TRACKED
from .target_state import TargetResult, TargetState

__all__ = ["MAX_TARGET_ID", "TargetError", "TargetResult", "TargetTracker"]

#: With appearance, a SegEvery instance may re-acquire a lost target when it overlaps the
#: target's last mask with at least this IoU ...
NEAR_IOU: float = 0.2
#: ... or when its box centre is within this many of the target's last box diagonals of the
#: last box's centre (and its colours are alike: ``tracking.min_appearance``).
SEARCH_RADIUS: float = 1.0

#: Largest target ID: the ``mono16`` label image of ``~/tracks/label`` holds 1..65535.
MAX_TARGET_ID: int = 65535


class TargetError(ValueError):
    """A ``~/track`` request that cannot be done; the message goes verbatim into the response."""


def _empty_prompt() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def _ids_text(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


class TargetTracker:
    """Prompted targets followed frame to frame on cached embeddings (thread-safe).

    Args:
        settings: limits and lost thresholds (``tracking.*`` parameters).
        mask_threshold: logit above which a pixel is in a mask.
        stability_offset: logit offset of the stability score.
    """

    def __init__(
        self,
        settings: TrackingSettings | None = None,
        *,
        mask_threshold: float = 0.0,
        stability_offset: float = 1.0,
    ) -> None:
        self._settings = settings or TrackingSettings()
        self._mask_threshold = float(mask_threshold)
        self._stability_offset = float(stability_offset)
        self._lock = threading.RLock()
        self._targets: dict[int, TargetState] = {}
        self._next_id = 1
        #: Decoder calls made (one per add, and per step with at least one target to decode).
        self.decoder_calls = 0

    @property
    def settings(self) -> TrackingSettings:
        return self._settings

    def configure(self, settings: TrackingSettings) -> None:
        """New limits and thresholds; the targets are kept (even past a lower max_targets)."""
        with self._lock:
            self._settings = settings

    def __len__(self) -> int:
        with self._lock:
            return len(self._targets)

    def results(self) -> list[TargetResult]:
        """The latest result of every target, in ID order."""
        with self._lock:
            return [self._targets[i].result for i in sorted(self._targets)]

    def ids(self) -> list[int]:
        """The target IDs in use, ascending."""
        with self._lock:
            return sorted(self._targets)

    # ------------------------------------------------------------------------ add / remove

    def add(
        self,
        predictor: Predictor,
        frame_key: int,
        *,
        points: npt.ArrayLike = (),
        labels: npt.ArrayLike = (),
        boxes: npt.ArrayLike = (),
        points_per_set: int = 0,
        ids: Sequence[int] = (),
        image: np.ndarray | None = None,
    ) -> list[TargetResult]:
        """Add one target per prompt set, or prompt existing targets again (``ids``).

        The prompt sets are those of ``srv/Segment.srv`` (one per box; else one per group of
        ``points_per_set`` points; else all points one set), decoded in one decoder call on
        ``predictor``'s frame. All or nothing: on any error no target is added or changed.

        Args:
            predictor: with the embedding of the frame ``frame_key`` set.
            frame_key: stamp (ns) of that frame.
            points, labels, boxes, points_per_set: the prompt sets, flat as in Segment.srv.
            ids: empty to add new targets; else the existing targets to prompt again, one per
                prompt set in order (re-acquisition by the planner: a lost target is followed
                again).
            image: the frame's ``(H, W, 3)`` uint8 image: each target's appearance (its
                colours under the mask) is taken from it; None (a frame whose pixels are
                gone): taken at the target's first confident step with an image instead.

        Returns:
            The new results of the added (or prompted) targets, in prompt-set order.

        Raises:
            ValueError: malformed, NaN or out-of-image prompts (the message names which).
            TargetError: past ``tracking.max_targets``, unknown or repeated ``ids``, a set count
                that does not match ``ids``, or a prompt set whose mask is empty.
        """
        with self._lock:
            targets = self._check_ids(ids)
            kwargs = prompt_kwargs(
                points,
                labels,
                boxes,
                points_per_set=points_per_set,
                low_res_size=predictor.info.low_res_size,
            )
            n_sets = _num_sets(kwargs)
            if targets and n_sets != len(targets):
                raise TargetError(
                    f"{n_sets} prompt sets for {len(targets)} ids ({_ids_text(ids)}): "
                    "give one prompt set per id"
                )
            if not targets:
                self._check_room(n_sets)
            if predictor.original_size is not None:
                _check_image(image, predictor.original_size)  # before spending a decode
            # One point alone is ambiguous: decode SAM's three masks and keep the best.
            single_point = "box" not in kwargs and kwargs["point_coords"].shape[1] == 1
            kwargs["multimask_output"] = single_point
            answers = self._decode(predictor, kwargs)
            empty = [i for i, a in enumerate(answers) if not a.masks[0].any()]
            if empty:
                raise TargetError(
                    f"prompt set(s) {_ids_text(empty)} segment nothing on this frame: "
                    "no target added; prompt on the object"
                )
            hw = predictor.original_size
            assert hw is not None  # decoded
            new_ids = [t.target_id for t in targets] or self._allocate(n_sets)
            out = []
            for target_id, answer in zip(new_ids, answers, strict=True):
                target = TargetState.prompted(target_id, answer, int(frame_key), hw, image)
                self._targets[target_id] = target
                out.append(target.result)
            return out

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Remove targets; unknown IDs: a TargetError and nothing is removed.

        Returns:
            The removed IDs, in the order given.
        """
        with self._lock:
            self._check_ids(ids)
            for target_id in ids:
                del self._targets[int(target_id)]
            return [int(i) for i in ids]

    def clear(self) -> list[int]:
        """Remove every target; returns the removed IDs, ascending."""
        with self._lock:
            removed = sorted(self._targets)
            self._targets.clear()
            return removed

    def _check_ids(self, ids: Sequence[int]) -> list[TargetState]:
        """The targets of ``ids``; a TargetError naming unknown or repeated ones."""
        wanted = [int(i) for i in ids]
        unknown = [i for i in wanted if i not in self._targets]
        if unknown:
            known = _ids_text(sorted(self._targets)) or "none"
            raise TargetError(f"unknown target ids: {_ids_text(unknown)} (targets now: {known})")
        repeated = sorted({i for i in wanted if wanted.count(i) > 1})
        if repeated:
            raise TargetError(f"target ids given more than once: {_ids_text(repeated)}")
        return [self._targets[i] for i in wanted]

    def _check_room(self, n_new: int) -> None:
        limit = self._settings.max_targets
        total = len(self._targets) + n_new
        if total > limit:
            raise TargetError(
                f"adding {n_new} targets would make {total} targets; tracking.max_targets is "
                f"{limit} (remove targets first)"
            )

    def _allocate(self, n: int) -> list[int]:
        """``n`` IDs not in use, counting on from the last one given (wrapping after 65535)."""
        out: list[int] = []
        candidate = self._next_id
        while len(out) < n:
            if candidate not in self._targets:
                out.append(candidate)
            candidate = candidate % MAX_TARGET_ID + 1
        self._next_id = candidate
        return out

    def _decode(self, predictor: Predictor, kwargs: dict) -> list[PromptSetMasks]:
        """All prompt sets in one decoder call, best mask of each first."""
        answers = list(
            decode_prompt_sets(
                predictor,
                kwargs,
                mask_threshold=self._mask_threshold,
                stability_offset=self._stability_offset,
            )
        )
        self.decoder_calls += 1
        return answers

    # ------------------------------------------------------------------------------- frames

    def step(
        self, predictor: Predictor, frame_key: int, image: np.ndarray | None = None
    ) -> list[TargetResult]:
        """Follow every target onto a new frame; returns every target's result, in ID order.

        The tracked targets whose last frame is older than ``frame_key`` are decoded in ONE
        batched decoder call (none: no call), then checked; the lost ones are reported lost on
        this frame without a decode. Targets already at or after ``frame_key`` (added on this
        frame, say) keep their latest result.

        Args:
            predictor: with the embedding of the frame ``frame_key`` set.
            frame_key: stamp (ns) of that frame.
            image: that frame's ``(H, W, 3)`` uint8 image, for the appearance checks, and
                the appearance of a target prompted without one (None: geometry and scores
                only).

        Raises:
            ValueError: no image set on ``predictor``.
        """
        with self._lock:
            hw = predictor.original_size
            if hw is None:
                raise ValueError("no image is set: set the frame's embedding before step()")
            _check_image(image, hw)
            key = int(frame_key)
            due: list[tuple[TargetState, np.ndarray]] = []
            for target_id in sorted(self._targets):
                target = self._targets[target_id]
                if target.state != TRACK_TRACKED:
                    target.still_lost(key)
                    continue
                if target.key >= key:
                    continue
                prompt, reason = target.prompt_box(key, hw)
                if prompt is None:
                    target.lose(key, _empty_prompt(), reason)
                else:
                    due.append((target, prompt))
            if due:
                kwargs = self._step_kwargs(due, predictor.info.low_res_size)
                answers = self._decode(predictor, kwargs)
                for (target, prompt), answer in zip(due, answers, strict=True):
                    target.follow(answer, prompt, key, self._settings, image)
            return [self._targets[i].result for i in sorted(self._targets)]

    def _step_kwargs(self, due: list[tuple[TargetState, np.ndarray]], low_res_size: int) -> dict:
        """The batched decoder arguments of a step: box prompts, previous logits if all have."""
        boxes = np.stack([prompt for _, prompt in due])
        use_logits = self._settings.use_mask_input and all(t.low_res is not None for t, _ in due)
        logits = np.stack([t.low_res for t, _ in due]) if use_logits else ()
        return prompt_kwargs((), (), boxes, mask_input=logits, low_res_size=low_res_size)

    # ------------------------------------------------------------------------ re-acquisition

    def reacquire(
        self, instances: Sequence[Instance], frame_key: int, image: np.ndarray | None = None
    ) -> list[int]:
        """Lost targets that a SegEvery instance of a newer frame overlaps follow it again.

        A lost target is re-acquired by the instance whose mask overlaps its last mask with
        IoU >= ``tracking.reacquire_iou`` (one instance per target, best overlaps first), if
        the instance's frame is newer than the one the target was lost on and no tracked
        target already follows it. The target is tracked again from the instance (its next
        prompt: the instance's box, without ``mask_input``).

        With ``image`` (the instances' frame) and targets that have an appearance, colour
        decides instead: an instance that overlaps the last mask with IoU >= :data:`NEAR_IOU`,
        or lies within :data:`SEARCH_RADIUS` box diagonals of it, with an area within
        ``tracking.max_area_change``, re-acquires the target whose colours it matches best,
        if at least ``tracking.min_appearance`` alike.

        Returns:
            The re-acquired IDs, ascending.

        Raises:
            ValueError: ``image`` is not the instances' ``(H, W, 3)`` uint8 frame.
        """
        with self._lock:
            if not instances:
                return []
            hw = tuple(int(v) for v in instances[0].rle["size"])
            _check_image(image, hw)
            key = int(frame_key)
            lost = [
                t
                for _, t in sorted(self._targets.items())
                if t.state == TRACK_LOST and t.lost_at < key
            ]
            if not lost:
                return []
            return self._reacquire(lost, instances, hw, key, image)

    def _reacquire(
        self,
        lost: list[TargetState],
        instances: Sequence[Instance],
        hw: tuple[int, int],
        key: int,
        image: np.ndarray | None,
    ) -> list[int]:
        found = Footprints.from_instances(instances, hw)
        lost = [t for t in lost if t.hw == hw]
        if not lost:
            return []
        threshold = self._settings.reacquire_iou
        iou = iou_matrix(Footprints.from_masks(np.stack([t.mask for t in lost])), found)
        tracked = [
            t.mask for t in self._targets.values() if t.state == TRACK_TRACKED and t.hw == hw
        ]
        if tracked:
            # An instance a tracked target already follows is not a lost one's.
            taken = iou_matrix(Footprints.from_masks(np.stack(tracked)), found) >= threshold
            iou[:, taken.any(axis=0)] = -1.0
        looks = self._instance_looks(instances, image, lost)
        if looks is not None:
            iou = _appearance_affinity(lost, instances, iou, looks, self._settings)
            threshold = self._settings.min_appearance
        done = []
        for row, col in match(iou, threshold).pairs:
            inst, target = instances[int(col)], lost[int(row)]
            target.resume(inst, rle_to_mask(inst.rle), key)
            done.append(target.target_id)
        return sorted(done)

    def _instance_looks(
        self, instances: Sequence[Instance], image: np.ndarray | None, lost: list[TargetState]
    ) -> list[np.ndarray | None] | None:
        """Each instance's colour histogram, or None when appearance is not used."""
        if image is None or self._settings.min_appearance <= 0.0:
            return None
        if any(t.appearance is None for t in lost):
            return None
        return [colour.colour_histogram(image, rle_to_mask(inst.rle)) for inst in instances]


def _appearance_affinity(
    lost: list[TargetState],
    instances: Sequence[Instance],
    iou: np.ndarray,
    looks: list[np.ndarray | None],
    settings: TrackingSettings,
) -> np.ndarray:
    """``(lost, instances)`` colour similarity where an instance may be the lost target (else
    0): it overlaps the target's last mask (IoU >= :data:`NEAR_IOU`) or lies near it (box
    centres within :data:`SEARCH_RADIUS` of its last box's diagonals), its area is within
    ``max_area_change`` of the target's, and no tracked target follows it (``iou`` < 0)."""
    out = np.zeros_like(iou)
    boxes = np.stack([np.asarray(inst.box, dtype=np.float64).reshape(4) for inst in instances])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    areas = np.array([inst.area for inst in instances], dtype=np.float64)
    for i, target in enumerate(lost):
        size = float(np.hypot(*(target.box[2:] - target.box[:2])))
        dist = np.hypot(*(centres - (target.box[:2] + target.box[2:]) / 2).T)
        ratio = areas / max(target.area, 1)
        near = (iou[i] >= NEAR_IOU) | (dist <= SEARCH_RADIUS * size)
        fits = (ratio <= settings.max_area_change) & (ratio * settings.max_area_change >= 1.0)
        for j in np.flatnonzero(near & fits & (iou[i] >= 0.0)):
            if looks[j] is not None and target.appearance is not None:
                out[i, j] = colour.similarity(looks[j], target.appearance)
    return out


def _check_image(image: np.ndarray | None, hw: tuple[int, int]) -> None:
    """A ValueError unless ``image`` is None or an ``(H, W, 3)`` uint8 image of size ``hw``."""
    if image is None:
        return
    shape = tuple(np.shape(image))
    if shape != (*hw, 3) or np.asarray(image).dtype != np.uint8:
        raise ValueError(
            f"image must be the frame's ({hw[0]}, {hw[1]}, 3) uint8 image, got shape {shape} "
            f"{np.asarray(image).dtype}"
        )


def _num_sets(kwargs: dict) -> int:
    """Prompt sets in :func:`~segfast_ros.segany.prompt_kwargs` output (always batched)."""
    if "box" in kwargs:
        return int(kwargs["box"].shape[0])
    return int(kwargs["point_coords"].shape[0])
