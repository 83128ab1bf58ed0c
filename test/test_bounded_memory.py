"""Any frame size, bounded memory: full-size mask logits are made in groups sized by a pixel
budget (SegEvery, SegAny, Predictor.predict), and the overlay is blended in bands of rows.

The demo model (ONNX Runtime, 256 px) segments a generated scene; the results must not depend on
the budget, and the peaks must follow it. Peaks are numpy's own allocations as tracemalloc
counts them (exact byte counts, the same on every CPU), not the process RSS: that is
``segfast bench-memory``'s job.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.scenes import generate_scene
from segfast_ros.masks import mask_to_rle, masks_to_boxes, stability_score
from segfast_ros.pipeline.render import overlay
from segfast_ros.runtime import Predictor, transforms
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.transforms import UPSCALE_BUDGET_PIXELS, upscale_group_size
from segfast_ros.segany import decode_prompt_sets, prompt_kwargs
from segfast_ros.segevery.candidates import segment_prompts
from segfast_ros.segevery.grid import GridSegEvery
from segfast_ros.segevery.hierarchical import HierarchicalSegEvery
from segfast_ros.segevery.settings import MaskFilter

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
HW = (90, 120)  # odd sizes on purpose: the model input (256) divides neither

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "decoder.fp32.onnx").is_file(),
    reason=f"the demo model is not in {MODEL_DIR}",
)


#: Frame of the peak-memory tests: large enough that the fixed costs (the decoder's low-res
#: output, the model-input-sized resize step) are small next to a frame.
BIG_HW = (600, 800)


def make_scene_predictor(hw: tuple[int, int]) -> tuple[Predictor, np.ndarray, np.ndarray]:
    """The demo model with a generated scene set; its ground-truth boxes (K, 4) as prompts."""
    scene = generate_scene(7, hw, num_objects=(5, 8))
    predictor = Predictor(OnnxRuntimeBackend.from_dir(MODEL_DIR, "fp32", intra_op_threads=1))
    predictor.set_image(scene.image)
    assert len(scene.boxes) >= 3
    return predictor, scene.image, scene.boxes.astype(np.float64)


@pytest.fixture(scope="module")
def scene_predictor() -> tuple[Predictor, np.ndarray, np.ndarray]:
    return make_scene_predictor(HW)


@pytest.fixture(scope="module")
def big_scene_predictor() -> tuple[Predictor, np.ndarray, np.ndarray]:
    return make_scene_predictor(BIG_HW)


def frame_px(hw: tuple[int, int] = HW) -> int:
    return hw[0] * hw[1]


def record_upscales(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, int]]:
    """Spy on ``predictor.upscale_regions``: (masks, full-size pixels made) of every call."""
    calls: list[tuple[int, int]] = []
    upscale = predictor.upscale_regions

    def spy(low_res: np.ndarray, above: float) -> list:
        out = upscale(low_res, above)
        calls.append((len(out), sum(r.logits.size for r in out if r is not None)))
        return out

    monkeypatch.setattr(predictor, "upscale_regions", spy)
    return calls


def assert_within_budget(calls: list[tuple[int, int]], budget: int) -> None:
    assert calls, "nothing was upscaled"
    for masks, pixels in calls:
        assert pixels <= budget or masks == 1, (masks, pixels, budget)


@contextmanager
def numpy_peak() -> Iterator[Callable[[], int]]:
    """Peak bytes allocated (tracemalloc, which numpy reports to) inside the block."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    peak: list[int] = []
    try:
        yield lambda: peak[0]
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()


# ------------------------------------------------------------------------- group sizing


def test_group_size_follows_the_pixel_budget() -> None:
    assert upscale_group_size((10, 20), 2 * 200) == 2  # two frames' pixels: groups of 2
    assert upscale_group_size((10, 20), 2 * 200 - 1) == 1
    assert upscale_group_size((4320, 7680), UPSCALE_BUDGET_PIXELS) == 1  # a frame > budget
    assert upscale_group_size((1080, 1920), UPSCALE_BUDGET_PIXELS) == 4
    with pytest.raises(ValueError, match="upscale budget must be >= 1 pixel, got 0"):
        upscale_group_size((10, 20), 0)
    with pytest.raises(ValueError, match=r"expected a mask size \(H, W\) > 0, got \(0, 20\)"):
        upscale_group_size((0, 20), 100)


# ---------------------------------------------------------------------------- SegEvery


def reference_segment(
    predictor: Predictor, boxes: np.ndarray, pred_iou_thresh: float, stability_thresh: float
) -> list[tuple]:
    """Every box's 3 masks upscaled at once (no grouping), then the segment_prompts filters."""
    low_res, iou = predictor.predict_low_res(box=boxes, multimask_output=True)
    logits = predictor.upscale(low_res)  # (K, 3, H, W)
    stability = stability_score(logits)
    masks = logits > 0.0
    out = []
    passed = iou > pred_iou_thresh if pred_iou_thresh > 0 else np.ones(iou.shape, bool)
    for k, t in zip(*np.nonzero(passed), strict=True):
        if not masks[k, t].any() or (stability_thresh > 0 and stability[k, t] < stability_thresh):
            continue
        rle = mask_to_rle(masks[k, t][None])[0]
        box = masks_to_boxes(masks[k, t][None])[0]
        out.append((rle["counts"], float(iou[k, t]), float(stability[k, t]), tuple(box)))
    return out


def candidates_summary(cands) -> list[tuple]:
    return [
        (r["counts"], float(s), float(st), tuple(b))
        for r, s, st, b in zip(cands.rles, cands.scores, cands.stability, cands.boxes, strict=True)
    ]


@pytest.mark.parametrize(("pred_iou", "stability"), [(0.0, 0.0), (0.5, 0.8)])
def test_segment_prompts_results_do_not_depend_on_the_budget(
    scene_predictor, monkeypatch: pytest.MonkeyPatch, pred_iou: float, stability: float
) -> None:
    predictor, _, boxes = scene_predictor
    expected = reference_segment(predictor, boxes, pred_iou, stability)
    assert expected, "the scene must give masks, or nothing is compared"
    calls = record_upscales(predictor, monkeypatch)
    for budget in (1, 2 * frame_px(), 5 * frame_px() - 1, 10**9):
        calls.clear()
        out = segment_prompts(
            predictor,
            MaskFilter(pred_iou_thresh=pred_iou, stability_score_thresh=stability),
            boxes=boxes,
            multimask_output=True,
            batch_size=4,
            upscale_budget=budget,
        )
        assert candidates_summary(out) == expected  # masks, scores, order
        assert_within_budget(calls, budget)
        if pred_iou == 0:  # all 4 x 3 masks of a decoder chunk survive: groups are full
            assert max(n for n, _ in calls) == min(upscale_group_size(HW, budget), 12)


def test_segment_prompts_peak_memory_follows_the_budget(big_scene_predictor) -> None:
    """One group of logits (4 bytes a pixel) and its masks (1 byte), not 16 masks' worth."""
    predictor, _, boxes = big_scene_predictor
    boxes = np.tile(boxes, (4, 1))[:16]  # 16 prompts, 48 masks, all kept
    px = frame_px(BIG_HW)
    for frames in (1, 4):
        with numpy_peak() as peak:
            out = segment_prompts(
                predictor,
                MaskFilter(pred_iou_thresh=0.0, stability_score_thresh=0.0),
                boxes=boxes,
                multimask_output=True,
                upscale_budget=frames * px,
            )
        assert len(out) > 16
        # The group's logits and masks (5 bytes a budget pixel) and about two frames of bool
        # temporaries; 16 masks at once were 16 x 6 bytes a frame pixel.
        assert peak() < 5 * frames * px + 3 * px, (frames, peak() / px)


def test_crops_and_coverage_do_not_depend_on_the_budget(
    scene_predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, image, _ = scene_predictor
    grid = GridSegEvery(points_per_side=8, pred_iou_thresh=0.5, crop_n_layers=1)
    hier = HierarchicalSegEvery(points_per_side=8, pred_iou_thresh=0.5, high_score_thresh=1.0)
    runs = []
    for budget in (1, 3 * frame_px(), 10**9):
        # The strategies use the default budget, read at each call.
        monkeypatch.setattr(transforms, "UPSCALE_BUDGET_PIXELS", budget)
        runs.append(
            [
                [(i.rle["counts"], i.score, i.stability, tuple(i.box)) for i in r.instances]
                for r in (grid(predictor, image), hier(predictor, image))
            ]
        )
    assert runs[0][0] and runs[0][1], "both strategies must find something"
    assert runs[0] == runs[1] == runs[2]


# ----------------------------------------------------------------------------- SegAny


def test_segany_sets_are_upscaled_within_the_budget(
    scene_predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, _, boxes = scene_predictor
    kwargs = prompt_kwargs([], [], boxes[:3].ravel(), multimask=True, low_res_size=64)
    # The reference: every set's 3 masks at once, best first.
    low_res, scores = predictor.predict_low_res(**kwargs)
    logits = predictor.upscale(low_res)
    calls = record_upscales(predictor, monkeypatch)
    for budget in (1, 2 * frame_px(), 10**9):
        calls.clear()
        answers = list(decode_prompt_sets(predictor, kwargs, upscale_budget=budget))
        assert len(answers) == 3
        for i, answer in enumerate(answers):
            order = np.argsort(-scores[i], kind="stable")
            np.testing.assert_array_equal(answer.masks, logits[i][order] > 0)
            np.testing.assert_array_equal(answer.scores, scores[i][order])
            np.testing.assert_array_equal(answer.stability, stability_score(logits[i][order]))
            np.testing.assert_array_equal(answer.low_res, low_res[i, order[0]])
            np.testing.assert_array_equal(answer.prompt, boxes[i])
        assert_within_budget(calls, budget)
        assert max(n for n, _ in calls) == min(upscale_group_size(HW, budget), 3)


def test_segany_peak_memory_is_one_group_and_one_set(big_scene_predictor) -> None:
    predictor, _, boxes = big_scene_predictor
    kwargs = prompt_kwargs([], [], boxes[:3].ravel(), multimask=True, low_res_size=64)
    px = frame_px(BIG_HW)
    with numpy_peak() as peak:
        for answer in decode_prompt_sets(predictor, kwargs, upscale_budget=px):
            del answer  # a consumer that keeps only what it sends (as ros.segany does)
    # One mask's float32 logits (4 bytes a pixel) and one set's 3 bool masks, with margin;
    # a set's 3 logits at once and their comparisons were over 15 bytes a pixel.
    assert peak() < 4 * px + 3 * px + 2 * px, peak() / px


def test_predict_thresholds_within_the_budget(
    scene_predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, _, boxes = scene_predictor
    expected = predictor.predict(box=boxes[:3], return_logits=True).masks > 0
    calls = record_upscales(predictor, monkeypatch)
    got = predictor.predict(box=boxes[:3], upscale_budget=2 * frame_px())
    assert got.masks.dtype == bool
    np.testing.assert_array_equal(got.masks, expected)
    assert_within_budget(calls, 2 * frame_px())
    assert [n for n, _ in calls] == [2, 2, 2, 2, 1]


# ---------------------------------------------------------------------------- overlay


def test_overlay_in_bands_equals_one_band(scene_predictor) -> None:
    _, image, _ = scene_predictor
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, HW).astype(np.uint16)
    labels[rng.random(HW) < 0.4] = 0
    whole = overlay(image, labels, 0.4, band_pixels=10**9)
    for band in (1, HW[1], 7 * HW[1] + 3):
        np.testing.assert_array_equal(overlay(image, labels, 0.4, band_pixels=band), whole)
    np.testing.assert_array_equal(
        overlay(image, labels, boundaries=False, band_pixels=HW[1]),
        overlay(image, labels, boundaries=False, band_pixels=10**9),
    )


def test_overlay_peak_memory_is_the_output_and_a_band(big_scene_predictor) -> None:
    _, image, _ = big_scene_predictor
    labels = np.zeros(BIG_HW, np.uint16)
    labels[100:400, 200:600] = 3
    px = frame_px(BIG_HW)
    overlay(image[:2, :2], labels[:2, :2])  # builds the cached palette (6 MB) outside the peak
    with numpy_peak() as peak:
        overlay(image, labels, band_pixels=10 * BIG_HW[1])
    # The (H, W, 3) output plus one band's colours, blend and edges; blending the whole frame
    # at once took 8 bytes a pixel besides the output.
    assert peak() < 3 * px + 0.5 * px, peak() / px


# ------------------------------------------------------------------------- the hard limit


def test_a_frame_above_the_limit_is_refused_naming_both_exactly() -> None:
    from segfast_ros.runtime.transforms import MAX_IMAGE_PIXELS, validate_rgb_image

    h = MAX_IMAGE_PIXELS // 8192 + 1  # 8193 rows: 8192 pixels too many, 0.01 % over
    frame = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, 8192, 3))  # no memory used
    with pytest.raises(ValueError) as err:
        validate_rgb_image(frame)
    assert f"image of 8192x{h} (W x H) = {8192 * h:,} pixels" in str(err.value)
    assert f"exceeds MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,} pixels" in str(err.value)


# ---------------------------------------------------------------------- the benchmark


def test_bench_memory_runs_the_node_and_reports_every_stage(tmp_path: Path) -> None:
    """``segfast bench-memory`` on a small frame: the real node in its own process; every stage
    is recorded and the results are JSON. (Its figures are for the table, not asserted.)"""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "segfast_ros.bench.memory", "--sizes", "320x240",
         "--strategies", "object_aware", "--no-overlay", "--no-over-limit", "--threads", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "process peak RSS (VmHWM)" in proc.stdout and "in-process" in proc.stdout
    (case,) = json.loads(out.read_text())["cases"]
    assert case["error"] == "" and case["hw"] == [240, 320]
    assert [s["name"] for s in case["stages"]] == [
        "take (CDR -> Image)",
        "frame->embedding",
        "SegEvery object_aware + publish",
        "~/segment 1 set, multimask + images",
        "serialize response",
    ]
    assert case["instances"] > 0 and case["segment_masks"] == 3
    assert case["peak_rss_mb"] >= max(s["peak_mb"] for s in case["stages"]) > 0
