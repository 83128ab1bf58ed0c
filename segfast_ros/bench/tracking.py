"""What tracking costs: ``segfast bench-tracking``.

Three parts, one table each, one JSON file:

* **Association** (:func:`bench_association`): ``InstanceTracker.update`` of 100 SegEvery
  instances against 100 existing tracks, on frames of 640x480 and 1280x720. The instances are
  ellipses and rotated rectangles of many sizes at random places, each moved by a few pixels
  between the two frames the tracker sees in turn (A, B, A, B...), so every timed update
  matches 100 instances to 100 live tracks. Goal: median < 2 ms. The split (footprints from
  the RLEs, the IoU matrix, the assignment, and the rest of ``update``) is timed on the same
  inputs through the same library functions, so a miss says where the time went.
* **Targets** (:func:`bench_targets`): ``TargetTracker.step`` with N prompted targets on the
  demo model, against N trackers of one target each (what N targets would cost without
  batching), on the same frames. Decoder calls are counted at the backend
  (:class:`CountingBackend`): one per frame for any N is the point of batching.
* **Node** (:mod:`.tracking_node`): publish a frame to a running node holding targets, until its
  ``~/tracks`` message for that frame arrives, against the node's own encoder time.

The machine is shared (see ``docs/benchmarks.md``): the JSON records the CPU and the load
average before the run, so a reader knows whether it was otherwise idle.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..masks import Instance, mask_to_rle, masks_to_boxes
from ..runtime.backend import Backend
from ..runtime.cpu_features import detect_cpu_features
from .report import Column
from .timing import p50_p95, percentile, time_ms

#: The issue's goal for associating 100 instances with 100 tracks.
ASSOCIATION_GOAL_MS = 2.0
#: Frame sizes of the association part, ``(H, W)``.
ASSOCIATION_HWS: tuple[tuple[int, int], ...] = ((480, 640), (720, 1280))
#: A load average (1 min) per core below this, before the run, counts as otherwise idle.
IDLE_LOAD_PER_CORE = 0.2


# ------------------------------------------------------------------------------- the machine


def machine_context() -> dict[str, Any]:
    """The CPU (model, the flags that choose ONNX Runtime's kernels), cores, and whether the
    machine was otherwise idle: its 1-minute load average before the run, per core, below
    :data:`IDLE_LOAD_PER_CORE`."""
    cores = os.cpu_count() or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = detect_cpu_features()
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu.to_dict(),
        "cpu_line": cpu.describe(),
        "cpu_count": cores,
        "load_average_before": None if load is None else [round(x, 2) for x in load],
        "otherwise_idle": None if load is None else load[0] / cores < IDLE_LOAD_PER_CORE,
    }


def machine_line(context: dict[str, Any]) -> str:
    """One line for the report: CPU, cores, load before the run and what it means."""
    load = context["load_average_before"]
    idle = context["otherwise_idle"]
    state = "unknown" if idle is None else ("otherwise idle" if idle else "NOT otherwise idle")
    load_text = "-" if load is None else f"{load[0]:.2f}"
    return (
        f"CPU {context['cpu_line']}, {context['cpu_count']} cores; load average (1 min) before "
        f"the run {load_text}: {state}"
    )


# ------------------------------------------------------------------------------ association


def moving_instances(
    hw: tuple[int, int], n: int = 100, *, shift: float = 4.0, seed: int = 0
) -> tuple[list[Instance], list[Instance]]:
    """``n`` instances on two frames of size ``hw``, the second moved by up to ``shift`` px.

    Ellipses and rotated rectangles, sizes log-uniform from 1.5 % to 12 % of the short side
    (radius, at least 8 px), at random places: what SegEvery returns on a cluttered frame.
    They may overlap one another, as SegEvery's instances may. Each moves by its own offset
    (both axes within ``±shift``) between the frames.
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    short = min(h, w)
    frames: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for _ in range(n):
        centre = rng.uniform(0.05, 0.95, 2) * (w, h)
        radii = np.maximum(np.exp(rng.uniform(np.log(0.015), np.log(0.12), 2)) * short, 8)
        angle = float(rng.uniform(0, 180))
        rectangle = bool(rng.integers(2))
        offset = rng.uniform(-shift, shift, 2)
        for k, frame_masks in enumerate(frames):
            frame_masks.append(_shape_mask(hw, centre + k * offset, radii, angle, rectangle))
    a, b = (_instances(np.stack(masks)) for masks in frames)
    return a, b


def _shape_mask(
    hw: tuple[int, int], centre: np.ndarray, radii: np.ndarray, angle: float, rectangle: bool
) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    if rectangle:
        corners = cv2.boxPoints(((*centre,), (*(2 * radii),), angle))
        cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    else:
        axes = tuple(int(r) for r in np.maximum(radii, 1))
        cv2.ellipse(mask, tuple(int(c) for c in centre), axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def _instances(masks: np.ndarray) -> list[Instance]:
    """SegEvery-like instances (RLE, box, area) of ``(N, H, W)`` bool masks."""
    boxes = masks_to_boxes(masks)
    areas = masks.reshape(len(masks), -1).sum(1)
    return [
        Instance(rle, box, 0.9, 0.95, int(area), np.array([0.5 * (box[0] + box[2]), box[1]]))
        for rle, box, area in zip(mask_to_rle(masks), boxes, areas, strict=True)
    ]


@dataclass(frozen=True)
class AssociationRow:
    """One frame size: ``update`` and its split (medians and 95th percentiles, ms)."""

    image: str
    instances: int
    tracks: int
    matched: int
    kept_id: int
    update_ms: float
    update_p95_ms: float
    footprints_ms: float
    iou_matrix_ms: float
    assignment_ms: float
    rest_ms: float
    goal_met: bool
    runs: int


def bench_association(
    hws: Sequence[tuple[int, int]] = ASSOCIATION_HWS,
    *,
    instances: int = 100,
    runs: int = 200,
    warmup: int = 10,
    shift: float = 4.0,
) -> list[AssociationRow]:
    """Time ``InstanceTracker.update`` and its split at each frame size (see the module
    docstring). ``runs`` timed updates per size, after ``warmup`` untimed ones."""
    return [_association_row(hw, instances, runs, warmup, shift) for hw in hws]


def _association_row(
    hw: tuple[int, int], n: int, runs: int, warmup: int, shift: float
) -> AssociationRow:
    from ..tracking.associate import match
    from ..tracking.instances import InstanceTracker
    from ..tracking.overlap import Footprints, iou_matrix
    from ..tracking.settings import TrackingSettings

    settings = TrackingSettings(min_hits=1)
    frames = moving_instances(hw, n, shift=shift)
    tracker = InstanceTracker(settings)
    tracker.update(frames[0], hw)  # 100 tracks, born at once (min_hits 1)
    # The split, timed in the same rounds as update (same load), on the same two frames, as
    # update runs it: the new frame's footprints; the IoU matrix of the tracks' footprints (a
    # fresh object, as update's are each frame) with them; the assignment.
    times: dict[str, list[float]] = {"update": [], "fp": [], "matrix": [], "assign": []}
    for i in range(warmup + runs):
        new = frames[(i + 1) % 2]
        labels, t_update = time_ms(lambda new=new: tracker.update(new, hw))
        old = Footprints.from_instances(frames[i % 2], hw)
        current, t_fp = time_ms(lambda new=new: Footprints.from_instances(new, hw))
        iou, t_iou = time_ms(lambda c=current, o=old: iou_matrix(o, c))
        matches, t_match = time_ms(lambda iou=iou: match(iou, settings.match_iou))
        if i >= warmup:
            for key, t in zip(times, (t_update, t_fp, t_iou, t_match), strict=True):
                times[key].append(t)
    # The first frame's tracks got IDs 1..n: instances that still carry one kept their ID.
    kept = sum(1 <= label.track_id <= n for label in labels)
    update_ms = times.pop("update")
    med, p95 = p50_p95(update_ms)
    parts = [percentile(times[key], 50) for key in times]
    return AssociationRow(
        image=f"{hw[1]}x{hw[0]}",
        instances=n,
        tracks=len(tracker),
        matched=len(matches.pairs),
        kept_id=kept,
        update_ms=med,
        update_p95_ms=p95,
        footprints_ms=parts[0],
        iou_matrix_ms=parts[1],
        assignment_ms=parts[2],
        rest_ms=med - sum(parts),
        goal_met=med < ASSOCIATION_GOAL_MS,
        runs=runs,
    )


ASSOCIATION_COLUMNS: list[Column] = [
    ("image", "image", "<9"),
    ("inst", "instances", ">5d"),
    ("tracks", "tracks", ">6d"),
    ("matched", "matched", ">7d"),
    ("kept ID", "kept_id", ">7d"),
    ("update ms", "update_ms", ">9.3f"),
    ("p95 ms", "update_p95_ms", ">7.3f"),
    ("footprints", "footprints_ms", ">10.3f"),
    ("IoU matrix", "iou_matrix_ms", ">10.3f"),
    ("assignment", "assignment_ms", ">10.3f"),
    ("rest", "rest_ms", ">7.3f"),
    ("< 2 ms", lambda r: "met" if r.goal_met else "MISSED", ">6"),
]


# ---------------------------------------------------------------------------------- targets


class CountingBackend:
    """A backend that counts its decoder calls and prompt sets, times them, and passes
    everything on.

    Counting here, below the predictor and the tracker, counts what the model actually runs:
    a tracker cannot under-report its own calls. (A backend may still split one call into
    several runs of its graph when the batch is too large for its memory budget; that count is
    the backend's ``decoder_max_sets``, recorded in the JSON.)
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.info = backend.info
        self.decode_calls = 0
        self.prompt_sets = 0
        self.decode_ms = 0.0
        self._lock = threading.Lock()  # trackers may decode from several threads

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self.backend.encode(image)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.decode_calls += 1
            self.prompt_sets += int(point_coords.shape[0])
        out, elapsed = time_ms(
            lambda: self.backend.decode(
                image_embeddings, point_coords, point_labels, mask_input, has_mask_input
            )
        )
        with self._lock:
            self.decode_ms += elapsed
        return out


@dataclass(frozen=True)
class TargetsRow:
    """N targets on the same frames: one batched tracker against N single-target ones."""

    targets: int
    frames: int
    decoded_per_frame: float
    decoder_calls_per_frame: float
    step_ms: float
    step_p95_ms: float
    decoder_ms: float
    separate_calls_per_frame: float
    separate_ms: float
    separate_p95_ms: float
    separate_decoder_ms: float
    speedup: float
    step_ms_per_target: float


#: The settings :func:`lenient_settings` changes (the node part sets them as parameters).
LENIENT_FIELDS = ("max_targets", "lost_score", "lost_stability", "max_area_change")


def lenient_settings(max_targets: int) -> Any:
    """Tracking settings under which a target is declared lost only when the tracker's fixed
    checks say so (empty mask, out of view, jumped): the cost of decoding N targets is
    measured, not the thresholds' verdicts. Room for ``max_targets``."""
    from ..tracking.settings import TrackingSettings

    values = (max_targets, 0.0, 0.0, 100.0)
    return TrackingSettings(**dict(zip(LENIENT_FIELDS, values, strict=True)))


def target_sequence(frames: int, hw: tuple[int, int], seed: int = 0) -> list[Any]:
    """``frames`` generated frames of ``hw`` with 8-12 objects, the camera panning slowly
    (a few pixels per frame over a world 10 % larger than the view, no zoom): a target stays
    in view, so every frame decodes all of them."""
    from .scenes import generate_sequence

    return generate_sequence(seed, frames, hw, canvas=1.1, zoom=(1.0, 1.0), num_objects=(8, 12))


def target_boxes(boxes: np.ndarray, n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` box prompts on the objects of ``boxes`` (``(K, 4)`` XYXY), taken in turn, each
    moved by up to 3 px per edge so that targets on one object differ. Objects clear of the
    frame's edges come first (they do not leave the view as the camera pans)."""
    if len(boxes) == 0:
        raise ValueError("the first frame has no object to put targets on")
    h, w = hw
    margin = 8
    inside = (boxes[:, :2] >= margin).all(1) & (boxes[:, 2:] <= [w - margin, h - margin]).all(1)
    boxes = boxes[inside] if inside.any() else boxes
    rng = np.random.default_rng(seed)
    picked = boxes[np.arange(n) % len(boxes)].astype(np.float32)
    jitter = rng.uniform(-3, 3, (n, 4)).astype(np.float32)
    out = np.clip(picked + jitter, 0, [w, h, w, h])
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 2)
    return out


def bench_targets(
    backend: Backend,
    *,
    counts: Sequence[int] = (1, 4, 16, 64),
    frames: int = 10,
    warmup: int = 1,
    hw: tuple[int, int] = (480, 640),
    seed: int = 0,
) -> list[TargetsRow]:
    """Time ``TargetTracker.step`` for each target count (see the module docstring).

    ``frames`` timed frames (plus ``warmup`` untimed ones) of :func:`target_sequence`; the
    targets are added with box prompts (:func:`target_boxes`) on the frame before.
    """
    counting = CountingBackend(backend)
    sequence = target_sequence(warmup + frames + 1, hw, seed)
    settings = lenient_settings(max(counts))
    return [_targets_row(counting, sequence, n, settings, warmup) for n in counts]


def _targets_row(
    counting: CountingBackend, sequence: Sequence[Any], n: int, settings: Any, warmup: int
) -> TargetsRow:
    from ..runtime.predictor import Predictor
    from ..tracking.targets import TargetTracker

    predictor = Predictor(counting)
    hw = sequence[0].image.shape[:2]
    boxes = target_boxes(sequence[0].boxes, n, hw)
    predictor.set_image(sequence[0].image)
    batched = TargetTracker(settings)
    batched.add(predictor, 0, boxes=boxes)
    separate = [TargetTracker(settings) for _ in range(n)]
    for tracker, box in zip(separate, boxes, strict=True):
        tracker.add(predictor, 0, boxes=box[None])
    kinds = {"batched": [batched], "separate": separate}
    # Per kind and timed frame: (step ms, decoder calls, prompt sets, decoder ms).
    samples: dict[str, list[tuple[float, int, int, float]]] = {k: [] for k in kinds}
    for key, scene in enumerate(sequence[1:], start=1):
        predictor.set_image(scene.image)
        # Alternate which goes first, so that both see the machine's load alike.
        for name in list(kinds) if key % 2 else list(kinds)[::-1]:
            sample = _step_all(counting, predictor, kinds[name], key)
            if key > warmup:
                samples[name].append(sample)
    one, apart = (np.array(samples[k], np.float64) for k in kinds)
    med, p95 = p50_p95(one[:, 0])
    sep_med, sep_p95 = p50_p95(apart[:, 0])
    return TargetsRow(
        targets=n,
        frames=len(one),
        decoded_per_frame=float(one[:, 2].mean()),
        decoder_calls_per_frame=float(one[:, 1].mean()),
        step_ms=med,
        step_p95_ms=p95,
        decoder_ms=percentile(one[:, 3], 50),
        separate_calls_per_frame=float(apart[:, 1].mean()),
        separate_ms=sep_med,
        separate_p95_ms=sep_p95,
        separate_decoder_ms=percentile(apart[:, 3], 50),
        speedup=sep_med / med,
        step_ms_per_target=med / n,
    )


def _step_all(
    counting: CountingBackend, predictor: Any, trackers: Sequence[Any], key: int
) -> tuple[float, int, int, float]:
    """Step every tracker on frame ``key``: ms, decoder calls, prompt sets and decoder ms."""
    calls, sets, ms = counting.decode_calls, counting.prompt_sets, counting.decode_ms
    _, elapsed = time_ms(lambda: [t.step(predictor, key) for t in trackers])
    c = counting
    return elapsed, c.decode_calls - calls, c.prompt_sets - sets, c.decode_ms - ms


TARGETS_COLUMNS: list[Column] = [
    ("N", "targets", ">3d"),
    ("frames", "frames", ">6d"),
    ("decoded", "decoded_per_frame", ">7.1f"),
    ("calls/frame", "decoder_calls_per_frame", ">11.2f"),
    ("step ms", "step_ms", ">8.2f"),
    ("p95 ms", "step_p95_ms", ">7.2f"),
    ("decoder", "decoder_ms", ">8.2f"),
    ("ms/target", "step_ms_per_target", ">9.2f"),
    ("N x 1: calls", "separate_calls_per_frame", ">12.2f"),
    ("N x 1: ms", "separate_ms", ">9.2f"),
    ("p95 ms", "separate_p95_ms", ">7.2f"),
    ("decoder", "separate_decoder_ms", ">8.2f"),
    ("N x 1 / step", "speedup", ">12.2f"),
]


# ------------------------------------------------------------------------------ the command


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (W x H) -> ``(480, 640)`` (H, W), as bench-memory reads frame sizes; both
    at least 32 (the scene generator's least)."""
    from .memory import _size

    h, w = _size(text)
    if min(h, w) < 32:
        raise argparse.ArgumentTypeError(
            f"expected a frame size WxH with both sides >= 32, got {text!r}"
        )
    return h, w


def count_arg(text: str, least: int = 1) -> int:
    """A count on the command line: an integer >= ``least``."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
    return value


def tracking_notes(
    association: Sequence[AssociationRow], targets: Sequence[TargetsRow]
) -> list[str]:
    """One line per goal: met or missed, with the figure."""
    notes = [
        f"association {r.image}: {r.instances} instances vs {r.tracks} tracks, median "
        f"{r.update_ms:.3f} ms; goal < {ASSOCIATION_GOAL_MS:g} ms: "
        f"{'met' if r.goal_met else 'MISSED'}"
        for r in association
    ]
    if targets:
        calls = sorted({r.decoder_calls_per_frame for r in targets})
        one = calls == [1.0]
        top = max(targets, key=lambda r: r.targets)
        notes += [
            f"targets: decoder calls per frame {', '.join(f'{c:g}' for c in calls)} for N = "
            f"{', '.join(str(r.targets) for r in targets)}; one call for any N: "
            f"{'yes' if one else 'NO'}",
            f"targets: N = {top.targets} in one call {top.step_ms:.1f} ms vs {top.targets} "
            f"single-target calls {top.separate_ms:.1f} ms ({top.speedup:.2f}x)",
        ]
    return notes
