"""The trackers as both adapters hold them, and their output as ``Instance.msg`` fields.

The node (:mod:`segfast_ros.ros`) and the offline replay (:mod:`segfast_ros.replay`) each keep
one :class:`Tracking`: an :class:`~segfast_ros.tracking.instances.InstanceTracker` that gives
SegEvery instances their track IDs, and a :class:`~segfast_ros.tracking.targets.TargetTracker`
that follows the prompted targets. The records built here are those of
:mod:`segfast_ros.pipeline.render` (same RLE, same boxes) with ``track_id`` and
``track_state`` set, so both adapters publish the same bytes for the same tracks.

A lost target's record: area 0, an all-background RLE (``rle_counts = [H * W]``), score and
stability 0, and the box where it was last seen; ``track_state`` is ``TRACK_LOST``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..masks import Instance
from ..runtime.predictor import Predictor
from ..tracking.instances import InstanceTracker, TrackLabel
from ..tracking.settings import TrackingSettings
from ..tracking.states import TRACK_TRACKED
from ..tracking.targets import TargetResult, TargetTracker
from .render import MAX_LABELS, InstanceRecord, box_to_roi, instance_record, mask_record


def target_records(results: Sequence[TargetResult], hw: tuple[int, int]) -> list[InstanceRecord]:
    """The targets of one frame as ``Instance.msg`` fields, ``id`` = position in the list.

    Args:
        results: from :meth:`TargetTracker.step` (or ``results()``), in ID order.
        hw: ``(H, W)`` of the frame.

    Raises:
        ValueError: a tracked target's mask is not ``(H, W)``.
    """
    h, w = int(hw[0]), int(hw[1])
    records = []
    for index, result in enumerate(results):
        prompt = result.prompt if result.prompt.size else None
        if result.state == TRACK_TRACKED and result.mask is not None:
            if result.mask.shape != (h, w):
                raise ValueError(
                    f"target {result.target_id}: mask of shape {result.mask.shape}, expected "
                    f"the frame's ({h}, {w})"
                )
            record = mask_record(result.mask, result.score, result.stability, index, prompt)
        else:
            # No mask: an all-background RLE, and the box where the target was last seen.
            empty = np.zeros((h, w), dtype=bool)
            record = mask_record(empty, 0.0, 0.0, index, prompt)
            record = dataclasses.replace(record, roi=box_to_roi(result.box, (h, w)))
        records.append(
            dataclasses.replace(record, track_id=result.target_id, track_state=result.state)
        )
    return records


def targets_label_image(results: Sequence[TargetResult], hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint16 label image of the tracked targets: pixel = target ID, 0 background.

    Where targets overlap, the lower ID wins. Lost targets paint nothing.

    Raises:
        ValueError: a mask that is not ``(H, W)``, or an ID outside 1..65535.
    """
    h, w = int(hw[0]), int(hw[1])
    labels = np.zeros((h, w), dtype=np.uint16)
    painted = [r for r in results if r.state == TRACK_TRACKED and r.mask is not None]
    # Highest ID first, so that each lower ID paints over the ones it overlaps.
    for result in sorted(painted, key=lambda r: -r.target_id):
        if not 1 <= result.target_id <= MAX_LABELS:
            raise ValueError(f"target ID {result.target_id} does not fit 1..{MAX_LABELS}")
        if result.mask.shape != (h, w):
            raise ValueError(
                f"target {result.target_id}: mask of shape {result.mask.shape}, expected ({h}, "
                f"{w})"
            )
        np.copyto(labels, np.uint16(result.target_id), where=result.mask)
    return labels


def due_targets(results: Sequence[TargetResult], frame_key: int) -> set[int]:
    """IDs of the targets a step onto frame ``frame_key`` decodes: tracked, on an older frame.

    Args:
        results: the targets' latest results, taken before the step.
        frame_key: the frame the step goes to.
    """
    return {r.target_id for r in results if r.state == TRACK_TRACKED and r.frame_key < frame_key}


def decoded_count(due: set[int], results: Sequence[TargetResult]) -> int:
    """Targets a step decoded (an ``InstanceArray``'s ``decoder_prompts`` on ``~/tracks``).

    Args:
        due: :func:`due_targets` before the step.
        results: the step's results. A due target decoded there has that frame's box prompt,
            found or lost; one whose predicted box left the view was not decoded (no prompt).
    """
    return sum(r.target_id in due and r.prompt.size == 4 for r in results)


def tracked_records(
    instances: Sequence[Instance], labels: Sequence[TrackLabel]
) -> list[InstanceRecord]:
    """SegEvery instances as ``Instance.msg`` fields with their track ID and state.

    Raises:
        ValueError: not one label per instance.
    """
    if len(labels) != len(instances):
        raise ValueError(f"{len(labels)} track labels for {len(instances)} instances")
    return [
        dataclasses.replace(
            instance_record(inst, i), track_id=label.track_id, track_state=label.state
        )
        for i, (inst, label) in enumerate(zip(instances, labels, strict=True))
    ]


class Tracking:
    """One InstanceTracker + one TargetTracker, as each adapter holds them.

    Args:
        settings: the ``tracking.*`` thresholds of both trackers.
        segevery_ids: give SegEvery instances track IDs (``tracking.segevery_ids``); off, they
            are published with ``track_id`` 0, state ``TRACK_NONE``, and the instance tracker
            is not run. Lost targets are re-acquired from SegEvery either way.
        mask_threshold, stability_offset: the targets' mask threshold and stability offset.
    """

    def __init__(
        self,
        settings: TrackingSettings | None = None,
        *,
        segevery_ids: bool = True,
        mask_threshold: float = 0.0,
        stability_offset: float = 1.0,
    ) -> None:
        settings = settings or TrackingSettings()
        self.instances = InstanceTracker(settings)
        self.targets = TargetTracker(
            settings, mask_threshold=mask_threshold, stability_offset=stability_offset
        )
        self.segevery_ids = bool(segevery_ids)

    def configure(self, settings: TrackingSettings) -> None:
        """New thresholds for both trackers; tracks and targets are kept."""
        self.instances.configure(settings)
        self.targets.configure(settings)

    def on_segevery(
        self,
        instances: Sequence[Instance],
        frame_key: int,
        hw: tuple[int, int],
        image: np.ndarray | None = None,
    ) -> list[InstanceRecord]:
        """One SegEvery frame: its records (with track IDs) and the re-acquisition of targets.

        Args:
            instances: the frame's SegEvery instances, in their published order.
            frame_key: stamp (ns) of the frame.
            hw: ``(H, W)`` of the frame.
            image: the frame's ``(H, W, 3)`` uint8 RGB image: lost targets are re-acquired by
                colour as well as overlap (None: by overlap only).
        """
        if self.segevery_ids:
            records = tracked_records(instances, self.instances.update(instances, hw))
        else:
            records = [instance_record(inst, i) for i, inst in enumerate(instances)]
        if instances and len(self.targets):
            self.targets.reacquire(instances, frame_key, image)
        return records

    def on_frame(
        self, predictor: Predictor, frame_key: int, image: np.ndarray | None = None
    ) -> list[TargetResult] | None:
        """Follow the targets onto a newly encoded frame; None when there are no targets.

        Args:
            predictor: with the embedding of frame ``frame_key`` set.
            frame_key: stamp (ns) of the frame.
            image: the frame's ``(H, W, 3)`` uint8 RGB image, for the targets' appearance cue
                (None: geometry and scores only; :meth:`TargetTracker.step
                <segfast_ros.tracking.targets.TargetTracker.step>`).
        """
        if not len(self.targets):
            return None
        return self.targets.step(predictor, frame_key, image)
