"""spatial.cloud: voxel downsampling and one labelled cloud of the lifted instances."""

from __future__ import annotations

import numpy as np
import pytest

from segfast_ros.spatial.camera import CameraModel
from segfast_ros.spatial.cloud import cloud_points, voxel_downsample
from segfast_ros.spatial.lift import Lifted, LiftSettings, lift_dense


def test_voxel_downsample_averages_each_occupied_voxel() -> None:
    points = np.array(
        [[0.01, 0.01, 1.01], [0.03, 0.05, 1.09], [0.15, 0.0, 1.0], [-0.05, 0.0, 1.0]],
        dtype=np.float64,
    )
    out = voxel_downsample(points, 0.1)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    expected = {(0.02, 0.03, 1.05), (0.15, 0.0, 1.0), (-0.05, 0.0, 1.0)}
    got = {tuple(round(float(v), 6) for v in row) for row in out}
    assert got == expected


def test_voxel_downsample_bounds_the_density() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.0, 1.0, (20000, 3))
    out = voxel_downsample(points, 0.5)
    assert len(out) == 64  # a 2 m cube in 0.5 m voxels, every one occupied
    # Every mean lies in its own voxel.
    cells = np.floor(out / 0.5)
    assert len(np.unique(cells, axis=0)) == 64


def test_voxel_zero_keeps_every_point_and_bad_voxels_are_refused() -> None:
    points = np.arange(12, dtype=np.float64).reshape(4, 3)
    out = voxel_downsample(points, 0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, points)
    assert voxel_downsample(np.zeros((0, 3)), 0.01).shape == (0, 3)
    with pytest.raises(ValueError, match="voxel_m must be a finite number >= 0"):
        voxel_downsample(points, -0.1)
    with pytest.raises(ValueError, match="voxel_m must be a finite number >= 0"):
        voxel_downsample(points, float("nan"))
    with pytest.raises(ValueError, match=r"expected points \(N, 3\), got shape \(4, 2\)"):
        voxel_downsample(points[:, :2], 0.1)


def test_cloud_points_labels_each_instance_and_downsamples_each_on_its_own() -> None:
    hw = (60, 80)
    cam = CameraModel(80.0, 80.0, 39.5, 29.5, 80, 60)
    masks = np.zeros((3, *hw), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 10:30, 30:50] = True  # touches instance 0: shares voxels at the seam
    masks[2, 50:52, 70:72] = True  # 4 pixels: fewer than min_points, not valid
    depth = np.full(hw, 2.0, np.float32)
    lifted = lift_dense(masks, depth, cam, LiftSettings(erode_px=0, min_points=10), points=True)
    assert [one.valid for one in lifted] == [True, True, False]

    xyz, ids = cloud_points(lifted, [7, 9, 11], 0.0)
    assert xyz.dtype == np.float32 and ids.dtype == np.uint32
    assert (np.count_nonzero(ids == 7), np.count_nonzero(ids == 9)) == (400, 400)
    assert not (ids == 11).any()  # not valid: left out
    np.testing.assert_allclose(xyz[ids == 7].mean(axis=0), lifted[0].points.mean(axis=0))

    xyz, ids = cloud_points(lifted, [7, 9, 11], 0.1)
    for ident, one in ((7, lifted[0]), (9, lifted[1])):
        alone = voxel_downsample(one.points, 0.1)
        np.testing.assert_allclose(xyz[ids == ident], alone)
    assert len(xyz) < 800


def test_cloud_points_without_points_and_bad_ids() -> None:
    assert [a.shape for a in cloud_points([], [], 0.01)] == [(0, 3), (0,)]
    no_points = [Lifted(True, num_points=30, valid_fraction=1.0)]
    xyz, ids = cloud_points(no_points, [1], 0.01)
    assert xyz.shape == (0, 3) and ids.shape == (0,)
    with pytest.raises(ValueError, match="1 lifted instances but 2 ids"):
        cloud_points(no_points, [1, 2], 0.01)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 2\*\*32\)"):
        cloud_points(no_points, [-1], 0.01)
    with pytest.raises(ValueError, match="voxel_m must be a finite number >= 0"):
        cloud_points(no_points, [1], -1.0)
