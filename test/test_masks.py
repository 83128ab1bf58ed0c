"""The mask utilities against pycocotools (RLE, areas, boxes) and brute-force references
(stability, boxes, IoU, NMS, small-region clean-up)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segfast_ros.masks import (
    box_area,
    box_iou,
    box_near_crop_edge,
    mask_to_rle,
    masks_to_boxes,
    nms,
    remove_small_regions,
    rle_area,
    rle_to_mask,
    stability_score,
    threshold_windows,
    window_run_lengths,
)

# pycocotools 2.0.11 on numpy 2 warns about its own __array__; nothing to do with our code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def special_masks(h: int, w: int) -> np.ndarray:
    """Empty, full, corner pixels, a border frame, stripes and random masks."""
    rng = np.random.default_rng(h * 100 + w)
    masks = [np.zeros((h, w), bool), np.ones((h, w), bool)]
    for y, x in itertools.product((0, h - 1), (0, w - 1)):
        m = np.zeros((h, w), bool)
        m[y, x] = True
        masks.append(m)
    frame = np.ones((h, w), bool)
    frame[1:-1, 1:-1] = False
    masks += [frame, np.indices((h, w))[1] % 2 == 0, np.indices((h, w))[0] % 3 == 1]
    masks += [rng.random((h, w)) < p for p in (0.05, 0.5, 0.95)]
    return np.stack(masks)


def reference_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of the column-major pixels, by walking them one at a time."""
    counts, current, run = [], False, 0
    for value in mask.T.ravel().tolist():
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


SIZES = [(1, 1), (1, 7), (6, 1), (5, 8), (17, 13)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_rle_round_trips_through_pycocotools(h: int, w: int) -> None:
    masks = special_masks(h, w)
    rles = mask_to_rle(masks)
    assert len(rles) == len(masks)
    for mask, rle in zip(masks, rles, strict=True):
        assert rle["size"] == [h, w]
        assert all(isinstance(c, int) for c in rle["counts"])
        assert rle["counts"] == reference_rle(mask)
        coco = coco_mask.frPyObjects(rle, h, w)
        np.testing.assert_array_equal(coco_mask.decode(coco).astype(bool), mask)
        assert coco_mask.area(coco) == mask.sum() == rle_area(rle)
        # pycocotools boxes are XYWH pixel edges, ours XYXY: the same edges.
        x, y, bw, bh = coco_mask.toBbox(coco)
        np.testing.assert_array_equal(masks_to_boxes(mask[None])[0], [x, y, x + bw, y + bh])
        decoded = rle_to_mask(rle)
        assert decoded.dtype == bool and decoded.flags.c_contiguous
        np.testing.assert_array_equal(decoded, mask)


def test_rle_starts_with_a_zero_run_when_the_first_pixel_is_set() -> None:
    full, empty = mask_to_rle(np.stack([np.ones((2, 3), bool), np.zeros((2, 3), bool)]))
    assert full["counts"] == [0, 6]
    assert empty["counts"] == [6]
    assert rle_area(full) == 6 and rle_area(empty) == 0


def test_rle_accepts_non_bool_masks_and_no_masks() -> None:
    masks = (np.arange(24).reshape(2, 3, 4) % 5).astype(np.uint8)
    assert mask_to_rle(masks) == mask_to_rle(masks != 0)
    assert mask_to_rle(np.zeros((0, 4, 5), bool)) == []


def test_rle_errors() -> None:
    with pytest.raises(ValueError, match=r"expected masks \(N, H, W\)"):
        mask_to_rle(np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="sum to 5, expected H \\* W = 6"):
        rle_to_mask({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="compressed RLE"):
        rle_to_mask({"size": [2, 3], "counts": "abc"})


def smooth_logits(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """``(n, h, w)`` float32 logits shaped like a decoder's: smooth blobs of every size (low-res
    noise, upscaled), and frames that are empty, all foreground, all inside the stability band,
    a full-height stripe and a blob cut by the frame's corners."""
    rng = np.random.default_rng(seed)
    low = rng.normal(0.0, 3.0, (n, 5, 6)).astype(np.float32)
    logits = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC) for x in low])
    logits += rng.uniform(-5.0, 2.0, (n, 1, 1)).astype(np.float32)
    logits[0], logits[1], logits[2] = -5.0, 5.0, 0.5
    logits[3] = -5.0
    logits[3][:, w // 3 : w // 2 + 1] = 5.0  # every row: a run crosses from column to column
    yy, xx = np.mgrid[:h, :w]
    logits[4] = 4.0 - np.minimum(np.hypot(yy, xx), np.hypot(h - 1 - yy, w - 1 - xx)) / 2.0
    return logits


def windows_of(mask: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` windows that hold every pixel of ``mask``: its box, the box grown
    at random, the whole frame."""
    h, w = mask.shape
    out = [(0, h, 0, w)]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append((y0, y1, x0, x1))
        grow = rng.integers(0, 3, 4)
        out.append((max(0, y0 - grow[0]), min(h, y1 + grow[1]), max(0, x0 - grow[2]), x1))
    return out


@pytest.mark.parametrize(("h", "w"), [*SIZES, (30, 41)])
def test_window_run_lengths_against_the_brute_force_rle(h: int, w: int) -> None:
    rng = np.random.default_rng(h * w)
    masks = np.concatenate([special_masks(h, w), smooth_logits(8, h, w, seed=h) > 0])
    checked = 0
    for mask in masks:
        expected = reference_rle(mask)
        for y0, y1, x0, x1 in windows_of(mask, rng):
            counts = window_run_lengths(mask[y0:y1, x0:x1], (x0, y0), (h, w))
            assert counts.dtype == np.int64
            assert counts.tolist() == expected, (mask.astype(int), (y0, y1, x0, x1))
            checked += 1
    assert checked > 2 * len(masks)


def test_window_run_lengths_edges_and_errors() -> None:
    assert window_run_lengths(np.zeros((0, 0), bool), (0, 0), (3, 4)).tolist() == [12]
    assert window_run_lengths(np.zeros((2, 2), bool), (1, 1), (3, 4)).tolist() == [12]
    # Set at the frame's first and last pixels, spanning every row: no empty run in between.
    assert window_run_lengths(np.ones((3, 4), bool), (0, 0), (3, 4)).tolist() == [0, 12]
    assert window_run_lengths(np.ones((3, 1), np.uint8), (3, 0), (3, 4)).tolist() == [9, 3]
    with pytest.raises(ValueError, match=r"a 2x3 \(W x H\) window at \(x0, y0\) = \(3, 0\)"):
        window_run_lengths(np.ones((3, 2), bool), (3, 0), (3, 4))


@pytest.mark.parametrize(
    ("threshold", "offset"), [(0.0, 1.0), (0.5, 0.25), (0.0, 0.0), (1.0, -0.5)]
)
def test_threshold_windows_equals_the_plain_definitions(threshold: float, offset: float) -> None:
    logits = smooth_logits(12, 37, 53, seed=5)
    got = threshold_windows(logits, threshold, offset)
    masks = logits > threshold
    stability = stability_score(logits, threshold, offset)
    areas = np.count_nonzero(masks, axis=(1, 2))
    boxes = masks_to_boxes(masks)
    assert got.boxes.dtype == np.float32 and got.stability.dtype == np.float32
    np.testing.assert_array_equal(got.boxes, boxes)
    np.testing.assert_array_equal(got.stability, stability)
    np.testing.assert_array_equal(got.areas, areas)
    assert got.areas.dtype == areas.dtype
    for i, (window, box) in enumerate(zip(got.windows, boxes.astype(int), strict=True)):
        x0, y0, x1, y1 = box
        assert got.origin(i) == (x0, y0)
        assert window.dtype == bool and window.shape == (y1 - y0, x1 - x0)
        np.testing.assert_array_equal(window, masks[i][y0:y1, x0:x1])
    assert got.areas[0] == 0 and got.areas[1] == 37 * 53
    # A stability floor leaves the masks below it unmade; the others are the same.
    floor = float(np.median(stability))
    some = threshold_windows(logits, threshold, offset, min_stability=floor)
    made = stability >= floor
    assert 0 < made.sum() < len(made)
    np.testing.assert_array_equal(some.stability, stability)
    np.testing.assert_array_equal(some.areas, np.where(made, areas, 0))
    np.testing.assert_array_equal(some.boxes, np.where(made[:, None], boxes, 0))
    for i in np.flatnonzero(made):
        np.testing.assert_array_equal(some.windows[i], got.windows[i])
    assert all(some.windows[i].shape == (0, 0) for i in np.flatnonzero(~made))
    with pytest.raises(ValueError, match=r"expected logits \(G, H, W\)"):
        threshold_windows(logits[0])


def test_stability_score_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (4, 9, 11)).astype(np.float32)
    for threshold, offset in [(0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)]:
        got = stability_score(logits, threshold, offset)
        assert got.dtype == np.float32 and got.shape == (4,)
        for i in range(4):
            inter = sum(v > threshold + offset for v in logits[i].ravel())
            union = sum(v > threshold - offset for v in logits[i].ravel())
            assert got[i] == pytest.approx(inter / union, rel=1e-6)


def test_stability_score_edge_cases() -> None:
    logits = np.stack([np.full((3, 3), -5.0), np.full((3, 3), 5.0), np.full((3, 3), 0.5)]).astype(
        np.float32
    )
    # Nothing above -offset: 0, not NaN. All far above: 1. All inside the band: 0.
    np.testing.assert_array_equal(stability_score(logits), [0.0, 1.0, 0.0])
    # Without a band both masks are the same mask.
    np.testing.assert_array_equal(stability_score(logits, offset=0.0), [0.0, 1.0, 1.0])
    assert stability_score(logits.reshape(1, 3, 3, 3)).shape == (1, 3)


def test_masks_to_boxes_pixel_edges_and_empty() -> None:
    masks = np.zeros((3, 5, 7), bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 0:7] = True
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[3, 2, 4, 3], [0, 1, 7, 4], [0, 0, 0, 0]])


def test_masks_to_boxes_against_brute_force() -> None:
    masks = special_masks(9, 12)
    for mask, box in zip(masks, masks_to_boxes(masks), strict=True):
        ys, xs = np.nonzero(mask)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0] * 4
        np.testing.assert_array_equal(box, expected)


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS: sort (stable), then compare each box with every kept box."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(reference_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def random_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, (n, 2))
    wh = rng.integers(0, 25, (n, 2))  # includes zero-area boxes
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
    boxes[n // 2 :: 5] = boxes[n // 2 - 1]  # exact duplicates
    scores = rng.integers(0, 6, n) / 5.0  # many ties
    return boxes, scores


def test_box_area_and_iou_against_brute_force() -> None:
    a, _ = random_boxes(12, 3)
    b, _ = random_boxes(7, 4)
    np.testing.assert_allclose(box_area(a), (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
    expected = [[reference_iou(x, y) for y in b] for x in a]
    np.testing.assert_allclose(box_iou(a, b), expected)
    assert box_iou(a, np.zeros((0, 4))).shape == (12, 0)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_the_textbook_reference(threshold: float, seed: int) -> None:
    boxes, scores = random_boxes(80, seed)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == reference_nms(boxes, scores, threshold)


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    same = np.array([[0, 0, 10, 10]] * 3, dtype=np.float32)
    # Identical boxes: the best score survives; on a tie the lowest index.
    assert nms(same, [0.1, 0.9, 0.5], 0.7).tolist() == [1]
    assert nms(same, [0.5, 0.5, 0.5], 0.7).tolist() == [0]
    # IoU is never above 1: threshold 1.0 keeps everything, sorted by score.
    assert nms(same, [0.1, 0.9, 0.5], 1.0).tolist() == [1, 2, 0]
    # Threshold 0 drops any overlap but keeps disjoint and touching boxes.
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [10, 0, 20, 10], [30, 30, 40, 40]])
    assert nms(boxes, [4, 3, 2, 1], 0.0).tolist() == [0, 2, 3]
    # Zero-area boxes neither suppress nor are suppressed.
    points = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 10, 10]])
    assert nms(points, [3, 2, 1], 0.0).tolist() == [0, 1, 2]
    # Negative scores are ordinary scores (an untrained model's predicted IoU can be < 0).
    assert nms(same, [-0.5, -0.1, -0.9], 0.5).tolist() == [1]


def test_nms_errors() -> None:
    with pytest.raises(ValueError, match=r"expected boxes \(N, 4\) and scores \(N,\)"):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\], got 1.5"):
        nms(np.zeros((3, 4)), np.zeros(3), 1.5)


def test_box_near_crop_edge() -> None:
    crop = (20, 0, 60, 40)  # an inner crop of a 100 x 60 (W x H) image, touching the top
    boxes = np.array(
        [
            [30, 10, 50, 30],  # inside: keep
            [21, 10, 50, 30],  # on the crop's left edge (inside the image): drop
            [30, 0, 50, 30],  # on the crop's top edge, which is the image's: keep
            [30, 10, 50, 39],  # on the crop's bottom edge: drop
        ]
    )
    np.testing.assert_array_equal(
        box_near_crop_edge(boxes, crop, (60, 100), tolerance=2), [False, True, False, True]
    )
    full = box_near_crop_edge(boxes, (0, 0, 100, 60), (60, 100), tolerance=50)
    assert not full.any()


def test_remove_small_regions_holes() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:11, 1:11] = True
    mask[3:5, 3:5] = False  # hole of 4 px
    mask[6:9, 6:9] = False  # hole of 9 px
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed
    expected = mask.copy()
    expected[3:5, 3:5] = True
    np.testing.assert_array_equal(filled, expected)
    same, changed = remove_small_regions(mask, 4, "holes")  # nothing smaller than 4
    assert not changed and same is mask


def test_remove_small_regions_islands() -> None:
    mask = np.zeros((12, 12), bool)
    mask[0:6, 0:6] = True  # 36 px
    mask[9, 9] = True  # 1 px
    mask[10, 10] = True  # 8-connected to (9, 9): one 2 px island
    cleaned, changed = remove_small_regions(mask, 3, "islands")
    assert changed
    np.testing.assert_array_equal(cleaned, np.pad(np.ones((6, 6), bool), ((0, 6), (0, 6))))
    # Every island small: the largest stays rather than erasing the mask.
    kept, changed = remove_small_regions(mask, 100, "islands")
    assert changed
    np.testing.assert_array_equal(kept, cleaned)
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    same, changed = remove_small_regions(single, 100, "islands")
    assert not changed and same is single
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands', got 'both'"):
        remove_small_regions(mask, 3, "both")  # type: ignore[arg-type]
