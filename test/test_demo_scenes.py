"""The procedural scene generator: seeded, exact and consistent ground truth, sequences."""

from __future__ import annotations

import numpy as np
import pytest

from segfast_ros.bench.scenes import SHAPES, generate_scene, generate_sequence
from segfast_ros.masks import masks_to_boxes


def test_same_seed_same_scene_and_different_seed_different_scene():
    a, b = generate_scene(7), generate_scene(7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.kinds == b.kinds
    c = generate_scene(8)
    assert not np.array_equal(a.image, c.image)


def test_generator_argument_advances():
    rng = np.random.default_rng(3)
    first, second = generate_scene(rng), generate_scene(rng)
    assert not np.array_equal(first.image, second.image)


@pytest.mark.parametrize("hw", [(256, 256), (192, 256), (240, 320)])
def test_masks_boxes_and_background_are_consistent(hw):
    for seed in range(6):
        scene = generate_scene(seed, hw)
        n = len(scene)
        assert scene.image.shape == (*hw, 3) and scene.image.dtype == np.uint8
        assert scene.masks.shape == (n, *hw) and scene.masks.dtype == bool
        assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == np.float32
        assert len(scene.kinds) == n and set(scene.kinds) <= set(SHAPES)
        # Boxes are the tight pixel-edge boxes of the visible masks.
        np.testing.assert_array_equal(scene.boxes, masks_to_boxes(scene.masks))
        # Visible masks never overlap, nor touch the background.
        assert (scene.masks.sum(axis=0) <= 1).all()
        assert not (scene.masks.any(axis=0) & scene.background).any()
        # Tiny instances are dropped.
        assert (scene.masks.sum(axis=(1, 2)) >= 0.003 * hw[0] * hw[1] - 1).all()


def test_scenes_have_occlusion_holes_and_variety():
    scenes = [generate_scene(seed) for seed in range(30)]
    fractions = np.concatenate([s.visible_fraction for s in scenes])
    assert ((fractions > 0) & (fractions <= 1)).all()
    assert (fractions < 0.95).sum() >= 5, "expected partially occluded instances"
    kinds = {k for s in scenes for k in s.kinds}
    assert kinds == set(SHAPES)
    # A ring's mask has a hole: some pixel inside its box, surrounded by it, is not in it.
    ring = next((s, i) for s in scenes for i, k in enumerate(s.kinds) if k == "ring")
    scene, i = ring
    x0, y0, x1, y1 = scene.boxes[i].astype(int)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    row = scene.masks[i, cy, x0:x1]
    assert row.any() and not row[(cx - x0) - 1 : (cx - x0) + 2].all()
    counts = [len(s) for s in scenes]
    assert min(counts) >= 1 and max(counts) >= 6


def test_masks_follow_the_painted_pixels():
    """Inside a visible mask the pixels have the object's colours, not the background's."""
    scene = generate_scene(11)
    bg_mean = scene.image[scene.background].mean(axis=0)
    for mask in scene.masks:
        inner = mask.copy()
        inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        if inner.sum() < 20:
            continue
        # Objects are drawn >= 90 (RGB L2) from the background's mean colour; lighting and
        # textures blur that, so ask for a clear but smaller gap.
        gap = np.linalg.norm(scene.image[inner].mean(axis=0) - bg_mean)
        assert gap > 25


def test_sequence_is_seeded_smooth_and_exact():
    frames = generate_sequence(5, 6, (120, 160))
    again = generate_sequence(5, 6, (120, 160))
    assert len(frames) == 6
    for f, g in zip(frames, again, strict=True):
        np.testing.assert_array_equal(f.image, g.image)
        np.testing.assert_array_equal(f.masks, g.masks)
        assert f.image.shape == (120, 160, 3)
        np.testing.assert_array_equal(f.boxes, masks_to_boxes(f.masks))
        assert (f.masks.sum(axis=0) <= 1).all()
    # The camera moves smoothly: consecutive frames differ less than the first and last.
    step = np.abs(frames[1].image.astype(int) - frames[0].image.astype(int)).mean()
    span = np.abs(frames[-1].image.astype(int) - frames[0].image.astype(int)).mean()
    assert 0 < step < span


def test_bad_arguments_raise_with_the_value():
    with pytest.raises(ValueError, match="hw"):
        generate_scene(0, (16, 256))
    with pytest.raises(ValueError, match="num_objects"):
        generate_scene(0, num_objects=(5, 2))
    with pytest.raises(ValueError, match="n_frames"):
        generate_sequence(0, 0)
