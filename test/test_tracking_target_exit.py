"""A target sliding out of the image is lost when little of it is left at the border, not
followed as a shrinking sliver (the generated sequences' late exits)."""

from __future__ import annotations

import numpy as np

from segfast_ros.segany import PromptSetMasks
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.target_state import EXIT_FRACTION, TargetState

HW = (120, 160)


def _answer(mask: np.ndarray) -> PromptSetMasks:
    return PromptSetMasks(
        masks=mask[None],
        scores=np.array([0.95], np.float32),
        stability=np.array([0.95], np.float32),
        prompt=np.array([0, 0, 10, 10], np.float32),
        low_res=np.zeros((16, 16), np.float32),
    )


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(HW, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _target_down_to(last: np.ndarray) -> TargetState:
    """A target added as a 40x40 square whose last good mask is ``last``."""
    target = TargetState.prompted(1, _answer(_rect(60, 40, 100, 80)), 0, HW)
    target.mask = last
    return target


def test_a_small_remainder_at_the_border_is_leaving_the_view() -> None:
    settings = TrackingSettings()
    sliver = _rect(0, 40, 6, 80)  # 240 px touching the left edge: 15 % of the 1600 px added
    assert sliver.sum() < EXIT_FRACTION * 1600
    target = _target_down_to(_rect(0, 40, 7, 80))
    reason = target.lost_reason_of(sliver, _answer(sliver), settings)
    assert reason.startswith("leaving the view"), reason


def test_the_same_small_mask_inside_the_image_is_followed() -> None:
    settings = TrackingSettings()
    small = _rect(50, 40, 56, 80)  # as small, but away from every edge (e.g. a zoom out)
    target = _target_down_to(_rect(50, 40, 57, 80))
    assert target.lost_reason_of(small, _answer(small), settings) == ""


def test_a_large_part_at_the_border_is_followed() -> None:
    settings = TrackingSettings()
    half = _rect(0, 40, 20, 80)  # half of the target still in view
    target = _target_down_to(_rect(0, 40, 22, 80))
    assert target.lost_reason_of(half, _answer(half), settings) == ""
