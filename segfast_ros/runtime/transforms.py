"""Pre- and post-processing around the encoder and decoder: plain numpy/cv2, no torch.

Frames used throughout:

* **original**: pixels of the image the user passed, ``H x W``, (X, Y) with X along the width.
* **input**: pixels of the encoder input, i.e. the original resized so that its longest side is
  ``S = info.image_size`` (``h x w``, see :func:`preprocess_shape`) and zero-padded bottom/right
  to ``S x S``.
* **low-res**: the decoder's ``L x L`` mask grid, which covers the whole padded ``S x S`` input.

Resizes are bilinear with pixel centres at ``+0.5`` (cv2 ``INTER_LINEAR``), the same convention
as torch's ``F.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from segfast_ros.runtime.backend import ModelInfo

#: Largest image (height x width) accepted by :func:`validate_rgb_image`. Bigger inputs are
#: almost certainly a mistake (a wrong reshape, a mosaic), and would cost seconds to resize.
MAX_IMAGE_PIXELS: int = 64 * 1024 * 1024

#: Full-resolution mask logits upscaled at once, in pixels (masks x H x W). Those float32 maps
#: are the post-processing's largest arrays (133 MB for one 8K mask), so callers upscale
#: ``upscale_group_size(hw)`` masks at a time and reduce each group (threshold, RLE) before the
#: next: 8 Mi pixels = 32 MiB of logits, 4 masks of 1080p, 128 of 256 x 256, and one (never
#: fewer) of a frame above 8 Mi pixels. A budget in pixels, not masks, bounds the memory
#: whatever the frame size; a larger one saves nothing, as the work is per pixel.
UPSCALE_BUDGET_PIXELS: int = 8 * 1024 * 1024


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size ``(new_h, new_w)`` of an ``h x w`` image resized so its longest side is ``long_side``.

    Rounds half up (``int(side * scale + 0.5)``) like the reference implementation.
    """
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _shape_hint(image: np.ndarray) -> str:
    """A guess at what the caller passed, for error messages."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return " (grayscale? convert it to RGB first)"
    if image.ndim == 3 and image.shape[2] == 4:
        return " (RGBA? drop the alpha channel: image[..., :3])"
    if image.ndim == 3 and image.shape[0] in (1, 3, 4):
        return " (channels first? transpose CHW to HWC: image.transpose(1, 2, 0))"
    if image.ndim == 4 and image.shape[0] == 1:
        return " (a batch? pass one image: image[0])"
    return ""


def validate_rgb_image(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is an ``H x W x 3`` uint8 RGB image and return it C-contiguous.

    The channel order cannot be checked: BGR images (OpenCV's default) must be converted by the
    caller (``cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)``).

    Args:
        image: ``(H, W, 3)`` uint8, RGB.

    Returns:
        The same image, C-contiguous (copied only if it was not).

    Raises:
        ValueError: not a numpy array, wrong shape, wrong dtype, empty, or more than
            :data:`MAX_IMAGE_PIXELS` pixels.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"expected an RGB image as a numpy array HxWx3 uint8, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image HxWx3 uint8, got shape {image.shape}{_shape_hint(image)}"
        )
    if image.dtype != np.uint8:
        hint = ""
        if np.issubdtype(image.dtype, np.floating):
            hint = " (a float image? scale it to 0..255 and cast with .astype(np.uint8))"
        elif image.dtype == np.uint16:
            hint = " (16-bit? rescale to 8 bits first)"
        raise ValueError(f"expected an RGB image HxWx3 uint8, got dtype {image.dtype}{hint}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"expected a non-empty RGB image HxWx3 uint8, got shape {image.shape}")
    check_image_pixels(h, w)
    return np.ascontiguousarray(image)


def check_image_pixels(h: int, w: int) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS`, naming its size and the limit.

    Raises:
        ValueError: ``h * w > MAX_IMAGE_PIXELS``.
    """
    if h * w > MAX_IMAGE_PIXELS:
        # Exact counts: just above the limit, rounded megapixels would read as equal.
        raise ValueError(
            f"image of {w}x{h} (W x H) = {h * w:,} pixels exceeds MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS:,} pixels ({MAX_IMAGE_PIXELS / 1e6:.1f} megapixels); downscale "
            "it first"
        )


#: Image resize policies by name (node parameter ``resize_interpolation``): ``linear`` is the
#: reference (and the cheapest); ``area`` antialiases when a large frame shrinks by > ~2x
#: (e.g. 4K to 1024), at a higher CPU cost for the resize.
RESIZE_INTERPOLATIONS: dict[str, int] = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


def prepare_image(
    image: np.ndarray,
    info: ModelInfo,
    *,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Turn an RGB image into the encoder input.

    Resizes the longest side to ``S = info.image_size`` (on the uint8 image, as the reference
    does), normalises with ``info.pixel_mean`` / ``info.pixel_std`` in 0..255 space and pads
    with zeros at the bottom/right.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, original frame (validated with
            :func:`validate_rgb_image`).
        info: the model's facts (input size, normalisation).
        interpolation: cv2 interpolation flag for the resize. ``INTER_LINEAR`` matches the
            reference on upscaling; ``INTER_AREA`` is closer to an antialiased resize when
            shrinking a large frame by more than ~2x.

    Returns:
        ``(1, 3, S, S)`` float32 C-contiguous encoder input, and the resized ``(h, w)`` (the
        input frame's valid region).
    """
    image = validate_rgb_image(image)
    s = info.image_size
    h, w = preprocess_shape(image.shape[0], image.shape[1], s)
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=interpolation)
    out = np.zeros((1, 3, s, s), dtype=np.float32)
    # (x - mean) / std in float32, in the same order as the reference, so results match bitwise.
    for c in range(3):
        dst = out[0, c, :h, :w]
        np.subtract(image[:, :, c], np.float32(info.pixel_mean[c]), out=dst, dtype=np.float32)
        dst /= np.float32(info.pixel_std[c])
    return out, (h, w)


def apply_coords(coords: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """Map points from the original frame to the input frame.

    Args:
        coords: ``(..., 2)`` (X, Y) in original pixels, any real dtype.
        original_hw: ``(H, W)`` of the original image.
        image_size: side ``S`` of the encoder input.

    Returns:
        ``(..., 2)`` float64 (X, Y) in input pixels (no +0.5 shift; the decoder graph adds it).
    """
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w, image_size)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out


def apply_boxes(boxes: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """Map boxes from the original frame to the input frame.

    Args:
        boxes: ``(..., 4)`` XYXY in original pixels.
        original_hw: ``(H, W)`` of the original image.
        image_size: side ``S`` of the encoder input.

    Returns:
        ``(..., 4)`` float64 XYXY in input pixels.
    """
    boxes = np.asarray(boxes)
    corners = apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_hw, image_size)
    return corners.reshape(boxes.shape)


def upscale_group_size(hw: tuple[int, int], budget_pixels: int | None = None) -> int:
    """Masks of ``hw = (H, W)`` pixels to upscale at once: ``max(1, budget_pixels // (H * W))``.

    ``budget_pixels`` None is :data:`UPSCALE_BUDGET_PIXELS`, read at each call (so that one
    assignment changes it for every caller, e.g. a benchmark emulating another budget).

    Raises:
        ValueError: ``budget_pixels`` below 1, or a size that is not positive.
    """
    if budget_pixels is None:
        budget_pixels = UPSCALE_BUDGET_PIXELS
    if budget_pixels < 1:
        raise ValueError(f"upscale budget must be >= 1 pixel, got {budget_pixels}")
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"expected a mask size (H, W) > 0, got {tuple(hw)}")
    return max(1, int(budget_pixels) // (h * w))


def _upscale_crop(mask: np.ndarray, factor: int, input_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear ``factor``x upscale of ``mask`` (``L x L [x K]``), cropped to ``input_hw``.

    Only the low-res rows/columns the crop depends on are resized. With an integer factor the
    source coordinate of an output pixel, ``(i + 0.5) / factor - 0.5``, does not depend on the
    total size, and one extra source row/column keeps the edge clamp out of the crop, so the
    result equals a full resize followed by the crop.
    """
    h, w = input_hw
    rows = min(mask.shape[0], -(-h // factor) + 1)
    cols = min(mask.shape[1], -(-w // factor) + 1)
    big = cv2.resize(
        mask[:rows, :cols], (cols * factor, rows * factor), interpolation=cv2.INTER_LINEAR
    )
    return big[:h, :w]


def postprocess_masks(
    low_res: np.ndarray,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    image_size: int,
) -> np.ndarray:
    """Upscale low-res mask logits to the original frame.

    Bilinear to ``S x S``, crop to the valid input region ``input_hw``, bilinear to the original
    size, i.e. the reference's two ``F.interpolate(bilinear, align_corners=False)`` steps.

    Args:
        low_res: ``(B, M, L, L)`` float32 logits in the low-res frame.
        input_hw: ``(h, w)`` of the resized image inside the padded input.
        original_hw: ``(H, W)`` of the original image.
        image_size: side ``S`` of the encoder input.

    Returns:
        ``(B, M, H, W)`` float32 logits in the original frame, C-contiguous.
    """
    if low_res.ndim != 4 or low_res.shape[2] != low_res.shape[3]:
        raise ValueError(f"expected low-res masks (B, M, L, L), got shape {low_res.shape}")
    b, m, lr = low_res.shape[:3]
    big_h, big_w = original_hw
    out = np.empty((b, m, big_h, big_w), dtype=np.float32)
    if b * m == 0:
        return out
    low_res = np.asarray(low_res, dtype=np.float32)
    if image_size % lr == 0:
        factor = image_size // lr

        def upscale(mask: np.ndarray) -> np.ndarray:
            return _upscale_crop(mask, factor, input_hw)
    else:

        def upscale(mask: np.ndarray) -> np.ndarray:
            big = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
            return big[: input_hw[0], : input_hw[1]]

    # One 2-D resize pair per mask, written straight into the output: measured faster than one
    # multi-channel (HxWxK) resize, whose transposes in and out cost more than they save.
    for i in range(b):
        for j in range(m):
            cropped = upscale(low_res[i, j])
            if cropped.shape == (big_h, big_w):
                out[i, j] = cropped
            else:
                cv2.resize(cropped, (big_w, big_h), dst=out[i, j], interpolation=cv2.INTER_LINEAR)
    return out


# ------------------------------------------------------------------ upscaling a mask's region


#: :func:`upscale_regions` computes a rectangle itself when it covers at most this fraction
#: (its inverse) of the frame; measured: a 510x502 region of a 3 MP frame in 1.3 ms against
#: 2.9 ms for the full upscale and threshold, a 1450x1957 one in 13 against 6.6 ms.
LARGE_REGION = 3


@dataclass(frozen=True)
class Region:
    """Full-size logits of one rectangle of the original frame.

    Attributes:
        logits: ``(h, w)`` float32, the values :func:`postprocess_masks` gives at those pixels.
        y0: the rectangle's first row.
        x0: its first column.
    """

    logits: np.ndarray
    y0: int
    x0: int


def region_view(frame: np.ndarray, region: Region) -> np.ndarray:
    """The part of a full-frame ``(H, W)`` array that ``region`` covers (a view)."""
    h, w = region.logits.shape
    return frame[region.y0 : region.y0 + h, region.x0 : region.x0 + w]


@dataclass(frozen=True)
class _Axis:
    """One axis of the two bilinear steps (low-res -> input frame -> original frame): for
    every output index, its two sources and the weight of the second, per step, and the
    low-res indices each output index depends on (``lo``, ``hi``, both included).

    ``period``: ``(q, p)`` when ``q`` output indices span exactly ``p`` input indices with
    ``q`` at most :data:`MAX_PERIOD` (640 from 256: 5 and 2), else None."""

    src0: tuple[np.ndarray, np.ndarray]
    src1: tuple[np.ndarray, np.ndarray]
    weight: tuple[np.ndarray, np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    period: tuple[int, int] | None
    length: int


#: Longest period (output pixels) for which a region is resized by cv2 on an aligned block.
MAX_PERIOD = 64


def _linear_taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 ``INTER_LINEAR``'s sources and weights along one axis: output index ``i`` reads
    ``(i + 0.5) * in / out - 0.5``, clamped to the first and last source."""
    pos = ((np.arange(out_len) + 0.5) * (in_len / out_len) - 0.5).astype(np.float32)
    pos = np.maximum(pos, np.float32(0))
    src0 = np.floor(pos).astype(np.int64)
    weight = pos - src0.astype(np.float32)
    last = src0 >= in_len - 1
    src0[last], weight[last] = in_len - 1, 0
    return src0, np.minimum(src0 + 1, in_len - 1), weight


@functools.lru_cache(maxsize=32)
def _axis(low: int, size: int, crop: int, out_len: int) -> _Axis:
    """The two steps along one axis: ``low`` low-res cells to ``size`` input pixels, cropped to
    the first ``crop``, then to ``out_len`` original pixels."""
    a0, a1, aw = _linear_taps(size, low)
    b0, b1, bw = _linear_taps(out_len, crop)
    ratio = Fraction(crop, out_len)
    period = (ratio.denominator, ratio.numerator) if ratio.denominator <= MAX_PERIOD else None
    return _Axis((a0, b0), (a1, b1), (aw, bw), a0[b0], a1[b1], period, out_len)


def _lerp(values: np.ndarray, src0: np.ndarray, src1: np.ndarray, w: np.ndarray, axis: int):
    """One bilinear step along ``axis`` of a 2-D array (sources indexed from the array's own
    first row or column)."""
    a = np.take(values, src0, axis=axis)
    b = np.take(values, src1, axis=axis)
    w = w[:, None] if axis == 0 else w[None, :]
    return a + (b - a) * w


def upscale_regions(
    low_res: np.ndarray,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    image_size: int,
    above: float,
) -> list[Region | None]:
    """Each mask's full-size logits, only where they may exceed ``above``.

    The two bilinear steps of :func:`postprocess_masks` mix, at each output pixel, at most
    three low-res rows and three columns with non-negative weights, so a pixel can exceed
    ``above`` only if one of those cells does. Each mask's rectangle is the output pixels whose
    cells include a cell above ``above``; its logits are computed from those cells alone: by
    cv2 on an aligned block where the scale has a short period (:func:`_resize_block`, equal to
    the full upscale bit for bit), else by numpy with cv2's sample positions and weights (equal
    to float rounding). Every pixel outside the rectangle is at most ``above``. The work is the
    rectangle's: a few percent of the frame for most masks, where the full upscale writes and
    reads every pixel. A rectangle larger than ``1 / LARGE_REGION`` of the frame is cut from
    cv2's full upscale of its mask instead, which is faster per pixel than the numpy steps.

    Args:
        low_res: ``(G, L, L)`` float32 low-res logits.
        input_hw: ``(h, w)`` of the resized image inside the padded input.
        original_hw: ``(H, W)`` of the original image.
        image_size: side ``S`` of the encoder input.
        above: the lowest threshold the caller applies.

    Returns:
        Per mask, its :class:`Region`, or None when no pixel can exceed ``above``.
    """
    low_res = np.asarray(low_res, dtype=np.float32)
    if low_res.ndim != 3 or low_res.shape[1] != low_res.shape[2]:
        raise ValueError(f"expected low-res masks (G, L, L), got shape {low_res.shape}")
    lr = low_res.shape[1]
    factor = image_size // lr if image_size % lr == 0 else 0  # the first step's, if integer
    h, w = int(original_hw[0]), int(original_hw[1])
    rows = _axis(lr, image_size, int(input_hw[0]), int(original_hw[0]))
    cols = _axis(lr, image_size, int(input_hw[1]), int(original_hw[1]))
    out: list[Region | None] = []
    for mask in low_res:
        hot = mask > above
        hot_rows, hot_cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
        if hot_rows.size == 0:
            out.append(None)
            continue
        y0, y1 = _span(rows, int(hot_rows[0]), int(hot_rows[-1]))
        x0, x1 = _span(cols, int(hot_cols[0]), int(hot_cols[-1]))
        if y0 >= y1 or x0 >= x1:  # the hot cells lie in the input's padding only
            out.append(None)
        elif (y1 - y0) * (x1 - x0) * LARGE_REGION > h * w:  # cv2 is faster per pixel
            full = postprocess_masks(mask[None, None], input_hw, (h, w), image_size)[0, 0]
            out.append(Region(full[y0:y1, x0:x1], y0, x0))
        elif factor and rows.period and cols.period:
            logits = _resize_block(mask, factor, rows, cols, (y0, y1), (x0, x1))
            out.append(Region(logits, y0, x0))
        else:
            out.append(Region(_upscale_block(mask, rows, cols, (y0, y1), (x0, x1)), y0, x0))
    return out


def _resize_block(
    mask: np.ndarray,
    factor: int,
    rows: _Axis,
    cols: _Axis,
    ys: tuple[int, int],
    xs: tuple[int, int],
) -> np.ndarray:
    """:func:`_upscale_block` with cv2's resizes, on a block aligned so that they compute the
    full resizes' positions and weights: the integer first step from whole low-res cells, the
    second on whole periods of input and output pixels, each with a margin cell or period on
    either side (cv2 clamps at a block's edges, the full resize only at the frame's)."""
    (ry0, ry1), (cy0, cy1), (ly0, ly1) = _aligned(rows, ys, factor, mask.shape[0])
    (rx0, rx1), (cx0, cx1), (lx0, lx1) = _aligned(cols, xs, factor, mask.shape[1])
    block = mask[ly0:ly1, lx0:lx1]
    size = ((lx1 - lx0) * factor, (ly1 - ly0) * factor)
    block = cv2.resize(block, size, interpolation=cv2.INTER_LINEAR)
    block = block[cy0 - ly0 * factor : cy1 - ly0 * factor, cx0 - lx0 * factor : cx1 - lx0 * factor]
    block = cv2.resize(block, (rx1 - rx0, ry1 - ry0), interpolation=cv2.INTER_LINEAR)
    return block[ys[0] - ry0 : ys[1] - ry0, xs[0] - rx0 : xs[1] - rx0]


def _aligned(
    axis: _Axis, span: tuple[int, int], factor: int, low: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Output, input and low-res ranges ``[start, stop)`` of :func:`_resize_block` along one
    axis, for output indices ``span``."""
    assert axis.period is not None
    q, p = axis.period
    out0 = max(0, (span[0] // q - 1) * q)
    out1 = min(axis.length, (-(-span[1] // q) + 1) * q)
    in0, in1 = out0 // q * p, out1 // q * p
    return (out0, out1), (in0, in1), (max(0, in0 // factor - 1), min(low, -(-in1 // factor) + 1))


def _span(axis: _Axis, first: int, last: int) -> tuple[int, int]:
    """The output indices ``[start, stop)`` whose low-res cells meet ``first..last``
    (``lo`` and ``hi`` never decrease along the axis)."""
    start = int(np.searchsorted(axis.hi, first, side="left"))
    stop = int(np.searchsorted(axis.lo, last, side="right"))
    return start, stop


def _upscale_block(
    mask: np.ndarray, rows: _Axis, cols: _Axis, ys: tuple[int, int], xs: tuple[int, int]
) -> np.ndarray:
    """The full-size logits of output rows ``ys`` and columns ``xs`` of one ``(L, L)`` mask:
    both steps, columns then rows as cv2 does, on the cells and input pixels they need."""
    (r0, r1), (c0, c1) = _needed(rows, ys), _needed(cols, xs)
    (q0, q1), (p0, p1) = _needed_low(rows, r0, r1), _needed_low(cols, c0, c1)
    block = mask[q0:q1, p0:p1]
    a, b = slice(c0, c1), slice(r0, r1)  # step 1: low-res cells to input pixels
    block = _lerp(block, cols.src0[0][a] - p0, cols.src1[0][a] - p0, cols.weight[0][a], 1)
    block = _lerp(block, rows.src0[0][b] - q0, rows.src1[0][b] - q0, rows.weight[0][b], 0)
    a, b = slice(*xs), slice(*ys)  # step 2: input pixels to original pixels
    block = _lerp(block, cols.src0[1][a] - c0, cols.src1[1][a] - c0, cols.weight[1][a], 1)
    block = _lerp(block, rows.src0[1][b] - r0, rows.src1[1][b] - r0, rows.weight[1][b], 0)
    return np.ascontiguousarray(block, dtype=np.float32)


def _needed(axis: _Axis, span: tuple[int, int]) -> tuple[int, int]:
    """The input-frame indices ``[first, stop)`` that output indices ``span`` read."""
    start, stop = span
    return int(axis.src0[1][start]), int(axis.src1[1][stop - 1]) + 1


def _needed_low(axis: _Axis, first: int, stop: int) -> tuple[int, int]:
    """The low-res indices ``[first, stop)`` that input-frame indices ``first..stop-1`` read."""
    return int(axis.src0[0][first]), int(axis.src1[0][stop - 1]) + 1
