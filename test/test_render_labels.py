"""The label image painted from the instances' RLE runs equals the image of decoded masks
painted one over another (the way it was made before, kept here as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from test_masks import smooth_logits, special_masks

from segfast_ros.masks import Instance, mask_to_rle, masks_to_boxes, rle_to_mask
from segfast_ros.pipeline.render import instances_to_label_image


def reference_labels(instances: list[Instance], hw: tuple[int, int]) -> np.ndarray:
    """Each decoded mask painted over the worse ones: instance ``i`` is label ``i + 1``."""
    labels = np.zeros(hw, dtype=np.uint16)
    for i in range(len(instances) - 1, -1, -1):
        labels[rle_to_mask(instances[i].rle)] = i + 1
    return labels


def instances_of(masks: np.ndarray) -> list[Instance]:
    boxes = masks_to_boxes(masks)
    return [
        Instance(rle, box, 0.9, 0.9, int(m.sum()), np.zeros(2, np.float32))
        for rle, box, m in zip(mask_to_rle(masks), boxes, masks, strict=True)
    ]


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 7), (6, 1), (17, 13), (48, 64)])
def test_label_image_equals_the_masks_painted_best_last(h: int, w: int) -> None:
    # Overlapping blobs, the empty and the full mask, stripes, single pixels at the corners.
    masks = np.concatenate([smooth_logits(10, h, w, seed=h + w) > 0, special_masks(h, w)])
    rng = np.random.default_rng(h * w)
    for order in (np.arange(len(masks)), rng.permutation(len(masks))):
        instances = instances_of(masks[order])
        labels = instances_to_label_image(instances, (h, w))
        assert labels.dtype == np.uint16 and labels.shape == (h, w)
        assert labels.flags.c_contiguous
        np.testing.assert_array_equal(labels, reference_labels(instances, (h, w)))
    # The full mask (label 2 here) hides every worse instance.
    assert (instances_to_label_image(instances_of(masks[:2]), (h, w)) == 2).all()


def test_label_image_of_nothing_and_bad_input() -> None:
    labels = instances_to_label_image([], (5, 4))
    assert labels.dtype == np.uint16 and labels.shape == (5, 4) and not labels.any()
    assert instances_to_label_image([], (0, 4)).shape == (0, 4)
    (good,) = instances_of(np.ones((1, 5, 4), bool))
    with pytest.raises(ValueError, match=r"instance 0 has an RLE of size \[5, 4\], expected"):
        instances_to_label_image([good], (4, 5))
    bad = Instance({"size": [5, 4], "counts": [3, 4]}, good.box, 0.9, 0.9, 4, good.prompt)
    with pytest.raises(ValueError, match=r"sum to 7, expected H \* W = 20"):
        instances_to_label_image([good, bad], (5, 4))
