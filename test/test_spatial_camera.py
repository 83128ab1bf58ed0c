"""spatial.camera: pinhole intrinsics from CameraInfo, scaling, projection and depth resampling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from segfast_ros.spatial.camera import (
    CameraInfoError,
    CameraModel,
    camera_from_info,
    resample_depth,
)

CAM = CameraModel(fx=615.0, fy=612.5, cx=322.3, cy=238.9, width=640, height=480, frame_id="cam")


def _info(k: list[float], width: int = 640, height: int = 480) -> SimpleNamespace:
    """A CameraInfo as rclpy and rosbags both carry it (duck-typed)."""
    header = SimpleNamespace(frame_id="camera_color_optical_frame")
    return SimpleNamespace(
        k=np.asarray(k, dtype=np.float64), width=width, height=height, header=header
    )


def test_camera_from_info_reads_k_size_and_frame() -> None:
    cam = camera_from_info(_info(CAM.k()))
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (CAM.fx, CAM.fy, CAM.cx, CAM.cy)
    assert cam.hw == (480, 640) and cam.frame_id == "camera_color_optical_frame"
    assert cam.k() == [615.0, 0.0, 322.3, 0.0, 612.5, 238.9, 0.0, 0.0, 1.0]
    # No header: an empty frame.
    assert camera_from_info(SimpleNamespace(k=CAM.k(), width=640, height=480)).frame_id == ""


@pytest.mark.parametrize(
    ("k", "size", "message"),
    [
        ([0.0] * 9, (640, 480), "K is all zero .*not calibrated"),
        ([1.0] * 8, (640, 480), "K must have 9 values .*got 8"),
        ([-5.0, 0, 320, 0, 500, 240, 0, 0, 1], (640, 480), "fx, fy > 0, got fx=-5.0"),
        ([500.0, 0, 320, 0, 0, 240, 0, 0, 1], (640, 480), "fy=0.0"),
        ([500.0, 0, float("nan"), 0, 500, 240, 0, 0, 1], (640, 480), "finite"),
        ([500.0, 0, 320, 0, 500, 240, 0, 0, 1], (0, 480), "size must be positive, got 0x480"),
    ],
)
def test_camera_from_info_refuses_what_cannot_back_project(
    k: list[float], size: tuple[int, int], message: str
) -> None:
    with pytest.raises(CameraInfoError, match=message):
        camera_from_info(_info(k, *size))
    assert issubclass(CameraInfoError, ValueError)


def test_back_project_and_project_round_trip() -> None:
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 640, 200)
    v = rng.uniform(0, 480, 200)
    z = rng.uniform(0.2, 15.0, 200)
    points = CAM.back_project(u, v, z)
    assert points.shape == (200, 3) and points.dtype == np.float64
    np.testing.assert_allclose(points[:, 2], z)
    np.testing.assert_allclose(CAM.project(points), np.stack([u, v], 1), atol=1e-9)
    # The principal point looks straight down the optical axis.
    np.testing.assert_allclose(CAM.back_project([CAM.cx], [CAM.cy], [2.0]), [[0.0, 0.0, 2.0]])


def test_scaled_to_keeps_the_field_of_view() -> None:
    half = CAM.scaled_to((240, 320))
    assert half.hw == (240, 320) and half.frame_id == "cam"
    assert (half.fx, half.fy) == (CAM.fx / 2, CAM.fy / 2)
    # Pixel edges scale: the full image's pixel centre u maps to (u + 0.5) / 2 - 0.5.
    assert half.cx == pytest.approx((CAM.cx + 0.5) / 2 - 0.5)
    assert half.cy == pytest.approx((CAM.cy + 0.5) / 2 - 0.5)
    # A 3D point lands on the corresponding pixel of each image.
    point = CAM.back_project([400.0], [100.0], [3.0])
    np.testing.assert_allclose(half.project(point), [[(400.5) / 2 - 0.5, (100.5) / 2 - 0.5]])
    np.testing.assert_allclose(half.scaled_to(CAM.hw).k(), CAM.k())
    # Another aspect ratio scales the axes apart.
    wide = CAM.scaled_to((480, 1280))
    assert (wide.fx, wide.fy) == (CAM.fx * 2, CAM.fy)


def test_resample_depth_half_resolution_to_colour_takes_the_nearest_pixel() -> None:
    colour = CameraModel(600.0, 600.0, 319.5, 239.5, 640, 480)
    small = colour.scaled_to((240, 320))
    depth = np.arange(240 * 320, dtype=np.float32).reshape(240, 320)
    out = resample_depth(depth, small, colour)
    assert out.shape == (480, 640) and out.dtype == np.float32
    # Colour pixel (u, v) sits on depth pixel (u // 2, v // 2): no blending across edges.
    np.testing.assert_array_equal(out, np.repeat(np.repeat(depth, 2, axis=0), 2, axis=1))
    assert np.isfinite(out).all()


def test_resample_depth_is_nan_where_the_source_does_not_see() -> None:
    narrow = CameraModel(600.0, 600.0, 159.5, 119.5, 320, 240)  # half the field of view
    colour = CameraModel(300.0, 300.0, 159.5, 119.5, 320, 240)
    depth = np.full(narrow.hw, 1.25, np.float32)
    out = resample_depth(depth, narrow, colour)
    centre = out[60:180, 80:240]
    assert (centre == 1.25).all()
    outside = np.ones(out.shape, bool)
    outside[60:180, 80:240] = False
    assert np.isnan(out[outside]).all()


def test_resample_depth_same_camera_and_bad_size() -> None:
    depth = np.ones(CAM.hw, np.float32)
    assert resample_depth(depth, CAM, CAM) is depth
    with pytest.raises(
        CameraInfoError, match="depth image is 320x240 but its CameraInfo describes 640x480"
    ):
        resample_depth(np.ones((240, 320), np.float32), CAM, CAM.scaled_to((240, 320)))
