"""Prompted targets (tracking.targets) with the shipped demo model on generated sequences.

The model, the sequence and the ground-truth helpers are in tracking_frames.py (shared with
test_tracking_targets_appearance.py).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from tracking_frames import (
    FRAMES,
    HW,
    OBJECT,
    CountingBackend,
    box_of,
    demo_backend,
    encoded_sequence,
    gt_mask,
    instances_of,
    iou,
    on,
)

from segfast_ros.runtime.predictor import Predictor
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import TRACK_LOST, TRACK_TRACKED
from segfast_ros.tracking.target_state import TargetState
from segfast_ros.tracking.targets import MAX_TARGET_ID, TargetError, TargetTracker


@pytest.fixture(scope="module")
def backend() -> CountingBackend:
    return demo_backend()


@pytest.fixture(scope="module")
def frames(backend: CountingBackend) -> list:
    """The sequence, each frame with its embedding (encoded once)."""
    return encoded_sequence(backend)


# ---------------------------------------------------------------------------- following


def test_a_box_target_follows_its_object_and_is_lost_when_it_leaves(backend, frames) -> None:
    tracker = TargetTracker()
    (added,) = tracker.add(on(backend, frames[0]), 0, boxes=box_of(frames[0], OBJECT))
    assert added.target_id == 1 and added.state == TRACK_TRACKED
    assert iou(added.mask, gt_mask(frames[0], OBJECT)) > 0.9
    np.testing.assert_array_equal(added.prompt, box_of(frames[0], OBJECT))
    last_seen = None
    for t in range(1, FRAMES):
        (result,) = tracker.step(on(backend, frames[t]), t)
        assert result.frame_key == t
        gt = gt_mask(frames[t], OBJECT)
        if result.state == TRACK_TRACKED:
            assert gt is not None, f"frame {t}: reported on a frame its object has left"
            others = [iou(result.mask, m) for m in frames[t].masks]
            own = iou(result.mask, gt)
            assert own == max(others) and own > 0.85, f"frame {t}: IoU {own:.2f}"
            assert result.area == result.mask.sum() and result.prompt.shape == (4,)
            last_seen = result.box
        else:
            assert result.mask is None and result.area == 0 and result.score == 0.0
            np.testing.assert_array_equal(result.box, last_seen)  # where it was last seen
    # Tracked while its object is whole, lost within 3 frames of it leaving, and it stays so.
    states = [r.state for r in tracker.results()]
    assert states == [TRACK_LOST]
    assert gt_mask(frames[FRAMES - 1], OBJECT) is None


def test_n_targets_cost_one_decoder_call_per_frame(backend, frames) -> None:
    scene = frames[0]
    big = np.flatnonzero(scene.masks.sum(axis=(1, 2)) > 800)[:5]
    assert len(big) >= 3
    tracker = TargetTracker(TrackingSettings(lost_score=0.0, lost_stability=0.0))
    before = backend.decode_calls
    added = tracker.add(on(backend, scene), 0, boxes=scene.boxes[big])
    assert [r.target_id for r in added] == list(range(1, len(big) + 1))
    assert backend.decode_calls - before == 1 and tracker.decoder_calls == 1
    for t in (1, 2, 3):
        before = backend.decode_calls
        results = tracker.step(on(backend, frames[t]), t)
        assert backend.decode_calls - before == 1
        assert [r.target_id for r in results] == [r.target_id for r in added]
        assert all(r.frame_key == t for r in results if r.state == TRACK_TRACKED)
    assert tracker.decoder_calls == 4
    # Nothing older than the frame: no decode at all.
    before = backend.decode_calls
    tracker.step(on(backend, frames[3]), 3)
    assert backend.decode_calls == before and tracker.decoder_calls == 4


def test_a_removed_object_is_lost_and_not_found_on_the_others(backend, frames) -> None:
    first, second = frames[0], frames[1]
    others = [
        i for i in np.flatnonzero(first.masks.sum(axis=(1, 2)) > 800) if first.ids[i] != OBJECT
    ]
    tracker = TargetTracker()
    boxes = np.concatenate([box_of(first, OBJECT)[None], first.boxes[others[:2]]])
    tracker.add(on(backend, first), 0, boxes=boxes)
    # Frame 1 with the object painted out.
    hole = cv2.dilate(gt_mask(second, OBJECT).astype(np.uint8), np.ones((7, 7), np.uint8))
    image = cv2.inpaint(second.image, hole, 5, cv2.INPAINT_TELEA)
    predictor = Predictor(backend)
    predictor.set_image(image)
    target, *rest = tracker.step(predictor, 1)
    assert target.state == TRACK_LOST and target.mask is None and target.area == 0
    assert [r.state for r in rest] == [TRACK_TRACKED, TRACK_TRACKED]
    # Lost targets are not decoded again: with only the others removed, no decoder call.
    tracker.remove([r.target_id for r in rest])
    before = backend.decode_calls
    (again,) = tracker.step(on(backend, frames[2]), 2)
    assert again.state == TRACK_LOST and again.frame_key == 2 and backend.decode_calls == before


def test_a_lost_target_is_reacquired_from_segevery_or_the_planner(backend, frames) -> None:
    tracker = TargetTracker()
    tracker.add(on(backend, frames[0]), 0, boxes=box_of(frames[0], OBJECT))
    predictor = Predictor(backend)
    predictor.set_image(np.full((*HW, 3), 128, np.uint8))  # the view is blocked
    (lost,) = tracker.step(predictor, 1)
    assert lost.state == TRACK_LOST
    found = instances_of(frames[1])
    # SegEvery of the frame it was lost on is not newer: nothing happens.
    assert tracker.reacquire(found, 1) == []
    # Instances that do not overlap its last mask do not bring it back.
    mine = int(np.flatnonzero(frames[1].ids == OBJECT)[0])
    assert tracker.reacquire(found[:mine] + found[mine + 1 :], 2) == []
    assert tracker.reacquire(found, 2) == [1]
    (back,) = tracker.results()
    assert back.state == TRACK_TRACKED and back.frame_key == 2
    (result,) = tracker.step(on(backend, frames[3]), 3)
    assert result.state == TRACK_TRACKED and iou(result.mask, gt_mask(frames[3], OBJECT)) > 0.85
    # The planner prompts it again after it is lost: same ID, tracked.
    tracker.step(predictor, 4)
    (again,) = tracker.add(on(backend, frames[5]), 5, boxes=box_of(frames[5], OBJECT), ids=[1])
    assert again.target_id == 1 and again.state == TRACK_TRACKED and len(tracker) == 1


def test_an_instance_a_tracked_target_follows_does_not_reacquire_another(backend, frames):
    tracker = TargetTracker()
    box = box_of(frames[0], OBJECT)
    tracker.add(on(backend, frames[0]), 0, boxes=np.tile(box, 2))  # twice the same object
    blank = Predictor(backend)
    blank.set_image(np.full((*HW, 3), 128, np.uint8))
    tracker.step(blank, 1)
    tracker.add(on(backend, frames[2]), 2, boxes=box_of(frames[2], OBJECT), ids=[1])
    assert [r.state for r in tracker.results()] == [TRACK_TRACKED, TRACK_LOST]
    # Target 1 follows the object's instance: it does not bring target 2 back.
    assert tracker.reacquire(instances_of(frames[2]), 3) == []
    tracker.remove([1])
    assert tracker.reacquire(instances_of(frames[2]), 3) == [2]


def test_a_single_point_takes_the_best_of_three_masks(backend, frames) -> None:
    scene = frames[0]
    ys, xs = np.nonzero(cv2.erode(gt_mask(scene, OBJECT).astype(np.uint8), np.ones((9, 9))))
    point = [float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5]
    predictor = on(backend, scene)
    best = predictor.predict([point], [1], multimask_output=True).scores.max()
    before = backend.decode_calls
    (result,) = TargetTracker().add(predictor, 0, points=[point], labels=[1])
    assert backend.decode_calls - before == 1
    assert result.score == pytest.approx(float(best)) and result.prompt.shape == (0,)


# ----------------------------------------------------------------------------- requests


def test_bad_prompts_are_value_errors_and_change_nothing(backend, frames) -> None:
    predictor = on(backend, frames[0])
    tracker = TargetTracker()
    tracker.add(predictor, 0, boxes=box_of(frames[0], OBJECT))
    cases = [
        ({"boxes": [10, 10, float("nan"), 50]}, "NaN"),
        ({"boxes": [10, 10, 50, 50, 0, 0, 400, 50]}, r"box 1 .* outside the image of 320x240"),
        ({"points": [[500, 10]], "labels": [1]}, r"outside the image of 320x240"),
        ({"points": [[10, 10]], "labels": []}, "one label per point"),
        ({}, "no prompt"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            tracker.add(predictor, 0, **kwargs)
    assert len(tracker) == 1 and tracker.decoder_calls == 1


def test_limits_unknown_ids_remove_and_clear(backend, frames) -> None:
    predictor = on(backend, frames[0])
    box = box_of(frames[0], OBJECT)
    tracker = TargetTracker(TrackingSettings(max_targets=3))
    assert [r.target_id for r in tracker.add(predictor, 0, boxes=np.tile(box, 2))] == [1, 2]
    calls = tracker.decoder_calls
    with pytest.raises(
        TargetError,
        match=r"adding 2 targets would make 4 targets; "
        r"tracking.max_targets is 3",
    ):
        tracker.add(predictor, 0, boxes=np.tile(box, 2))
    with pytest.raises(TargetError, match=r"unknown target ids: 7, 9 \(targets now: 1, 2\)"):
        tracker.remove([1, 7, 9])
    with pytest.raises(TargetError, match="unknown target ids: 5"):
        tracker.add(predictor, 0, boxes=box, ids=[5])
    with pytest.raises(TargetError, match="more than once: 1"):
        tracker.add(predictor, 0, boxes=np.tile(box, 2), ids=[1, 1])
    with pytest.raises(TargetError, match="2 prompt sets for 1 ids"):
        tracker.add(predictor, 0, boxes=np.tile(box, 2), ids=[1])
    assert tracker.ids() == [1, 2] and tracker.decoder_calls == calls
    assert tracker.remove([2]) == [2]
    # IDs are not reused while in use; the next one counts on.
    assert [r.target_id for r in tracker.add(predictor, 0, boxes=np.tile(box, 2))] == [3, 4]
    assert tracker.clear() == [1, 3, 4] and len(tracker) == 0 and tracker.results() == []


def test_ids_wrap_after_65535_and_skip_those_in_use(backend, frames) -> None:
    predictor = on(backend, frames[0])
    box = box_of(frames[0], OBJECT)
    tracker = TargetTracker()
    tracker.add(predictor, 0, boxes=np.tile(box, 2))  # 1, 2
    tracker._next_id = MAX_TARGET_ID - 1  # as after 65532 adds and removes
    ids = [r.target_id for r in tracker.add(predictor, 0, boxes=np.tile(box, 3))]
    assert ids == [MAX_TARGET_ID - 1, MAX_TARGET_ID, 3]


def test_prompt_box_moves_with_the_object_and_leaving_the_view_is_lost() -> None:
    mask = np.zeros(HW, bool)
    mask[100:140, 260:300] = True
    state = TargetState(
        result=None, hw=HW, box=np.array([260.0, 100, 300, 140]), key=10, mask=mask
    )
    state.velocity, state.interval = np.array([30.0, 0, 30, 0]), 1
    box, why = state.prompt_box(11, HW)  # moved 30 px, padded by 5 % a side, clipped
    assert why == "" and box.tolist() == [288.0, 98.0, 320.0, 142.0]
    box, why = state.prompt_box(14, HW)  # 3 intervals ahead: beyond the edge
    assert box is None and why == "left the view"
    assert state.prompt_box(11, (480, 640)) == (
        None,
        "the image size changed from (240, 320) to (480, 640)",
    )


def test_adding_while_another_thread_steps(backend, frames) -> None:
    tracker = TargetTracker(TrackingSettings(lost_score=0.0, lost_stability=0.0, max_targets=64))
    tracker.add(on(backend, frames[0]), 0, boxes=box_of(frames[0], OBJECT))
    errors: list[BaseException] = []

    def stepping() -> None:
        try:
            for t in range(1, 5):
                results = tracker.step(on(backend, frames[t]), t)
                ids = [r.target_id for r in results]
                assert ids == sorted(ids) and len(set(ids)) == len(ids)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    worker = threading.Thread(target=stepping)
    worker.start()
    added = []
    for i in range(6):
        added += tracker.add(on(backend, frames[1]), 1, boxes=box_of(frames[1], OBJECT))
        if i % 2:
            tracker.remove([added[-1].target_id])
    worker.join(timeout=60)
    assert not worker.is_alive() and not errors
    assert len(tracker) == 4 and len({r.target_id for r in tracker.results()}) == 4


class NothingBackend(CountingBackend):
    """The demo encoder, but a decoder whose every mask is empty (logits -10): isolates what
    add() does with a prompt that segments nothing."""

    def decode(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low_res, iou = super().decode(*inputs)
        return np.full_like(low_res, -10.0), iou


def test_a_prompt_that_segments_nothing_adds_no_target(backend, frames) -> None:
    nothing = NothingBackend(backend.backend)
    tracker = TargetTracker()
    tracker.add(on(backend, frames[0]), 0, boxes=box_of(frames[0], OBJECT))
    box = box_of(frames[0], OBJECT)
    with pytest.raises(TargetError, match=r"prompt set\(s\) 0, 1 segment nothing"):
        tracker.add(on(nothing, frames[0]), 0, boxes=np.tile(box, 2))
    assert tracker.ids() == [1]
