"""spatial.lift: masks and aligned depth to 3D centroids and boxes, checked against exact
geometry on synthetic planes and against a plain full-image reference implementation."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from segfast_ros.masks import rle_to_mask
from segfast_ros.segevery.settings import ParamRange
from segfast_ros.spatial.camera import CameraModel
from segfast_ros.spatial.lift import (
    Lifted,
    LiftSettings,
    lift_dense,
    lift_masks,
    mask_refs,
    rotation_quaternion,
)

HW = (120, 160)
CAM = CameraModel(fx=150.0, fy=140.0, cx=79.5, cy=58.25, width=160, height=120)


def _rect(x0: int, y0: int, w: int, h: int, hw: tuple[int, int] = HW) -> np.ndarray:
    mask = np.zeros(hw, dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def _lift_one(mask: np.ndarray, depth: np.ndarray, **settings: object) -> Lifted:
    return lift_dense(mask[None], depth, CAM, LiftSettings(**settings), points=True)[0]


# ------------------------------------------------------------------------ exact geometry


def test_fronto_parallel_plane_gives_exact_depth_and_the_pixel_centroid_ray() -> None:
    z = 2.5
    depth = np.full(HW, z, np.float32)
    x0, y0, w, h = 30, 20, 41, 25  # odd sizes: the median pixel is the centre pixel
    out = _lift_one(_rect(x0, y0, w, h), depth, erode_px=3, extent_percentile=0.0)
    assert out.valid
    assert out.centroid[2] == z
    u, v = x0 + (w - 1) / 2, y0 + (h - 1) / 2
    assert out.centroid[0] == pytest.approx((u - CAM.cx) * z / CAM.fx, abs=1e-6)
    assert out.centroid[1] == pytest.approx((v - CAM.cy) * z / CAM.fy, abs=1e-6)
    # Extent 0 spans every point: the eroded rectangle's outer pixel centres.
    assert out.min == pytest.approx(
        ((x0 + 3 - CAM.cx) * z / CAM.fx, (y0 + 3 - CAM.cy) * z / CAM.fy, z), abs=1e-6
    )
    assert out.max == pytest.approx(
        ((x0 + w - 4 - CAM.cx) * z / CAM.fx, (y0 + h - 4 - CAM.cy) * z / CAM.fy, z), abs=1e-6
    )
    assert out.num_points == (w - 6) * (h - 6)
    assert out.valid_fraction == 1.0
    assert out.obb_size == (0.0, 0.0, 0.0) and out.obb_orientation == (0.0, 0.0, 0.0, 1.0)


def test_lopsided_shape_centroid_is_the_visible_surface_mean() -> None:
    # An L on a plane facing the camera, with sensor noise and holes: the visible surface's
    # mean is the ray through the L's pixel centroid, well off the median column and row.
    rng = np.random.default_rng(7)
    mask = np.zeros(HW, bool)
    mask[10:110, 20:36] = True  # the upright
    mask[94:110, 20:140] = True  # the foot
    z = 2.0
    depth = (z * (1.0 + rng.normal(0.0, 0.002, HW))).astype(np.float32)
    depth[rng.random(HW) < 0.15] = np.nan
    v, u = np.nonzero(mask)
    truth = CAM.back_project(u, v, np.full(len(u), z)).mean(axis=0)
    out = _lift_one(mask, depth)
    assert out.valid
    distance = float(np.linalg.norm(truth))
    assert np.linalg.norm(np.subtract(out.centroid, truth)) < 1e-3 * distance
    # The per-axis median of the same points (the estimator before) misses by far more.
    assert out.points is not None
    assert np.linalg.norm(np.median(out.points, axis=0) - truth) > 0.1 * distance


def test_points_are_the_back_projected_valid_pixels() -> None:
    depth = np.full(HW, 1.5, np.float32)
    mask = _rect(10, 12, 20, 15)
    out = _lift_one(mask, depth, erode_px=0)
    assert out.points is not None and out.points.dtype == np.float32
    v, u = np.nonzero(mask)
    expected = CAM.back_project(u, v, np.full(len(u), 1.5))
    assert out.points.shape == (out.num_points, 3) == expected.shape
    np.testing.assert_allclose(_sorted_rows(out.points), _sorted_rows(expected), atol=1e-6)
    (plain,) = lift_dense(mask[None], depth, CAM, LiftSettings(erode_px=0))
    assert plain.points is None and plain == out  # points never enter equality


def test_invalid_depth_values_are_ignored() -> None:
    depth = np.full(HW, 3.0, np.float32)
    mask = _rect(40, 30, 50, 40)
    bad = np.zeros(HW, bool)
    bad[35:45, 50:60] = True
    values = (0.0, np.nan, np.inf, -np.inf, -2.0, 0.05, 25.0)  # 0.05 < min_m, 25 > max_m
    depth[bad] = np.resize(np.array(values, np.float32), int(bad.sum()))
    out = _lift_one(mask, depth, erode_px=0, extent_percentile=0.0)
    good = mask & ~bad
    assert out.num_points == int(good.sum())
    assert out.valid_fraction == pytest.approx(good.sum() / mask.sum())
    assert out.min[2] == out.max[2] == out.centroid[2] == 3.0
    assert np.isfinite(out.points).all()


def test_depth_range_bounds_are_inclusive_and_configurable() -> None:
    depth = np.full(HW, 4.0, np.float32)
    mask = _rect(0, 0, 30, 30)
    assert _lift_one(mask, depth, erode_px=0, min_m=4.0, max_m=4.0 + 1e-6).num_points == 900
    assert not _lift_one(mask, depth, max_m=3.9).valid
    assert _lift_one(mask, depth, max_m=3.9).num_points == 0


def test_erosion_ignores_edge_pixels_that_see_the_background() -> None:
    # The mask is 2 px too wide on every side: its rim sees the wall behind at 5 m.
    depth = np.full(HW, 5.0, np.float32)
    depth[32:68, 42:98] = 1.0
    mask = _rect(40, 30, 60, 40)
    eroded = _lift_one(mask, depth, erode_px=2, extent_percentile=0.0)
    assert eroded.min[2] == eroded.max[2] == 1.0
    assert eroded.num_points == 56 * 36
    plain = _lift_one(mask, depth, erode_px=0, extent_percentile=0.0)
    assert plain.max[2] == 5.0 and plain.centroid[2] == 1.0  # the median shrugs it off


def test_too_few_valid_points_is_not_valid_but_says_what_it_found() -> None:
    depth = np.full(HW, np.nan, np.float32)
    depth[50, 60:70] = 2.0  # ten valid pixels under a 20x20 mask
    out = _lift_one(_rect(55, 45, 20, 20), depth, erode_px=0, min_points=20)
    assert not out.valid
    assert out.num_points == 10 and out.valid_fraction == pytest.approx(10 / 400)
    assert out.centroid == out.min == out.max == (0.0, 0.0, 0.0)
    assert out.points is not None and out.points.shape == (10, 3)
    assert _lift_one(_rect(55, 45, 20, 20), depth, erode_px=0, min_points=10).valid


def test_small_object_falls_back_to_its_plain_mask() -> None:
    depth = np.full(HW, 2.0, np.float32)
    small = _rect(70, 50, 5, 5)  # erosion by 3 px leaves nothing
    out = _lift_one(small, depth, erode_px=3, min_points=20)
    assert out.valid and out.num_points == 25 and out.valid_fraction == 1.0
    # A large one keeps its erosion: only the inner points count.
    large = _lift_one(_rect(10, 10, 30, 30), depth, erode_px=3, min_points=20)
    assert large.num_points == 24 * 24


def test_fallback_counts_valid_points_not_pixels() -> None:
    # Erosion leaves 36 pixels, but only 6 of them have depth: fewer than min_points.
    depth = np.full(HW, np.nan, np.float32)
    mask = _rect(20, 20, 12, 12)
    depth[mask] = 2.0
    depth[23:29, 24:29] = np.nan  # 30 of the 36 inner pixels lost
    out = _lift_one(mask, depth, erode_px=3, min_points=20)
    assert out.valid and out.num_points == 144 - 30
    assert out.valid_fraction == pytest.approx((144 - 30) / 144)


def test_masks_at_the_image_edge_are_not_eroded_there() -> None:
    depth = np.full(HW, 2.0, np.float32)
    out = _lift_one(_rect(0, 0, 20, 10), depth, erode_px=2)
    assert out.num_points == (20 - 2) * (10 - 2)


def test_empty_mask_and_empty_roi() -> None:
    depth = np.full(HW, 2.0, np.float32)
    (empty,) = lift_dense(np.zeros((1, *HW), bool), depth, CAM)
    assert empty == Lifted(False)
    _, rois = mask_refs(np.zeros((1, *HW), bool))
    assert rois == [(0, 0, 0, 0)]
    # A ROI of zero size reads nothing, whatever the counts hold.
    full_counts, _ = mask_refs(_rect(10, 10, 30, 30)[None])
    (out,) = lift_masks(full_counts, [(10, 10, 0, 30)], depth, CAM)
    assert out == Lifted(False)
    assert lift_masks([], [], depth, CAM) == []


def test_roi_bounds_what_is_read() -> None:
    depth = np.full(HW, 2.0, np.float32)
    mask = _rect(20, 20, 40, 30)
    counts, (roi,) = mask_refs(mask[None])
    assert roi == (20, 20, 40, 30)
    loose = lift_masks(counts, [(10, 15, 80, 60)], depth, CAM, LiftSettings(erode_px=2))
    tight = lift_masks(counts, [roi], depth, CAM, LiftSettings(erode_px=2))
    assert loose == tight
    # The left half of the mask: the pixels right of the ROI are not read (and erode its edge).
    (half,) = lift_masks(counts, [(20, 20, 20, 30)], depth, CAM, LiftSettings(erode_px=2))
    assert half.num_points == (20 - 4) * (30 - 4)


# ------------------------------------------------------------------------- oriented boxes


@pytest.mark.parametrize("angle", [0.0, 25.0, 70.0, 115.0])
def test_oriented_box_of_a_rotated_rectangle(angle: float) -> None:
    hw = (240, 320)
    cam = CameraModel(300.0, 300.0, 159.5, 119.5, 320, 240)
    mask = np.zeros(hw, np.uint8)
    corners = cv2.boxPoints(((160.0, 120.0), (140.0, 50.0), angle))
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    z = 3.0
    depth = np.full(hw, z, np.float32)
    settings = LiftSettings(erode_px=0, extent_percentile=0.0, oriented_boxes=True)
    (out,) = lift_dense(mask[None].astype(bool), depth, cam, settings)
    size = np.array(out.obb_size)
    assert size[0] == pytest.approx(140 * z / 300, rel=0.03)
    assert size[1] == pytest.approx(50 * z / 300, rel=0.06)
    assert size[2] == pytest.approx(0.0, abs=1e-6)  # a plane facing the camera
    np.testing.assert_allclose(out.obb_center, (0.0, 0.0, z), atol=0.01)
    r = _matrix(out.obb_orientation)
    assert np.linalg.det(r) == pytest.approx(1.0)
    long_axis = r[:, 0]
    expected = (math.cos(math.radians(angle)), math.sin(math.radians(angle)), 0.0)
    assert abs(float(np.dot(long_axis, expected))) == pytest.approx(1.0, abs=1e-3)
    assert abs(r[2, 2]) == pytest.approx(1.0, abs=1e-6)  # the thin axis is the optical axis


def test_oriented_box_of_a_tilted_plane_lies_in_the_plane() -> None:
    hw = (240, 320)
    cam = CameraModel(300.0, 300.0, 159.5, 119.5, 320, 240)
    v = np.arange(hw[0], dtype=np.float64)[:, None]
    normal = np.array([0.0, -math.sin(0.5), -math.cos(0.5)])  # tilted 0.5 rad about x
    # Depth of the plane n . p = -2 along each pixel's ray: z = -2 / (n . ray).
    ray_y = (v - cam.cy) / cam.fy
    depth = np.broadcast_to(-2.0 / (normal[1] * ray_y + normal[2]), hw).astype(np.float32)
    mask = _rect(100, 60, 120, 120, hw)
    settings = LiftSettings(erode_px=0, oriented_boxes=True)
    (out,) = lift_dense(mask[None], depth, cam, settings, points=True)
    r = _matrix(out.obb_orientation)
    assert abs(float(np.dot(r[:, 2], normal))) == pytest.approx(1.0, abs=1e-3)
    assert out.obb_size[2] < 0.002 < out.obb_size[1] <= out.obb_size[0]
    # Points project into the box: within its half sizes along its axes.
    local = (out.points - np.array(out.obb_center)) @ r
    assert (np.abs(local) <= np.array(out.obb_size) / 2 + 0.02).mean() > 0.95


def test_rotation_quaternion_is_a_unit_quaternion_of_the_matrix() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        quat = rotation_quaternion(q)
        assert np.linalg.norm(quat) == pytest.approx(1.0) and quat[3] >= 0
        np.testing.assert_allclose(_matrix(quat), q, atol=1e-9)
    assert rotation_quaternion(np.diag([1.0, -1.0, -1.0])) == pytest.approx((1, 0, 0, 0))


# ------------------------------------------------------------- against a dense reference


def _reference(mask: np.ndarray, depth: np.ndarray, s: LiftSettings) -> dict:
    """The straightforward version: whole-image erosion, float64 points, numpy statistics."""
    ok = np.isfinite(depth) & (depth > 0) & (depth >= s.min_m) & (depth <= s.max_m)
    use = mask
    if s.erode_px:
        k = np.ones((2 * s.erode_px + 1,) * 2, np.uint8)
        eroded = cv2.erode(mask.astype(np.uint8), k).astype(bool)
        if (eroded & ok).sum() >= s.min_points:
            use = eroded
    v, u = np.nonzero(use & ok)
    pts = CAM.back_project(u, v, depth[v, u])
    out = {"num_points": len(pts), "fraction": len(pts) / use.sum() if use.sum() else 0.0}
    if len(pts) >= s.min_points:
        p = s.extent_percentile
        z = np.median(pts[:, 2])
        v_all, u_all = np.nonzero(mask)  # the plain mask's pixel centroid gives the ray
        out |= {
            "centroid": CAM.back_project(u_all.mean(), v_all.mean(), z).reshape(3),
            "min": np.percentile(pts, p, axis=0),
            "max": np.percentile(pts, 100 - p, axis=0),
        }
    return out | {"points": pts}


def _random_scene(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *HW), np.uint8)
    for m in masks:
        centre = rng.uniform(-10, [HW[1] + 10, HW[0] + 10])  # some cut by the image edge
        axes = rng.integers(1, 40, 2)
        cv2.ellipse(m, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)  # fmt: skip
        m &= (rng.random(HW) < 0.9).astype(np.uint8)  # ragged: holes and islands
    depth = rng.uniform(0.0, 22.0, HW).astype(np.float32)
    depth[rng.random(HW) < 0.1] = np.nan
    depth[rng.random(HW) < 0.05] = 0.0
    depth[rng.random(HW) < 0.01] = np.inf
    return masks.astype(bool), depth


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "settings",
    [
        LiftSettings(),
        LiftSettings(erode_px=0, min_points=1, extent_percentile=0.0),
        LiftSettings(erode_px=5, min_points=40, extent_percentile=10.0, min_m=1.0, max_m=8.0),
    ],
)
def test_lift_masks_matches_a_dense_reference(seed: int, settings: LiftSettings) -> None:
    masks, depth = _random_scene(seed, 25)
    counts, rois = mask_refs(masks)
    got = lift_masks(counts, rois, depth, CAM, settings, points=True)
    assert len(got) == len(masks)
    for mask, out in zip(masks, got, strict=True):
        ref = _reference(mask, depth, settings)
        assert out.num_points == ref["num_points"]
        assert out.valid_fraction == pytest.approx(ref["fraction"], rel=1e-12)
        assert out.valid == ("centroid" in ref)
        np.testing.assert_allclose(
            _sorted_rows(out.points), _sorted_rows(ref["points"]), rtol=1e-6, atol=1e-6
        )
        if out.valid:
            for key in ("centroid", "min", "max"):
                np.testing.assert_allclose(getattr(out, key), ref[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("erode_px", [0, 2, 5])
def test_a_roi_that_cuts_its_mask_lifts_the_cut_mask(erode_px: int) -> None:
    # Masks whose runs wrap from column to column (full-height bands, the image's edges) and
    # ragged ones, each read through a ROI cutting it: as if the mask were only what the ROI
    # holds (the pixels outside it are background, also to the erosion).
    masks, depth = _random_scene(5, 12)
    masks[0] = False
    masks[0][:, 30:70] = True  # whole columns: one run across 40 columns
    masks[1] = False
    masks[1][:, :12] = True  # whole columns at the image's left edge
    rng = np.random.default_rng(9)
    counts, _ = mask_refs(masks)
    rois, cut = [], np.zeros_like(masks)
    for k in range(len(masks)):
        x0, x1 = sorted(rng.integers(0, HW[1] + 1, 2).tolist())
        y0, y1 = sorted(rng.integers(0, HW[0] + 1, 2).tolist())
        rois.append((x0, y0, x1 - x0, y1 - y0))
        cut[k, y0:y1, x0:x1] = masks[k, y0:y1, x0:x1]
    settings = LiftSettings(erode_px=erode_px, min_points=5, extent_percentile=5.0)
    got = lift_masks(counts, rois, depth, CAM, settings, points=True)
    expected = lift_dense(cut, depth, CAM, settings, points=True)
    for one, ref in zip(got, expected, strict=True):
        assert one.num_points == ref.num_points and one.valid == ref.valid
        assert one.valid_fraction == pytest.approx(ref.valid_fraction)
        np.testing.assert_allclose(one.centroid, ref.centroid, rtol=1e-9, atol=1e-12)
        assert one.min == ref.min and one.max == ref.max
        np.testing.assert_array_equal(_sorted_rows(one.points), _sorted_rows(ref.points))


def test_mask_refs_round_trip() -> None:
    masks, _ = _random_scene(4, 6)
    counts, rois = mask_refs(masks)
    for mask, c, roi in zip(masks, counts, rois, strict=True):
        assert c.dtype == np.uint32
        np.testing.assert_array_equal(rle_to_mask({"size": list(HW), "counts": c}), mask)
        x, y, w, h = roi
        if not mask.any():
            assert roi == (0, 0, 0, 0)
            continue
        assert mask[y : y + h, x : x + w].sum() == mask.sum()
        assert mask[y, x : x + w].any() and mask[y + h - 1, x : x + w].any()
        assert mask[y : y + h, x].any() and mask[y : y + h, x + w - 1].any()


# -------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_what_was_expected() -> None:
    depth = np.full(HW, 2.0, np.float32)
    counts, rois = mask_refs(_rect(5, 5, 10, 10)[None])
    with pytest.raises(ValueError, match=r"depth is 80x60 but the camera .* 160x120"):
        lift_masks(counts, rois, depth[::2, ::2], CAM)
    with pytest.raises(ValueError, match="2-D float image in metres.*uint16"):
        lift_masks(counts, rois, depth.astype(np.uint16), CAM)
    with pytest.raises(ValueError, match="1 RLE counts but 2 ROIs"):
        lift_masks(counts, rois * 2, depth, CAM)
    with pytest.raises(ValueError, match=r"ROI 0 .* \(150, 5, 20, 10\) is not inside the 160x120"):
        lift_masks(counts, [(150, 5, 20, 10)], depth, CAM)
    with pytest.raises(ValueError, match=r"instance 0 sum to 19199, expected H \* W = 19200"):
        lift_masks([[*counts[0][:-1].tolist(), int(counts[0][-1]) - 1]], rois, depth, CAM)
    with pytest.raises(ValueError, match="instance 0 has none"):
        lift_masks([np.zeros(0, np.uint32)], rois, depth, CAM)
    with pytest.raises(ValueError, match=r"expected masks \(N, H, W\)"):
        mask_refs(np.zeros(HW, bool))


def test_settings_ranges_and_checks() -> None:
    ranges = {
        f.name: (f.metadata["range"].kind, f.metadata["range"].low, f.metadata["range"].high)
        for f in dataclasses.fields(LiftSettings)
        if "range" in f.metadata
    }
    assert set(ranges) == {"erode_px", "min_m", "max_m", "min_points", "extent_percentile"}
    for f in dataclasses.fields(LiftSettings):
        spec = f.metadata.get("range")
        value = getattr(LiftSettings(), f.name)
        assert spec is None or (
            isinstance(spec, ParamRange) and spec.check(f.name, value) == value
        )
    with pytest.raises(ValueError, match=r"erode_px must be an integer in \[0, 50\], got -1"):
        LiftSettings(erode_px=-1)
    with pytest.raises(ValueError, match=r"extent_percentile must be a number in \[0, 25\]"):
        LiftSettings(extent_percentile=30.0)
    with pytest.raises(ValueError, match="max_m must be greater than min_m"):
        LiftSettings(min_m=5.0, max_m=2.0)
    with pytest.raises(ValueError, match="oriented_boxes must be a bool, got 1"):
        LiftSettings(oriented_boxes=1)  # type: ignore[arg-type]
    assert LiftSettings.from_dict({"erode_px": 1, "oriented_boxes": True}) == LiftSettings(
        erode_px=1, oriented_boxes=True
    )
    with pytest.raises(ValueError, match="unknown depth setting.*erode; accepted: erode_px"):
        LiftSettings.from_dict({"erode": 2})


# ------------------------------------------------------------------------------- helpers


def _sorted_rows(points: np.ndarray | None) -> np.ndarray:
    assert points is not None
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p[np.lexsort(p.T[::-1])]


def _matrix(q: tuple[float, float, float, float]) -> np.ndarray:
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
