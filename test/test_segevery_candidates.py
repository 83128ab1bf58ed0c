"""The decode pipeline every SegEvery strategy shares (segment_prompts and its stages, the
candidates container, the clean-up) and the Predictor's low-res path it runs on, mostly on the
painted-shapes fake backend (:mod:`segevery_scene`).
"""

from __future__ import annotations

import numpy as np
import pytest
from segevery_scene import REGIONS, A, B, C, H, SceneBackend, W, make_scene
from test_masks import special_masks

from segfast_ros.masks import (
    Instance,
    mask_to_rle,
    masks_to_boxes,
    rle_to_mask,
    threshold_windows,
)
from segfast_ros.runtime import Predictor
from segfast_ros.segevery.candidates import (
    CropFrame,
    MaskCandidates,
    StageTimer,
    clean_small_regions,
    segment_prompts,
)
from segfast_ros.segevery.hierarchical import Coverage
from segfast_ros.segevery.settings import MaskFilter

#: SAM's filter (the MaskFilter defaults).
SAM = MaskFilter()


# ------------------------------------------------------------------ predictor low-res path


def test_predict_low_res_then_upscale_equals_predict() -> None:
    predictor, backend, _ = make_scene()
    points = np.array([[[10.0, 10.0]], [[48.0, 43.0]], [[60.0, 2.0]]])
    labels = np.ones((3, 1))
    low_res, iou = predictor.predict_low_res(points, labels)
    assert low_res.shape == (3, 3, 64, 64) and iou.shape == (3, 3)
    full = predictor.predict(points, labels, return_logits=True)
    np.testing.assert_array_equal(low_res, full.low_res_logits)
    np.testing.assert_array_equal(iou, full.scores)
    np.testing.assert_array_equal(predictor.upscale(low_res), full.masks)
    np.testing.assert_array_equal(predictor.upscale(low_res[1, 0]), full.masks[1, 0])
    # Unbatched calls drop the batch axis, as predict does.
    single, single_iou = predictor.predict_low_res(points[0], labels[0], multimask_output=False)
    assert single.shape == (1, 64, 64) and single_iou.shape == (1,)
    empty, empty_iou = predictor.predict_low_res(np.zeros((0, 1, 2)), np.zeros((0, 1)))
    assert empty.shape == (0, 3, 64, 64) and empty_iou.shape == (0, 3)
    assert len(backend.decoded_points) == 3  # the empty batch never reached the backend
    with pytest.raises(ValueError, match=r"expected low-res logits of shape \(\.\.\., 64, 64\)"):
        predictor.upscale(np.zeros((2, 32, 32), np.float32))
    predictor.reset_image()
    with pytest.raises(ValueError, match="no image is set"):
        predictor.upscale(low_res)
    with pytest.raises(ValueError, match="no image is set"):
        predictor.predict_low_res(points, labels)


# ---------------------------------------------------------------- the decode pipeline


def test_segment_prompts_filters_and_records_prompts() -> None:
    predictor, backend, _ = make_scene()
    points = np.array([[10.0, 10.0], [48.0, 43.0], [10.0, 35.0], [35.0, 30.0], [60.0, 46.0]])
    timer = StageTimer()
    cands = segment_prompts(predictor, SAM, points=points, batch_size=2, timer=timer)
    assert backend.num_decoded == 5
    assert [len(p) for p in backend.decoded_points] == [2, 2, 1]
    # A and B pass; D is unstable, E has a low IoU, the background's whole-image mask too.
    assert [np.array_equal(rle_to_mask(r), REGIONS[A]) for r in cands.rles] == [True, False]
    np.testing.assert_array_equal(rle_to_mask(cands.rles[1]), REGIONS[B])
    np.testing.assert_array_equal(cands.prompts, points[:2])
    assert cands.scores.tolist() == pytest.approx([0.95, 0.92])
    assert cands.stability.tolist() == [1.0, 1.0]
    assert cands.areas.tolist() == [30 * 24, 8 * 6]
    np.testing.assert_array_equal(cands.boxes, [[0, 0, 30, 24], [44, 40, 52, 46]])
    assert set(timer.ms) == {"decoder", "postprocess"}


def test_segment_prompts_thresholds_disable_at_zero() -> None:
    predictor, _, _ = make_scene()
    points = np.array([[10.0, 35.0], [60.0, 46.0]])  # on D (unstable), on the background
    out = segment_prompts(predictor, MaskFilter(stability_score_thresh=0.0), points=points)
    assert out.stability.tolist() == [0.0]  # D's mask, kept without the filter
    out = segment_prompts(predictor, MaskFilter(pred_iou_thresh=0.0), points=points)
    # Without the IoU filter the whole-image masks pass (twice); D's tokens stay unstable.
    assert out.areas.tolist() == [H * W, H * W]


def test_segment_prompts_with_boxes_and_the_coverage_hook() -> None:
    predictor, _, _ = make_scene()
    boxes = np.array([[5.0, 5.0, 15.0, 15.0], [40.0, 5.0, 56.0, 23.0]])  # centres on A and C
    coverage = Coverage((H, W), high_score_thresh=8.5)
    out = segment_prompts(predictor, SAM, boxes=boxes, multimask_output=False, on_kept=coverage)
    assert out.prompts.shape == (2, 4)
    np.testing.assert_array_equal(out.prompts, boxes)
    np.testing.assert_array_equal(rle_to_mask(out.rles[1]), REGIONS[C])
    # Only A's logits (10) exceed 8.5; C's (5) do not.
    np.testing.assert_array_equal(coverage.covered, REGIONS[A])


def test_segment_prompts_bounds_the_upscale(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, _, _ = make_scene()
    sizes: list[int] = []
    upscale = predictor.upscale_regions

    def spy(low_res: np.ndarray, above: float) -> list:
        sizes.append(len(low_res))
        return upscale(low_res, above)

    monkeypatch.setattr(predictor, "upscale_regions", spy)
    points = np.tile([[10.0, 10.0]], (40, 1))
    budget = 16 * H * W  # pixels: 16 masks of this frame
    segment_prompts(
        predictor,
        MaskFilter(pred_iou_thresh=0.0),
        points=points,
        batch_size=40,
        upscale_budget=budget,
    )
    # 120 masks survive the (disabled) IoU filter; they are upscaled a few at a time.
    assert sum(sizes) == 120 and max(sizes) == 16
    sizes.clear()
    segment_prompts(predictor, SAM, points=points, batch_size=40)
    assert sum(sizes) == 40  # only token 1 passes the IoU filter: nothing else is upscaled


def test_segment_prompts_errors() -> None:
    predictor, backend, _ = make_scene()
    with pytest.raises(ValueError, match="exactly one of points"):
        segment_prompts(predictor, SAM)
    with pytest.raises(ValueError, match="exactly one of points"):
        segment_prompts(predictor, SAM, points=np.zeros((1, 2)), boxes=np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"expected points \(K, 2\), got shape \(3, 3\)"):
        segment_prompts(predictor, SAM, points=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        segment_prompts(predictor, SAM, points=np.zeros((1, 2)), batch_size=0)
    with pytest.raises(TypeError, match="image_hw"):
        CropFrame((0, 0, 64, 48))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"crop_box \[0, 0, 32, 48\] is 32x48"):
        segment_prompts(
            predictor, SAM, points=np.zeros((1, 2)), frame=CropFrame((0, 0, 32, 48), (48, 96))
        )
    with pytest.raises(ValueError, match="upscale budget must be >= 1 pixel"):
        segment_prompts(predictor, SAM, points=np.zeros((1, 2)), upscale_budget=0)
    assert backend.num_decoded == 0  # every error came before the decoder
    empty = segment_prompts(predictor, SAM, points=np.zeros((0, 2)))
    assert len(empty) == 0 and empty.prompts.shape == (0, 2) and backend.num_decoded == 0
    with pytest.raises(ValueError, match="no image is set"):
        segment_prompts(Predictor(SceneBackend({})), SAM, points=np.zeros((1, 2)))


def test_crop_frame_pastes_crop_masks_and_drops_masks_cut_by_the_crop() -> None:
    predictor, _, _ = make_scene()  # 48 x 64, taken as the top-left crop of a 96 x 128 image
    frame = CropFrame((0, 0, 64, 48), (96, 128), edge_tolerance=1.0)
    assert frame.is_crop and not CropFrame.whole((48, 64)).is_crop
    points = np.array([[10.0, 10.0], [48.0, 43.0]])  # on A (left, top edges) and B (inside)
    out = segment_prompts(predictor, SAM, points=points, frame=frame)
    # A touches the image's edges only (kept); B touches none. Both are pasted at (0, 0).
    assert [rle_to_mask(r).shape for r in out.rles] == [(96, 128)] * 2
    np.testing.assert_array_equal(rle_to_mask(out.rles[1])[:48, :64], REGIONS[B])
    shifted = CropFrame((64, 48, 128, 96), (96, 128), edge_tolerance=1.0)
    out = segment_prompts(predictor, SAM, points=points, frame=shifted)
    # Now A touches the crop's inner left and top edges: cut by the crop, dropped.
    assert len(out) == 1
    np.testing.assert_array_equal(out.boxes, [[44 + 64, 40 + 48, 52 + 64, 46 + 48]])
    np.testing.assert_array_equal(out.prompts, [[48.0 + 64, 43.0 + 48]])
    np.testing.assert_array_equal(rle_to_mask(out.rles[0])[48:, 64:], REGIONS[B])
    assert rle_to_mask(out.rles[0]).sum() == REGIONS[B].sum()


def test_crop_frame_rles_equal_the_masks_pasted_into_the_full_frame() -> None:
    masks = special_masks(17, 13)  # empty, full, corners, a border, stripes, noise
    logits = np.where(masks, 5.0, -5.0).astype(np.float32)
    windows = threshold_windows(logits)
    kept = np.arange(1, len(masks))  # the empty mask is never kept
    for box, image_hw in [
        ((0, 0, 13, 17), (17, 13)),
        ((5, 0, 18, 17), (17, 30)),
        ((0, 4, 13, 21), (40, 13)),
        ((7, 9, 20, 26), (31, 22)),
    ]:
        x0, y0, x1, y1 = box
        pasted = np.zeros((len(kept), *image_hw), bool)
        pasted[:, y0:y1, x0:x1] = masks[kept]
        assert CropFrame(box, image_hw).rles(windows, kept) == mask_to_rle(pasted)


# --------------------------------------------------------- the candidates container and clean-up


def candidates_from(masks: np.ndarray, scores: list[float]) -> MaskCandidates:
    n = len(masks)
    return MaskCandidates(
        rles=mask_to_rle(masks),
        boxes=masks_to_boxes(masks),
        scores=np.asarray(scores, np.float32),
        stability=np.linspace(0.9, 1.0, n).astype(np.float32),
        areas=masks.sum(axis=(1, 2)).astype(np.int64),
        prompts=np.arange(2 * n, dtype=np.float32).reshape(n, 2),
    )


def test_mask_candidates_take_concat_and_instances() -> None:
    masks = special_masks(6, 5)[:4]
    cands = candidates_from(masks, [0.1, 0.4, 0.3, 0.2])
    assert len(cands) == 4
    best = cands.sorted_by_score()
    assert best.scores.tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    both = MaskCandidates.concat([cands.take([3]), cands.take([0, 1])])
    assert both.rles == [cands.rles[3], cands.rles[0], cands.rles[1]]
    np.testing.assert_array_equal(both.prompts, cands.prompts[[3, 0, 1]])
    empty = MaskCandidates.concat([], prompt_dim=4)
    assert len(empty) == 0 and empty.prompts.shape == (0, 4)
    assert len(MaskCandidates.empty().take([])) == 0
    instances = cands.to_instances()
    assert all(isinstance(i, Instance) for i in instances)
    first = instances[1]
    assert first.score == pytest.approx(0.4) and first.area == int(masks[1].sum())
    np.testing.assert_array_equal(first.box, cands.boxes[1])
    np.testing.assert_array_equal(first.prompt, [2, 3])
    assert first.box.dtype == np.float32


def test_clean_small_regions_fixes_masks_and_prefers_unchanged_ones() -> None:
    big = np.zeros((20, 20), bool)
    big[2:12, 2:12] = True
    holey = big.copy()
    holey[5, 5] = False  # a 1 px hole: same box as `big`, so NMS must choose
    speck = big.copy()
    speck[18, 18] = True  # a far island: its box is larger until cleaned
    cands = candidates_from(np.stack([holey, big, speck]), [0.9, 0.5, 0.7])
    out = clean_small_regions(cands, min_area=4, nms_thresh=0.7)
    # All three become `big`; the unchanged one wins despite the lowest score.
    assert len(out) == 1
    assert out.scores.tolist() == [0.5]
    np.testing.assert_array_equal(rle_to_mask(out.rles[0]), big)
    # Without NMS collisions the cleaned masks get fresh boxes and areas.
    far = np.zeros((20, 20), bool)
    far[14:20, 0:4] = True
    far[0, 19] = True
    out = clean_small_regions(candidates_from(far[None], [0.8]), 4, 0.7)
    np.testing.assert_array_equal(out.boxes, [[0, 14, 4, 20]])
    assert out.areas.tolist() == [24]
    assert clean_small_regions(cands, 0, 0.7) is cands


def test_stage_timer_accumulates() -> None:
    timer = StageTimer()
    for _ in range(2):
        with timer.stage("a"):
            pass
    with pytest.raises(RuntimeError), timer.stage("b"):
        raise RuntimeError
    assert set(timer.ms) == {"a", "b"} and all(v >= 0 for v in timer.ms.values())


def test_nms_preferring_lets_the_lower_rank_win() -> None:
    same = np.zeros((3, 6, 5), bool)
    same[:, 1:4, 1:4] = True  # three identical masks: NMS keeps one
    cands = candidates_from(same, [0.9, 0.5, 0.7])
    assert cands.nms(0.7).scores.tolist() == pytest.approx([0.9])
    assert cands.nms_preferring([2, 1, 1], 0.7).scores.tolist() == pytest.approx([0.7])
    assert len(cands.nms_preferring([0, 0, 0], 1.0)) == 3
    # Everything kept: the order is rank first, then score.
    kept = cands.nms_preferring([1, 0, 1], 1.0)
    assert kept.scores.tolist() == pytest.approx([0.5, 0.9, 0.7])
