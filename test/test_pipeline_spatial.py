"""pipeline.spatial: a frame's instance records lifted with the depth matched to its stamp.

The scene: two rectangles, fronto-parallel planes at known depths in front of a background
plane, seen by a 64x48 pinhole camera; the depth is rendered from it, so every centroid's
depth is exact. The lift itself (erosion, medians) is spatial.lift's; here, what the adapters
share around it: matching by stamp, choosing and scaling the camera, resampling depth of
another size, and each reason a frame stays 2D.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pipeline_msgs import FLAVOURS, camera_info_msg, image_msg

from segfast_ros.pipeline.depth import DepthError, depth_fields
from segfast_ros.pipeline.render import InstanceRecord, mask_record
from segfast_ros.pipeline.spatial import Spatial
from segfast_ros.spatial.camera import CameraInfoError, CameraModel
from segfast_ros.spatial.lift import Lifted, LiftSettings, lift_masks

HW = (48, 64)
CAMERA = CameraModel(60.0, 60.0, 31.5, 23.5, 64, 48, "camera_color_optical_frame")
HALF = CAMERA.scaled_to((24, 32))
# (rows, cols, depth in metres) of each object; the background is 5 m away.
OBJECTS = [((8, 28), (8, 28), 1.5), ((12, 40), (36, 60), 3.0)]
T = 1_700_000_000_000_000_000  # the colour frame's stamp, ns


def _depth(camera: CameraModel = CAMERA) -> np.ndarray:
    """Depth seen by ``camera`` (which looks along CAMERA's axis), metres."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    # Each pixel centre in CAMERA's pixels, to test which object it sees.
    u_c = (u - camera.cx) * CAMERA.fx / camera.fx + CAMERA.cx
    v_c = (v - camera.cy) * CAMERA.fy / camera.fy + CAMERA.cy
    depth = np.full(camera.hw, 5.0, np.float32)
    for (r0, r1), (c0, c1), z in OBJECTS:
        inside = (v_c > r0 - 0.5) & (v_c < r1 - 0.5) & (u_c > c0 - 0.5) & (u_c < c1 - 0.5)
        depth[inside] = z
    return depth


def _records() -> list[InstanceRecord]:
    records = []
    for i, ((r0, r1), (c0, c1), _) in enumerate(OBJECTS):
        mask = np.zeros(HW, bool)
        mask[r0:r1, c0:c1] = True
        records.append(
            dataclasses.replace(mask_record(mask, 0.9 - i / 10, 0.95, i), track_id=i + 7)
        )
    return records


def _counts(received: int = 0, bad: int = 0, lifted: int = 0, unmatched: int = 0) -> dict:
    return {
        "depth_received": received,
        "depth_bad": bad,
        "lifted_frames": lifted,
        "unmatched_frames": unmatched,
    }


def _spatial(
    flavour: str = "namespace",
    *,
    depth_camera: CameraModel | None = CAMERA,
    colour: CameraModel | None = CAMERA,
    encoding: str = "16UC1",
    stamp_ns: int = T,
) -> Spatial:
    spatial = Spatial()
    if colour is not None:
        spatial.set_colour_info(camera_info_msg(flavour, colour))
    if depth_camera is not None:
        spatial.set_depth_info(camera_info_msg(flavour, depth_camera))
    size = depth_camera or CAMERA
    spatial.put_depth(image_msg(flavour, depth_fields(_depth(size), encoding), stamp_ns, "cam"))
    return spatial


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_records_come_back_lifted_in_order(flavour: str) -> None:
    records = _records()
    spatial = _spatial(flavour, encoding="32FC1")
    out = spatial.lift(T + 12_000_000, HW, records)  # 12 ms of jitter: within 30 ms
    assert out.reason == "" and out.ok and out.depth_key == T
    reference = lift_masks(
        [r.rle_counts for r in records], [r.roi for r in records], _depth(), CAMERA
    )
    assert out.lifted == reference
    for rec, before, lifted, (_, _, z) in zip(
        out.records, records, out.lifted, OBJECTS, strict=True
    ):
        assert rec.position_3d is lifted and lifted.valid
        # Everything else is the record as it was.
        assert dataclasses.replace(rec, position_3d=None).scalar_fields() == before.scalar_fields()
        assert rec.rle_counts is before.rle_counts and rec.roi == before.roi
        # The planes' depths are exact; the centroid projects into the mask's centre.
        assert lifted.centroid[2] == pytest.approx(z)
        u, v = CAMERA.project(np.array([lifted.centroid]))[0]
        x, y, w, h = before.roi
        assert u == pytest.approx(x + w / 2 - 0.5, abs=0.5)
        assert v == pytest.approx(y + h / 2 - 0.5, abs=0.5)
    assert spatial.counters() == _counts(received=1, lifted=1)


def test_16uc1_and_32fc1_give_the_same_centroids() -> None:
    mm = _spatial(encoding="16UC1").lift(T, HW, _records()).lifted
    metres = _spatial(encoding="32FC1").lift(T, HW, _records()).lifted
    for a, b in zip(mm, metres, strict=True):
        np.testing.assert_allclose(a.centroid, b.centroid, atol=1e-6)


def test_points_are_kept_when_asked() -> None:
    spatial = _spatial()
    assert all(p.points is None for p in spatial.lift(T, HW, _records()).lifted)
    lifted = spatial.lift(T, HW, _records(), points=True).lifted
    assert all(p.points is not None and len(p.points) == p.num_points for p in lifted)


def test_a_colour_camera_info_of_another_size_is_scaled_to_the_image() -> None:
    """A CameraInfo for 32x24 with a 64x48 image (a driver's binning): the same view."""
    full = _spatial().lift(T, HW, _records()).lifted
    scaled = _spatial(colour=HALF).lift(T, HW, _records())
    assert scaled.reason == ""
    for a, b in zip(full, scaled.lifted, strict=True):
        np.testing.assert_allclose(a.centroid, b.centroid, atol=1e-9)


def test_without_colour_info_the_depth_info_serves_when_the_sizes_agree() -> None:
    full = _spatial().lift(T, HW, _records()).lifted
    out = _spatial(colour=None).lift(T, HW, _records())
    assert out.reason == "" and out.lifted == full


def test_without_depth_info_aligned_depth_of_the_colour_size_is_used_as_it_is() -> None:
    full = _spatial().lift(T, HW, _records()).lifted
    out = _spatial(depth_camera=None).lift(T, HW, _records())
    assert out.reason == "" and out.lifted == full


def test_depth_of_another_resolution_is_resampled_through_the_two_infos() -> None:
    """Depth at half resolution: each colour pixel takes the nearest depth pixel."""
    full = _spatial().lift(T, HW, _records()).lifted
    out = _spatial(depth_camera=HALF).lift(T, HW, _records())
    assert out.reason == ""
    for a, b, (_, _, z) in zip(full, out.lifted, OBJECTS, strict=True):
        assert b.valid and b.centroid[2] == pytest.approx(z)
        # Half-resolution depth moves an object's edges by up to a colour pixel.
        np.testing.assert_allclose(a.centroid, b.centroid, atol=1.0 * z / CAMERA.fx)


def _unlifted(spatial: Spatial, key: int = T) -> str:
    records = _records()
    out = spatial.lift(key, HW, records)
    assert out.lifted == [] and out.depth_key is None and not out.ok
    assert all(a is b for a, b in zip(out.records, records, strict=True))
    assert all(r.position_3d is None for r in out.records)
    return out.reason


def test_no_depth_yet_and_stale_depth_say_so() -> None:
    spatial = Spatial()
    spatial.set_colour_info(camera_info_msg("namespace", CAMERA))
    assert _unlifted(spatial) == "no depth image received yet"
    spatial.put_depth(image_msg("namespace", depth_fields(_depth(), "16UC1"), T - 100_000_000))
    assert _unlifted(spatial) == (
        "no depth image within 0.030 s of the colour frame: the nearest of 1 cached is "
        "0.100 s before it"
    )
    assert spatial.counters() == _counts(received=1, unmatched=2)
    spatial.configure(LiftSettings(), 150_000_000, 8)  # a wider tolerance matches it
    assert spatial.lift(T, HW, _records()).depth_key == T - 100_000_000


def test_half_size_depth_needs_its_camera_info() -> None:
    spatial = Spatial()
    spatial.set_colour_info(camera_info_msg("namespace", CAMERA))
    spatial.put_depth(image_msg("namespace", depth_fields(_depth(HALF), "16UC1"), T))
    assert _unlifted(spatial) == (
        "the depth image is 32x24 but the colour image 64x48, and there is no depth CameraInfo "
        "to scale it by"
    )
    only_depth = Spatial()
    only_depth.set_depth_info(camera_info_msg("namespace", HALF))
    only_depth.put_depth(image_msg("namespace", depth_fields(_depth(HALF), "16UC1"), T))
    assert _unlifted(only_depth) == (
        "the depth image is 32x24 but the colour image 64x48, and there is no colour "
        "CameraInfo to scale it to"
    )


def test_no_camera_info_at_all() -> None:
    assert _unlifted(_spatial(colour=None, depth_camera=None)) == (
        "no CameraInfo (colour or depth) to back-project the depth with"
    )


def test_a_camera_info_with_k_all_zero_is_refused_and_named_while_there_is_no_other() -> None:
    spatial = _spatial(colour=None, depth_camera=None)
    with pytest.raises(CameraInfoError, match="K is all zero"):
        spatial.set_colour_info(camera_info_msg("namespace", CAMERA, k=[0.0] * 9))
    reason = _unlifted(spatial)
    assert reason.startswith("no CameraInfo (colour or depth) to back-project the depth with; ")
    assert "the colour CameraInfo was rejected: CameraInfo K is all zero" in reason
    # A good one replaces the error; a bad one after it keeps the good one.
    spatial.set_colour_info(camera_info_msg("namespace", CAMERA))
    with pytest.raises(CameraInfoError):
        spatial.set_colour_info(camera_info_msg("namespace", CAMERA, k=[0.0] * 9))
    assert spatial.lift(T, HW, _records()).reason == ""


def test_a_camera_info_of_another_aspect_ratio_is_not_scaled() -> None:
    wide = CameraModel(60.0, 60.0, 39.5, 23.5, 80, 48)
    reason = _unlifted(_spatial(colour=wide))
    assert reason == (
        "the colour CameraInfo describes 80x48 but the colour image is 64x48: not a scaling of "
        "it (the aspect ratios differ), so its intrinsics cannot be used"
    )
    spatial = _spatial(colour=CAMERA, depth_camera=None)  # depth of 64x48, and an 80x48 info
    spatial.set_depth_info(camera_info_msg("namespace", wide))
    reason = _unlifted(spatial)
    assert reason.startswith("the depth CameraInfo describes 80x48 but the depth image is 64x48")


def test_bad_depth_is_counted_and_raised() -> None:
    spatial = Spatial()
    msg = image_msg("namespace", depth_fields(_depth(), "16UC1"), T)
    msg.encoding = "mono16"
    with pytest.raises(DepthError, match="depth encoding 'mono16' is not supported"):
        spatial.put_depth(msg)
    assert spatial.counters() == _counts(received=1, bad=1)
    assert _unlifted(spatial) == "no depth image received yet"


def test_records_of_another_size_are_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="instance 0 has a 64x48 mask, the colour image is 32x24"):
        _spatial().lift(T, (24, 32), _records())


def test_too_little_valid_depth_is_lifted_but_not_valid() -> None:
    """An object wholly on depth holes: position_3d is set, valid False, zeros in the msg."""
    spatial = Spatial()
    spatial.set_colour_info(camera_info_msg("namespace", CAMERA))
    depth = _depth()
    depth[8:28, 8:28] = np.nan
    spatial.put_depth(image_msg("namespace", depth_fields(depth, "32FC1"), T))
    out = spatial.lift(T, HW, _records())
    assert out.reason == "" and [p.valid for p in out.lifted] == [False, True]
    first = out.records[0]
    assert first.position_3d is out.lifted[0]
    fields = first.position_fields()
    assert (
        fields["valid"] is False and fields["num_points"] == 0 and fields["centroid"] == (0, 0, 0)
    )


def test_configure_checks_and_clear_forgets() -> None:
    spatial = _spatial()
    with pytest.raises(ValueError, match="tolerance must be >= 0 ns, got -5"):
        spatial.configure(LiftSettings(), -5, 8)
    with pytest.raises(ValueError, match="depth cache size must be >= 1, got 0"):
        spatial.configure(LiftSettings(), 10, 0)
    assert spatial.tolerance_ns == 30_000_000  # unchanged by a refused configure
    spatial.configure(LiftSettings(min_points=10_000), 10, 8)
    assert spatial.settings.min_points == 10_000
    assert [p.valid for p in spatial.lift(T, HW, _records()).lifted] == [False, False]
    spatial.clear()
    assert _unlifted(spatial) == "no depth image received yet"
    assert spatial.counters() == _counts(unmatched=1)


# ------------------------------------------------------------------ InstanceRecord's fields


def test_position_fields_of_a_record() -> None:
    rec = _records()[0]
    zero = (0.0, 0.0, 0.0)
    empty = {
        "valid": False,
        "centroid": zero,
        "min": zero,
        "max": zero,
        "obb_position": zero,
        "obb_orientation": (0.0, 0.0, 0.0, 1.0),
        "obb_size": zero,
        "num_points": 0,
        "valid_fraction": 0.0,
    }
    assert rec.position_fields() == empty
    invalid = Lifted(False, num_points=5, valid_fraction=0.1)
    assert dataclasses.replace(rec, position_3d=invalid).position_fields() == empty
    lifted = Lifted(
        True,
        centroid=(np.float32(0.5), 1.0, 2.0),
        min=(0.0, 0.5, 1.5),
        max=(1.0, 1.5, 2.5),
        obb_center=(0.4, 1.1, 2.0),
        obb_orientation=(0.0, 0.0, 0.7071, 0.7071),
        obb_size=(1.0, 0.5, 0.2),
        num_points=np.int64(300),
        valid_fraction=np.float32(0.75),
    )
    fields = dataclasses.replace(rec, position_3d=lifted).position_fields()
    assert fields == {
        "valid": True,
        "centroid": (0.5, 1.0, 2.0),
        "min": (0.0, 0.5, 1.5),
        "max": (1.0, 1.5, 2.5),
        "obb_position": (0.4, 1.1, 2.0),
        "obb_orientation": (0.0, 0.0, 0.7071, 0.7071),
        "obb_size": (1.0, 0.5, 0.2),
        "num_points": 300,
        "valid_fraction": 0.75,
    }
    # Plain Python numbers: rclpy's message fields refuse numpy scalars of some types.
    assert type(fields["centroid"][0]) is float and type(fields["num_points"]) is int
    assert type(fields["valid_fraction"]) is float
