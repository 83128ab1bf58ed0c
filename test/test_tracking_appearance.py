"""tracking.appearance: colour histograms of masked regions and their similarity."""

from __future__ import annotations

import numpy as np
import pytest

from segfast_ros.tracking.appearance import (
    BINS,
    bin_index,
    colour_histogram,
    similarity,
    target_colours,
)

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 220, 30)


def halves(left, right, hw=(20, 30)) -> np.ndarray:
    """An image whose left half is ``left`` and right half ``right``."""
    image = np.empty((*hw, 3), np.uint8)
    image[:, : hw[1] // 2] = left
    image[:, hw[1] // 2 :] = right
    return image


def test_histogram_counts_only_the_masked_pixels() -> None:
    image = halves(RED, BLUE)
    mask = np.zeros(image.shape[:2], bool)
    mask[:, :15] = True  # the red half
    mask[:5, 15:20] = True  # and 25 blue pixels: 300 red, 25 blue
    hist = colour_histogram(image, mask)
    assert hist.shape == (BINS**3,) and hist.dtype == np.float32
    assert hist.sum() == pytest.approx(1.0)
    red_bin, blue_bin = bin_index(np.array([[RED, BLUE]], np.uint8))[0]
    assert hist[red_bin] == pytest.approx(300 / 325) and hist[blue_bin] == pytest.approx(25 / 325)
    assert np.count_nonzero(hist) == 2


def test_bin_index_quantizes_each_channel_into_bins() -> None:
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [64, 0, 0], [63, 0, 0], [0, 0, 64]]], np.uint8)
    top = BINS**3 - 1
    assert bin_index(pixels)[0].tolist() == [0, top, BINS * BINS, 0, 1]


def test_similarity_is_one_for_the_same_colours_and_zero_for_none_in_common() -> None:
    image = halves(RED, BLUE)
    left = np.zeros(image.shape[:2], bool)
    left[:, :15] = True
    red, blue = colour_histogram(image, left), colour_histogram(image, ~left)
    assert similarity(red, red) == pytest.approx(1.0)
    assert similarity(red, blue) == 0.0
    # Half the mask's pixels of a colour the other lacks: sqrt(1/2) alike, between the bounds.
    mixed = colour_histogram(image, np.ones_like(left))
    assert similarity(mixed, red) == pytest.approx(np.sqrt(0.5))
    assert similarity(mixed, red) == pytest.approx(similarity(red, mixed))  # symmetric


def test_similarity_stays_within_zero_and_one_for_random_histograms() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for _ in range(20):
        a = colour_histogram(image, rng.random((40, 40)) < 0.3)
        b = colour_histogram(image, rng.random((40, 40)) < 0.3)
        assert 0.0 <= similarity(a, b) <= 1.0 + 1e-6
        assert similarity(a, a) == pytest.approx(1.0, abs=1e-6)


def test_target_colours_selects_the_pixels_of_the_models_colours() -> None:
    image = halves(RED, BLUE)
    image[:4, :4] = GREEN  # a speck of a third colour in the red half
    red_mask = np.zeros(image.shape[:2], bool)
    red_mask[:, :15] = True
    model = colour_histogram(image, red_mask)  # 284 red, 16 green of 300
    keep = target_colours(image, model, 0.03)
    expected = red_mask.copy()
    expected[:4, :4] = True  # green holds 16/300 > 0.03 of the model
    np.testing.assert_array_equal(keep, expected)
    # A higher minimum weight drops the minor colour; above every weight nothing is kept.
    expected[:4, :4] = False
    np.testing.assert_array_equal(target_colours(image, model, 0.1), expected)
    assert not target_colours(image, model, 1.01).any()


def test_an_empty_mask_has_no_histogram() -> None:
    image = halves(RED, BLUE)
    assert colour_histogram(image, np.zeros(image.shape[:2], bool)) is None


@pytest.mark.parametrize(
    ("image", "mask", "match"),
    [
        (np.zeros((20, 30), np.uint8), np.ones((20, 30), bool), r"\(H, W, 3\) uint8"),
        (np.zeros((20, 30, 4), np.uint8), np.ones((20, 30), bool), r"\(20, 30, 4\)"),
        (np.zeros((20, 30, 3), np.float32), np.ones((20, 30), bool), "float32"),
        (np.zeros((20, 30, 3), np.uint8), np.ones((20, 31), bool), r"same \(H, W\)"),
    ],
)
def test_bad_shapes_are_value_errors_naming_what_was_expected(image, mask, match) -> None:
    with pytest.raises(ValueError, match=match):
        colour_histogram(image, mask)
