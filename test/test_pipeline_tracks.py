"""pipeline.tracks: the trackers' output as Instance.msg fields, and Tracking as the adapters
hold it (SegEvery track IDs, targets, re-acquisition), with the shipped demo model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.masks import Instance, mask_to_rle
from segfast_ros.pipeline.render import instance_record, mask_record
from segfast_ros.pipeline.tracks import (
    Tracking,
    decoded_count,
    due_targets,
    target_records,
    targets_label_image,
    tracked_records,
)
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.tracking.instances import TrackLabel
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import (
    TRACK_LOST,
    TRACK_NONE,
    TRACK_TENTATIVE,
    TRACK_TRACKED,
)
from segfast_ros.tracking.targets import TargetResult

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
HW = (6, 8)


def disc(cx: int, cy: int, r: int, hw=HW) -> np.ndarray:
    ys, xs = np.mgrid[: hw[0], : hw[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def tracked(target_id: int, mask: np.ndarray, key: int = 5) -> TargetResult:
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    prompt = box + np.float32(0.5)
    return TargetResult(
        target_id, TRACK_TRACKED, key, mask, box, 0.8, 0.9, int(mask.sum()), prompt
    )


def lost(target_id: int, box, key: int = 5) -> TargetResult:
    box = np.asarray(box, np.float32)
    return TargetResult(
        target_id, TRACK_LOST, key, None, box, 0.0, 0.0, 0, np.zeros(0, np.float32)
    )


def instance(mask: np.ndarray) -> Instance:
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    return Instance(mask_to_rle(mask[None])[0], box, 0.9, 0.95, int(mask.sum()), box[:2] + 1)


def same_record(a, b) -> bool:
    return (
        a.scalar_fields() == b.scalar_fields()
        and a.roi == b.roi
        and np.array_equal(a.rle_counts, b.rle_counts)
        and np.array_equal(a.prompt, b.prompt)
    )


def test_target_records_are_render_records_with_the_track_fields() -> None:
    a = disc(2, 2, 1)
    results = [tracked(4, a), lost(7, [1.2, 2.0, 5.5, 6.0])]
    first, second = target_records(results, HW)
    expected = mask_record(a, 0.8, 0.9, 0, results[0].prompt)
    assert same_record(first, dataclasses.replace(expected, track_id=4, track_state=TRACK_TRACKED))
    # Lost: no pixels (one run of H * W background), the box where it was last seen.
    assert second.id == 1 and second.track_id == 7 and second.track_state == TRACK_LOST
    assert second.area == 0 and second.score == 0.0 and second.stability == 0.0
    assert second.rle_counts.tolist() == [HW[0] * HW[1]] and second.roi == (1, 2, 5, 4)
    assert second.prompt.shape == (0,)
    with pytest.raises(ValueError, match=r"target 4: mask of shape \(6, 8\), expected"):
        target_records(results, (8, 6))


def test_label_image_pixel_is_the_target_id_lower_ids_win() -> None:
    a, b = disc(2, 2, 2), disc(4, 3, 2)
    labels = targets_label_image([tracked(9, a), tracked(3, b), lost(5, [0, 0, 8, 6])], HW)
    assert labels.dtype == np.uint16 and labels.shape == HW
    assert (labels[b] == 3).all()
    assert (labels[a & ~b] == 9).all() and (labels[~(a | b)] == 0).all()
    assert not targets_label_image([], HW).any()
    with pytest.raises(ValueError, match="expected"):
        targets_label_image([tracked(1, a)], (8, 6))


def test_tracked_records_carry_the_labels() -> None:
    insts = [instance(disc(2, 2, 1)), instance(disc(5, 3, 1))]
    labels = [TrackLabel(0, TRACK_TENTATIVE), TrackLabel(12, TRACK_TRACKED)]
    records = tracked_records(insts, labels)
    assert [(r.id, r.track_id, r.track_state) for r in records] == [
        (0, 0, TRACK_TENTATIVE),
        (1, 12, TRACK_TRACKED),
    ]
    plain = instance_record(insts[1], 1)
    assert same_record(records[1], dataclasses.replace(plain, track_id=12, track_state=2))
    with pytest.raises(ValueError, match="1 track labels for 2 instances"):
        tracked_records(insts, labels[:1])


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(OnnxRuntimeBackend.from_dir(MODEL_DIR, "fp32", intra_op_threads=1))


def test_tracking_as_an_adapter_runs_it(predictor: Predictor) -> None:
    seq = generate_sequence(4, 30, (240, 320))  # slow pan: the IDs can follow
    hw = (240, 320)
    tracking = Tracking(TrackingSettings(min_hits=2))
    predictor.set_image(seq[0].image)
    assert tracking.on_frame(predictor, 0) is None  # no targets: nothing to publish
    # SegEvery frames: track IDs once born (min_hits=2), in the instances' order.
    frames = [[instance(m) for m in scene.masks] for scene in seq]
    first = tracking.on_segevery(frames[0], 0, hw)
    assert [r.track_state for r in first] == [TRACK_TENTATIVE] * len(first)
    second = tracking.on_segevery(frames[1], 1, hw)
    both = [r for r, obj in zip(second, seq[1].ids, strict=True) if obj in seq[0].ids]
    assert len(both) >= 4 and all(r.track_state == TRACK_TRACKED for r in both)
    assert len({r.track_id for r in both}) == len(both) and min(r.track_id for r in both) > 0
    # A target, lost on a blocked view, is re-acquired from the next SegEvery frame.
    big = int(np.argmax(seq[1].masks.sum(axis=(1, 2))))
    predictor.set_image(seq[1].image)
    (added,) = tracking.targets.add(predictor, 1, boxes=seq[1].boxes[big])
    predictor.set_image(np.full((*hw, 3), 128, np.uint8))
    assert [r.state for r in tracking.on_frame(predictor, 2)] == [TRACK_LOST]
    tracking.on_segevery(frames[3], 3, hw)
    predictor.set_image(seq[3].image)
    (result,) = tracking.on_frame(predictor, 3)
    assert result.target_id == added.target_id and result.state == TRACK_TRACKED
    # segevery_ids off: SegEvery records carry no identity.
    plain = Tracking(segevery_ids=False).on_segevery(frames[0], 0, hw)
    assert all(r.track_id == 0 and r.track_state == TRACK_NONE for r in plain)


def test_configure_reaches_both_trackers() -> None:
    tracking = Tracking()
    settings = TrackingSettings(max_targets=3, match_iou=0.6)
    tracking.configure(settings)
    assert tracking.targets.settings == settings and tracking.instances.settings == settings


def _recoloured(scene, obj: int) -> np.ndarray:
    """``scene``'s image with object ``obj`` in other colours (inverted, channels rotated)."""
    image = scene.image.copy()
    mask = scene.masks[list(scene.ids).index(obj)]
    image[mask] = (255 - image[mask])[:, [1, 2, 0]]
    return image


@pytest.mark.parametrize("with_images", [True, False])
def test_on_frame_images_give_a_target_added_without_one_its_colours(
    predictor: Predictor, with_images: bool
) -> None:
    """A target added without an image (the node's ADD on an older cached frame) takes its
    colour model at its first confident step with one; a later frame where its object has
    other colours is then lost. Without images (the control) the same frames keep it."""
    seq = generate_sequence(4, 30, (240, 320))
    big = int(np.argmax(seq[1].masks.sum(axis=(1, 2))))
    tracking = Tracking()
    predictor.set_image(seq[1].image)
    (added,) = tracking.targets.add(predictor, 1, boxes=seq[1].boxes[big])  # no image
    predictor.set_image(seq[2].image)
    (step,) = tracking.on_frame(predictor, 2, seq[2].image if with_images else None)
    assert step.state == TRACK_TRACKED  # the confident step that takes the colours
    image = _recoloured(seq[3], seq[1].ids[big])
    predictor.set_image(image)
    (result,) = tracking.on_frame(predictor, 3, image if with_images else None)
    assert result.target_id == added.target_id
    assert result.state == (TRACK_LOST if with_images else TRACK_TRACKED)


@pytest.mark.parametrize("with_image", [True, False])
def test_on_segevery_image_lets_colour_reacquire_a_moved_target(
    predictor: Predictor, with_image: bool
) -> None:
    """A lost target whose object has moved (IoU 0.29 with its last mask, under
    reacquire_iou) comes back from a SegEvery frame by colour only when the image is given."""
    seq, hw = generate_sequence(4, 30, (240, 320)), (240, 320)
    big = int(np.argmax(seq[1].masks.sum(axis=(1, 2))))
    tracking = Tracking()
    predictor.set_image(seq[1].image)
    tracking.targets.add(predictor, 1, boxes=seq[1].boxes[big], image=seq[1].image)
    grey = np.full((*hw, 3), 128, np.uint8)
    predictor.set_image(grey)
    assert [r.state for r in tracking.on_frame(predictor, 2, grey)] == [TRACK_LOST]
    later = seq[15]
    moved = later.masks[list(later.ids).index(seq[1].ids[big])]
    assert (moved & seq[1].masks[big]).sum() / (moved | seq[1].masks[big]).sum() < 0.5
    insts = [instance(m) for m in later.masks]
    tracking.on_segevery(insts, 15, hw, later.image if with_image else None)
    (result,) = tracking.targets.results()
    assert result.state == (TRACK_TRACKED if with_image else TRACK_LOST)


def test_decoded_count_counts_the_targets_a_step_decoded(predictor: Predictor) -> None:
    seq = generate_sequence(4, 3, (240, 320))
    tracking = Tracking()
    predictor.set_image(seq[0].image)
    big = int(np.argmax(seq[0].masks.sum(axis=(1, 2))))
    tracking.targets.add(predictor, 0, boxes=seq[0].boxes[big])
    # Decoded on a blocked view, and lost there: it was decoded, so it counts.
    predictor.set_image(np.full((240, 320, 3), 128, np.uint8))
    due = due_targets(tracking.targets.results(), 1)
    lost = tracking.on_frame(predictor, 1)
    assert lost is not None and [r.state for r in lost] == [TRACK_LOST]
    assert due == {lost[0].target_id} and decoded_count(due, lost) == 1
    # Lost before the step: reported on the next frame without a decode, so it does not count,
    # although its result carries the last box prompt.
    predictor.set_image(seq[2].image)
    due = due_targets(tracking.targets.results(), 2)
    still = tracking.on_frame(predictor, 2)
    assert still is not None and still[0].state == TRACK_LOST and still[0].prompt.size == 4
    assert due == set() and decoded_count(due, still) == 0
