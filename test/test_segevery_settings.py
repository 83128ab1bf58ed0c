"""Strategy settings: typed, range-checked keyword arguments and the one mask filter that every
strategy inherits (with its own defaults where its reference has others)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segfast_ros.segevery.grid import GridSegEvery
from segfast_ros.segevery.hierarchical import HierarchicalSegEvery
from segfast_ros.segevery.object_aware import ObjectAwareSegEvery
from segfast_ros.segevery.settings import MaskFilter, mask_filter_defaults, param, validate_params


@dataclasses.dataclass(frozen=True, kw_only=True)
class Params:
    count: int = param(3, low=1)
    ratio: float = param(0.5, low=0.0, high=1.0, high_open=True)
    offset: float = param(0.0)

    def __post_init__(self) -> None:
        validate_params(self)


def test_params_convert_and_explain() -> None:
    p = Params(count=np.int64(4), ratio=np.float32(0.25), offset=2)
    assert type(p.count) is int and type(p.ratio) is float and type(p.offset) is float
    bad = [
        (dict(count=0), r"count must be an integer >= 1, got 0"),
        (dict(count=2.0), r"count must be an integer >= 1, got 2.0"),
        (dict(count=True), r"count must be an integer >= 1, got True"),
        (dict(count="3"), r"count must be an integer >= 1, got '3' \(str\)"),
        (dict(ratio=1.0), r"ratio must be a number in \[0, 1\), got 1.0"),
        (dict(ratio=-0.1), r"ratio must be a number in \[0, 1\), got -0.1"),
        (dict(offset=float("inf")), r"offset must be a finite number, got inf"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            Params(**kwargs)


FILTER_FIELDS = [f.name for f in dataclasses.fields(MaskFilter)]


def test_every_strategy_is_a_mask_filter_with_the_same_fields() -> None:
    sam = {f.name: f for f in dataclasses.fields(MaskFilter)}
    for cls in (GridSegEvery, HierarchicalSegEvery, ObjectAwareSegEvery):
        assert issubclass(cls, MaskFilter)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in FILTER_FIELDS:
            assert fields[name].metadata == sam[name].metadata, (cls, name)  # same range
    defaults = {f.name: f.default for f in dataclasses.fields(ObjectAwareSegEvery)}
    # MobileSAMv2 keeps every mask; the rest are SAM's.
    assert {k: defaults[k] for k in FILTER_FIELDS} == {
        **{f.name: f.default for f in dataclasses.fields(MaskFilter)},
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    assert GridSegEvery().pred_iou_thresh == MaskFilter().pred_iou_thresh == 0.88
    # The strategy's own first fields stay first: the order of keyword arguments and parameters.
    names = [f.name for f in dataclasses.fields(GridSegEvery)]
    assert names[:2] + names[8:9] == ["points_per_side", "points_per_batch", "crop_n_layers"]
    assert names[2:8] == FILTER_FIELDS
    names = [f.name for f in dataclasses.fields(ObjectAwareSegEvery)]
    assert names[:2] + names[2:8] == ["detector", "prompts_per_batch", *FILTER_FIELDS]


def test_mask_filter_checks_its_values() -> None:
    with pytest.raises(ValueError, match=r"pred_iou_thresh must be a number in \[0, 1\], got 2"):
        MaskFilter(pred_iou_thresh=2)
    assert type(MaskFilter(min_mask_region_area=np.int64(3)).min_mask_region_area) is int


def test_mask_filter_defaults_changes_only_defaults() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    @mask_filter_defaults(mask_threshold=1, box_nms_thresh=0.5)
    class Strict(MaskFilter):
        extra: int = param(1, low=0)

    assert [f.name for f in dataclasses.fields(Strict)] == [*FILTER_FIELDS, "extra"]
    strict = Strict()
    assert (strict.mask_threshold, strict.box_nms_thresh, strict.extra) == (1.0, 0.5, 1)
    assert type(strict.mask_threshold) is float
    with pytest.raises(ValueError, match="box_nms_thresh must be a number in"):
        Strict(box_nms_thresh=-1)
    with pytest.raises(ValueError, match="extra must be an integer >= 0"):
        Strict(extra=-1)
    with pytest.raises(TypeError, match="not MaskFilter fields: points_per_side"):
        mask_filter_defaults(points_per_side=16)
    with pytest.raises(ValueError, match="pred_iou_thresh must be a number in"):
        mask_filter_defaults(pred_iou_thresh=1.5)
