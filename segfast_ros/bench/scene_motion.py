"""Sequences where the objects move: tracking ground truth with occlusion, exits and entries.

:func:`generate_tracking_sequence` draws one world (:func:`~.scene_world.sample_world`), a
smooth camera pan and zoom over it (:func:`~.scenes.camera_path`), and a path for every object;
then it renders each frame with :mod:`.scenes`, so masks stay exact and every instance keeps its
object's identity (:attr:`~.scenes.Scene.ids`, the object's index = its fixed depth order).

Each object gets one role, and the roles make the events a tracker has to survive happen in
every sequence (given enough objects: pairs first, then an exit, then an entry):

* ``cross``: a pair whose straight paths cross at the same moment inside the always-visible
  part of the world, so the one painted later occludes the other (often wholly, for a few
  frames: the hidden one drops out of the ground truth and comes back);
* ``leave``: starts fully inside the view and moves out across the world's edge (never
  visible again, whatever the camera does);
* ``enter``: starts beyond the world's edge and moves fully into the view;
* ``drift``: a slow, slightly curved path from where the object was drawn.

Every object also turns slowly. Objects and their textures move together (the texture is
fixed to the object, the lighting to the world). numpy/cv2 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .scene_world import WorldObject, sample_world
from .scenes import Scene, _check_hw, _fill, _render, _rng, camera_path

#: Roles an object can play (see the module docstring).
ROLES: tuple[str, ...] = ("cross", "leave", "enter", "drift")


@dataclass
class TrackingSequence:
    """Frames of a moving-object sequence and the ground truth a tracker is scored on.

    Attributes:
        frames: one :class:`~.scenes.Scene` per frame; ``frames[t].ids`` are the identities.
        frame_area: ``(T, N)`` int64 pixels of each of the world's ``N`` objects inside frame
            ``t``, occlusion ignored (0 = out of view): tells leaving the view from being hidden.
        roles: the role of each world object (:data:`ROLES`).
        min_area: the least visible pixels of a ground-truth instance.
    """

    frames: list[Scene]
    frame_area: np.ndarray
    roles: tuple[str, ...]
    min_area: int

    def __len__(self) -> int:
        return len(self.frames)

    def exits(self, hold: int = 4) -> list[tuple[int, int]]:
        """``(object id, frame)`` for each time an object leaves the view: it is an instance on
        the frame before, and from ``frame`` on its in-frame area is below :attr:`min_area` for
        ``hold`` frames (or until the sequence ends). Occlusion is not leaving."""
        out = []
        gone = self.frame_area < self.min_area
        for t in range(1, len(self.frames)):
            for i in self.frames[t - 1].ids:
                if gone[t : t + hold, i].all():
                    out.append((int(i), t))
        return out


def generate_tracking_sequence(
    seed: int | np.random.Generator,
    n_frames: int = 60,
    hw: tuple[int, int] = (240, 320),
    *,
    canvas: float = 1.25,
    zoom: tuple[float, float] = (1.0, 1.15),
    num_objects: tuple[int, int] = (2, 4),
    radius: tuple[float, float] = (0.07, 0.16),
    speed: float = 0.012,
    min_area_fraction: float = 0.003,
    min_visible_fraction: float = 0.25,
) -> TrackingSequence:
    """A sequence where a camera pans and zooms while the objects move, cross and leave.

    Args:
        seed: int seed or generator; the same int always gives the same sequence.
        n_frames: frames (>= 2).
        hw: ``(H, W)`` of each frame (both >= 32).
        canvas: world size relative to the frame at zoom 1; with ``zoom`` it must leave a part
            of the world that every frame sees (``1 <= canvas < 2 / zoom[1]``).
        zoom: range of the camera's zoom factor (>= 1).
        num_objects: inclusive range of objects per frame-sized area of the world.
        radius: range of object radii, as a fraction of the frame's short side.
        speed: top speed of drifting and crossing objects, world units (frame short sides) per
            frame; leaving and entering objects move as fast as their exit or entry needs.
        min_area_fraction, min_visible_fraction: as :func:`~.scenes.generate_scene`.

    Returns:
        A :class:`TrackingSequence`.

    Raises:
        ValueError: a value out of its range (the message names it).
    """
    h, w = _check_hw(hw)
    if n_frames < 2 or not 1.0 <= zoom[0] <= zoom[1] or not 1.0 <= canvas < 2.0 / zoom[1]:
        raise ValueError(
            "expected n_frames >= 2, 1 <= zoom[0] <= zoom[1] and 1 <= canvas < 2 / zoom[1] (a "
            f"part of the world every frame sees), got n_frames={n_frames}, zoom={zoom}, "
            f"canvas={canvas}"
        )
    if speed < 0 or not 0 < radius[0] <= radius[1]:
        raise ValueError(
            f"expected speed >= 0 and 0 < radius[0] <= radius[1], got {speed=}, {radius=}"
        )
    rng = _rng(seed)
    short = min(h, w)
    extent = (canvas * w / short, canvas * h / short)
    world = sample_world(rng, extent, num_objects, radius)
    cameras = camera_path(rng, extent, (h, w), zoom, n_frames)
    # The part of the world inside every frame: the frame at the top zoom, pushed to a corner.
    view = np.array([w, h]) / (short * zoom[1])
    core = (np.asarray(extent) - view, view)
    roles = _roles(rng, len(world.objects))
    paths = [
        _path(rng, role, obj, core, extent, n_frames, speed)
        for role, obj in zip(roles, world.objects, strict=True)
    ]
    _pair_crossings(rng, roles, world.objects, paths, core, n_frames, speed)
    min_area = max(1, round(min_area_fraction * h * w))
    frames, areas = [], []
    for t, camera in enumerate(cameras):
        objects = [replace(o, pose=p[t]) for o, p in zip(world.objects, paths, strict=True)]
        moved = replace(world, objects=objects)
        frames.append(_render(moved, camera, (h, w), rng, min_area, min_visible_fraction))
        areas.append([int(_fill(o.placed(), camera, (h, w)).sum()) for o in objects])
    frame_area = np.array(areas, dtype=np.int64).reshape(n_frames, len(world.objects))
    return TrackingSequence(frames, frame_area, tuple(roles), min_area)


def _roles(rng: np.random.Generator, n: int) -> list[str]:
    """A role per object, in random object order: crossing pairs (a quarter of the objects, at
    least one pair), one leaving, one entering, the rest drifting."""
    order = rng.permutation(n)
    pairs = max(1, n // 4) if n >= 2 else 0
    wanted = ["cross"] * (2 * pairs) + ["leave", "enter"]
    roles = ["drift"] * n
    for k, i in enumerate(order[: len(wanted)]):
        roles[int(i)] = wanted[k]
    return roles


#: One object's path: a pose ``(dx, dy, angle)`` per frame (see ``WorldObject.pose``).
Poses = list[tuple[float, float, float]]


def _reach(obj: WorldObject) -> float:
    """Distance from the object's anchor to its farthest vertex, world units."""
    return float(max(np.linalg.norm(p - obj.anchor, axis=1).max() for p in obj.polygons))


def _poses(
    start: np.ndarray, velocity: np.ndarray, bend: float, spin: float, anchor, n_frames: int
) -> Poses:
    """Poses of a path from ``start`` at ``velocity`` per frame, bowed sideways by ``bend``
    (world units at mid-sequence), turning ``spin`` radians over the sequence."""
    t = np.arange(n_frames, dtype=np.float64)
    u = t / (n_frames - 1)
    speed = float(np.linalg.norm(velocity))
    side = np.array([-velocity[1], velocity[0]]) / speed if speed > 0 else np.zeros(2)
    xy = start + t[:, None] * velocity + bend * np.sin(np.pi * u)[:, None] * side
    offset = xy - np.asarray(anchor)
    return [(float(dx), float(dy), float(spin * a)) for (dx, dy), a in zip(offset, u, strict=True)]


def _path(
    rng: np.random.Generator,
    role: str,
    obj: WorldObject,
    core: tuple[np.ndarray, np.ndarray],
    extent: tuple[float, float],
    n_frames: int,
    speed: float,
) -> Poses:
    """The path of one object (crossing pairs get theirs from :func:`_pair_crossings`)."""
    spin = float(rng.uniform(-0.6, 0.6))
    anchor = np.asarray(obj.anchor)
    if role == "leave":  # wholly in view on frame 0, beyond the world's edge at frame `span`
        inside, outside = _edge_points(rng, _reach(obj), core, extent)
        span = float(rng.uniform(0.4, 0.75)) * (n_frames - 1)
        return _poses(inside, (outside - inside) / span, 0.0, spin, anchor, n_frames)
    if role == "enter":  # beyond the world's edge on frame 0, wholly in view at frame `span`
        inside, outside = _edge_points(rng, _reach(obj), core, extent)
        span = float(rng.uniform(0.25, 0.5)) * (n_frames - 1)
        return _poses(outside, (inside - outside) / span, 0.0, spin, anchor, n_frames)
    angle = float(rng.uniform(0, 2 * np.pi))
    velocity = float(rng.uniform(0.1, 0.5)) * speed * np.array([np.cos(angle), np.sin(angle)])
    return _poses(anchor, velocity, float(rng.uniform(-0.08, 0.08)), spin, anchor, n_frames)


def _edge_points(
    rng: np.random.Generator,
    reach: float,
    core: tuple[np.ndarray, np.ndarray],
    extent: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """A point where an object of ``reach`` is wholly inside the always-visible core, next to
    one of its edges, and a point beyond the world's edge on that side where it is wholly
    outside the world."""
    lo, hi = core
    axis = int(rng.integers(2))
    high = bool(rng.integers(2))
    along = 1 - axis
    inside = np.empty(2)
    margin = min(reach, 0.5 * (hi[along] - lo[along]))
    inside[along] = rng.uniform(lo[along] + margin, hi[along] - margin)
    edge_in = min(reach, 0.5 * (hi[axis] - lo[axis]))
    inside[axis] = hi[axis] - edge_in if high else lo[axis] + edge_in
    outside = inside.copy()
    outside[along] += rng.uniform(-0.15, 0.15)
    outside[axis] = extent[axis] + reach * 1.1 if high else -reach * 1.1
    return inside, outside


def _pair_crossings(
    rng: np.random.Generator,
    roles: Sequence[str],
    objects: Sequence[WorldObject],
    paths: list[Poses],
    core: tuple[np.ndarray, np.ndarray],
    n_frames: int,
    speed: float,
) -> None:
    """Replace the paths of the ``cross`` objects, two by two, with straight paths that pass
    through one point of the core at the same frame, at least 60 degrees apart."""
    crossers = [i for i, r in enumerate(roles) if r == "cross"]
    lo, hi = core
    for a, b in zip(crossers[0::2], crossers[1::2], strict=False):
        point = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
        when = float(rng.uniform(0.35, 0.65)) * (n_frames - 1)
        heading = float(rng.uniform(0, 2 * np.pi))
        turn = float(rng.uniform(np.pi / 3, 2 * np.pi / 3)) * float(rng.choice([-1, 1]))
        for i, angle in ((a, heading), (b, heading + turn)):
            velocity = (
                float(rng.uniform(0.5, 1.0)) * speed * np.array([np.cos(angle), np.sin(angle)])
            )
            spin = float(rng.uniform(-0.6, 0.6))
            start = point - velocity * when
            paths[i] = _poses(start, velocity, 0.0, spin, objects[i].anchor, n_frames)
