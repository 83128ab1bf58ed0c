"""TrackingSettings: declared ranges, checks on construction, and building from a dict."""

from __future__ import annotations

import dataclasses

import pytest

from segfast_ros.segevery.settings import ParamRange
from segfast_ros.tracking.settings import TrackingSettings


def test_defaults_are_inside_their_declared_ranges():
    settings = TrackingSettings()
    for f in dataclasses.fields(TrackingSettings):
        spec = f.metadata.get("range")
        if spec is None:
            assert isinstance(getattr(settings, f.name), bool), f.name
            continue
        assert isinstance(spec, ParamRange)
        assert spec.check(f.name, getattr(settings, f.name)) == getattr(settings, f.name)


def test_declared_ranges_are_the_contract():
    ranges = {
        f.name: (f.metadata["range"].kind, f.metadata["range"].low, f.metadata["range"].high)
        for f in dataclasses.fields(TrackingSettings)
        if "range" in f.metadata
    }
    assert ranges == {
        "min_hits": (int, 1, 30),
        "max_missed": (int, 0, 300),
        "match_iou": (float, 0.05, 0.95),
        "max_targets": (int, 1, 256),
        "lost_score": (float, 0.0, 1.0),
        "lost_stability": (float, 0.0, 1.0),
        "max_area_change": (float, 1.1, 100.0),
        "reacquire_iou": (float, 0.05, 1.0),
        "min_appearance": (float, 0.0, 1.0),
    }


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("min_hits", 0, r"min_hits must be an integer in \[1, 30\], got 0"),
        ("min_hits", 2.0, r"min_hits must be an integer in \[1, 30\], got 2.0"),
        ("max_missed", 301, r"max_missed must be an integer in \[0, 300\], got 301"),
        ("match_iou", 0.99, r"match_iou must be a number in \[0.05, 0.95\], got 0.99"),
        ("match_iou", float("nan"), r"match_iou must be a number in \[0.05, 0.95\], got nan"),
        ("max_targets", 257, r"max_targets must be an integer in \[1, 256\]"),
        ("lost_score", -0.1, r"lost_score must be a number in \[0, 1\]"),
        ("max_area_change", 1.0, r"max_area_change must be a number in \[1.1, 100\]"),
        ("reacquire_iou", "0.5", r"reacquire_iou must be a number in .*, got '0.5' \(str"),
        ("use_mask_input", 1, r"use_mask_input must be a bool, got 1 \(int\)"),
    ],
)
def test_out_of_range_values_name_the_field_and_range(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        TrackingSettings(**{field: value})
    with pytest.raises(ValueError, match=expected):
        TrackingSettings.from_dict({field: value})


def test_from_dict_converts_and_keeps_defaults():
    settings = TrackingSettings.from_dict({"reacquire_iou": 1, "max_missed": 10})
    assert settings.reacquire_iou == 1.0 and isinstance(settings.reacquire_iou, float)
    assert settings.max_missed == 10
    assert settings.min_hits == TrackingSettings().min_hits
    assert TrackingSettings.from_dict({}) == TrackingSettings()


def test_from_dict_rejects_unknown_fields_listing_the_accepted_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown tracking setting\(s\) max_age, min_iou; "
        r"accepted: min_hits, max_missed, match_iou",
    ):
        TrackingSettings.from_dict({"max_age": 3, "min_iou": 0.2, "min_hits": 1})


def test_replace_is_checked_too():
    with pytest.raises(ValueError, match="min_hits"):
        dataclasses.replace(TrackingSettings(), min_hits=31)
