"""ROS message <-> numpy conversions: images in, masks, labels and instances out (no ROS graph)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs ROS 2 Jazzy (rclpy) for the message classes")
pytest.importorskip("sensor_msgs.msg", reason="needs ROS 2 sensor_msgs")
pytest.importorskip(
    "segfast_ros.msg", reason="segfast_ros interfaces not generated (make setup or colcon build)"
)

from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from segfast_ros.masks import Instance, mask_to_rle, masks_to_boxes
from segfast_ros.pipeline.render import mask_record
from segfast_ros.ros.conversions import (
    ACCEPTED_ENCODINGS,
    MAX_LABELS,
    ImageError,
    box_to_roi,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    instance_to_msg,
    instances_to_label_image,
    labels_to_mono16_msg,
    mask_to_mono8_msg,
    overlay,
    record_to_msg,
    rgb_to_image_msg,
    stamp_to_ns,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 5, 7


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _header() -> Header:
    return Header(stamp=Time(sec=12, nanosec=345), frame_id="camera")


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """An Image of ``(H, W[, C])`` uint8 pixels, each row padded with ``pad`` bytes of 0xAB."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=rows.shape[1], data=rows.tobytes())


def _encode(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` as the pixels of ``encoding``, and the RGB image that decoding must give."""
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])
    if encoding == "mono8":
        gray = rgb[..., 1]
        return gray, np.repeat(gray[..., None], 3, axis=2)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, alpha]),
        "bgra8": np.dstack([rgb[..., ::-1], alpha]),
    }[encoding]
    return np.ascontiguousarray(pixels), rgb


# ------------------------------------------------------------------------------ images in


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", ACCEPTED_ENCODINGS)
def test_image_msg_to_rgb_round_trips_every_encoding(
    rgb: np.ndarray, encoding: str, pad: int
) -> None:
    pixels, expected = _encode(rgb, encoding)
    out = image_msg_to_rgb(_image(pixels, encoding, pad))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_image_msg_to_rgb_views_unpadded_rgb8_read_only(rgb: np.ndarray) -> None:
    msg = _image(rgb, "rgb8")
    out = image_msg_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    assert not out.flags.writeable
    # Converted or unpadded-by-copy results are the caller's own.
    assert image_msg_to_rgb(_image(rgb, "rgb8", pad=3)).flags.writeable
    assert image_msg_to_rgb(_image(rgb[..., ::-1].copy(), "bgr8")).flags.writeable


def test_image_msg_to_rgb_reads_bytes_and_ignores_trailing_data(rgb: np.ndarray) -> None:
    # rclpy can hand over uint8[] as bytes; extra bytes past step * height are not pixels.
    msg = SimpleNamespace(
        encoding="bgr8", height=H, width=W, step=3 * W, data=rgb[..., ::-1].tobytes() + b"xyz"
    )
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["16UC1", "yuv422", "bayer_rggb8", "32FC1", "", "rgb16"])
def test_image_msg_to_rgb_rejects_other_encodings(encoding: str) -> None:
    msg = Image(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(ImageError) as err:
        image_msg_to_rgb(msg)
    assert f"unsupported image encoding {encoding!r}" in str(err.value)
    assert "accepted: rgb8, bgr8, rgba8, bgra8, mono8" in str(err.value)


def test_image_msg_to_rgb_encodings_are_case_sensitive() -> None:
    msg = Image(height=1, width=1, encoding="RGB8", step=3, data=bytes(3))
    with pytest.raises(ImageError, match=r"'RGB8' \(encodings are case-sensitive\); accepted"):
        image_msg_to_rgb(msg)


@pytest.mark.parametrize(("height", "width"), [(0, 4), (3, 0), (0, 0)])
def test_image_msg_to_rgb_rejects_empty_images(height: int, width: int) -> None:
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=bytes(0))
    with pytest.raises(ImageError, match=rf"rgb8 image is {width}x{height} .*both must be > 0"):
        image_msg_to_rgb(msg)


def test_image_msg_to_rgb_rejects_short_data() -> None:
    msg = Image(height=4, width=3, encoding="bgra8", step=16, data=bytes(63))
    with pytest.raises(
        ImageError, match=r"step 16 needs step \* height = 64 bytes of data, got 63"
    ):
        image_msg_to_rgb(msg)


def test_image_msg_to_rgb_rejects_a_step_shorter_than_a_row() -> None:
    msg = Image(height=2, width=7, encoding="rgb8", step=20, data=bytes(40))
    with pytest.raises(ImageError, match=r"step 20, less than width \* 3 = 21 bytes per row"):
        image_msg_to_rgb(msg)


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


def _compressed(image: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return CompressedImage(format=fmt, data=buf.tobytes())


def test_compressed_png_color_gray_and_alpha_decode_exactly(rgb: np.ndarray) -> None:
    bgr = rgb[..., ::-1].copy()
    out = compressed_msg_to_rgb(_compressed(bgr, ".png", "bgr8; png compressed bgr8"))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)

    gray = rgb[..., 0].copy()
    out = compressed_msg_to_rgb(_compressed(gray, ".png", "mono8; png compressed "))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    bgra = np.dstack([bgr, np.full((H, W), 7, np.uint8)])
    np.testing.assert_array_equal(compressed_msg_to_rgb(_compressed(bgra, ".png", "png")), rgb)


def test_compressed_jpeg_color_and_gray_decode_closely() -> None:
    # Smooth images, so JPEG's loss is small and a channel swap would be obvious.
    y, x = np.mgrid[:32, :48]
    rgb = np.dstack([x * 5, y * 7, np.full_like(x, 200)]).astype(np.uint8)
    out = compressed_msg_to_rgb(_compressed(rgb[..., ::-1].copy(), ".jpg", "jpeg"))
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 3

    gray = (x * 5).astype(np.uint8)
    out = compressed_msg_to_rgb(_compressed(gray, ".jpg", "mono8; jpeg compressed "))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - gray).mean() < 3


def test_compressed_errors_name_the_format() -> None:
    with pytest.raises(ImageError, match=r"CompressedImage \(format 'jpeg'\) has no data"):
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b""))
    with pytest.raises(ImageError, match=r"cannot decode 4 bytes of CompressedImage \(format"):
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b"\x00\x01\x02\x03"))
    depth = CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 12 + b"garbage")
    with pytest.raises(ImageError, match="compressedDepth is depth"):
        compressed_msg_to_rgb(depth)
    png16 = _compressed(np.full((4, 4), 1000, np.uint16), ".png", "16UC1; png")
    with pytest.raises(ImageError, match=r"'16UC1; png'\) decoded to a uint16 image"):
        compressed_msg_to_rgb(png16)


# ----------------------------------------------------------------------------- images out


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_rgb_to_image_msg_round_trips(rgb: np.ndarray, encoding: str) -> None:
    msg = rgb_to_image_msg(rgb, _header(), encoding)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (H, W, 3 * W, encoding)
    assert msg.header.frame_id == "camera" and msg.header.stamp.nanosec == 345
    assert msg.data.typecode == "B" and len(msg.data) == H * W * 3
    first = list(rgb[0, 0]) if encoding == "rgb8" else list(rgb[0, 0, ::-1])
    assert list(msg.data[:3]) == first
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


def test_rgb_to_image_msg_rejects_bad_input(rgb: np.ndarray) -> None:
    with pytest.raises(ImageError, match=r"cannot write encoding 'mono8'"):
        rgb_to_image_msg(rgb, _header(), "mono8")
    with pytest.raises(ImageError, match=r"\(H, W, 3\) uint8, got \(5, 7\) uint8"):
        rgb_to_image_msg(rgb[..., 0], _header())
    with pytest.raises(ImageError, match="float32"):
        rgb_to_image_msg(rgb.astype(np.float32), _header())


def test_mask_to_mono8_msg() -> None:
    mask = np.zeros((H, W), bool)
    mask[1:3, 2:6] = True
    msg = mask_to_mono8_msg(mask, _header())
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("mono8", W, H, W)
    out = np.frombuffer(msg.data, np.uint8).reshape(H, W)
    np.testing.assert_array_equal(out, np.where(mask, 255, 0))
    with pytest.raises(ValueError, match=r"expected a mask \(H, W\), got shape \(1, 5, 7\)"):
        mask_to_mono8_msg(mask[None], _header())


def test_labels_to_mono16_msg_layout() -> None:
    labels = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000
    msg = labels_to_mono16_msg(labels, _header())
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono16", H, W, 2 * W)
    assert msg.is_bigendian == (sys.byteorder == "big")
    assert len(msg.data) == 2 * H * W
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
    np.testing.assert_array_equal(np.frombuffer(msg.data, dtype).reshape(H, W), labels)
    with pytest.raises(ValueError, match=r"labels \(H, W\) uint16, got \(5, 7\) int32"):
        labels_to_mono16_msg(labels.astype(np.int32), _header())


def test_stamp_to_ns_is_exact() -> None:
    stamp = Time(sec=1_700_000_000, nanosec=999_999_999)
    assert stamp_to_ns(stamp) == 1_700_000_000_999_999_999
    assert isinstance(stamp_to_ns(stamp), int)
    assert stamp_to_ns(Time()) == 0


# ------------------------------------------------------------------------------ instances


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((1.2, 1.7, 5.1, 4.0), (1, 1, 5, 3)),  # floor the start, ceil the end
        ((2.0, 1.0, 4.0, 3.0), (2, 1, 2, 2)),  # pixel edges stay put
        ((-3.5, -1.0, 2.0, 3.0), (0, 0, 2, 3)),  # clipped at 0
        ((5.0, 1.0, 9.5, 7.0), (5, 1, 2, 4)),  # clipped at W = 7, H = 5
        ((0.0, 0.0, 0.0, 0.0), (0, 0, 0, 0)),  # an empty mask's box
        ((4.0, 3.0, 2.0, 1.0), (4, 3, 0, 0)),  # inverted: empty, not negative
    ],
)
def test_box_to_roi_rounds_outwards_and_clips(
    box: tuple[float, ...], expected: tuple[int, ...]
) -> None:
    roi = box_to_roi(np.asarray(box, np.float32), (H, W))
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == expected
    assert roi.do_rectify is False


def test_box_to_roi_rejects_non_finite_boxes() -> None:
    with pytest.raises(ValueError, match=r"4 finite XYXY numbers, got \[0.0, nan, 1.0, 1.0\]"):
        box_to_roi([0, np.nan, 1, 1], (H, W))


def _test_masks() -> np.ndarray:
    """Masks with the awkward cases: first pixel set, empty, full, several blobs."""
    rng = np.random.default_rng(1)
    h, w = 23, 31
    y, x = np.mgrid[:h, :w]
    masks = [
        (x - 10) ** 2 + (y - 8) ** 2 < 30,
        (x < 4) & (y < 6),
        np.zeros((h, w), bool),
        np.ones((h, w), bool),
        rng.random((h, w)) > 0.6,
    ]
    return np.stack(masks)


def _instance(mask: np.ndarray, prompt: list[float]) -> Instance:
    rle = mask_to_rle(mask[None])[0]
    box = masks_to_boxes(mask[None])[0]
    return Instance(rle, box, 0.875, 0.5, int(mask.sum()), np.asarray(prompt, np.float32))


# pycocotools 2.0 on numpy 2 warns about its own __array__ use.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_instance_to_msg_matches_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is the RLE oracle")
    for i, mask in enumerate(_test_masks()):
        msg = instance_to_msg(_instance(mask, [3.5, 4.25]), i)
        assert msg.id == i and msg.score == 0.875 and msg.stability == 0.5
        assert msg.rle_counts.typecode == "I" and msg.prompt.typecode == "f"
        assert list(msg.prompt) == [3.5, 4.25]
        h, w = mask.shape
        assert (msg.mask_height, msg.mask_width) == (h, w)

        ours = mask_utils.frPyObjects(
            {"size": [msg.mask_height, msg.mask_width], "counts": list(msg.rle_counts)}, h, w
        )
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(mask_utils.decode(ours).astype(bool), mask)
        assert mask_utils.area(ours) == mask_utils.area(theirs) == msg.area == mask.sum()
        assert ours["counts"] == theirs["counts"]  # same compressed string: same runs
        # pycocotools' box is (x, y, w, h) of the pixels it covers, like the RoI.
        roi = (msg.box.x_offset, msg.box.y_offset, msg.box.width, msg.box.height)
        assert roi == tuple(int(v) for v in mask_utils.toBbox(theirs))


def test_instance_to_msg_rejects_bad_rle() -> None:
    inst = _instance(np.eye(4, dtype=bool), [1, 2])
    bad = Instance({"size": [4, 4], "counts": "abc"}, inst.box, 1.0, 1.0, 4, inst.prompt)
    with pytest.raises(ValueError, match="compressed RLE"):
        instance_to_msg(bad, 0)
    bad = Instance({"size": [4, 4], "counts": [3, 2]}, inst.box, 1.0, 1.0, 2, inst.prompt)
    with pytest.raises(ValueError, match=r"sum to H \* W = 16 for size \[4, 4\], got sum 5"):
        instance_to_msg(bad, 0)
    bad = Instance(inst.rle, inst.box, 1.0, 1.0, 4, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"0, 2 \(X, Y\) or 4 \(XYXY\) values, got 3"):
        instance_to_msg(bad, 0)


def test_a_mask_record_as_instance_msg_has_its_rle_box_and_area() -> None:
    mask = _test_masks()[0]
    msg = record_to_msg(mask_record(mask, np.float32(0.75), 0.25, 3, prompt=[1, 2, 10, 12]))
    expected = instance_to_msg(_instance(mask, [1, 2, 10, 12]), 3)
    assert list(msg.rle_counts) == list(expected.rle_counts)
    assert msg.box == expected.box and msg.area == int(mask.sum())
    assert (msg.id, msg.score, msg.stability) == (3, 0.75, 0.25)
    assert list(msg.prompt) == [1, 2, 10, 12]
    assert len(record_to_msg(mask_record(mask, 0.5, 0.5, 0)).prompt) == 0
    with pytest.raises(ValueError, match=r"expected a mask \(H, W\)"):
        mask_record(mask[None], 0.5, 0.5, 0)


def test_label_image_paints_best_instance_on_top() -> None:
    h, w = 6, 8
    masks = np.zeros((3, h, w), bool)
    masks[0, 1:4, 1:4] = True  # best
    masks[1, 2:6, 2:7] = True  # overlaps the best
    masks[2, :, 6:] = True  # worst, overlaps the second
    insts = [_instance(m, [0, 0]) for m in masks]
    labels = instances_to_label_image(insts, (h, w))
    assert labels.dtype == np.uint16 and labels.shape == (h, w)
    expected = np.zeros((h, w), np.uint16)
    expected[masks[2]] = 3
    expected[masks[1]] = 2
    expected[masks[0]] = 1
    np.testing.assert_array_equal(labels, expected)
    assert labels[2, 2] == 1 and labels[3, 6] == 2 and labels[0, 7] == 3 and labels[5, 0] == 0

    np.testing.assert_array_equal(instances_to_label_image([], (h, w)), np.zeros((h, w)))
    with pytest.raises(ValueError, match=r"instance 0 has an RLE of size \[6, 8\], expected"):
        instances_to_label_image(insts, (h, w + 1))


def test_label_image_rejects_too_many_instances() -> None:
    inst = _instance(np.ones((1, 1), bool), [0, 0])
    with pytest.raises(ValueError, match=rf"at most {MAX_LABELS} instances, got 65536"):
        instances_to_label_image([inst] * (MAX_LABELS + 1), (1, 1))


# -------------------------------------------------------------------------------- overlay


def _palette_colour(labels: np.ndarray) -> np.ndarray:
    """Each label's colour: the overlay of a black image at alpha 1."""
    black = np.zeros((*labels.shape, 3), np.uint8)
    return overlay(black, labels, alpha=1.0, boundaries=False)


def test_overlay_blends_labels_and_keeps_background(rgb: np.ndarray) -> None:
    labels = np.zeros((H, W), np.uint16)
    labels[1:4, 2:6] = 7
    labels[4, :] = 300
    out = overlay(rgb, labels, alpha=0.25, boundaries=False)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out is not rgb
    background = labels == 0
    np.testing.assert_array_equal(out[background], rgb[background])
    colour = _palette_colour(labels).astype(np.float64)
    expected = np.round(0.75 * rgb + 0.25 * colour)
    diff = np.abs(out.astype(np.float64) - expected)[~background]
    assert diff.max() <= 1


def test_overlay_colours_are_distinct_and_deterministic() -> None:
    labels = np.arange(1, 101, dtype=np.uint16)[None]
    colours = _palette_colour(labels)[0]
    assert len(np.unique(colours, axis=0)) == 100
    np.testing.assert_array_equal(colours, _palette_colour(labels)[0])
    # Neighbouring labels (adjacent instances) get clearly different colours.
    steps = np.abs(np.diff(colours.astype(int), axis=0)).sum(axis=1)
    assert steps.min() > 60
    # Any integer dtype in range gives the same colours.
    np.testing.assert_array_equal(_palette_colour(labels.astype(np.int64))[0], colours)


def test_overlay_draws_boundaries_in_full_colour(rgb: np.ndarray) -> None:
    labels = np.zeros((H, W), np.uint16)
    labels[1:4, 1:5] = 2
    out = overlay(rgb, labels, alpha=0.0, boundaries=True)
    colour = _palette_colour(labels)
    inner = np.zeros((H, W), bool)
    inner[2, 2:4] = True
    edge = (labels != 0) & ~inner
    np.testing.assert_array_equal(out[edge], colour[edge])
    np.testing.assert_array_equal(out[~edge], rgb[~edge])  # alpha 0: interior untouched


def test_overlay_rejects_bad_input(rgb: np.ndarray) -> None:
    labels = np.zeros((H, W), np.uint16)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        overlay(rgb, labels, alpha=1.5)
    with pytest.raises(ValueError, match=r"integer labels of shape \(5, 7\), got \(5, 6\)"):
        overlay(rgb, labels[:, :6])
    wide = np.zeros((H, W), np.int32)
    wide[0, 0], wide[1, 1] = -1, 70000
    with pytest.raises(ValueError, match=r"labels must be in \[0, 65535\], got \[-1, 70000\]"):
        overlay(rgb, wide)
    with pytest.raises(ValueError, match=r"RGB image \(H, W, 3\) uint8"):
        overlay(rgb[..., 0], labels)


def test_conversions_import_without_torch() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    code = "import sys, segfast_ros.ros.conversions\nassert 'torch' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_image_msg_over_the_pixel_limit_is_refused_before_any_copy() -> None:
    """The size is checked on the header alone: no conversion copy of a too-large frame."""
    from segfast_ros.runtime.transforms import MAX_IMAGE_PIXELS

    h, w = MAX_IMAGE_PIXELS // 8192 + 1, 8192
    msg = SimpleNamespace(encoding="bgr8", height=h, width=w, step=3 * w, data=b"")
    with pytest.raises(ImageError) as err:
        image_msg_to_rgb(msg)
    assert str(err.value).startswith(
        f"bgr8 image of {w}x{h} (W x H) = {h * w:,} pixels exceeds MAX_IMAGE_PIXELS = "
        f"{MAX_IMAGE_PIXELS:,} pixels"
    )
