"""Flat SegAny prompts (as in srv/Segment.srv) to batched Predictor arguments."""

from __future__ import annotations

import numpy as np
import pytest

from segfast_ros.segany import prompt_kwargs


def test_boxes_and_shared_points_become_one_set_per_box() -> None:
    kw = prompt_kwargs([[1, 2]], [1], [0, 0, 5, 5, 1, 1, 6, 6], low_res_size=4)
    assert kw["box"].shape == (2, 4)
    assert kw["point_coords"].shape == (2, 1, 2) and kw["point_labels"].shape == (2, 1)


def test_point_groups_are_sets_and_the_cap_counts_them() -> None:
    points = np.arange(12).reshape(6, 2)
    kw = prompt_kwargs(points, np.ones(6), points_per_set=2, low_res_size=4, max_sets=3)
    assert kw["point_coords"].shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"3 prompt sets in one request; .* at most 2 .*split"):
        prompt_kwargs(points, np.ones(6), points_per_set=2, low_res_size=4, max_sets=2)
    with pytest.raises(ValueError, match=r"2 prompt sets in one request; .* at most 1"):
        prompt_kwargs([], [], [0, 0, 5, 5, 1, 1, 6, 6], low_res_size=4, max_sets=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": [[1, 2]], "labels": []}, "one label per point"),
        ({"points": [], "labels": [], "boxes": [1, 2, 3]}, "multiple of 4"),
        ({"points": [[1, 2]] * 3, "labels": [1] * 3, "points_per_set": 2}, "multiple of 2"),
        ({"points": [], "labels": []}, "no prompt"),
        ({"points": [[1, 2]], "labels": [1], "mask_input": [0.0] * 5}, "mask_input: expected 16"),
    ],
)
def test_malformed_prompts_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prompt_kwargs(low_res_size=4, **kwargs)
