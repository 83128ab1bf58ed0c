"""Grid SegEvery (SAM's automatic mask generator): its point grid and crops, the strategy on
the painted-shapes fake backend (:mod:`segevery_scene`), the strategy registry, and end to end
on a real (random-weight) model.

The decode pipeline it shares with the other strategies is tested in test_segevery_candidates.
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
from segevery_scene import (
    REGIONS,
    SHAPES,
    A,
    B,
    C,
    D,
    E,
    H,
    SceneBackend,
    W,
    check_instances,
    labels_found,
    make_scene,
    masks_of,
    rect,
    summary,
)

from segfast_ros.masks import box_iou
from segfast_ros.runtime import Backend, Predictor
from segfast_ros.segevery import SegEvery, SegEveryResult
from segfast_ros.segevery.grid import (
    GridSegEvery,
    build_point_grid,
    generate_crop_boxes,
)
from segfast_ros.segevery.registry import STRATEGIES, build_segevery, strategy_params

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
