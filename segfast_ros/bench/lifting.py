"""What depth lifting costs: ``segfast bench-lifting``.

One frame, four parts, one table, one JSON file:

* **lift**: :func:`~segfast_ros.spatial.lift.lift_masks` of 100 SegEvery-like instances on a
  640x480 aligned depth image, default :class:`~segfast_ros.spatial.lift.LiftSettings`. Goal
  (issue 17): median < 5 ms. Then the same with cv2 held to one thread (the erosion and the
  sorts of large instances use cv2's thread pool), with oriented boxes, and with the points
  kept.
* **cloud**: :func:`~segfast_ros.spatial.cloud.cloud_points` of those points, 0.01 m voxels
  (the node computes it only while ``~/points`` has a subscriber).
* **resample**: :func:`~segfast_ros.spatial.camera.resample_depth` of a half-resolution depth
  image to the colour camera's pixels (depth "aligned to color" at 320x240 under 640x480).

The instances are those of ``bench-tracking``'s association part
(:func:`~.tracking.moving_instances`: ellipses and rotated rectangles of many sizes, overlapping
as SegEvery's may), as the node holds them (:class:`~segfast_ros.pipeline.render.InstanceRecord`
RLE counts and ROI). The depth (:func:`lifting_depth`) is a tilted background plane with each
instance a plane of its own nearer the camera, sensor noise, dropped pixels (0) and holes (NaN).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..masks import rle_to_mask
from ..pipeline.render import InstanceRecord, instance_record
from ..spatial.camera import CameraModel, resample_depth
from ..spatial.cloud import cloud_points
from ..spatial.lift import Lifted, LiftSettings, lift_masks
from .report import Column, format_columns, write_json
from .timing import p50_p95, sample_ms
from .tracking import count_arg, machine_context, machine_line, moving_instances, parse_size

#: The issue's goal for lifting :data:`GOAL_INSTANCES` instances at :data:`GOAL_HW`.
LIFT_GOAL_MS = 5.0
GOAL_INSTANCES = 100
GOAL_HW = (480, 640)
#: The point cloud's voxel (the node's ``depth.cloud_voxel`` default).
CLOUD_VOXEL_M = 0.01


@dataclass(frozen=True)
class LiftingScene:
    """One frame to lift: the instances as the node holds them, depth, the colour camera."""

    records: list[InstanceRecord]
    depth: np.ndarray
    camera: CameraModel

    @property
    def counts(self) -> list[np.ndarray]:
        return [r.rle_counts for r in self.records]

    @property
    def rois(self) -> list[tuple[int, int, int, int]]:
        return [r.roi for r in self.records]


def lifting_scene(hw: tuple[int, int] = (480, 640), n: int = 100, seed: int = 0) -> LiftingScene:
    """``n`` instances on an ``hw`` frame, with its depth and a 525 px-focal camera (at
    640x480; scaled with the width)."""
    h, w = hw
    f = 525.0 * w / 640
    camera = CameraModel(f, f, (w - 1) / 2, (h - 1) / 2, w, h, "camera_color_optical_frame")
    instances, _ = moving_instances(hw, n, seed=seed)
    records = [instance_record(inst, i) for i, inst in enumerate(instances)]
    masks = [rle_to_mask(inst.rle) for inst in instances]
    return LiftingScene(records, lifting_depth(masks, hw, seed), camera)


def lifting_depth(masks: Sequence[np.ndarray], hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(H, W)`` float32 metres: a tilted background at 3-4 m, each instance (painted in
    order, later ones nearer) a plane between 0.5 and 2.8 m with a slight tilt of its own;
    noise 0.3 % of the depth, 3 % of the pixels dropped (0) and 20 holes (NaN)."""
    rng = np.random.default_rng(seed + 1)
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = 3.0 + 1.0 * v / h + 0.3 * u / w
    for k, mask in enumerate(masks):
        near = 2.8 - 2.3 * (k + rng.uniform()) / max(len(masks), 1)
        tilt_u, tilt_v = rng.uniform(-0.002, 0.002, 2)  # metres per pixel
        rows, cols = np.nonzero(mask)
        if rows.size:
            depth[rows, cols] = (
                near + tilt_u * (cols - cols.mean()) + tilt_v * (rows - rows.mean())
            )
    depth *= 1.0 + rng.normal(0.0, 0.003, hw).astype(np.float32)
    depth[rng.random(hw) < 0.03] = 0.0
    centres = rng.integers(0, (w, h), (20, 2))
    radii = np.maximum(rng.uniform(3, 15, 20) * w / 640, 1).astype(int)  # at 640 px wide
    for (cx, cy), r in zip(centres.tolist(), radii.tolist(), strict=True):
        depth[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = np.nan
    return depth.astype(np.float32)


@dataclass(frozen=True)
class LiftingRow:
    """One timed call: medians and 95th percentiles over ``runs`` (ms)."""

    part: str
    detail: str
    median_ms: float
    p95_ms: float
    runs: int
    goal_ms: float | None = None
    goal_met: bool | None = None


LIFTING_COLUMNS: list[Column] = [
    ("part", "part", "<9s"),
    ("detail", "detail", "<58s"),
    ("median ms", "median_ms", ">10.3f"),
    ("p95 ms", "p95_ms", ">8.3f"),
    ("goal", lambda r: None if r.goal_ms is None else f"< {r.goal_ms:g} ms", ">8s"),
    ("met", lambda r: None if r.goal_met is None else ("yes" if r.goal_met else "NO"), ">4s"),
]


def bench_lifting(
    scene: LiftingScene, *, runs: int = 200, warmup: int = 5, voxel_m: float = CLOUD_VOXEL_M
) -> tuple[list[LiftingRow], dict[str, Any]]:
    """Time each part on ``scene``: the rows, and what was lifted (counts for the report)."""
    h, w = scene.camera.hw
    n = len(scene.records)
    counts, rois, depth, cam = scene.counts, scene.rois, scene.depth, scene.camera
    oriented = LiftSettings(oriented_boxes=True)
    goal = LIFT_GOAL_MS if (n, (h, w)) == (GOAL_INSTANCES, GOAL_HW) else None

    def row(part: str, detail: str, fn: Callable[[], object], goal: float | None = None):
        median, p95 = p50_p95(sample_ms(fn, runs, warmup=warmup))
        met = None if goal is None else median < goal
        return LiftingRow(part, detail, median, p95, runs, goal, met)

    lifted = lift_masks(counts, rois, depth, cam, points=True)
    ids = list(range(1, n + 1))
    xyz, _ = cloud_points(lifted, ids, voxel_m)
    small = cam.scaled_to((h // 2, w // 2))
    half = np.ascontiguousarray(depth[::2, ::2][: small.height, : small.width])
    rows = [
        row("lift", f"{n} instances {w}x{h}, default settings",
            lambda: lift_masks(counts, rois, depth, cam), goal),
        row("lift", "  cv2 on one thread", lambda: _one_cv2_thread(
            lambda: lift_masks(counts, rois, depth, cam))),
        row("lift", "  + oriented boxes (PCA)",
            lambda: lift_masks(counts, rois, depth, cam, oriented)),
        row("lift", "  + points kept (for the cloud)",
            lambda: lift_masks(counts, rois, depth, cam, points=True)),
        row("cloud", f"cloud_points, {voxel_m:g} m voxels, from the kept points",
            lambda: cloud_points(lifted, ids, voxel_m)),
        row("resample", f"depth {small.width}x{small.height} -> {w}x{h} (nearest)",
            lambda: resample_depth(half, small, cam)),
    ]  # fmt: skip
    summary = _summary(scene, lifted, len(xyz))
    return rows, summary


def _one_cv2_thread(fn: Callable[[], object]) -> object:
    """``fn()`` with cv2's thread pool held to one thread (then as it was)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return fn()
    finally:
        cv2.setNumThreads(threads)


def _summary(scene: LiftingScene, lifted: Sequence[Lifted], cloud_size: int) -> dict[str, Any]:
    areas = [r.area for r in scene.records]
    return {
        "image_hw": list(scene.camera.hw),
        "instances": len(scene.records),
        "mask_pixels": int(sum(areas)),
        "instance_area_px": {
            "min": int(min(areas, default=0)),
            "median": float(np.median(areas)) if areas else 0.0,
            "max": int(max(areas, default=0)),
        },
        "valid_instances": sum(one.valid for one in lifted),
        "lifted_points": int(sum(one.num_points for one in lifted)),
        "cloud_points": int(cloud_size),
        "valid_depth_fraction": float(np.mean(np.isfinite(scene.depth) & (scene.depth > 0))),
    }


def lifting_notes(rows: Sequence[LiftingRow], summary: dict[str, Any]) -> list[str]:
    """The goal, met or missed (or why it does not apply), and what the frame held."""
    goal_rows = [r for r in rows if r.goal_ms is not None]
    notes = [
        f"lift: {r.detail}: median {r.median_ms:.3f} ms; goal < {r.goal_ms:g} ms: "
        f"{'met' if r.goal_met else 'MISSED'}"
        for r in goal_rows
    ] or [
        f"lift: the goal (< {LIFT_GOAL_MS:g} ms) is for {GOAL_INSTANCES} instances at "
        f"{GOAL_HW[1]}x{GOAL_HW[0]}; this run had {summary['instances']} at "
        f"{summary['image_hw'][1]}x{summary['image_hw'][0]}"
    ]
    notes.append(
        f"frame: {summary['instances']} instances, {summary['mask_pixels']} mask pixels, "
        f"{summary['lifted_points']} points lifted ({summary['valid_instances']} valid), "
        f"{summary['cloud_points']} in the cloud"
    )
    return notes


# ------------------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segfast bench-lifting`` options."""
    parser.add_argument("--size", type=parse_size, default="640x480", help="frame WxH")
    parser.add_argument("--instances", type=count_arg, default=100, help="instances on it")
    parser.add_argument("--runs", type=count_arg, default=200, help="timed calls per part")
    parser.add_argument("--voxel", type=float, default=CLOUD_VOXEL_M, help="cloud voxel, m")
    parser.add_argument("--seed", type=int, default=0, help="the generated frame")
    parser.add_argument("--json", help="write the table as JSON (docs/results/depth/bench.json)")


def run_cli(args: argparse.Namespace) -> int:
    """``segfast bench-lifting``: time, print the table and notes, write JSON."""
    context = machine_context()  # first: the load of the others, not this run's
    context["cv2_threads"] = cv2.getNumThreads()
    scene = lifting_scene(args.size, args.instances, seed=args.seed)
    print(machine_line(context))
    rows, summary = bench_lifting(scene, runs=args.runs, voxel_m=args.voxel)
    print(f"\nDepth lifting: medians of {args.runs} (ms)")
    print(format_columns(rows, LIFTING_COLUMNS))
    notes = lifting_notes(rows, summary)
    for note in notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, {"context": context, "scene": summary, "rows": rows, "notes": notes})
        print(f"wrote {args.json}")
    return 0
