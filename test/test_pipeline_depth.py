"""pipeline.depth: depth images to metres and back, and the stamp-keyed depth cache."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from pipeline_msgs import FLAVOURS, image_msg

from segfast_ros.pipeline.depth import (
    DEPTH_ENCODINGS,
    DepthCache,
    DepthError,
    DepthFrame,
    depth_fields,
    depth_msg_to_metres,
)

# Metres as a sensor reports them: a valid ramp, no measurement (NaN), beyond 16UC1's range.
DEPTH = np.array([[0.5, 1.234, np.nan, 2.0], [70.0, 0.001, 3.25, 10.0]], dtype=np.float32)


def _raw(values: np.ndarray, encoding: str, *, bigendian: bool, pad: int) -> SimpleNamespace:
    """An Image of ``values`` in a chosen byte order, each row followed by ``pad`` bytes."""
    order = ">" if bigendian else "<"
    pixels = values.astype(order + ("u2" if encoding == "16UC1" else "f4"))
    rows = pixels.view(np.uint8).reshape(values.shape[0], -1)
    data = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(
        encoding=encoding,
        height=values.shape[0],
        width=values.shape[1],
        step=data.shape[1],
        is_bigendian=bigendian,
        data=data.reshape(-1).tobytes(),
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_16uc1_millimetres_become_metres_with_nan_for_no_measurement(flavour: str) -> None:
    msg = image_msg(flavour, depth_fields(DEPTH, "16UC1"))
    metres = depth_msg_to_metres(msg)
    assert metres.dtype == np.float32 and metres.shape == DEPTH.shape
    # Millimetre steps; NaN written as 0 comes back as NaN; 70 m was clipped to 65.535 m.
    expected = DEPTH.copy()
    expected[1, 0] = 65.535
    np.testing.assert_allclose(metres, expected, atol=0.0005, equal_nan=True)
    assert metres[0, 1] == np.float32(1234) * np.float32(0.001)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_32fc1_is_metres_as_it_is(flavour: str) -> None:
    depth = DEPTH.copy()
    depth[0, 3], depth[1, 3] = np.inf, -1.0  # kept: the lift decides what is valid
    metres = depth_msg_to_metres(image_msg(flavour, depth_fields(depth, "32FC1")))
    np.testing.assert_array_equal(metres, depth)


@pytest.mark.parametrize("encoding", DEPTH_ENCODINGS)
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_byte_order_and_padded_rows(encoding: str, bigendian: bool, pad: int) -> None:
    """``is_bigendian`` is honoured and row padding (even an odd number of bytes) skipped."""
    values = np.array([[1000, 0, 65535], [1, 2500, 300]], dtype=np.float32)
    if encoding == "32FC1":
        values = values / 1000.0
    metres = depth_msg_to_metres(_raw(values, encoding, bigendian=bigendian, pad=pad))
    expected = values / 1000.0 if encoding == "16UC1" else values
    if encoding == "16UC1":
        expected[0, 1] = np.nan
    np.testing.assert_allclose(metres, expected, rtol=1e-6, equal_nan=True)
    assert metres.flags.writeable and metres.dtype == np.float32


def test_the_result_does_not_share_the_message_buffer() -> None:
    fields = depth_fields(DEPTH, "32FC1")
    msg = image_msg("namespace", fields)
    metres = depth_msg_to_metres(msg)
    metres[:] = 0.0
    assert depth_msg_to_metres(msg)[0, 0] == np.float32(0.5)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        (
            "mono16",
            "depth encoding 'mono16' is not supported; expected 16UC1 (millimetres) or "
            "32FC1 (metres)",
        ),
        (
            "16uc1",
            "depth encoding '16uc1' is not supported (encodings are case-sensitive); "
            "expected 16UC1",
        ),
        ("rgb8", "depth encoding 'rgb8' is not supported; expected 16UC1"),
    ],
)
def test_other_encodings_are_refused_with_what_is_expected(encoding: str, message: str) -> None:
    msg = image_msg("namespace", depth_fields(DEPTH, "16UC1"))
    msg.encoding = encoding
    with pytest.raises(DepthError) as err:
        depth_msg_to_metres(msg)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 0}, "16UC1 image is 0x2 (width x height); both must be > 0"),
        ({"step": 7}, "16UC1 image of width 4 has step 7, less than width * 2 = 8 bytes per row"),
        ({"data": b"\0" * 10}, "needs step * height = 16 bytes of data, got 10"),
    ],
)
def test_bad_sizes_name_what_was_wrong(change: dict, message: str) -> None:
    msg = image_msg("namespace", depth_fields(DEPTH, "16UC1"))
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(DepthError) as err:
        depth_msg_to_metres(msg)
    assert str(err.value).startswith("depth image: ") and message in str(err.value)


def test_16uc1_writes_rounded_millimetres_and_zero_for_no_depth() -> None:
    depth = np.array([[0.0014, 0.0016, np.nan, -0.5], [np.inf, 65.535, 80.0, 1.0]])
    fields = depth_fields(depth, "16UC1")
    mm = np.frombuffer(fields["data"].tobytes(), dtype=np.uint16).reshape(2, 4)
    np.testing.assert_array_equal(mm, [[1, 2, 0, 0], [0, 65535, 65535, 1000]])
    assert (fields["encoding"], fields["height"], fields["width"], fields["step"]) == (
        "16UC1",
        2,
        4,
        8,
    )


def test_32fc1_writes_float32_metres() -> None:
    fields = depth_fields(DEPTH.astype(np.float64), "32FC1")
    assert fields["step"] == 16 and fields["encoding"] == "32FC1"
    back = np.frombuffer(fields["data"].tobytes(), dtype=np.float32).reshape(DEPTH.shape)
    np.testing.assert_array_equal(back, DEPTH)


def test_writing_refuses_other_encodings_and_shapes() -> None:
    with pytest.raises(DepthError, match=r"cannot write depth encoding 'mono16'; expected 16UC1"):
        depth_fields(DEPTH, "mono16")
    with pytest.raises(
        DepthError, match=r"expected depth as an \(H, W\) array .* got shape \(3,\)"
    ):
        depth_fields(np.ones(3), "32FC1")
    with pytest.raises(DepthError, match=r"got shape \(0, 4\)"):
        depth_fields(np.ones((0, 4)), "16UC1")


# ----------------------------------------------------------------------------------- cache


def _frame(key: int) -> DepthFrame:
    return DepthFrame(key, np.full((2, 2), key, np.float32), f"f{key}")


def test_match_takes_the_nearest_stamp_within_the_tolerance() -> None:
    cache = DepthCache(4)
    for key in (100, 200, 300):
        cache.put(_frame(key))
    found = cache.match(190, 15)
    assert found.frame is not None and found.frame.key == 200
    assert found.offset_ns == 10 and found.reason == ""
    assert cache.match(300, 0).frame.key == 300  # exact stamps match with no tolerance
    # Equally near: the earlier depth frame.
    assert cache.match(250, 50).frame.key == 200


def test_a_miss_says_how_far_the_nearest_was_and_the_tolerance() -> None:
    cache = DepthCache(4)
    none = cache.match(5, 10)
    assert (none.frame, none.offset_ns, none.reason) == (None, None, "no depth image received yet")
    cache.put(_frame(1_000_000_000))
    late = cache.match(1_100_000_000, 30_000_000)
    assert late.frame is None and late.offset_ns == -100_000_000
    assert late.reason == (
        "no depth image within 0.030 s of the colour frame: the nearest of 1 cached is 0.100 s "
        "before it"
    )
    early = cache.match(950_000_000, 30_000_000)
    assert "0.050 s after it" in early.reason and early.offset_ns == 50_000_000
    with pytest.raises(ValueError, match="tolerance must be >= 0 ns, got -1"):
        cache.match(1, -1)


def test_the_oldest_received_is_evicted_and_a_stamp_is_replaced() -> None:
    cache = DepthCache(2)
    for key in (30, 10, 20):  # received out of stamp order: 30 came first and goes first
        cache.put(_frame(key))
    assert cache.list_keys() == [10, 20] and len(cache) == 2
    newer = DepthFrame(10, np.zeros((2, 2), np.float32), "again")
    cache.put(newer)
    assert cache.list_keys() == [20, 10] and cache.get(10) is newer
    cache.resize(1)
    assert cache.list_keys() == [10] and cache.capacity == 1
    cache.clear()
    assert len(cache) == 0 and cache.match(10, 0).reason == "no depth image received yet"
    with pytest.raises(ValueError, match="depth cache capacity must be >= 1, got 0"):
        DepthCache(0)


def test_the_cache_is_safe_across_threads() -> None:
    """Depth arrives on a subscription thread while the worker matches colour frames."""
    cache = DepthCache(8)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(2000):
                cache.put(_frame(offset + 2 * i))
                cache.resize(4 + i % 5)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def reader() -> None:
        try:
            for i in range(2000):
                found = cache.match(i, 1_000_000)
                assert found.frame is None or found.frame.depth[0, 0] == found.frame.key
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 1)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= cache.capacity
