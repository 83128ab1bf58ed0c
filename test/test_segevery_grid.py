"""Grid SegEvery (SAM's automatic mask generator), the decode pipeline it shares with the other
strategies, the Predictor's low-res path and the strategy registry.

A fake backend that segments painted shapes stands in for the model: it proves the pipeline
(filters, NMS, chunking, crops, frames), not mask quality. The end-to-end test at the bottom
runs a real (random-weight) model.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from segfast_ros.masks import (
    StageTimer,
    box_iou,
    masks_to_boxes,
    rle_area,
    rle_to_mask,
    segment_prompts,
)
from segfast_ros.runtime import Backend, ModelInfo, Predictor
from segfast_ros.segevery import SegEvery, SegEveryResult
from segfast_ros.segevery.grid import (
    GridSegEvery,
    build_point_grid,
    generate_crop_boxes,
)
from segfast_ros.segevery.registry import STRATEGIES, build_segevery, strategy_params
from segfast_ros.spec import LABEL_BOX_TL

# The fake model sees a 64 px input and answers at low-res 64: one low-res pixel per input
# pixel, so for a 48 x 64 image no resize happens anywhere and masks are exact.
INFO = ModelInfo("fake-scene", image_size=64, embed_dim=4, embed_size=16)
H, W = 48, 64

# ------------------------------------------------------------------------- the fake scene


@dataclass(frozen=True)
class Shape:
    """How the fake model answers a prompt that lands on pixels painted with ``label``."""

    iou: float = 0.95  # predicted IoU of the right mask (token 1)
    logit: float = 10.0  # its logit inside the shape (-10 outside)


class SceneBackend:
    """Segments painted shapes: a shape is the pixels with R == label and G == 255.

    ``encode`` keeps the (denormalised) label image and returns its index as the embedding.
    ``decode`` looks at the pixel under each prompt point (a box's centre): inside shape ``l``
    token 1 is the shape (``Shape.iou``, ``Shape.logit``), token 2 the same mask with a lower
    IoU (a duplicate to filter), token 3 the whole input (IoU 0.05); on the background only
    token 3. Every call is logged.
    """

    name = "fake-scene"

    def __init__(self, shapes: dict[int, Shape], info: ModelInfo = INFO) -> None:
        self.info = info
        self.shapes = shapes
        self.label_maps: list[np.ndarray] = []
        self.decoded_points: list[np.ndarray] = []  # (B, 2) input-frame points per call

    def encode(self, image: np.ndarray) -> np.ndarray:
        mean = np.array(self.info.pixel_mean)[:, None, None]
        std = np.array(self.info.pixel_std)[:, None, None]
        rgb = np.rint(image[0] * std + mean)
        solid = rgb[1] == 255  # padding and blended edges are not solid
        self.label_maps.append(np.where(solid, rgb[0], 0).astype(np.int64))
        c, e = self.info.embed_dim, self.info.embed_size
        return np.full((1, c, e, e), len(self.label_maps) - 1, np.float32)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = self.label_maps[int(image_embeddings[0, 0, 0, 0])]
        s, lr = self.info.image_size, self.info.low_res_size
        assert lr == s, "the fake answers one low-res pixel per input pixel"
        is_box = point_labels[:, 0] == LABEL_BOX_TL
        points = np.where(is_box[:, None], point_coords[:, :2].mean(axis=1), point_coords[:, 0])
        self.decoded_points.append(points.copy())
        b = len(point_coords)
        masks = np.full((b, 4, lr, lr), -10.0, np.float32)
        iou = np.zeros((b, 4), np.float32)
        masks[:, 3], iou[:, 3] = 10.0, 0.05
        for i, (x, y) in enumerate(points):
            label = int(labels[min(int(y), s - 1), min(int(x), s - 1)])
            shape = self.shapes.get(label)
            if shape is None:
                continue
            inside = labels == label
            for token, score in ((0, shape.iou), (1, shape.iou), (2, shape.iou - 0.3)):
                masks[i, token][inside] = shape.logit
                iou[i, token] = score
        return masks, iou

    @property
    def num_decoded(self) -> int:
        return sum(len(p) for p in self.decoded_points)


def paint(h: int, w: int, regions: dict[int, np.ndarray]) -> np.ndarray:
    """An RGB image with each ``(h, w)`` bool region painted as shape ``label``."""
    image = np.zeros((h, w, 3), np.uint8)
    for label, region in regions.items():
        image[region] = (label, 255, 0)
    return image


def rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    region = np.zeros((h, w), bool)
    region[y0:y1, x0:x1] = True
    return region


def disc(cx: float, cy: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    ys, xs = np.mgrid[:h, :w] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 < r**2


# The scene both grid and hierarchical tests use (48 x 64). With points_per_side 16 the dense
# points are at x = 2, 6, ..., 62 and y = 1.5, 4.5, ..., 46.5; the sparse 4 x 4 grid at
# x = 8, 24, 40, 56 and y = 6, 18, 30, 42.
A, B, C, D, E = 200, 210, 220, 230, 240
REGIONS = {
    A: rect(0, 0, 30, 24),  # big, confident (logit 10 > 8.5): covers round 2
    B: rect(44, 40, 52, 46),  # small, between the sparse points: only the dense grid hits it
    C: disc(48, 14, 9),  # found by sparse points, but not confident enough to cover
    D: rect(4, 30, 20, 44),  # unstable (all logits inside the +/-1 band): filtered
    E: rect(32, 28, 40, 38),  # low predicted IoU: filtered
}
SHAPES = {
    A: Shape(iou=0.95),
    B: Shape(iou=0.92),
    C: Shape(iou=0.90, logit=5.0),
    D: Shape(iou=0.97, logit=0.5),
    E: Shape(iou=0.50),
}


def make_scene(
    regions: dict[int, np.ndarray] = REGIONS, shapes: dict[int, Shape] = SHAPES
) -> tuple[Predictor, SceneBackend, np.ndarray]:
    image = paint(*next(iter(regions.values())).shape, regions) if regions else None
    if image is None:
        image = np.zeros((H, W, 3), np.uint8)
    backend = SceneBackend(shapes)
    predictor = Predictor(backend)
    predictor.set_image(image)
    return predictor, backend, image


def masks_of(result: SegEveryResult) -> list[np.ndarray]:
    return [rle_to_mask(i.rle) for i in result.instances]


def labels_found(result: SegEveryResult, regions: dict[int, np.ndarray] = REGIONS) -> list[int]:
    """The painted label each instance matches exactly, best instance first."""
    found = []
    for mask in masks_of(result):
        match = [label for label, region in regions.items() if np.array_equal(mask, region)]
        assert len(match) == 1, "every instance is exactly one painted shape"
        found.append(match[0])
    return found


def summary(result: SegEveryResult) -> list[tuple]:
    return [
        (tuple(i.rle["counts"]), i.score, i.stability, i.area, tuple(i.box), tuple(i.prompt))
        for i in result.instances
    ]


def check_instances(result: SegEveryResult, hw: tuple[int, int]) -> None:
    """Every instance is well formed: RLE decodes to its box and area, fields typed."""
    for inst in result.instances:
        assert inst.rle["size"] == list(hw)
        mask = rle_to_mask(inst.rle)
        assert inst.area == rle_area(inst.rle) == mask.sum() > 0
        assert inst.box.shape == (4,) and inst.box.dtype == np.float32
        np.testing.assert_array_equal(inst.box, masks_to_boxes(mask[None])[0])
        assert isinstance(inst.score, float) and isinstance(inst.stability, float)
        assert inst.prompt.shape in ((2,), (4,))
    scores = [i.score for i in result.instances]
    assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------------- the point grid


def test_point_grid_is_sams() -> None:
    grid = build_point_grid(4)
    assert grid.shape == (16, 2)
    side = [0.125, 0.375, 0.625, 0.875]
    np.testing.assert_allclose(grid[:4], [[x, 0.125] for x in side])  # X varies fastest
    np.testing.assert_allclose(grid[::4, 1], side)
    np.testing.assert_allclose(build_point_grid(1), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="points_per_side must be >= 1, got 0"):
        build_point_grid(0)


def test_crop_boxes_cover_the_image_with_overlap() -> None:
    crops = generate_crop_boxes((48, 64), 2, 512 / 1500)
    assert crops[0] == ((0, 0, 64, 48), 0)
    assert [layer for _, layer in crops] == [0] + [1] * 4 + [2] * 16
    for layer in (1, 2):
        covered = np.zeros((48, 64), int)
        for (x0, y0, x1, y1), lay in crops:
            if lay == layer:
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
                covered[y0:y1, x0:x1] += 1
        assert covered.min() >= 1 and covered.max() > 1  # everything seen, with overlap
    # layer 1: overlap int(0.341 * 48) = 16, crops of ceil((16 + 64) / 2) x ceil((16 + 48) / 2)
    assert [box for box, layer in crops if layer == 1] == [
        (0, 0, 40, 32),
        (24, 0, 64, 32),
        (0, 16, 40, 48),
        (24, 16, 64, 48),
    ]


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
    out = segment_prompts(predictor, points=points, batch_size=2, timer=timer)
    assert out.prompts_decoded == 5 and backend.num_decoded == 5
    assert [len(p) for p in backend.decoded_points] == [2, 2, 1]
    cands = out.candidates
    # A and B pass; D is unstable, E has a low IoU, the background's whole-image mask too.
    assert [np.array_equal(rle_to_mask(r), REGIONS[A]) for r in cands.rles] == [True, False]
    np.testing.assert_array_equal(rle_to_mask(cands.rles[1]), REGIONS[B])
    np.testing.assert_array_equal(cands.prompts, points[:2])
    assert cands.scores.tolist() == pytest.approx([0.95, 0.92])
    assert cands.stability.tolist() == [1.0, 1.0]
    assert cands.areas.tolist() == [30 * 24, 8 * 6]
    np.testing.assert_array_equal(cands.boxes, [[0, 0, 30, 24], [44, 40, 52, 46]])
    assert out.high_confidence is None
    assert set(timer.ms) == {"decoder", "postprocess"}


def test_segment_prompts_thresholds_disable_at_zero() -> None:
    predictor, _, _ = make_scene()
    points = np.array([[10.0, 35.0], [60.0, 46.0]])  # on D (unstable), on the background
    out = segment_prompts(predictor, points=points, stability_score_thresh=0.0)
    assert out.candidates.stability.tolist() == [0.0]  # D's mask, kept without the filter
    out = segment_prompts(predictor, points=points, pred_iou_thresh=0.0)
    # Without the IoU filter the whole-image masks pass (twice); D's tokens stay unstable.
    assert out.candidates.areas.tolist() == [H * W, H * W]


def test_segment_prompts_with_boxes_and_high_confidence() -> None:
    predictor, _, _ = make_scene()
    boxes = np.array([[5.0, 5.0, 15.0, 15.0], [40.0, 5.0, 56.0, 23.0]])  # centres on A and C
    out = segment_prompts(predictor, boxes=boxes, multimask_output=False, high_score_thresh=8.5)
    assert out.candidates.prompts.shape == (2, 4)
    np.testing.assert_array_equal(out.candidates.prompts, boxes)
    np.testing.assert_array_equal(rle_to_mask(out.candidates.rles[1]), REGIONS[C])
    # Only A's logits (10) exceed 8.5; C's (5) do not.
    np.testing.assert_array_equal(out.high_confidence, REGIONS[A])


def test_segment_prompts_bounds_the_upscale(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, _, _ = make_scene()
    sizes: list[int] = []
    upscale = predictor.upscale

    def spy(low_res: np.ndarray) -> np.ndarray:
        sizes.append(len(low_res))
        return upscale(low_res)

    monkeypatch.setattr(predictor, "upscale", spy)
    points = np.tile([[10.0, 10.0]], (40, 1))
    budget = 16 * H * W  # pixels: 16 masks of this frame
    segment_prompts(
        predictor, points=points, batch_size=40, pred_iou_thresh=0.0, upscale_budget=budget
    )
    # 120 masks survive the (disabled) IoU filter; they are upscaled a few at a time.
    assert sum(sizes) == 120 and max(sizes) == 16
    sizes.clear()
    segment_prompts(predictor, points=points, batch_size=40)
    assert sum(sizes) == 40  # only token 1 passes the IoU filter: nothing else is upscaled


def test_segment_prompts_errors() -> None:
    predictor, _, _ = make_scene()
    with pytest.raises(ValueError, match="exactly one of points"):
        segment_prompts(predictor)
    with pytest.raises(ValueError, match="exactly one of points"):
        segment_prompts(predictor, points=np.zeros((1, 2)), boxes=np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"expected points \(K, 2\), got shape \(3, 3\)"):
        segment_prompts(predictor, points=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="image_hw"):
        segment_prompts(predictor, points=np.zeros((1, 2)), crop_box=(0, 0, 64, 48))
    with pytest.raises(ValueError, match=r"crop_box \[0, 0, 32, 48\] is 32x48"):
        segment_prompts(
            predictor, points=np.zeros((1, 2)), crop_box=(0, 0, 32, 48), image_hw=(48, 96)
        )
    empty = segment_prompts(predictor, points=np.zeros((0, 2)))
    assert empty.prompts_decoded == 0 and len(empty.candidates) == 0
    with pytest.raises(ValueError, match="no image is set"):
        segment_prompts(Predictor(SceneBackend({})), points=np.zeros((1, 2)))


# ------------------------------------------------------------------------ GridSegEvery


def test_grid_finds_each_shape_once() -> None:
    predictor, backend, _ = make_scene()
    result = GridSegEvery(points_per_side=16)(predictor)
    assert isinstance(result, SegEveryResult) and result.strategy == "grid"
    assert labels_found(result) == [A, B, C]  # best first; D, E and duplicates gone
    check_instances(result, (H, W))
    assert result.decoder_prompts == 256 == backend.num_decoded
    assert result.image_hw == (H, W)
    assert set(result.timings_ms) == {"decoder", "postprocess", "nms", "total"}
    assert all(v >= 0 for v in result.timings_ms.values())
    # The surviving duplicate is the first grid point on each shape (ties keep grid order).
    a, b, c = result.instances
    np.testing.assert_array_equal(a.prompt, [2.0, 1.5])
    assert REGIONS[B][int(b.prompt[1]), int(b.prompt[0])]
    assert REGIONS[C][int(c.prompt[1]), int(c.prompt[0])]
    assert (a.score, a.stability, a.area) == (pytest.approx(0.95), 1.0, 720)


def test_grid_filters_follow_the_thresholds() -> None:
    predictor, _, _ = make_scene()
    stricter = GridSegEvery(points_per_side=16, pred_iou_thresh=0.91)(predictor)
    assert labels_found(stricter) == [A, B]  # C (0.90) is now filtered
    looser = GridSegEvery(points_per_side=16, pred_iou_thresh=0.4)(predictor)
    assert labels_found(looser) == [A, B, C, E]  # E (0.5) passes; A's 0.65 duplicates NMS'd
    unstable = GridSegEvery(points_per_side=16, stability_score_thresh=0.0)(predictor)
    assert labels_found(unstable) == [D, A, B, C]


def test_grid_nms_threshold_1_keeps_duplicates() -> None:
    predictor, _, _ = make_scene()
    result = GridSegEvery(points_per_side=16, box_nms_thresh=1.0)(predictor)
    found = labels_found(result)
    points_on = {
        label: sum(REGIONS[label][int(y), int(x)] for x, y in build_point_grid(16) * [W, H])
        for label in (A, B, C)
    }
    assert {label: found.count(label) for label in set(found)} == points_on


@pytest.mark.parametrize("points_per_batch", [1, 7, 64, 1000])
def test_grid_chunking_does_not_change_results(points_per_batch: int) -> None:
    predictor, _, _ = make_scene()
    reference = GridSegEvery(points_per_side=16, points_per_batch=256)(predictor)
    predictor2, backend2, _ = make_scene()
    chunked = GridSegEvery(points_per_side=16, points_per_batch=points_per_batch)(predictor2)
    assert summary(chunked) == summary(reference)
    assert max(len(p) for p in backend2.decoded_points) == min(points_per_batch, 256)
    assert len(backend2.decoded_points) == -(-256 // points_per_batch)


def test_grid_is_repeatable_and_keeps_no_state() -> None:
    predictor, _, _ = make_scene()
    grid = GridSegEvery(points_per_side=16)
    before = dataclasses.replace(grid)
    first, second = grid(predictor), grid(predictor)
    assert summary(first) == summary(second)
    assert grid == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        grid.points_per_side = 8  # type: ignore[misc]


def test_grid_on_an_empty_image() -> None:
    predictor, backend, _ = make_scene(regions={})
    result = GridSegEvery(points_per_side=8)(predictor)
    assert result.instances == [] and result.decoder_prompts == 64 == backend.num_decoded


def test_grid_maps_masks_and_prompts_to_the_original_frame() -> None:
    # A 96 x 128 frame is halved to the 48 x 64 input: masks come back at 96 x 128.
    regions = {A: rect(0, 0, 60, 48, 96, 128), B: rect(88, 80, 104, 92, 96, 128)}
    predictor, _, _ = make_scene(regions, SHAPES)
    result = GridSegEvery(points_per_side=16)(predictor)
    check_instances(result, (96, 128))
    boxes = np.stack([i.box for i in result.instances])
    assert box_iou(boxes, [[0, 0, 60, 48], [88, 80, 104, 92]]).diagonal().min() > 0.9
    np.testing.assert_array_equal(result.instances[0].prompt, [4.0, 3.0])  # original pixels


def test_grid_min_mask_region_area_cleans_masks() -> None:
    holey = rect(0, 0, 30, 24)
    holey[10:12, 10:12] = False  # a 4 px hole inside A
    speck = rect(40, 0, 60, 20) | rect(62, 30, 63, 31)  # B plus a far 1 px island
    regions = {A: holey, B: speck}
    predictor, _, _ = make_scene(regions, SHAPES)
    raw = GridSegEvery(points_per_side=16)(predictor)
    assert [i.area for i in raw.instances] == [716, 401]
    timer_keys = {"decoder", "postprocess", "nms", "cleanup", "total"}
    cleaned = GridSegEvery(points_per_side=16, min_mask_region_area=10)(predictor)
    assert set(cleaned.timings_ms) == timer_keys
    check_instances(cleaned, (H, W))
    np.testing.assert_array_equal(masks_of(cleaned)[0], rect(0, 0, 30, 24))
    np.testing.assert_array_equal(masks_of(cleaned)[1], rect(40, 0, 60, 20))
    np.testing.assert_array_equal(cleaned.instances[1].box, [40, 0, 60, 20])


def test_grid_crop_layers_encode_each_crop_and_merge_across_crops() -> None:
    predictor, backend, image = make_scene()
    embedding = predictor.get_image_embedding()
    grid = GridSegEvery(
        points_per_side=16,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        crop_edge_tolerance=2.0,
    )
    result = grid(predictor, image)
    assert len(backend.label_maps) == 1 + 4  # the frame, then one fresh encode per crop
    assert predictor.get_image_embedding() is embedding  # the caller's predictor untouched
    assert result.decoder_prompts == 256 + 4 * 64 == backend.num_decoded
    assert "encoder" in result.timings_ms
    check_instances(result, (H, W))
    # Each shape once, whichever crop it came from (crop masks are resampled, so compare
    # by IoU); every prompt is recorded in full-image pixels, on its shape.
    matched = []
    for inst, mask in zip(result.instances, masks_of(result), strict=True):
        ious = {
            label: (mask & region).sum() / (mask | region).sum()
            for label, region in REGIONS.items()
        }
        label = max(ious, key=lambda k: ious[k])
        assert ious[label] > 0.8
        assert REGIONS[label][int(inst.prompt[1]), int(inst.prompt[0])]
        matched.append(label)
    assert sorted(matched) == [A, B, C]


def test_grid_crop_layers_need_the_image() -> None:
    predictor, _, image = make_scene()
    grid = GridSegEvery(points_per_side=4, crop_n_layers=1)
    with pytest.raises(ValueError, match=r"crop_n_layers=1 encodes crops.*got None"):
        grid(predictor)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) = \(48, 64, 3\), got \(24, 64, 3\)"):
        grid(predictor, image[:24])


def test_grid_needs_an_image_on_the_predictor() -> None:
    with pytest.raises(ValueError, match="no image is set"):
        GridSegEvery()(Predictor(SceneBackend({})))


# ---------------------------------------------------------------------------- registry


def test_registry_builds_strategies_by_name() -> None:
    assert {"grid", "hierarchical"} <= set(STRATEGIES)
    grid = build_segevery("grid", points_per_side=8, pred_iou_thresh=0.5)
    assert isinstance(grid, GridSegEvery) and isinstance(grid, SegEvery)
    assert (grid.points_per_side, grid.pred_iou_thresh, grid.box_nms_thresh) == (8, 0.5, 0.7)
    for name in ("grid", "hierarchical"):
        built = build_segevery(name)
        assert type(built) is STRATEGIES[name] and built.name == name
    params = strategy_params("grid")
    assert params["points_per_side"] == 32 and params["crop_overlap_ratio"] == 512 / 1500
    assert "high_score_thresh" in strategy_params("hierarchical")


@dataclass(frozen=True, kw_only=True)
class NeedsA:
    name: ClassVar[str] = "needs_a"
    a: int
    b: int = 2


def test_registry_names_missing_required_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "needs_a", NeedsA)  # type: ignore[arg-type]
    assert strategy_params("needs_a") == {"a": inspect.Parameter.empty, "b": 2}
    with pytest.raises(
        ValueError,
        match=r"missing required argument\(s\) a for SegEvery strategy 'needs_a'; "
        r"accepted: a, b$",
    ):
        build_segevery("needs_a", b=3)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) x for .*; accepted: a, b$"):
        build_segevery("needs_a", a=1, x=1)
    assert build_segevery("needs_a", a=1) == NeedsA(a=1)


def test_registry_errors_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"unknown SegEvery strategy 'sam'; expected one of"):
        build_segevery("sam")
    with pytest.raises(
        ValueError,
        match=r"unknown argument\(s\) point_per_side, speed for SegEvery strategy 'grid'; "
        r"accepted: points_per_side, points_per_batch, ",
    ):
        build_segevery("grid", point_per_side=8, speed=2)
    bad = [
        ("points_per_side", 0, r"points_per_side must be an integer >= 1, got 0"),
        ("points_per_batch", 8.5, r"points_per_batch must be an integer >= 1, got 8.5"),
        ("pred_iou_thresh", 1.2, r"pred_iou_thresh must be a number in \[0, 1\], got 1.2"),
        ("stability_score_thresh", -0.1, r"stability_score_thresh must be .*got -0.1"),
        ("box_nms_thresh", "0.7", r"box_nms_thresh must be a number in \[0, 1\], got '0.7'"),
        ("crop_n_layers", -1, r"crop_n_layers must be an integer >= 0, got -1"),
        ("crop_overlap_ratio", 1.0, r"crop_overlap_ratio must be a number in \[0, 1\)"),
        ("stability_score_offset", -1.0, r"stability_score_offset must be a number >= 0"),
        ("mask_threshold", float("nan"), r"mask_threshold must be a finite number, got nan"),
    ]
    for key, value, message in bad:
        with pytest.raises(ValueError, match=message):
            build_segevery("grid", **{key: value})


def test_strategies_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import segfast_ros.segevery.registry, segfast_ros.masks\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -------------------------------------------------------------------- end to end, real model


@pytest.fixture(scope="module")
def tiny_predictor() -> Predictor:
    torch = pytest.importorskip("torch")
    from segfast_ros.modeling import build_sam
    from segfast_ros.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    predictor = Predictor(TorchBackend(build_sam("tinyvit_s256")))
    rng = np.random.default_rng(0)
    image = np.repeat(np.repeat(rng.integers(0, 255, (6, 8, 3), np.uint8), 20, 0), 20, 1)
    predictor.set_image(image)  # 120 x 160
    return predictor


def test_grid_end_to_end_on_a_random_weight_model(tiny_predictor: Predictor) -> None:
    assert isinstance(tiny_predictor.backend, Backend)
    grid = GridSegEvery(
        points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    result = grid(tiny_predictor)
    assert result.decoder_prompts == 64
    assert len(result.instances) > 0
    check_instances(result, (120, 160))
    assert {"decoder", "postprocess", "nms", "total"} <= set(result.timings_ms)
    assert all(0 <= inst.stability <= 1 for inst in result.instances)
    assert summary(grid(tiny_predictor)) == summary(result)
