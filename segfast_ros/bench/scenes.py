"""Procedural scenes with exact instance masks: the one frame generator (numpy/cv2 only).

The benchmarks time on its frames (:func:`frame`), the tests feed them to the node and the
replay, ``segfast demo`` writes its sample bag from :func:`generate_sequence`, and the demo
model trains and is evaluated on :func:`generate_scene` (it lives in ``bench/``, below
``demo/`` in the flow, so that all of them may import it).

A scene is a few dozen parameters drawn from a seeded generator: a background (gradient,
stripes, checks or smooth noise, in one or two colours), then 3-9 objects painted back to
front. Objects are polygons in *world* coordinates (discs, ellipses, rotated rectangles, stars,
rings with a hole, shapes with a thin handle, L shapes), each with its own texture (flat,
gradient, stripes, checks, smooth noise). A camera maps world to pixels; rendering the same
scene through a moving camera gives a sequence whose masks are exact in every frame, because
every mask is the polygon fill that painted the pixels, never a resampled image.

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

#: Object shapes the generator draws.
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "star", "ring", "handle", "ell", "polygon")
#: Textures of objects and backgrounds.
TEXTURES: tuple[str, ...] = ("flat", "gradient", "stripes", "checks", "noise")

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
class _Texture:
    kind: str
    colours: np.ndarray  # (2, 3) float32 RGB
    direction: float  # radians
    period: float  # world units
    phase: float
    noise: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # frequencies, phases, weights


@dataclass(frozen=True)
class _Object:
    """One object at rest; ``pose`` moves it (polygons and texture together) for one frame."""

    kind: str
    polygons: list[np.ndarray]  # (K, 2) float64 world polygons; even-odd fill (ring holes)
    texture: _Texture
    anchor: tuple[float, float] = (0.0, 0.0)  # world point the pose rotates about
    pose: tuple[float, float, float] | None = None  # (dx, dy, angle): rotate, then shift

    def placed(self) -> list[np.ndarray]:
        """The polygons where this frame's pose puts them."""
        if self.pose is None:
            return self.polygons
        dx, dy, angle = self.pose
        a = np.asarray(self.anchor)
        return [_rotate(p - a, angle) + a + (dx, dy) for p in self.polygons]

    def local(self, wx: np.ndarray, wy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World pixel coordinates mapped back to the object at rest, where its texture is
        defined (so the texture moves with the object)."""
        if self.pose is None:
            return wx, wy
        dx, dy, angle = self.pose
        u, v = wx - self.anchor[0] - dx, wy - self.anchor[1] - dy
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        return u * c + v * s + self.anchor[0], v * c - u * s + self.anchor[1]


@dataclass(frozen=True)
class _World:
    """A scene in world coordinates (``[0, 1]`` spans the reference frame's short side)."""

    background: _Texture
    objects: list[_Object]
    light: tuple[float, float, float]  # strength, direction, centre offset
    noise_sigma: float
    extent: tuple[float, float]


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


# ----------------------------------------------------------------------------- sampling


def _palette_colour(rng: np.random.Generator, avoid: np.ndarray | None, min_dist: float):
    """A random RGB colour at least ``min_dist`` (L2, 0..255) from ``avoid`` if possible."""
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if avoid is None or np.linalg.norm(colour - avoid) >= min_dist:
            break
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32)


def _texture(
    rng: np.random.Generator, base: np.ndarray, *, contrast: float, size: float
) -> _Texture:
    kind = str(rng.choice(TEXTURES, p=[0.3, 0.2, 0.2, 0.1, 0.2]))
    delta = rng.normal(0, 1, 3)
    delta = delta / (np.linalg.norm(delta) + 1e-9) * contrast
    second = np.clip(base + delta, 0, 255).astype(np.float32)
    noise = None
    if kind == "noise":
        k = 4
        noise = (
            rng.uniform(1.5, 5.0, (k, 2)) / size * rng.choice([-1, 1], (k, 2)),
            rng.uniform(0, 2 * np.pi, k),
            rng.uniform(0.5, 1.0, k),
        )
    return _Texture(
        kind=kind,
        colours=np.stack([base, second]),
        direction=float(rng.uniform(0, np.pi)),
        period=float(size * rng.uniform(0.15, 0.4)),
        phase=float(rng.uniform(0, 1)),
        noise=noise,
    )


def _regular(n: int, rx: float, ry: float, angle: float, radii: np.ndarray | None = None):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n) if radii is None else radii
    pts = np.stack([rx * r * np.cos(t), ry * r * np.sin(t)], axis=1)
    return _rotate(pts, angle)


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape(rng: np.random.Generator, kind: str, r: float) -> list[np.ndarray]:
    """Polygons of one object around the origin, radius about ``r`` world units."""
    angle = float(rng.uniform(0, np.pi))
    if kind == "ellipse":
        return [_regular(48, r, r * rng.uniform(0.5, 1.0), angle)]
    if kind == "rectangle":
        w, h = r, r * rng.uniform(0.4, 1.0)
        return [_rotate(np.array([[-w, -h], [w, -h], [w, h], [-w, h]]), angle)]
    if kind == "star":
        n = int(rng.integers(4, 7))
        radii = np.tile([1.0, rng.uniform(0.45, 0.65)], n)
        return [_regular(2 * n, r, r, angle, radii)]
    if kind == "ring":
        outer = _regular(48, r, r * rng.uniform(0.75, 1.0), angle)
        return [outer, outer * rng.uniform(0.4, 0.6)]
    if kind == "handle":  # a body with a thin stick: thin parts
        body = _regular(32, r * 0.7, r * 0.7 * rng.uniform(0.7, 1.0), 0.0)
        t = r * rng.uniform(0.08, 0.14)
        stick = np.array([[0.3 * r, -t], [1.6 * r, -t], [1.6 * r, t], [0.3 * r, t]])
        return [_rotate(body - [0.4 * r, 0], angle), _rotate(stick - [0.4 * r, 0], angle)]
    if kind == "ell":
        a, b = r, r * rng.uniform(0.3, 0.5)
        pts = np.array([[-a, -a], [-a + b, -a], [-a + b, a - b], [a, a - b], [a, a], [-a, a]])
        return [_rotate(pts, angle)]
    if kind == "polygon":
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        return [np.stack([r * radii * np.cos(t), r * radii * np.sin(t)], axis=1)]
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")


def _sample_world(
    rng: np.random.Generator,
    extent: tuple[float, float],
    num_objects: tuple[int, int],
    radius: tuple[float, float],
) -> _World:
    """Draw a scene covering world ``[0, extent_x] x [0, extent_y]``."""
    ex, ey = extent
    bg_base = _palette_colour(rng, None, 0)
    background = _texture(rng, bg_base, contrast=rng.uniform(10, 45), size=1.0)
    bg_mean = background.colours.mean(axis=0)
    area = ex * ey
    n = int(rng.integers(num_objects[0], num_objects[1] + 1) * max(1.0, area))
    objects = []
    for _ in range(n):
        kind = str(rng.choice(SHAPES))
        r = float(rng.uniform(*radius))
        centre = rng.uniform([0.05, 0.05], [ex - 0.05, ey - 0.05])
        polygons = [p + centre for p in _shape(rng, kind, r)]
        base = _palette_colour(rng, bg_mean, 90.0)
        texture = _texture(rng, base, contrast=rng.uniform(15, 60), size=2 * r)
        objects.append(_Object(kind, polygons, texture, (float(centre[0]), float(centre[1]))))
    light = (
        float(rng.uniform(0.0, 0.35)),
        float(rng.uniform(0, 2 * np.pi)),
        float(rng.uniform(-0.5, 0.5)),
    )
    return _World(background, objects, light, float(rng.uniform(0.0, 6.0)), (ex, ey))


# ----------------------------------------------------------------------------- rendering


def _paint_texture(
    texture: _Texture, wx: np.ndarray, wy: np.ndarray, out: np.ndarray, where: np.ndarray | None
) -> None:
    """Write the texture's colours at world coordinates ``wx``, ``wy`` into ``out``."""
    if where is not None:
        wx, wy = wx[where], wy[where]
    c0, c1 = texture.colours
    if texture.kind == "flat":
        mix = np.zeros_like(wx)
    else:
        u = wx * np.cos(texture.direction) + wy * np.sin(texture.direction)
        if texture.kind == "gradient":
            mix = np.mod(u / (4 * texture.period) + texture.phase, 2.0)
            mix = np.minimum(mix, 2.0 - mix)
        elif texture.kind == "stripes":
            mix = (np.mod(u / texture.period + texture.phase, 1.0) < 0.5).astype(np.float32)
        elif texture.kind == "checks":
            v = -wx * np.sin(texture.direction) + wy * np.cos(texture.direction)
            mix = ((np.floor(u / texture.period) + np.floor(v / texture.period)) % 2).astype(
                np.float32
            )
        else:
            assert texture.noise is not None
            freqs, phases, weights = texture.noise
            arg = wx[..., None] * freqs[:, 0] + wy[..., None] * freqs[:, 1]
            mix = (np.sin(2 * np.pi * arg + phases) * weights).sum(-1) / weights.sum()
            mix = 0.5 + 0.5 * mix
    colour = c0 + (c1 - c0) * mix[..., None].astype(np.float32)
    if where is None:
        out[...] = colour
    else:
        out[where] = colour


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
    world: _World,
    camera: Camera,
    hw: tuple[int, int],
    noise_rng: np.random.Generator,
    min_area: int,
    min_visible_fraction: float,
) -> Scene:
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = (xs + 0.5) / camera.scale + camera.origin[0]
    wy = (ys + 0.5) / camera.scale + camera.origin[1]
    image = np.empty((h, w, 3), dtype=np.float32)
    _paint_texture(world.background, wx, wy, image, None)

    fills = []
    for obj in world.objects:
        fill = _fill(obj.placed(), camera, hw)
        if fill.any():
            _paint_texture(obj.texture, *obj.local(wx, wy), image, fill)
        fills.append(fill)

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
    world = _sample_world(rng, (w / short, h / short), num_objects, radius)
    camera = Camera((0.0, 0.0), float(short))
    min_area = max(1, round(min_area_fraction * h * w))
    return _render(world, camera, (h, w), rng, min_area, min_visible_fraction)


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
    world = _sample_world(rng, extent, num_objects, radius)
    scale0 = float(short)
    poses = []
    for _ in range(2):
        z = float(rng.uniform(*zoom))
        view = (w / (scale0 * z), h / (scale0 * z))  # world size of the frame
        poses.append((rng.uniform(0, extent[0] - view[0]), rng.uniform(0, extent[1] - view[1]), z))
    min_area = max(1, round(min_area_fraction * h * w))
    frames = []
    for t in range(n_frames):
        a = 0.5 - 0.5 * np.cos(np.pi * t / max(1, n_frames - 1))
        x0 = (1 - a) * poses[0][0] + a * poses[1][0]
        y0 = (1 - a) * poses[0][1] + a * poses[1][1]
        z = (1 - a) * poses[0][2] + a * poses[1][2]
        camera = Camera((float(x0), float(y0)), scale0 * float(z))
        frames.append(_render(world, camera, (h, w), rng, min_area, min_visible_fraction))
    return frames


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
