"""RGB-D scenes with exact 3D ground truth: :func:`generate_rgbd_scene` (numpy/cv2 only).

The colour image and the instance masks are :func:`~.scenes.generate_scene`'s, unchanged (the
same seed gives the same pixels). Depth is consistent with its layers, seen by a
RealSense-like camera (:func:`rgbd_camera`: 640x480 colour with ``fx = fy = 615`` px, a
55x43 degree field of view, depth "aligned to color"):

* the background is a plane 3-5 m away on the optical axis, tilted 5-30 degrees (a wall or a
  floor seen at an angle);
* every object of the world, the ones dropped from the ground truth included, is a plane
  tilted up to 25 degrees, painted back to front: painter's order is depth order, each object
  at least :data:`DEPTH_GAP` nearer than everything it covers (at every pixel it covers), at
  0.5 m to 85% of the background's nearest point (log-uniform).

:attr:`RGBDScene.true_depth` is that exact depth; :attr:`RGBDScene.depth` is what an active
stereo sensor would report, NaN where it reports nothing:

* noise growing with ``z^2`` (:data:`NOISE_PER_M2`; part of it spatially correlated, as
  block matching makes it), rounded to the 1 mm of a ``16UC1`` image;
* the stereo shadow: points the second imager (:data:`BASELINE_M` to the right) cannot see,
  a band left of every near object over a far one and along the image's left edge;
* half the pixels of a one-pixel band along depth discontinuities (mixed pixels);
* hole blobs over the image (1-5%), and "hard" objects (dark, shiny: 20% of them) that lose
  30-90% of their depth in blobs;
* depth outside :data:`RANGE_M` and a sprinkle of lone dropouts.

3D ground truth (:attr:`RGBDScene.centroids`) is the mean of an instance's visible pixels
back-projected with the true depth: the centre of the surface the camera sees.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..spatial.camera import CameraModel
from .scenes import Scene, generate_scene

__all__ = [
    "FRAME_ID",
    "RGBDScene",
    "camera_info_fields",
    "generate_rgbd_scene",
    "generate_rgbd_sequence",
    "measure_depth",
    "plane_depth",
    "rgbd_camera",
    "stereo_shadow",
]

#: The optical frame of the colour camera (the RealSense driver's name).
FRAME_ID = "camera_color_optical_frame"
#: Depth the sensor reports at all, metres (a D4xx's min-z; the useful maximum).
RANGE_M = (0.3, 6.0)
#: Stereo baseline, metres (D4xx: 50 mm).
BASELINE_M = 0.05
#: Depth noise: standard deviation ``NOISE_PER_M2 * z^2`` metres (8 mm at 2 m, 32 mm at 4 m).
NOISE_PER_M2 = 0.002
#: Depth unit of the reported depth, metres (a ``16UC1`` image's millimetre).
DEPTH_UNIT_M = 0.001
#: Background plane: depth on the optical axis and tilt range, metres and degrees.
BACKGROUND_M = (3.0, 5.0)
BACKGROUND_TILT_DEG = (5.0, 30.0)
#: Objects: nearest centre depth, and the largest tilt.
OBJECT_NEAR_M = 0.5
OBJECT_TILT_DEG = 25.0
#: Every object is at least this fraction nearer than what it covers.
DEPTH_GAP = 0.04
#: Second seed word of the depth's random stream (the colour scene keeps its own).
_DEPTH_STREAM = 17


@dataclass
class RGBDScene:
    """One RGB-D frame and its exact 3D ground truth.

    Attributes:
        scene: the colour image and instance masks (:func:`~.scenes.generate_scene`'s).
        depth: ``(H, W)`` float32 metres as the sensor reports it: NaN where invalid (holes,
            edge shadows, out of range). A ``16UC1`` writer turns NaN into 0.
        true_depth: ``(H, W)`` float32 exact depth, no holes, no noise.
        camera: the colour (and aligned depth) intrinsics, frame :data:`FRAME_ID`.
        centroids: ``(N, 3)`` float64 exact centroid of each instance's visible surface (mean
            of its visible pixels back-projected with ``true_depth``), optical frame.
        depth_valid_fraction: ``(N,)`` float64 fraction of each mask with valid ``depth``.
        owner: ``(H, W)`` int16 world object that painted each pixel (paint order, the
            numbering of :attr:`Scene.ids`; objects dropped from the ground truth included),
            -1 for the background.
        planes: ``(M, 4)`` float64 plane ``(nx, ny, nz, d)`` of every world object, ``n . X =
            d`` in the optical frame (unit ``n``, ``nz > 0``); see :func:`plane_depth`.
        background_plane: ``(4,)`` float64, the background's plane.
    """

    scene: Scene
    depth: np.ndarray
    true_depth: np.ndarray
    camera: CameraModel
    centroids: np.ndarray
    depth_valid_fraction: np.ndarray
    owner: np.ndarray
    planes: np.ndarray
    background_plane: np.ndarray

    def __len__(self) -> int:
        return len(self.scene)


def rgbd_camera(hw: tuple[int, int] = (480, 640)) -> CameraModel:
    """A RealSense-like colour camera at ``hw = (H, W)``: ``fx = fy = 0.961 W`` (615 px at 640
    wide: 55 degrees across), the principal point a little off centre as calibrated ones are,
    frame :data:`FRAME_ID`."""
    h, w = int(hw[0]), int(hw[1])
    f = 615.0 / 640.0 * w
    return CameraModel(f, f, w / 2 - 0.5 + 0.0022 * w, h / 2 - 0.5 - 0.0027 * h, w, h, FRAME_ID)


def camera_info_fields(camera: CameraModel) -> dict[str, Any]:
    """``sensor_msgs/CameraInfo`` fields of ``camera`` (no header): ``width``, ``height``,
    ``distortion_model`` (plumb_bob, zero ``d``), ``k``, ``r`` (identity) and ``p``."""
    return {
        "width": camera.width,
        "height": camera.height,
        "distortion_model": "plumb_bob",
        "d": [0.0] * 5,
        "k": camera.k(),
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def _rays(camera: CameraModel) -> np.ndarray:
    """``(H, W, 3)`` float64 ray ``(x/z, y/z, 1)`` through every pixel centre."""
    h, w = camera.hw
    x = (np.arange(w) - camera.cx) / camera.fx
    y = (np.arange(h) - camera.cy) / camera.fy
    rays = np.ones((h, w, 3))
    rays[..., 0] = x[None, :]
    rays[..., 1] = y[:, None]
    return rays


def plane_depth(plane: np.ndarray, camera: CameraModel) -> np.ndarray:
    """``(H, W)`` float64 depth of the plane ``(nx, ny, nz, d)`` (``n . X = d``) at every
    pixel of ``camera``."""
    plane = np.asarray(plane, dtype=np.float64)
    return plane[3] / (_rays(camera) @ plane[:3])


def _normal(rng: np.random.Generator, tilt_deg: tuple[float, float]) -> np.ndarray:
    """A unit normal tilted from the optical axis by an angle in ``tilt_deg``, any azimuth."""
    tilt = np.radians(rng.uniform(*tilt_deg))
    azimuth = rng.uniform(0, 2 * np.pi)
    return np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)])


def _layers(
    rng: np.random.Generator, rays: np.ndarray, fills: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True depth, owner map, object planes and background plane of one scene: the background,
    then every fill in paint order, each nearer than everything it covers."""
    n = _normal(rng, BACKGROUND_TILT_DEG)
    background = np.append(n, rng.uniform(*BACKGROUND_M) * n[2])  # z on the optical axis
    depth = background[3] / (rays @ background[:3])
    owner = np.full(depth.shape, -1, dtype=np.int16)
    far = 0.85 * float(depth.min())
    targets = np.sort(np.exp(rng.uniform(np.log(OBJECT_NEAR_M), np.log(far), len(fills))))[::-1]
    planes = np.zeros((len(fills), 4))
    for i, (fill, target) in enumerate(zip(fills, targets, strict=True)):
        n = _normal(rng, (0.0, OBJECT_TILT_DEG))
        ys, xs = np.nonzero(fill)
        centre = rays[int(ys.mean()), int(xs.mean())] if len(ys) else rays[0, 0]
        # Depth over the image of the plane through ``centre`` at depth 1: scale = z there.
        unit = (centre @ n) / (rays[ys, xs] @ n)
        z0 = target
        if len(ys):
            z0 = min(target, float(np.min(depth[ys, xs] / unit)) / (1.0 + DEPTH_GAP))
            depth[ys, xs] = z0 * unit
            owner[ys, xs] = i
        planes[i] = np.append(n, z0 * (centre @ n))
    return depth, owner, planes, background


# ----------------------------------------------------------------------------- the sensor


def _smooth_field(rng: np.random.Generator, hw: tuple[int, int], cell: int) -> np.ndarray:
    """``(H, W)`` float32 smooth random field, blobs about ``cell`` pixels across."""
    h, w = hw
    coarse = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _noisy(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """True depth plus stereo-like noise (standard deviation ``NOISE_PER_M2 z^2``, 0.6 of it
    correlated over a few pixels), in whole :data:`DEPTH_UNIT_M`."""
    white = rng.standard_normal(true.shape).astype(np.float32)
    smooth = cv2.GaussianBlur(rng.standard_normal(true.shape).astype(np.float32), (0, 0), 2.5)
    smooth /= max(float(smooth.std()), 1e-9)
    z = true + NOISE_PER_M2 * true**2 * (0.8 * white + 0.6 * smooth)
    return np.round(z / DEPTH_UNIT_M) * DEPTH_UNIT_M


def stereo_shadow(true: np.ndarray, camera: CameraModel) -> np.ndarray:
    """``(H, W)`` bool: pixels the second imager, :data:`BASELINE_M` to the right, does not see.

    A point at column ``u`` with disparity ``D = B fx / z`` appears at ``u - D`` there; a
    nearer point to its right hides it when ``u' - D' <= u - D``. With ``E = D - u`` that is
    "some ``E`` further right in the row is larger": a reversed running maximum. Points that
    fall off the second image's left edge (``u - D < 0``) are not seen either.
    """
    disparity = BASELINE_M * camera.fx / np.maximum(true, 1e-6)
    e = disparity - np.arange(true.shape[1])[None, :]
    right_max = np.maximum.accumulate(e[:, ::-1], axis=1)[:, ::-1]
    hidden = np.zeros(true.shape, dtype=bool)
    hidden[:, :-1] = right_max[:, 1:] > e[:, :-1] + 0.25
    return hidden | (e > 0)


def _edges(true: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels next to a depth step of more than 2% (either side)."""
    step = np.zeros(true.shape, dtype=bool)
    dx = np.abs(np.diff(true, axis=1)) > 0.02 * np.minimum(true[:, 1:], true[:, :-1])
    dy = np.abs(np.diff(true, axis=0)) > 0.02 * np.minimum(true[1:], true[:-1])
    step[:, 1:] |= dx
    step[:, :-1] |= dx
    step[1:] |= dy
    step[:-1] |= dy
    return step


def _holes(rng: np.random.Generator, owner: np.ndarray, objects: int) -> np.ndarray:
    """``(H, W)`` bool hole blobs: 1-5% of the image, and 30-90% of each "hard" object (one in
    five: dark or shiny surfaces stereo cannot match)."""
    hw = owner.shape
    field = _smooth_field(rng, hw, 24)
    holes = field > np.quantile(field, 1.0 - rng.uniform(0.01, 0.05))
    hard = np.flatnonzero(rng.random(objects) < 0.2)
    if len(hard):
        fine = _smooth_field(rng, hw, 10)
        for i in hard:
            where = owner == i
            if where.any():
                cut = np.quantile(fine[where], 1.0 - rng.uniform(0.3, 0.9))
                holes |= where & (fine > cut)
    return holes


def measure_depth(
    rng: np.random.Generator,
    true: np.ndarray,
    owner: np.ndarray,
    camera: CameraModel,
    *,
    invalid: bool = True,
) -> np.ndarray:
    """``(H, W)`` float32 depth as the sensor reports ``true``: noise always; with ``invalid``,
    NaN at the stereo shadow, half the discontinuity band, hole blobs, out of
    :data:`RANGE_M`, and 0.3% lone pixels."""
    depth = _noisy(rng, true)
    if invalid:
        bad = stereo_shadow(true, camera)
        bad |= _edges(true) & (rng.random(true.shape) < 0.5)
        bad |= _holes(rng, owner, int(owner.max()) + 1)
        bad |= rng.random(true.shape) < 0.003
        bad |= (true < RANGE_M[0]) | (depth > RANGE_M[1])
        depth[bad] = np.nan
    return depth.astype(np.float32)


# ----------------------------------------------------------------------------- public API


def _seed(seed: int) -> int:
    try:
        return operator.index(seed)
    except TypeError:
        raise TypeError(
            f"seed must be an int (the RGB-D scene's depth has its own stream from it), "
            f"got {type(seed).__name__}"
        ) from None


def _truth(seed: int, hw: tuple[int, int]) -> RGBDScene:
    """The scene with exact depth; ``depth`` is ``true_depth`` until measured."""
    fills: list[np.ndarray] = []
    scene = generate_scene(seed, hw, layers=fills)
    camera = rgbd_camera(scene.image.shape[:2])
    rng = np.random.default_rng([seed, _DEPTH_STREAM])
    true, owner, planes, background = _layers(rng, _rays(camera), fills)
    centroids = np.zeros((len(scene), 3))
    for k, mask in enumerate(scene.masks):
        vs, us = np.nonzero(mask)
        centroids[k] = camera.back_project(us, vs, true[vs, us]).mean(axis=0)
    true = true.astype(np.float32)
    return RGBDScene(
        scene, true, true, camera, centroids, np.ones(len(scene)), owner, planes, background
    )


def _measured(truth: RGBDScene, rng: np.random.Generator, invalid: bool) -> RGBDScene:
    depth = measure_depth(rng, truth.true_depth, truth.owner, truth.camera, invalid=invalid)
    valid = np.isfinite(depth)
    fraction = np.array([valid[m].mean() for m in truth.scene.masks], dtype=np.float64)
    return RGBDScene(
        truth.scene,
        depth,
        truth.true_depth,
        truth.camera,
        truth.centroids,
        fraction,
        truth.owner,
        truth.planes,
        truth.background_plane,
    )


def generate_rgbd_scene(
    seed: int, hw: tuple[int, int] = (480, 640), *, invalid: bool = True
) -> RGBDScene:
    """One RGB-D frame: :func:`~.scenes.generate_scene`'s ``(seed, hw)`` with depth.

    Args:
        seed: int seed; the same seed always gives the same frame, and the colour scene is
            ``generate_scene(seed, hw)``'s (the depth draws from a stream of its own).
        hw: ``(H, W)`` in pixels (both >= 32).
        invalid: the reported depth has invalid pixels (holes, shadows, out of range); False
            gives the noisy depth valid everywhere.

    Returns:
        An :class:`RGBDScene`.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``hw`` too small.
    """
    seed = _seed(seed)
    truth = _truth(seed, hw)
    return _measured(truth, np.random.default_rng([seed, _DEPTH_STREAM, 1]), invalid)


def generate_rgbd_sequence(
    seed: int, n_frames: int, hw: tuple[int, int] = (480, 640), *, invalid: bool = True
) -> list[RGBDScene]:
    """A static RGB-D camera looking at one scene for ``n_frames`` frames: the colour image,
    masks and true depth stay; the sensor's noise and holes are drawn anew in every frame
    (frame 0 is :func:`generate_rgbd_scene`'s). Cheap: the scene is rendered once.

    Raises:
        ValueError: ``n_frames < 1`` or ``hw`` too small.
        TypeError: ``seed`` is not an int.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    seed = _seed(seed)
    truth = _truth(seed, hw)
    return [
        _measured(truth, np.random.default_rng([seed, _DEPTH_STREAM, 1 + t]), invalid)
        for t in range(n_frames)
    ]
