"""tracking.overlap: footprints give the exact full-resolution IoU, from masks and from RLE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.masks import Instance, mask_to_rle, masks_to_boxes
from segfast_ros.tracking.overlap import BLOCK, Footprints, intersections, iou_matrix


def exact_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def instances(masks: np.ndarray, boxes: np.ndarray | None = None) -> list[Instance]:
    boxes = masks_to_boxes(masks) if boxes is None else boxes
    return [
        Instance(rle, box, 0.9, 0.9, int(m.sum()), np.zeros(2, np.float32))
        for rle, box, m in zip(mask_to_rle(masks), boxes, masks, strict=True)
    ]


def blobs(hw: tuple[int, int], n: int, seed: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Discs and rectangles of all sizes (1 pixel to a third of the image), some at the edges,
    plus an empty, a full and a noise mask (every cell partial)."""
    h, w = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        cx, cy = rng.uniform(-0.1, 1.1) * w + shift[0], rng.uniform(-0.1, 1.1) * h + shift[1]
        r = rng.uniform(0.5, max(1.0, min(h, w) / 3))
        if i % 2:
            out.append((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
        else:
            out.append((abs(xx - cx) < r) & (abs(yy - cy) < r / 2))
    out += [np.zeros(hw, bool), np.ones(hw, bool), rng.random(hw) < 0.4]
    return np.stack(out)


@pytest.mark.parametrize(
    "hw", [(1, 1), (BLOCK, 3), (BLOCK + 1, 70), (37, 53), (240, 320), (480, 640)]
)
def test_iou_matrix_equals_full_resolution_iou(hw):
    a, b = blobs(hw, 30, seed=1), blobs(hw, 30, seed=1, shift=(3, -2))
    fa, fb = Footprints.from_masks(a), Footprints.from_instances(instances(b), hw)
    got = iou_matrix(fa, fb)
    assert got.shape == (len(a), len(b)) and got.dtype == np.float32
    np.testing.assert_allclose(got, exact_iou(a, b), rtol=0, atol=1e-6)
    inter = a.reshape(len(a), -1).astype(np.int64) @ b.reshape(len(b), -1).T.astype(np.int64)
    np.testing.assert_array_equal(intersections(fa, fb), inter)
    np.testing.assert_array_equal(fa.areas, a.reshape(len(a), -1).sum(1))


def test_scene_masks_moving_with_the_camera():
    frames = generate_sequence(5, 20, (240, 320))
    a, b = frames[0].masks, frames[1].masks
    got = iou_matrix(Footprints.from_masks(a), Footprints.from_instances(instances(b), (240, 320)))
    np.testing.assert_allclose(got, exact_iou(a, b), atol=1e-6)
    assert got.max() > 0.5  # not a comparison of disjoint masks only


def test_rle_and_bool_masks_give_the_same_footprints():
    masks = blobs((130, 90), 12, seed=2)  # two and a bit blocks per column
    a = Footprints.from_masks(masks)
    b = Footprints.from_instances(instances(masks), (130, 90))
    for name in ("areas", "indptr", "blocks", "words"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    # empty runs (valid COCO RLE, though mask_to_rle never writes them) change nothing
    rle = mask_to_rle(masks[:1])[0]
    padded = {"size": rle["size"], "counts": [0, 0, *rle["counts"][:2], 0, 0, *rle["counts"][2:]]}
    inst = Instance(padded, np.zeros(4, np.float32), 1.0, 1.0, 0, np.zeros(2))
    c = Footprints.from_instances([inst], (130, 90))
    np.testing.assert_array_equal(c.words, a.take([0]).words)
    np.testing.assert_array_equal(c.blocks, a.take([0]).blocks)


def test_the_instance_box_is_not_trusted():
    masks = blobs((64, 80), 6, seed=3)[:6]
    wrong = np.tile(np.array([[10, 10, 12, 12]], np.float32), (len(masks), 1))
    nan = np.full((len(masks), 4), np.nan, np.float32)
    for boxes in (wrong, nan):
        fp = Footprints.from_instances(instances(masks, boxes), (64, 80))
        np.testing.assert_allclose(iou_matrix(fp, fp), exact_iou(masks, masks), atol=1e-6)


def test_take_concat_and_empty():
    masks = blobs((50, 70), 8, seed=4)
    fp = Footprints.from_masks(masks)
    picked = Footprints.concat([fp.take([3, 1]), Footprints.empty((50, 70)), fp.take([3])])
    np.testing.assert_allclose(
        iou_matrix(picked, fp), exact_iou(masks[[3, 1, 3]], masks), atol=1e-6
    )
    empty = Footprints.empty((50, 70))
    assert iou_matrix(empty, fp).shape == (0, len(masks))
    assert iou_matrix(fp, fp.take([])).shape == (len(masks), 0)
    assert len(Footprints.from_instances([], (50, 70))) == 0
    assert len(Footprints.concat([], hw=(50, 70))) == 0
    with pytest.raises(ValueError, match="needs hw"):
        Footprints.concat([])
    n = len(masks)
    with pytest.raises(IndexError, match=rf"indices \[{n}\] out of range for {n} masks"):
        fp.take([n])


def test_bad_inputs_say_what_was_expected():
    fp = Footprints.from_masks(np.ones((1, 20, 30), bool))
    with pytest.raises(ValueError, match=r"different image sizes .*\(20, 30\) and \(30, 20\)"):
        iou_matrix(fp, Footprints.from_masks(np.ones((1, 30, 20), bool)))
    with pytest.raises(ValueError, match=r"different image sizes"):
        Footprints.concat([fp, Footprints.empty((30, 20))])
    with pytest.raises(ValueError, match=r"instance 1: mask size \[20, 31\] is not the image's"):
        Footprints.from_instances(
            instances(np.ones((1, 20, 30), bool)) + instances(np.ones((1, 20, 31), bool)),
            (20, 30),
        )
    with pytest.raises(ValueError, match=r"expected masks \(N, H, W\)"):
        Footprints.from_masks(np.ones((20, 30), bool))
    good = instances(np.ones((1, 20, 30), bool))
    bad = Instance({"size": [20, 30], "counts": [5, 10]}, np.zeros(4), 1, 1, 10, np.zeros(2))
    with pytest.raises(ValueError, match=r"instance 1: RLE counts sum to 15 .* H \* W = 600"):
        Footprints.from_instances([*good, bad], (20, 30))
    negative = dataclasses.replace(bad, rle={"size": [20, 30], "counts": [610, -10]})
    with pytest.raises(ValueError, match=r"instance 0: .*or are negative"):
        Footprints.from_instances([negative], (20, 30))
    compressed = dataclasses.replace(bad, rle={"size": [20, 30], "counts": "abc"})
    with pytest.raises(ValueError, match="compressed RLE"):
        Footprints.from_instances([compressed], (20, 30))
