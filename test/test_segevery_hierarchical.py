"""Hierarchical SegEvery (TinySAM) on the painted-shapes fake backend of the grid tests: which
points each round decodes, agreement with the grid, empty rounds, repeatability; then end to
end on a random-weight model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from segevery_scene import (
    REGIONS,
    SHAPES,
    A,
    B,
    C,
    H,
    W,
    check_instances,
    labels_found,
    make_scene,
    rect,
    summary,
)

from segfast_ros.masks import rle_to_mask
from segfast_ros.runtime import Predictor
from segfast_ros.segevery import SegEvery
from segfast_ros.segevery.grid import GridSegEvery, build_point_grid
from segfast_ros.segevery.hierarchical import HierarchicalResult, HierarchicalSegEvery
from segfast_ros.segevery.registry import build_segevery

DENSE = build_point_grid(16) * [W, H]
SPARSE = build_point_grid(4) * [W, H]


def on(region: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which ``(K, 2)`` points fall on the region's pixels."""
    return region[points[:, 1].astype(int), points[:, 0].astype(int)]


def rows_of(points: np.ndarray) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for x, y in points}


def test_hierarchical_skips_covered_points_and_matches_the_grid() -> None:
    predictor, backend, _ = make_scene()
    result = HierarchicalSegEvery(points_per_side=16)(predictor)
    assert isinstance(result, HierarchicalResult) and isinstance(HierarchicalSegEvery(), SegEvery)
    assert result.strategy == "hierarchical"
    check_instances(result, (H, W))

    # Round 1 is the 4 x 4 grid; round 2 every dense point except those on A, the only shape
    # whose logits (10) pass high_score_thresh (8.5). C's logits (5) do not cover it.
    round1, *round2 = backend.decoded_points
    assert rows_of(round1) == rows_of(SPARSE)
    decoded2 = np.concatenate(round2)
    assert rows_of(decoded2) == rows_of(DENSE[~on(REGIONS[A], DENSE)])
    assert not on(REGIONS[A], decoded2).any()
    assert on(REGIONS[C], decoded2).sum() == on(REGIONS[C], DENSE).sum()
    skipped = int(on(REGIONS[A], DENSE).sum())
    assert (result.round1_prompts, result.round2_prompts, result.skipped_prompts) == (
        16,
        256 - skipped,
        skipped,
    )
    assert result.decoder_prompts == 16 + 256 - skipped == backend.num_decoded

    # Same instances as the grid (B was found only by round 2), at fewer decoder prompts.
    grid_predictor, _, _ = make_scene()
    grid = GridSegEvery(points_per_side=16)(grid_predictor)
    assert labels_found(result) == labels_found(grid) == [A, B, C]
    assert [i.rle for i in result.instances] == [i.rle for i in grid.instances]
    assert result.decoder_prompts < grid.decoder_prompts
    # The instance of A came from round 1: its prompt is a sparse point.
    assert tuple(result.instances[0].prompt) in rows_of(SPARSE)

    expected = {"round1_decoder", "round1_postprocess", "round2_decoder", "round2_postprocess"}
    expected |= {"decoder", "postprocess", "coverage", "nms", "total"}
    assert set(result.timings_ms) == expected
    t = result.timings_ms
    assert t["decoder"] == pytest.approx(t["round1_decoder"] + t["round2_decoder"])


def test_high_score_thresh_decides_coverage() -> None:
    predictor, backend, _ = make_scene()
    result = HierarchicalSegEvery(points_per_side=16, high_score_thresh=4.0)(predictor)
    covered = on(REGIONS[A] | REGIONS[C], DENSE)
    assert result.skipped_prompts == covered.sum()
    assert rows_of(np.concatenate(backend.decoded_points[1:])) == rows_of(DENSE[~covered])
    assert labels_found(result) == [A, B, C]
    predictor, _, _ = make_scene()
    nothing = HierarchicalSegEvery(points_per_side=16, high_score_thresh=20.0)(predictor)
    assert nothing.skipped_prompts == 0 and nothing.round2_prompts == 256


def test_round_one_empty_falls_back_to_the_dense_grid() -> None:
    # Only B, which no sparse point hits.
    regions = {B: REGIONS[B]}
    predictor, backend, _ = make_scene(regions, SHAPES)
    result = HierarchicalSegEvery(points_per_side=16)(predictor)
    assert (result.round1_prompts, result.round2_prompts, result.skipped_prompts) == (16, 256, 0)
    assert labels_found(result, regions) == [B]
    assert backend.num_decoded == 16 + 256


def test_every_dense_point_covered_leaves_round_two_empty() -> None:
    regions = {A: rect(0, 0, W, H)}
    predictor, backend, _ = make_scene(regions, SHAPES)
    result = HierarchicalSegEvery(points_per_side=16)(predictor)
    assert (result.round1_prompts, result.round2_prompts, result.skipped_prompts) == (16, 0, 256)
    assert len(backend.decoded_points) == 1  # round 2 never called the decoder
    assert labels_found(result, regions) == [A]
    assert result.timings_ms["round2_decoder"] == 0.0


def test_empty_image_gives_no_instances() -> None:
    predictor, backend, _ = make_scene(regions={})
    result = HierarchicalSegEvery(points_per_side=8)(predictor)
    assert result.instances == []
    assert (result.round1_prompts, result.round2_prompts) == (4, 64)
    assert result.decoder_prompts == 68 == backend.num_decoded


def test_chunking_does_not_change_results() -> None:
    predictor, _, _ = make_scene()
    reference = HierarchicalSegEvery(points_per_side=16, points_per_batch=1000)(predictor)
    for batch in (1, 5):
        chunked = HierarchicalSegEvery(points_per_side=16, points_per_batch=batch)(predictor)
        assert summary(chunked) == summary(reference)


def test_calls_are_independent_and_configuration_immutable() -> None:
    strategy = HierarchicalSegEvery(points_per_side=16)
    before = dataclasses.replace(strategy)
    predictor, _, _ = make_scene()
    first = strategy(predictor)
    # A different frame in between must not leak into the next call on the first frame.
    other, _, _ = make_scene({B: REGIONS[B]}, SHAPES)
    assert len(strategy(other).instances) == 1
    again = strategy(predictor)
    assert summary(again) == summary(first)
    assert (again.round1_prompts, again.round2_prompts, again.skipped_prompts) == (
        first.round1_prompts,
        first.round2_prompts,
        first.skipped_prompts,
    )
    assert strategy == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.high_score_thresh = 1.0  # type: ignore[misc]


def test_min_mask_region_area_cleans_merged_instances() -> None:
    holey = rect(0, 0, 30, 24)
    holey[10:12, 10:12] = False
    predictor, _, _ = make_scene({A: holey}, SHAPES)
    result = HierarchicalSegEvery(points_per_side=16, min_mask_region_area=10)(predictor)
    np.testing.assert_array_equal(rle_to_mask(result.instances[0].rle), rect(0, 0, 30, 24))
    assert "cleanup" in result.timings_ms


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"points_per_side must be >= 4 .* got 3"):
        build_segevery("hierarchical", points_per_side=3)
    with pytest.raises(ValueError, match=r"high_score_thresh must be a finite number, got inf"):
        build_segevery("hierarchical", high_score_thresh=float("inf"))
    with pytest.raises(ValueError, match=r"unknown argument\(s\) crop_n_layers"):
        build_segevery("hierarchical", crop_n_layers=1)
    built = build_segevery("hierarchical", points_per_side=16, high_score_thresh=7)
    assert isinstance(built, HierarchicalSegEvery) and built.high_score_thresh == 7.0


def test_needs_an_image_on_the_predictor() -> None:
    predictor, _, _ = make_scene()
    predictor.reset_image()
    with pytest.raises(ValueError, match="no image is set"):
        HierarchicalSegEvery()(predictor)


# -------------------------------------------------------------------- end to end, real model


def test_end_to_end_on_a_random_weight_model() -> None:
    torch = pytest.importorskip("torch")
    from segfast_ros.modeling import build_sam
    from segfast_ros.runtime.torch_backend import TorchBackend

    torch.manual_seed(1)
    predictor = Predictor(TorchBackend(build_sam("tinyvit_s256")))
    rng = np.random.default_rng(1)
    predictor.set_image(rng.integers(0, 255, (90, 140, 3), np.uint8))
    # Untrained logits stay near 0: a high_score_thresh of 0 lets round 1 cover something.
    strategy = HierarchicalSegEvery(
        points_per_side=8,
        points_per_batch=32,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        high_score_thresh=0.0,
    )
    result = strategy(predictor)
    assert result.round1_prompts == 4
    assert result.round2_prompts + result.skipped_prompts == 64
    assert result.decoder_prompts == 4 + result.round2_prompts
    assert len(result.instances) > 0
    check_instances(result, (90, 140))
    assert {"decoder", "postprocess", "nms", "total"} <= set(result.timings_ms)
