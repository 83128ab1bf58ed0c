"""Procedural scenes with exact instance masks: the one frame generator (numpy/cv2 only).

The benchmarks time on its frames (:func:`frame`), the tests feed them to the node and the
replay, ``segfast demo`` writes its sample bag from :func:`generate_sequence`, and the demo
model trains and is evaluated on :func:`generate_scene` (it lives in ``bench/``, below
``demo/`` in the flow, so that all of them may import it).

A scene is a few dozen parameters drawn from a seeded generator (:mod:`.scene_world`, which
defines shapes, textures and objects in world coordinates): a background (gradient,
stripes, checks or smooth noise, in one or two colours), then 3-9 objects painted back to
front. Objects are polygons in *world* coordinates (discs, ellipses, rotated rectangles, stars,
rings with a hole, shapes with a thin handle, L shapes), each with its own texture (flat,
gradient, stripes, checks, smooth noise). A camera maps world to pixels; rendering the same
scene through a moving camera gives a sequence whose masks are exact in every frame, because
every mask is the polygon fill that painted the pixels, never a resampled image. Each
instance carries its object's identity (:attr:`Scene.ids`), the same in every frame; in
:mod:`.scene_motion`'s sequences the objects themselves move, occlude one another and leave the
view.

Each object's *visible* mask is its fill minus everything painted after it (occlusion), so the
masks never overlap; objects whose visible area is tiny are dropped from the ground truth
(their pixels count neither as an instance nor as background). Lighting (a smooth
multiplicative field) and sensor noise are applied last and do not move any mask.

No torch: the runtime's tests, the benchmarks, the evaluation and the sample-bag generator
use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..masks import masks_to_boxes
from .scene_world import SHAPES, TEXTURES, World, paint_texture, sample_world

__all__ = [
    "SHAPES",
    "TEXTURES",
    "Camera",
    "Scene",
    "camera_path",
    "frame",
    "generate_scene",
    "generate_sequence",
]

#: Fixed-point bits of the polygon vertices given to ``cv2.fillPoly`` (1/16 pixel).
_SHIFT = 4


@dataclass
class Scene:
    """One rendered frame and its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool visible masks (after occlusion), pairwise disjoint.
        boxes: ``(N, 4)`` float32 XYXY pixel edges of the masks (``x2 = last column + 1``).
        background: ``(H, W)`` bool pixels covered by no painted object at all.
        kinds: shape name of each instance.
        visible_fraction: ``(N,)`` float32 visible area over the area the instance would
            cover in this frame without the objects in front of it (1 = not occluded).
        ids: ``(N,)`` int64 identity of each instance: the index of its object in the
            scene's world (its depth order, 0 = painted first). Stable across the frames of a
            sequence, so it is the ground-truth track ID.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    background: np.ndarray
    kinds: list[str] = field(default_factory=list)
    visible_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.masks)


@dataclass(frozen=True)
class Camera:
    """World-to-pixel map: ``pixel = (world - origin) * scale``.

    Attributes:
        origin: world ``(x, y)`` at the top-left pixel corner.
        scale: pixels per world unit.
    """

    origin: tuple[float, float]
    scale: float

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        return (xy - np.asarray(self.origin)) * self.scale


# ----------------------------------------------------------------------------- rendering


def _fill(polygons: Sequence[np.ndarray], camera: Camera, hw: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of world polygons (holes cut by inner polygons) as an ``(H, W)`` bool."""
    mask = np.zeros(hw, dtype=np.uint8)
    for poly in polygons:
        pts = np.round((camera.to_pixels(poly) - 0.5) * (1 << _SHIFT)).astype(np.int32)
        layer = np.zeros(hw, dtype=np.uint8)
        cv2.fillPoly(layer, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        mask ^= layer
    return mask.astype(bool)


def _render(
    world: World,
    camera: Camera,
    hw: tuple[int, int],
    noise_rng: np.random.Generator,
    min_area: int,
    min_visible_fraction: float,
    layers: list[np.ndarray] | None = None,
) -> Scene:
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = (xs + 0.5) / camera.scale + camera.origin[0]
    wy = (ys + 0.5) / camera.scale + camera.origin[1]
    image = np.empty((h, w, 3), dtype=np.float32)
    paint_texture(world.background, wx, wy, image, None)

    fills = []
    for obj in world.objects:
        fill = _fill(obj.placed(), camera, hw)
        if fill.any():
            paint_texture(obj.texture, *obj.local(wx, wy), image, fill)
        fills.append(fill)
    if layers is not None:
        layers.extend(fills)

    # Visible = own fill minus everything painted later; walk front to back.
    covered = np.zeros(hw, dtype=bool)
    keep: list[tuple[int, np.ndarray, float]] = []
    for i in range(len(fills) - 1, -1, -1):
        visible = fills[i] & ~covered
        full = int(fills[i].sum())
        area = int(visible.sum())
        if area >= min_area and area >= min_visible_fraction * full:
            keep.append((i, visible, area / full))
        covered |= fills[i]
    keep.reverse()
    masks = np.stack([m for _, m, _ in keep]) if keep else np.zeros((0, h, w), dtype=bool)

    strength, direction, offset = world.light
    # Lighting is fixed to the world: a moving camera sees it move with the scene.
    cx, cy = world.extent[0] / 2, world.extent[1] / 2
    u = (wx - cx) * np.cos(direction) + (wy - cy) * np.sin(direction)
    span = 0.5 * float(np.hypot(*world.extent))
    light = 1.0 + strength * np.clip(u / span + offset, -1.0, 1.0)
    image *= light[..., None]
    if world.noise_sigma > 0:
        image += noise_rng.normal(0, world.noise_sigma, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        masks=masks,
        boxes=masks_to_boxes(masks) if len(masks) else np.zeros((0, 4), np.float32),
        background=~covered,
        kinds=[world.objects[i].kind for i, _, _ in keep],
        visible_fraction=np.array([f for _, _, f in keep], dtype=np.float32),
        ids=np.array([i for i, _, _ in keep], dtype=np.int64),
    )


# ----------------------------------------------------------------------------- public API


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_hw(hw: tuple[int, int]) -> tuple[int, int]:
    if len(hw) != 2 or min(hw) < 32:
        raise ValueError(f"hw must be (H, W) with both sides >= 32 pixels, got {tuple(hw)}")
    return int(hw[0]), int(hw[1])


def generate_scene(
    seed: int | np.random.Generator,
    hw: tuple[int, int] = (256, 256),
    *,
    num_objects: tuple[int, int] = (3, 9),
    radius: tuple[float, float] = (0.06, 0.2),
    min_area_fraction: float = 0.003,
    min_visible_fraction: float = 0.25,
    layers: list[np.ndarray] | None = None,
) -> Scene:
    """Draw and render one scene.

    Args:
        seed: an int seed or a ``numpy.random.Generator`` (advanced by the call). The same
            int always gives the same scene.
        hw: ``(H, W)`` of the image in pixels (both >= 32).
        num_objects: inclusive range of objects painted (before dropping hidden ones).
        radius: range of object radii as a fraction of the image's short side.
        min_area_fraction: instances whose visible area is below this fraction of the image
            are dropped from the ground truth.
        min_visible_fraction: instances less visible than this fraction of their own fill
            (mostly hidden) are dropped too.
        layers: when a list, it receives the full ``(H, W)`` bool fill of every object of the
            scene's world in paint order (index = :attr:`Scene.ids`' numbering), occluded
            parts included, and also of the objects dropped from the ground truth: what
            :mod:`.scene_depth` gives a depth to. The scene itself does not change.

    Returns:
        A :class:`Scene`.

    Raises:
        ValueError: ``hw`` too small or a range that is empty.
    """
    h, w = _check_hw(hw)
    if not 1 <= num_objects[0] <= num_objects[1] or not 0 < radius[0] <= radius[1]:
        raise ValueError(
            f"expected 1 <= num_objects[0] <= num_objects[1] and 0 < radius[0] <= radius[1], "
            f"got num_objects={num_objects}, radius={radius}"
        )
    rng = _rng(seed)
    short = min(h, w)
    world = sample_world(rng, (w / short, h / short), num_objects, radius)
    camera = Camera((0.0, 0.0), float(short))
    min_area = max(1, round(min_area_fraction * h * w))
    return _render(world, camera, (h, w), rng, min_area, min_visible_fraction, layers)


def generate_sequence(
    seed: int | np.random.Generator,
    n_frames: int,
    hw: tuple[int, int] = (240, 320),
    *,
    canvas: float = 1.6,
    zoom: tuple[float, float] = (1.0, 1.3),
    num_objects: tuple[int, int] = (4, 9),
    radius: tuple[float, float] = (0.06, 0.18),
    min_area_fraction: float = 0.003,
    min_visible_fraction: float = 0.25,
) -> list[Scene]:
    """A short camera-motion sequence: a smooth pan and zoom over one larger scene.

    The world is ``canvas`` times the frame in each direction; the camera moves along a
    cosine-eased path between two random poses, with a zoom factor between ``zoom[0]`` and
    ``zoom[1]``. Objects keep their shape and texture from frame to frame; lighting is fixed to
    the world and the sensor noise is drawn anew for every frame. Masks are exact in every
    frame (the polygons are filled in each frame's pixel grid).

    Args:
        seed: int seed or generator.
        n_frames: frames (>= 1).
        hw: ``(H, W)`` of each frame.
        canvas: world size relative to the frame at zoom 1 (>= 1).
        zoom: range of the zoom factor (>= 1 keeps the frame inside the world).
        num_objects, radius, min_area_fraction, min_visible_fraction: as
            :func:`generate_scene` (per frame-sized area of the world).

    Returns:
        ``n_frames`` :class:`Scene` objects. Instances are listed per frame (an object that
        leaves the frame disappears from its masks).

    Raises:
        ValueError: ``n_frames < 1``, ``canvas < 1``, ``zoom`` below 1, or ``hw`` too small.
    """
    h, w = _check_hw(hw)
    if n_frames < 1 or canvas < 1.0 or not 1.0 <= zoom[0] <= zoom[1]:
        raise ValueError(
            f"expected n_frames >= 1, canvas >= 1 and 1 <= zoom[0] <= zoom[1], got "
            f"n_frames={n_frames}, canvas={canvas}, zoom={zoom}"
        )
    rng = _rng(seed)
    short = min(h, w)
    extent = (canvas * w / short, canvas * h / short)
    world = sample_world(rng, extent, num_objects, radius)
    cameras = camera_path(rng, extent, (h, w), zoom, n_frames)
    min_area = max(1, round(min_area_fraction * h * w))
    return [_render(world, c, (h, w), rng, min_area, min_visible_fraction) for c in cameras]


def camera_path(
    rng: np.random.Generator,
    extent: tuple[float, float],
    hw: tuple[int, int],
    zoom: tuple[float, float],
    n_frames: int,
) -> list[Camera]:
    """A smooth pan and zoom over world ``[0, extent_x] x [0, extent_y]``: a cosine-eased
    path between two random poses (zoom factors in ``zoom``; 1 = the frame's short side spans
    one world unit), each frame inside the world."""
    h, w = hw
    scale0 = float(min(h, w))
    poses = []
    for _ in range(2):
        z = float(rng.uniform(*zoom))
        view = (w / (scale0 * z), h / (scale0 * z))  # world size of the frame
        poses.append((rng.uniform(0, extent[0] - view[0]), rng.uniform(0, extent[1] - view[1]), z))
    cameras = []
    for t in range(n_frames):
        a = 0.5 - 0.5 * np.cos(np.pi * t / max(1, n_frames - 1))
        x0 = (1 - a) * poses[0][0] + a * poses[1][0]
        y0 = (1 - a) * poses[0][1] + a * poses[1][1]
        z = (1 - a) * poses[0][2] + a * poses[1][2]
        cameras.append(Camera((float(x0), float(y0)), scale0 * float(z)))
    return cameras


def frame(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """One generated RGB frame: :func:`generate_scene`'s image, without the ground truth.

    What the benchmarks time on and the tests send: shapes with sharp edges and textures give
    a trained model something to segment, unlike noise, and the same ``(hw, seed)`` always
    gives the same pixels.

    Args:
        hw: ``(H, W)`` in pixels (both >= 32).
        seed: scene seed.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    return generate_scene(seed, hw).image
