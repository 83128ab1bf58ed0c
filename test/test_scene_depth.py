"""The RGB-D scene generator: exact depth consistent with the painted layers, a sensor-like
measured depth, exact 3D ground truth, a consistent CameraInfo."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from segfast_ros.bench.scene_depth import (
    BASELINE_M,
    DEPTH_GAP,
    FRAME_ID,
    RANGE_M,
    camera_info_fields,
    generate_rgbd_scene,
    generate_rgbd_sequence,
    plane_depth,
    rgbd_camera,
    stereo_shadow,
)
from segfast_ros.bench.scenes import generate_scene
from segfast_ros.spatial.camera import camera_from_info

HW = (240, 320)


@pytest.fixture(scope="module")
def scenes():
    return [generate_rgbd_scene(seed, HW) for seed in range(40, 46)]


def test_same_seed_same_frame_and_the_colour_scene_is_generate_scenes():
    a, b = generate_rgbd_scene(7, HW), generate_rgbd_scene(7, HW)
    np.testing.assert_array_equal(a.depth, b.depth)  # NaNs in the same places too
    np.testing.assert_array_equal(a.true_depth, b.true_depth)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    plain = generate_scene(7, HW)
    np.testing.assert_array_equal(a.scene.image, plain.image)
    np.testing.assert_array_equal(a.scene.masks, plain.masks)
    other = generate_rgbd_scene(8, HW)
    assert not np.array_equal(a.true_depth, other.true_depth)


def test_true_depth_is_each_pixels_plane_and_later_layers_are_nearer_where_they_overlap(scenes):
    for seed, rgbd in zip(range(40, 46), scenes, strict=True):
        fills: list[np.ndarray] = []
        generate_scene(seed, HW, layers=fills)
        assert len(fills) == len(rgbd.planes)
        cam = rgbd.camera
        back = plane_depth(rgbd.background_plane, cam)
        layers = [plane_depth(p, cam) for p in rgbd.planes]
        expected = back.copy()
        for fill, z in zip(fills, layers, strict=True):
            expected[fill] = z[fill]
        np.testing.assert_allclose(rgbd.true_depth, expected, rtol=1e-5)
        assert np.all(rgbd.owner[~np.any(fills, axis=0)] == -1)
        overlaps = 0
        for j in range(len(fills)):
            # In front of the background, and of every earlier object, by the gap.
            assert np.all(layers[j][fills[j]] * (1 + DEPTH_GAP) <= back[fills[j]] * (1 + 1e-9))
            for i in range(j):
                both = fills[i] & fills[j]
                overlaps += int(both.any())
                assert np.all(layers[j][both] * (1 + DEPTH_GAP) <= layers[i][both] * (1 + 1e-9))
        assert overlaps > 0 or seed != 40  # the first scene has overlapping objects
        assert rgbd.true_depth.min() > 0.2 and rgbd.true_depth.max() < 12.0


def test_each_visible_instance_has_its_own_objects_depth(scenes):
    for rgbd in scenes:
        for mask, obj in zip(rgbd.scene.masks, rgbd.scene.ids, strict=True):
            assert np.all(rgbd.owner[mask] == obj)


def test_centroid_is_the_visible_surface_mean_and_projects_into_its_mask(scenes):
    import cv2

    checked = 0
    for rgbd in scenes:
        cam = rgbd.camera
        for k, (mask, obj) in enumerate(zip(rgbd.scene.masks, rgbd.scene.ids, strict=True)):
            vs, us = np.nonzero(mask)
            # Independently: where each pixel's ray meets the object's plane.
            rays = np.stack([(us - cam.cx) / cam.fx, (vs - cam.cy) / cam.fy, np.ones(len(us))], 1)
            plane = rgbd.planes[obj]
            points = rays * (plane[3] / (rays @ plane[:3]))[:, None]
            np.testing.assert_allclose(rgbd.centroids[k], points.mean(0), rtol=1e-5, atol=1e-6)
            u, v = cam.project(rgbd.centroids[k][None])[0]
            x0, y0, x1, y1 = rgbd.scene.boxes[k]
            assert x0 - 0.5 <= u <= x1 - 0.5 and y0 - 0.5 <= v <= y1 - 0.5
            contour = cv2.findNonZero(mask.astype(np.uint8))
            solidity = mask.sum() / max(cv2.contourArea(cv2.convexHull(contour)), 1.0)
            if solidity > 0.97:  # convex: the surface's centre is on it
                grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
                assert grown[round(v), round(u)]
                checked += 1
    assert checked >= 5


def test_measured_depth_is_sensor_like(scenes):
    invalid = np.concatenate([~np.isfinite(s.depth).ravel() for s in scenes])
    assert 0.03 < invalid.mean() < 0.35, invalid.mean()
    for rgbd in scenes:
        valid = np.isfinite(rgbd.depth)
        z = rgbd.true_depth[valid]
        assert np.all(rgbd.depth[valid] >= RANGE_M[0]) and np.all(rgbd.depth[valid] <= RANGE_M[1])
        err = rgbd.depth[valid] - z
        # Noise ~ 0.002 z^2, whole millimetres: small, unbiased, growing with distance.
        assert abs(float(np.median(err))) < 0.002
        assert np.all(np.abs(err) < 0.002 * 6 * z**2 + 0.001)
        np.testing.assert_allclose(
            np.round(rgbd.depth[valid] * 1000), rgbd.depth[valid] * 1000, atol=1e-3
        )
        expected = [valid[m].mean() for m in rgbd.scene.masks]
        np.testing.assert_allclose(rgbd.depth_valid_fraction, expected)
    fractions = np.concatenate([s.depth_valid_fraction for s in scenes])
    assert np.mean(fractions >= 0.5) > 0.6  # most objects measurable, some not
    far = [(s.true_depth > 2).mean() for s in scenes]
    assert max(far) > 0.3  # the background is metres away


def test_noise_grows_with_distance_and_invalid_false_keeps_every_pixel():
    rgbd = generate_rgbd_scene(3, HW, invalid=False)
    assert np.isfinite(rgbd.depth).all()
    err = rgbd.depth - rgbd.true_depth
    near, far = rgbd.true_depth < 1.2, rgbd.true_depth > 3.0
    assert near.sum() > 500 and far.sum() > 500
    assert err[far].std() > 3 * err[near].std()


def test_stereo_shadow_is_a_band_left_of_a_near_object():
    cam = rgbd_camera((120, 160))
    true = np.full((120, 160), 4.0)
    true[40:80, 80:120] = 1.0
    hidden = stereo_shadow(true, cam)
    width = BASELINE_M * cam.fx * (1 / 1.0 - 1 / 4.0)  # ~11.5 px
    row = hidden[60]
    assert not row[80:120].any() and not row[120:].any()
    band = np.flatnonzero(row[:80])
    edge = BASELINE_M * cam.fx / 4.0  # the image's left edge the second imager misses
    assert band.max() == 79 and 79 - band[band > edge + 1].min() + 1 == pytest.approx(width, abs=1)
    assert not hidden[20, int(edge) + 1 :].any()  # a row without the object: only the edge


def test_camera_is_realsense_like_and_its_camera_info_round_trips():
    cam = rgbd_camera((480, 640))
    assert cam.frame_id == FRAME_ID == "camera_color_optical_frame"
    assert cam.fx == cam.fy == pytest.approx(615.0)
    assert abs(cam.cx - 319.5) < 3 and abs(cam.cy - 239.5) < 3
    hfov = 2 * np.degrees(np.arctan(320 / cam.fx))
    assert 50 < hfov < 70
    info = SimpleNamespace(header=SimpleNamespace(frame_id=FRAME_ID), **camera_info_fields(cam))
    assert camera_from_info(info) == cam
    assert info.p[:3] == [cam.fx, 0.0, cam.cx] and len(info.p) == 12
    rgbd = generate_rgbd_scene(5, HW)
    assert rgbd.camera == rgbd_camera(HW) and rgbd.camera.hw == HW == rgbd.depth.shape
    assert rgbd.depth.dtype == rgbd.true_depth.dtype == np.float32


def test_sequence_keeps_the_scene_and_redraws_the_sensor():
    frames = generate_rgbd_sequence(11, 3, HW)
    first = generate_rgbd_scene(11, HW)
    np.testing.assert_array_equal(frames[0].depth, first.depth)
    for f in frames[1:]:
        np.testing.assert_array_equal(f.true_depth, first.true_depth)
        np.testing.assert_array_equal(f.scene.masks, first.scene.masks)
        assert not np.array_equal(np.nan_to_num(f.depth), np.nan_to_num(first.depth))


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(TypeError, match="seed must be an int"):
        generate_rgbd_scene(1.5, HW)
    with pytest.raises(ValueError, match="hw must be"):
        generate_rgbd_scene(1, (16, 16))
    with pytest.raises(ValueError, match="n_frames"):
        generate_rgbd_sequence(1, 0, HW)
