"""What a generated scene is made of, in world coordinates: shapes, textures, objects, and
the seeded draw of a whole scene (:func:`sample_world`). :mod:`.scenes` renders them through a
camera; :mod:`.scene_motion` moves the objects from frame to frame.

World units: ``[0, 1]`` spans the reference frame's short side. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Object shapes the generator draws.
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "star", "ring", "handle", "ell", "polygon")
#: Textures of objects and backgrounds.
TEXTURES: tuple[str, ...] = ("flat", "gradient", "stripes", "checks", "noise")


@dataclass(frozen=True)
class Texture:
    kind: str
    colours: np.ndarray  # (2, 3) float32 RGB
    direction: float  # radians
    period: float  # world units
    phase: float
    noise: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # frequencies, phases, weights


@dataclass(frozen=True)
class WorldObject:
    """One object at rest; ``pose`` moves it (polygons and texture together) for one frame."""

    kind: str
    polygons: list[np.ndarray]  # (K, 2) float64 world polygons; even-odd fill (ring holes)
    texture: Texture
    anchor: tuple[float, float] = (0.0, 0.0)  # world point the pose rotates about
    pose: tuple[float, float, float] | None = None  # (dx, dy, angle): rotate, then shift

    def placed(self) -> list[np.ndarray]:
        """The polygons where this frame's pose puts them."""
        if self.pose is None:
            return self.polygons
        dx, dy, angle = self.pose
        a = np.asarray(self.anchor)
        return [rotate(p - a, angle) + a + (dx, dy) for p in self.polygons]

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
class World:
    """A scene in world coordinates (``[0, 1]`` spans the reference frame's short side)."""

    background: Texture
    objects: list[WorldObject]
    light: tuple[float, float, float]  # strength, direction, centre offset
    noise_sigma: float
    extent: tuple[float, float]


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
) -> Texture:
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
    return Texture(
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
    return rotate(pts, angle)


def rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape(rng: np.random.Generator, kind: str, r: float) -> list[np.ndarray]:
    """Polygons of one object around the origin, radius about ``r`` world units."""
    angle = float(rng.uniform(0, np.pi))
    if kind == "ellipse":
        return [_regular(48, r, r * rng.uniform(0.5, 1.0), angle)]
    if kind == "rectangle":
        w, h = r, r * rng.uniform(0.4, 1.0)
        return [rotate(np.array([[-w, -h], [w, -h], [w, h], [-w, h]]), angle)]
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
        return [rotate(body - [0.4 * r, 0], angle), rotate(stick - [0.4 * r, 0], angle)]
    if kind == "ell":
        a, b = r, r * rng.uniform(0.3, 0.5)
        pts = np.array([[-a, -a], [-a + b, -a], [-a + b, a - b], [a, a - b], [a, a], [-a, a]])
        return [rotate(pts, angle)]
    if kind == "polygon":
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        return [np.stack([r * radii * np.cos(t), r * radii * np.sin(t)], axis=1)]
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")


def sample_world(
    rng: np.random.Generator,
    extent: tuple[float, float],
    num_objects: tuple[int, int],
    radius: tuple[float, float],
) -> World:
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
        objects.append(WorldObject(kind, polygons, texture, (float(centre[0]), float(centre[1]))))
    light = (
        float(rng.uniform(0.0, 0.35)),
        float(rng.uniform(0, 2 * np.pi)),
        float(rng.uniform(-0.5, 0.5)),
    )
    return World(background, objects, light, float(rng.uniform(0.0, 6.0)), (ex, ey))


# ----------------------------------------------------------------------------- colours


def paint_texture(
    texture: Texture, wx: np.ndarray, wy: np.ndarray, out: np.ndarray, where: np.ndarray | None
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
