"""InstanceTracker and match: SegEvery instances keep their track IDs across frames.

The instances are ground-truth masks of generated scenes (exact masks, known identities), or
discs placed by hand where a case needs exact control.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segfast_ros.bench.scene_motion import generate_tracking_sequence
from segfast_ros.masks import Instance, mask_to_rle, masks_to_boxes
from segfast_ros.tracking.associate import match
from segfast_ros.tracking.instances import InstanceTracker, TrackLabel
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import TRACK_TENTATIVE, TRACK_TRACKED

HW = (120, 160)


def as_instances(masks: np.ndarray) -> list[Instance]:
    masks = np.asarray(masks, bool).reshape(-1, *np.shape(masks)[-2:])
    return [
        Instance(rle, box, 0.9, 0.9, int(m.sum()), np.zeros(2, np.float32))
        for rle, box, m in zip(mask_to_rle(masks), masks_to_boxes(masks), masks, strict=True)
    ]


def discs(centres, radius: float = 12.0, hw=HW) -> list[Instance]:
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    masks = [(xx - x) ** 2 + (yy - y) ** 2 < radius**2 for x, y in centres]
    return as_instances(np.stack(masks) if masks else np.zeros((0, *hw), bool))


def rects(spans, hw=HW) -> list[Instance]:
    """Rectangles over rows 20..70, one per (x1, x2) column span."""
    masks = np.zeros((len(spans), *hw), bool)
    for m, (x1, x2) in zip(masks, spans, strict=True):
        m[20:70, x1:x2] = True
    return as_instances(masks)


def ids(labels: list[TrackLabel]) -> list[int]:
    return [label.track_id for label in labels]


# Three discs drifting right by 2 px a frame (a panning camera), well apart.
def drift(t: int, which=(0, 1, 2)) -> list[Instance]:
    centres = [(30 + 2 * t, 30), (80 + 2 * t, 80), (40 + 2 * t, 95)]
    return discs([centres[i] for i in which])


def test_ids_persist_on_moving_objects_that_cross_and_leave():
    tracker = InstanceTracker(TrackingSettings(min_hits=2, max_missed=3))
    kept = changed = 0
    owner: dict[int, int] = {}  # track ID -> ground-truth object
    for seed in (0, 1, 2):
        tracker.reset()
        previous: dict[int, int] = {}
        for scene in generate_tracking_sequence(seed, 40, HW).frames:
            labels = tracker.update(as_instances(scene.masks), HW)
            pairs = zip(scene.ids.tolist(), labels, strict=True)
            now = {obj: label.track_id for obj, label in pairs if label.track_id}
            for obj, track_id in now.items():
                assert owner.setdefault(track_id, (seed, obj)) == (seed, obj)  # one object per ID
                if obj in previous:
                    kept += previous[obj] == track_id
                    changed += previous[obj] != track_id
            previous = now
    assert kept > 200
    assert kept / (kept + changed) >= 0.98, (kept, changed)


def test_births_after_min_hits_and_a_flicker_uses_no_id():
    tracker = InstanceTracker(TrackingSettings(min_hits=3))
    tentative = TrackLabel(0, TRACK_TENTATIVE)
    assert tracker.update(drift(0), HW) == [tentative] * 3
    assert tracker.update(drift(1, (0, 1)), HW) == [tentative] * 2  # disc 2 flickers off
    assert len(tracker) == 2  # a tentative track missed once is dropped
    assert tracker.update(drift(2), HW) == [
        TrackLabel(1, TRACK_TRACKED),
        TrackLabel(2, TRACK_TRACKED),
        tentative,  # disc 2 starts over
    ]
    assert ids(tracker.update(drift(3), HW)) == [1, 2, 0]
    assert ids(tracker.update(drift(4), HW)) == [1, 2, 3]
    assert tracker.track_ids == [1, 2, 3]


def test_min_hits_1_gives_ids_on_the_first_frame_in_reading_order():
    tracker = InstanceTracker(TrackingSettings(min_hits=1))
    # listed bottom first: IDs still go top to bottom (y 30, 80, 95)
    assert ids(tracker.update([drift(0)[i] for i in (2, 1, 0)], HW)) == [3, 2, 1]


def test_missed_track_keeps_its_id_within_max_missed_and_dies_after():
    settings = TrackingSettings(min_hits=1, max_missed=2)
    tracker = InstanceTracker(settings)
    assert ids(tracker.update(drift(0), HW)) == [1, 2, 3]
    for t in (1, 2):  # disc 1 occluded for max_missed frames
        assert ids(tracker.update(drift(t, (0, 2)), HW)) == [1, 3]
        assert tracker.track_ids == [1, 2, 3]
    # back (it moved 6 px meanwhile; matched against its last mask)
    assert ids(tracker.update(drift(3), HW)) == [1, 2, 3]
    for t in (4, 5, 6):  # gone for max_missed + 1 frames: dies
        assert ids(tracker.update(drift(t, (0, 2)), HW)) == [1, 3]
    assert tracker.track_ids == [1, 3]
    assert ids(tracker.update(drift(7), HW)) == [1, 4, 3]  # a new track, a new ID


def test_empty_frames_are_misses_for_every_track():
    tracker = InstanceTracker(TrackingSettings(min_hits=1, max_missed=1))
    assert ids(tracker.update(drift(0), HW)) == [1, 2, 3]
    assert tracker.update([], HW) == []
    assert ids(tracker.update(drift(1), HW)) == [1, 2, 3]
    assert tracker.update([], HW) == [] and tracker.update([], HW) == []
    assert len(tracker) == 0
    assert ids(tracker.update(drift(2), HW)) == [4, 5, 6]


def test_shuffled_instance_order_keeps_the_ids():
    frames = generate_tracking_sequence(3, 25, HW).frames
    plain, shuffled = InstanceTracker(), InstanceTracker()
    rng = np.random.default_rng(0)
    for scene in frames:
        instances = as_instances(scene.masks)
        order = rng.permutation(len(instances))
        want = dict(zip(scene.ids.tolist(), ids(plain.update(instances, HW)), strict=True))
        got = ids(shuffled.update([instances[i] for i in order], HW))
        assert got == [want[int(scene.ids[i])] for i in order]
    assert max(want.values()) > 0


def test_optimal_assignment_keeps_a_pair_that_greedy_loses():
    # IoU track A - X 0.413 is the best pair; greedy takes it and leaves B with Y (IoU 0).
    # Optimal: A - Y (0.4) and B - X (0.309), both above 0.3.
    a, b, x, y = (0, 100), (100, 200), (38, 150), (0, 40)
    hw = (120, 220)
    tracker = InstanceTracker(TrackingSettings(min_hits=1, match_iou=0.3))
    assert ids(tracker.update(rects([a, b], hw), hw)) == [1, 2]
    assert ids(tracker.update(rects([x, y], hw), hw)) == [2, 1]

    iou = np.array([[0.413, 0.4], [0.309, 0.0]])
    np.testing.assert_array_equal(match(iou, 0.3).pairs, [[0, 1], [1, 0]])


def test_match_rectangular_empty_and_threshold():
    iou = np.array([[0.9, 0.1, 0.0], [0.2, 0.25, 0.8]])
    m = match(iou, 0.5)
    np.testing.assert_array_equal(m.pairs, [[0, 0], [1, 2]])
    np.testing.assert_array_equal(m.unmatched_cols, [1])
    assert m.unmatched_rows.size == 0
    m = match(iou.T, 0.85)
    np.testing.assert_array_equal(m.pairs, [[0, 0]])
    np.testing.assert_array_equal(m.unmatched_rows, [1, 2])
    np.testing.assert_array_equal(m.unmatched_cols, [1])
    for shape in ((0, 3), (2, 0), (0, 0)):
        m = match(np.zeros(shape), 0.3)
        assert m.pairs.shape == (0, 2)
        np.testing.assert_array_equal(m.unmatched_rows, np.arange(shape[0]))
        np.testing.assert_array_equal(m.unmatched_cols, np.arange(shape[1]))
    with pytest.raises(ValueError, match=r"expected an \(R, C\) IoU matrix, got shape \(3,\)"):
        match(np.zeros(3), 0.3)
    with pytest.raises(ValueError, match="NaN"):
        match(np.array([[np.nan]]), 0.3)


def test_same_frames_give_the_same_ids():
    frames = generate_tracking_sequence(4, 20, HW).frames
    runs = []
    for _ in range(2):
        tracker = InstanceTracker()
        runs.append([ids(tracker.update(as_instances(f.masks), HW)) for f in frames])
    assert runs[0] == runs[1]
    assert max(max(r, default=0) for r in runs[0]) > 0


def test_a_new_image_size_starts_new_tracks_and_ids_are_never_reused():
    tracker = InstanceTracker(TrackingSettings(min_hits=1))
    assert ids(tracker.update(drift(0), HW)) == [1, 2, 3]
    big = (240, 320)
    assert ids(tracker.update(discs([(30, 30)], hw=big), big)) == [4]
    assert tracker.track_ids == [4]
    tracker.reset()
    assert len(tracker) == 0
    assert ids(tracker.update(discs([(30, 30)], hw=big), big)) == [5]


def test_a_bad_frame_raises_and_leaves_the_tracks():
    tracker = InstanceTracker(TrackingSettings(min_hits=1))
    tracker.update(drift(0), HW)
    with pytest.raises(ValueError, match=r"instance 1: mask size \[240, 320\] is not the image"):
        tracker.update(drift(1)[:1] + discs([(5, 5)], hw=(240, 320)), HW)
    with pytest.raises(ValueError, match=r"hw must be \(H, W\)"):
        tracker.update(drift(1), (0, 160))
    assert ids(tracker.update(drift(1), HW)) == [1, 2, 3]


def test_configure_keeps_tracks_and_applies_new_thresholds():
    tracker = InstanceTracker(TrackingSettings(min_hits=1, max_missed=5))
    assert ids(tracker.update(drift(0), HW)) == [1, 2, 3]
    tracker.update(drift(1, (0, 2)), HW)
    tracker.update(drift(2, (0, 2)), HW)  # disc 1 missed twice
    tracker.configure(dataclasses.replace(tracker.settings, max_missed=2))
    assert tracker.track_ids == [1, 2, 3]  # kept until its next miss
    assert ids(tracker.update(drift(3, (0, 2)), HW)) == [1, 3]
    assert tracker.track_ids == [1, 3]
    tracker.configure(dataclasses.replace(tracker.settings, min_hits=2))
    assert tracker.update(drift(4), HW)[1] == TrackLabel(0, TRACK_TENTATIVE)
    assert ids(tracker.update(drift(5), HW)) == [1, 4, 3]
    with pytest.raises(TypeError, match="expected TrackingSettings, got dict"):
        tracker.configure({"min_hits": 1})
