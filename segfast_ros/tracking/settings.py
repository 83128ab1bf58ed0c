"""The tracking thresholds: one typed, range-checked settings object for both trackers.

:class:`TrackingSettings` declares its numeric fields with
:func:`segfast_ros.segevery.settings.param` (default and accepted range in one place) and checks
them on construction with :func:`~segfast_ros.segevery.settings.validate_params`, as every
SegEvery strategy does; the node declares its ``tracking.<field>`` parameters from the same
fields, so ``ros2 param describe`` shows the ranges enforced here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..segevery.settings import check_bool, param, settings_from_dict, validate_params


@dataclass(frozen=True, kw_only=True)
class TrackingSettings:
    """How SegEvery instances keep their track IDs, and when a prompted target is lost.

    Checked on construction: a value out of range raises a ValueError naming the field, the
    accepted range and the value. Build one from node parameters or a config file with
    :meth:`from_dict`; change one field with ``dataclasses.replace``.

    Attributes:
        min_hits: SegEvery frames in a row an object must be seen (matched to the same track)
            before its track is born and gets an ID. 1 gives every instance an ID on its first
            frame; higher values keep one-frame flickers (a shadow, a half mask) from using IDs.
            Until then its instances are published with ``track_id`` 0, state TENTATIVE.
        max_missed: SegEvery frames in a row a track may go unmatched (object occluded, or
            not segmented on that frame) and still keep its ID if it is seen again. It dies on
            the next miss. Higher values bridge longer occlusions but let a new object that
            lands on a dead object's place inherit its ID for longer.
        match_iou: least mask IoU between an instance and a track's last mask for the instance
            to continue that track. Lower it when objects move far between SegEvery frames
            (fast motion, SegEvery at a low rate); raise it when neighbouring objects swap IDs.
        max_targets: most prompted targets held at once; adding past it is refused.
        lost_score: a target whose decoded mask has a predicted IoU below this is reported
            lost on that frame rather than a mask the model itself doubts.
        lost_stability: likewise for the mask's stability score (a mask that changes a lot
            with the logit threshold is usually background or a wrong object).
        max_area_change: a target whose mask area grows or shrinks by more than this factor
            from one frame to the next is reported lost (it jumped to a bigger or smaller
            object, or its object left the view).
        reacquire_iou: a lost target comes back when a SegEvery instance overlaps its last
            mask with at least this IoU.
        min_appearance: with the frames' images, a target whose mask's colours are less alike
            (Bhattacharyya coefficient of coarse RGB histograms) than this to the target's as
            it was added is lost (it slid onto an occluder or a neighbour), and a SegEvery
            instance re-acquires a lost target only if at least this alike. 0 turns the
            appearance cue off.
        use_mask_input: refine each target with its previous frame's low-resolution logits
            as the decoder's ``mask_input`` (steadier masks); off prompts with the box alone.
    """

    # SegEvery track IDs
    min_hits: int = param(2, low=1, high=30)
    max_missed: int = param(6, low=0, high=300)
    match_iou: float = param(0.3, low=0.05, high=0.95)
    # Prompted targets
    max_targets: int = param(16, low=1, high=256)
    lost_score: float = param(0.5, low=0.0, high=1.0)
    lost_stability: float = param(0.5, low=0.0, high=1.0)
    max_area_change: float = param(3.0, low=1.1, high=100.0)
    reacquire_iou: float = param(0.5, low=0.05, high=1.0)
    min_appearance: float = param(0.6, low=0.0, high=1.0)
    use_mask_input: bool = True

    def __post_init__(self) -> None:
        validate_params(self)
        check_bool("use_mask_input", self.use_mask_input)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrackingSettings:
        """Settings from ``{field: value}`` (missing fields keep their defaults).

        Raises:
            ValueError: an unknown field (the message lists the accepted ones), or a value out
                of its range or of the wrong type (names the field and the range).
        """
        return settings_from_dict(cls, values, "tracking")
