"""Pre/post-processing: sizes, validation messages, normalisation, coordinate maps, upscaling."""

from __future__ import annotations

import numpy as np
import pytest

from segfast_ros.runtime.backend import ModelInfo
from segfast_ros.runtime.transforms import (
    MAX_IMAGE_PIXELS,
    apply_boxes,
    apply_coords,
    postprocess_masks,
    prepare_image,
    preprocess_shape,
    region_view,
    upscale_regions,
    validate_rgb_image,
)

INFO = ModelInfo("test")


@pytest.mark.parametrize(
    ("hw", "long_side", "expected"),
    [
        ((770, 769), 1024, (1024, 1023)),
        ((769, 770), 1024, (1023, 1024)),
        ((480, 640), 1024, (768, 1024)),
        ((1024, 1024), 1024, (1024, 1024)),
        ((1080, 1920), 1024, (576, 1024)),
        # 0.5 rounds up (int(x + 0.5)), not to even as round() would.
        ((1, 4), 2, (1, 2)),
    ],
)
def test_preprocess_shape(hw: tuple[int, int], long_side: int, expected: tuple[int, int]) -> None:
    assert preprocess_shape(*hw, long_side) == expected


# ----------------------------------------------------------------------- validate_rgb_image


def test_validate_accepts_rgb_and_makes_it_contiguous() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    assert validate_rgb_image(image) is image  # no copy when nothing is wrong
    strided = np.zeros((4, 12, 3), np.uint8)[:, ::2]
    out = validate_rgb_image(strided)
    assert out.flags.c_contiguous and out.shape == (4, 6, 3)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ([[0, 1], [2, 3]], r"numpy array HxWx3 uint8, got list"),
        (np.zeros((480, 640), np.uint8), r"got shape \(480, 640\) \(grayscale\? convert it"),
        (np.zeros((8, 8, 1), np.uint8), r"grayscale"),
        (np.zeros((8, 8, 4), np.uint8), r"got shape \(8, 8, 4\) \(RGBA\?"),
        (np.zeros((3, 8, 9), np.uint8), r"channels first\?"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"a batch\?"),
        (np.zeros((8, 8, 3), np.float32), r"got dtype float32 \(a float image\?"),
        (np.zeros((8, 8, 3), np.uint16), r"got dtype uint16"),
        (np.zeros((0, 8, 3), np.uint8), r"non-empty .* got shape \(0, 8, 3\)"),
        (np.zeros((8, 0, 3), np.uint8), r"non-empty"),
    ],
)
def test_validate_rejects_with_clear_message(image: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_rgb_image(image)  # type: ignore[arg-type]


def test_validate_rejects_huge_images() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))  # no memory used
    with pytest.raises(ValueError, match="exceeds MAX_IMAGE_PIXELS"):
        validate_rgb_image(huge)


# ----------------------------------------------------------------------------- prepare_image


def _normalise(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    mean = np.array(info.pixel_mean, np.float32)
    std = np.array(info.pixel_std, np.float32)
    return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)


def test_prepare_image_without_resize_is_exact_normalisation() -> None:
    rng = np.random.default_rng(0)
    info = ModelInfo("small", image_size=32)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x, hw = prepare_image(image, info)
    assert hw == (32, 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0], _normalise(image, info))


def test_prepare_image_resizes_longest_side_and_pads_with_zeros() -> None:
    import cv2

    rng = np.random.default_rng(1)
    info = ModelInfo("small", image_size=64, pixel_mean=(10.0, 20.0, 30.0))
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H=30, W=40
    x, (h, w) = prepare_image(image, info)
    assert (h, w) == (48, 64)
    assert x.shape == (1, 3, 64, 64)
    resized = cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(x[0, :, :48, :], _normalise(resized, info))
    assert not x[0, :, 48:, :].any()  # padding is exactly zero (after normalisation)


def test_prepare_image_validates() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        prepare_image(np.zeros((10, 10), np.uint8), INFO)


# ------------------------------------------------------------------------ coordinate frames


def test_apply_coords_scales_x_by_width_and_y_by_height() -> None:
    # 770 x 769 (H x W) -> 1024 x 1023: the two axes scale differently.
    coords = np.array([[769.0, 770.0], [0, 0], [100, 200]])
    out = apply_coords(coords, (770, 769), 1024)
    np.testing.assert_allclose(out[0], [1023.0, 1024.0])
    np.testing.assert_allclose(out[2], [100 * 1023 / 769, 200 * 1024 / 770])
    assert out.dtype == np.float64
    assert coords[2, 0] == 100  # input untouched


def test_apply_coords_accepts_integers_and_leading_axes() -> None:
    coords = np.array([[[10, 20]], [[30, 40]]], np.int64)  # (2, 1, 2)
    out = apply_coords(coords, (480, 640), 1024)  # scale 1.6 both ways
    np.testing.assert_allclose(out, coords * 1.6)


def test_apply_boxes_maps_both_corners() -> None:
    boxes = np.array([[10, 20, 30, 40], [0, 0, 640, 480]], np.float32)
    out = apply_boxes(boxes, (480, 640), 1024)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out, boxes * 1.6, rtol=1e-6)
    np.testing.assert_allclose(apply_boxes(boxes[0], (480, 640), 1024), boxes[0] * 1.6, rtol=1e-6)


# ------------------------------------------------------------------------ postprocess_masks


def _torch_reference(
    low_res: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int], size: int
) -> np.ndarray:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    # float64: torch's float32 bilinear computes its source-index scale in float32, which is
    # off by ~3e-4 on unit-scale inputs; cv2 is exact, so compare with the exact result.
    t = torch.from_numpy(low_res.astype(np.float64))
    t = f.interpolate(t, (size, size), mode="bilinear", align_corners=False)
    t = t[..., : input_hw[0], : input_hw[1]]
    return f.interpolate(t, original_hw, mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize(
    ("original_hw", "num_masks"),
    [
        ((770, 769), 1),  # the parity fixture's photo: input (1024, 1023)
        ((770, 769), 3),
        ((720, 1280), 3),  # 16:9, only part of the low-res grid is upscaled
        ((1030, 333), 2),  # tall, downscaled
        ((1024, 1024), 1),  # no crop, no second resize
    ],
)
def test_postprocess_masks_matches_torch_bilinear(
    original_hw: tuple[int, int], num_masks: int
) -> None:
    rng = np.random.default_rng(2)
    low_res = (rng.normal(size=(2, num_masks, 256, 256)) * 8).astype(np.float32)
    input_hw = preprocess_shape(*original_hw, 1024)
    out = postprocess_masks(low_res, input_hw, original_hw, 1024)
    assert out.shape == (2, num_masks, *original_hw) and out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(
        out, _torch_reference(low_res, input_hw, original_hw, 1024), atol=1e-4
    )


def test_postprocess_masks_non_integer_upscale_factor() -> None:
    rng = np.random.default_rng(3)
    low_res = rng.normal(size=(1, 1, 64, 64)).astype(np.float32)
    original_hw = (90, 120)
    input_hw = preprocess_shape(*original_hw, 200)  # 200 / 64 is not an integer
    out = postprocess_masks(low_res, input_hw, original_hw, 200)
    np.testing.assert_allclose(
        out, _torch_reference(low_res, input_hw, original_hw, 200), atol=1e-4
    )


def test_postprocess_masks_float32_torch_agrees_to_float32_precision() -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(4)
    low_res = (rng.normal(size=(1, 3, 256, 256)) * 8).astype(np.float32)
    t = f.interpolate(torch.from_numpy(low_res), (1024, 1024), mode="bilinear")
    ref = f.interpolate(t[..., :1024, :1023], (770, 769), mode="bilinear").numpy()
    out = postprocess_masks(low_res, (1024, 1023), (770, 769), 1024)
    np.testing.assert_allclose(out, ref, atol=5e-3)
    assert ((out > 0) == (ref > 0)).mean() > 0.9999


def test_postprocess_masks_empty_and_bad_shape() -> None:
    out = postprocess_masks(np.zeros((0, 3, 256, 256), np.float32), (10, 10), (5, 6), 1024)
    assert out.shape == (0, 3, 5, 6)
    with pytest.raises(ValueError, match=r"expected low-res masks \(B, M, L, L\)"):
        postprocess_masks(np.zeros((3, 256, 256), np.float32), (10, 10), (5, 6), 1024)


def _blobs(n: int, lr: int, valid: tuple[float, float], seed: int) -> np.ndarray:
    """``(n, lr, lr)`` smooth logits: round blobs of several sizes centred in the ``valid``
    fraction of the grid (rows, columns: the image, not the padding), the first in a corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:lr, :lr]
    out = np.empty((n, lr, lr), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0, 1, 2) * lr * np.array(valid) if i else (lr - 2, lr - 2)
        radius = rng.uniform(1, lr / 2)
        out[i] = (radius - np.hypot(yy - cy, xx - cx)) / 2 + rng.normal(0, 0.2, (lr, lr))
    return out


@pytest.mark.parametrize(
    ("hw", "size", "lr"),
    [((480, 640), 256, 64), ((1450, 2068), 1024, 256), ((770, 769), 1024, 256),
     ((4000, 90), 1024, 256), ((30, 20), 1024, 256), ((100, 100), 1000, 256)],
)  # fmt: skip
def test_upscale_regions_are_the_full_upscale_where_it_can_exceed(
    hw: tuple[int, int], size: int, lr: int
) -> None:
    input_hw = preprocess_shape(*hw, size)
    low = _blobs(6, lr, (input_hw[0] / size, input_hw[1] / size), seed=sum(hw))
    full = postprocess_masks(low[None], input_hw, hw, size)[0]
    above = -0.5
    regions = upscale_regions(low, input_hw, hw, size, above)
    assert len(regions) == len(low)
    for logits, region in zip(full, regions, strict=True):
        if region is None:
            assert (logits <= above).all()
            continue
        inside = region_view(logits, region)
        np.testing.assert_allclose(region.logits, inside, atol=2e-5, rtol=0)
        outside = logits.copy()
        region_view(outside, region)[:] = -np.inf
        assert (outside <= above).all()  # nothing outside the rectangle can exceed ``above``
    sizes = [r.logits.size for r in regions if r is not None]
    assert min(sizes) < hw[0] * hw[1]  # some rectangles are smaller than the frame


def test_upscale_regions_skip_masks_with_nothing_above() -> None:
    low = np.full((2, 64, 64), -5.0, np.float32)
    low[1, 63, 63] = 5.0  # only in the input's padding of a wide 640x480 frame
    assert upscale_regions(low, (192, 256), (480, 640), 256, 0.0) == [None, None]
    with pytest.raises(ValueError, match=r"\(G, L, L\)"):
        upscale_regions(low[0], (192, 256), (480, 640), 256, 0.0)
