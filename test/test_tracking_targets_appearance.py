"""Prompted targets with frame images: the appearance cue (tracking.appearance) on the demo model.

A target keeps the colours of the mask it was added with. These tests show what the cue changes
(a target on a differently coloured object is lost, not followed; re-acquisition by colour) and
what it must not (min_appearance 0 is exactly the tracker without images).
"""

from __future__ import annotations

import numpy as np
import pytest
from tracking_frames import (
    HW,
    OBJECT,
    CountingBackend,
    as_instances,
    box_of,
    demo_backend,
    encoded,
    encoded_sequence,
    gt_mask,
    instances_of,
    iou,
    on,
)

from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import TRACK_LOST, TRACK_TRACKED
from segfast_ros.tracking.targets import TargetTracker


@pytest.fixture(scope="module")
def backend() -> CountingBackend:
    return demo_backend()


@pytest.fixture(scope="module")
def frames(backend: CountingBackend) -> list:
    return encoded_sequence(backend)


def recoloured(scene, obj: int) -> np.ndarray:
    """``scene``'s image with object ``obj`` replaced by one of the opposite colours."""
    image = scene.image.copy()
    mask = gt_mask(scene, obj)
    image[mask] = 255 - image[mask]
    return image


def added(backend, scene, settings: TrackingSettings | None = None) -> TargetTracker:
    """A tracker with one target on OBJECT, added with ``scene``'s image."""
    tracker = TargetTracker(settings)
    tracker.add(on(backend, scene), 0, boxes=box_of(scene, OBJECT), image=scene.image)
    return tracker


def lost_on_a_blank_frame(backend, frames) -> TargetTracker:
    """A target added on frame 0 and lost on frame 1 (the view blocked)."""
    tracker = added(backend, frames[0])
    blank = np.full((*HW, 3), 128, np.uint8)
    (lost,) = tracker.step(encoded(backend, blank), 1, image=blank)
    assert lost.state == TRACK_LOST
    return tracker


def test_an_object_replaced_by_another_colour_is_lost_with_the_cue(backend, frames) -> None:
    second = frames[1]
    swapped = recoloured(second, OBJECT)
    predictor = encoded(backend, swapped)
    # Without the cue the same shape in other colours is followed as the target.
    blind = added(backend, frames[0], TrackingSettings(min_appearance=0.0))
    (followed,) = blind.step(predictor, 1, image=swapped)
    assert followed.state == TRACK_TRACKED
    assert iou(followed.mask, gt_mask(second, OBJECT)) > 0.85
    # With it, the target is reported lost where it was last seen.
    tracker = added(backend, frames[0])
    before = tracker.results()[0].box
    (result,) = tracker.step(predictor, 1, image=swapped)
    assert result.state == TRACK_LOST and result.mask is None and result.area == 0
    np.testing.assert_array_equal(result.box, before)
    # The object in its own colours on the same frame stays tracked with the cue.
    (kept,) = added(backend, frames[0]).step(on(backend, second), 1, image=second.image)
    assert kept.state == TRACK_TRACKED and iou(kept.mask, gt_mask(second, OBJECT)) > 0.85


@pytest.mark.parametrize(
    ("image", "shape"),
    [
        (np.zeros((120, 160, 3), np.uint8), r"\(120, 160, 3\) uint8"),
        (np.zeros((*HW, 3), np.float32), r"\(240, 320, 3\) float32"),
        (np.zeros(HW, np.uint8), r"\(240, 320\) uint8"),
    ],
)
def test_a_wrong_image_is_a_value_error_and_changes_nothing(backend, frames, image, shape):
    expected = rf"image must be the frame's \(240, 320, 3\) uint8 image, got shape {shape}"
    tracker = added(backend, frames[0])
    before, calls = tracker.results(), backend.decode_calls
    with pytest.raises(ValueError, match=expected):
        tracker.add(on(backend, frames[0]), 0, boxes=box_of(frames[0], OBJECT), image=image)
    with pytest.raises(ValueError, match=expected):
        tracker.step(on(backend, frames[1]), 1, image=image)
    assert backend.decode_calls == calls and tracker.results() == before  # no decode, no change
    lost = lost_on_a_blank_frame(backend, frames)
    with pytest.raises(ValueError, match=expected):
        lost.reacquire(instances_of(frames[2]), 2, image=image)
    assert lost.results()[0].state == TRACK_LOST


def test_a_lost_target_is_reacquired_by_matching_colours_only(backend, frames) -> None:
    scene = frames[2]
    found = instances_of(scene)
    # Its object in its own colours: back, from that instance.
    tracker = lost_on_a_blank_frame(backend, frames)
    assert tracker.reacquire(found, 2, image=scene.image) == [1]
    (back,) = tracker.results()
    assert back.state == TRACK_TRACKED and iou(back.mask, gt_mask(scene, OBJECT)) == 1.0
    # The same instances on the object recoloured: not it (by overlap alone it would be).
    tracker = lost_on_a_blank_frame(backend, frames)
    assert tracker.reacquire(found, 2, image=recoloured(scene, OBJECT)) == []
    assert tracker.results()[0].state == TRACK_LOST
    assert lost_on_a_blank_frame(backend, frames).reacquire(found, 2) == [1]


def test_colour_reacquires_an_instance_near_but_not_on_the_last_mask(backend, frames) -> None:
    scene = frames[2]
    mask = gt_mask(scene, OBJECT)
    box = box_of(scene, OBJECT)
    dx = int((box[2] - box[0]) * 0.6)  # moved 0.6 of its width: within one box diagonal
    image = np.roll(scene.image, dx, axis=1)
    moved = np.roll(mask, dx, axis=1)
    (inst,) = as_instances(moved[None], (box + np.array([dx, 0, dx, 0]))[None].astype(np.float32))
    tracker = lost_on_a_blank_frame(backend, frames)
    last = added(backend, frames[0]).results()[0].mask  # the mask it was lost with
    assert iou(moved, last) < TrackingSettings().reacquire_iou  # overlap alone: not enough
    assert lost_on_a_blank_frame(backend, frames).reacquire([inst], 2) == []
    assert tracker.reacquire([inst], 2, image=image) == [1]
    # Another colour at the same place does not.
    other = lost_on_a_blank_frame(backend, frames)
    image[moved] = 255 - image[moved]
    assert other.reacquire([inst], 2, image=image) == []


def run(backend, frames, settings: TrackingSettings, with_images: bool) -> list:
    """Every result of a target added on frame 0, stepped to the end with a blocked frame and
    a SegEvery re-acquisition on frame 2 (``with_images``: each frame's image given)."""
    scene0 = frames[0]
    tracker = TargetTracker(settings)
    img = (lambda scene: scene.image) if with_images else (lambda scene: None)
    out = tracker.add(on(backend, scene0), 0, boxes=box_of(scene0, OBJECT), image=img(scene0))
    blank = np.full((*HW, 3), 128, np.uint8)
    out += tracker.step(encoded(backend, blank), 1, image=blank if with_images else None)
    assert tracker.reacquire(instances_of(frames[2]), 2, image=img(frames[2])) == [1]
    out += tracker.results()
    for t in range(3, len(frames)):
        out += tracker.step(on(backend, frames[t]), t, image=img(frames[t]))
    return out


def test_min_appearance_zero_is_exactly_the_tracker_without_images(backend, frames) -> None:
    settings = TrackingSettings(min_appearance=0.0)
    blind = run(backend, frames, settings, with_images=False)
    seeing = run(backend, frames, settings, with_images=True)
    assert len(blind) == len(seeing) == len(frames)
    for a, b in zip(blind, seeing, strict=True):
        assert (a.state, a.frame_key, a.score, a.stability, a.area) == (
            b.state,
            b.frame_key,
            b.score,
            b.stability,
            b.area,
        )
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.prompt, b.prompt)
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None:
            np.testing.assert_array_equal(a.mask, b.mask)
    assert {r.state for r in blind} == {TRACK_TRACKED, TRACK_LOST}  # both paths were taken
