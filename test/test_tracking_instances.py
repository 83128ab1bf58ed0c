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
from segfast_ros.tracking.overlap import Footprints
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


# ----------------------------------------------------------------- what the cascade is for


def moved(masks: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``masks`` (N, H, W) moved by whole pixels; what leaves the image is dropped."""
    out = np.zeros_like(masks)
    n, ys, xs = np.nonzero(masks)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < masks.shape[1]) & (xs >= 0) & (xs < masks.shape[2])
    out[n[keep], ys[keep], xs[keep]] = True
    return out


def test_footprints_shifted_are_the_moved_masks():
    rng = np.random.default_rng(0)
    hw = (150, 70)  # three blocks of rows, the last one partial
    masks = rng.random((5, *hw)) < 0.3
    masks[0] = False
    masks[0, 60:70, 10:20] = True  # across a block edge
    shifts = [(3, 5), (-7, -64), (0, 130), (-80, 0), (0, 0)]  # off the image: in part, wholly
    got = Footprints.from_masks(masks).shifted([s[0] for s in shifts], [s[1] for s in shifts])
    want = Footprints.from_masks(
        np.stack([moved(m[None], *s)[0] for m, s in zip(masks, shifts, strict=True)])
    )
    for name in ("areas", "indptr", "blocks", "words"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.areas[3] == 0 and 0 < got.areas[2] < masks[2].sum()
    with pytest.raises(ValueError, match=r"one integer shift per mask \(5\)"):
        Footprints.from_masks(masks).shifted([1, 2], [1, 2])
    with pytest.raises(ValueError, match="one integer shift per mask"):
        Footprints.from_masks(masks).shifted(np.zeros(5), np.zeros(5))


def test_a_tentative_track_does_not_take_the_instance_of_a_born_one():
    # One object seen as two overlapping masks on frame 1 (IoU 0.5, not duplicates): the first
    # continues track 1, the second starts a tentative track. On frame 2 one mask is left,
    # closer to the tentative track's (IoU 0.85 against 0.41): it is still object 1.
    tracker = InstanceTracker(TrackingSettings(min_hits=2, match_iou=0.3))
    assert tracker.update(rects([(0, 60)]), HW) == [TrackLabel(0, TRACK_TENTATIVE)]
    assert tracker.update(rects([(0, 60), (20, 80)]), HW) == [
        TrackLabel(1, TRACK_TRACKED),
        TrackLabel(0, TRACK_TENTATIVE),
    ]
    assert tracker.update(rects([(25, 85)]), HW) == [TrackLabel(1, TRACK_TRACKED)]
    assert tracker.track_ids == [1]


def test_a_lost_track_is_looked_for_where_its_motion_took_it():
    # A disc moving 8 px a frame is hidden for 3 frames: it comes back 32 px on, more than its
    # size (no overlap with where it was last seen), where its velocity puts it.
    tracker = InstanceTracker(TrackingSettings(min_hits=1, max_missed=3))
    for t in range(3):
        assert ids(tracker.update(discs([(20 + 8 * t, 30), (140, 100)]), HW)) == [1, 2]
    for _ in range(3):
        assert ids(tracker.update(discs([(140, 100)]), HW)) == [2]
    assert ids(tracker.update(discs([(20 + 8 * 6, 30), (140, 100)]), HW)) == [1, 2]
    # A disc that appears at the same place with no motion before is someone new.
    tracker = InstanceTracker(TrackingSettings(min_hits=1, max_missed=3))
    assert ids(tracker.update(discs([(20, 60)]), HW)) == [1]
    for _ in range(3):
        tracker.update([], HW)
    assert ids(tracker.update(discs([(68, 60)]), HW)) == [2]


def test_an_object_segmented_twice_keeps_one_id():
    # SegEvery returns the disc twice (masks of IoU ~0.9): one ID, not two.
    a, b = discs([(60, 60)], 14), discs([(61, 60)], 14)
    tracker = InstanceTracker(TrackingSettings(min_hits=2, max_missed=2))
    tentative = TrackLabel(0, TRACK_TENTATIVE)
    assert tracker.update(a + b, HW) == [tentative, tentative]
    assert tracker.update(b + a, HW) == [tentative, TrackLabel(1, TRACK_TRACKED)]
    for _ in range(3):
        assert ids(tracker.update(a + b, HW)) == [1, 0]
    assert tracker.track_ids == [1] and len(tracker) == 1


def test_a_born_track_that_becomes_a_duplicate_gives_way_to_the_older():
    # Two tracks: a whole disc (ID 1) and its right half (ID 2). The half grows into a second
    # copy of the whole disc: track 2 misses while the duplication lasts and dies after
    # max_missed; track 1 goes on. Listed in either order, the older ID keeps the object.
    yy, xx = np.mgrid[0 : HW[0], 0 : HW[1]]
    disc = (xx - 60) ** 2 + (yy - 60) ** 2 < 16**2
    whole, half = as_instances(disc[None]), as_instances((disc & (xx >= 60))[None])
    tracker = InstanceTracker(TrackingSettings(min_hits=1, max_missed=2))
    assert ids(tracker.update(whole + half, HW)) == [1, 2]
    assert ids(tracker.update(half + whole, HW)) == [2, 1]
    twin = discs([(61, 60)], 16)  # the half grew to the whole disc (IoU with it ~0.94)
    for frame in range(3):
        assert ids(tracker.update(twin + whole, HW)) == [0, 1]
        assert tracker.track_ids == ([1, 2] if frame < 2 else [1])
    assert ids(tracker.update(whole + twin, HW)) == [1, 0]
