"""``segfast eval-tracking``: the trackers with the shipped demo model on held-out moving-object
sequences, against the issue's goals.

Sequences come from :func:`~segfast_ros.bench.scene_motion.generate_tracking_sequence` with the
integer seeds ``TRACKING_SEED_BASE + i`` (:data:`TRACKING_SEED_BASE` = 3,000,000): training
draws from a SeedSequence stream, the demo model's evaluation from 1,000,000 and its SegEvery
tuning from 2,000,000 (:mod:`.metrics`), so none of them has seen these.

Every frame runs what the node runs, through the library: the encoder once
(``Predictor.set_image``), the prompted targets' step (:class:`~segfast_ros.tracking.targets.
TargetTracker`, one batched decoder call), the demo's SegEvery (the strategy ``segfast demo``
uses, object_aware with the model's detector and ``DEMO_SEGEVERY_PARAMS``), its track IDs
(:class:`~segfast_ros.tracking.instances.InstanceTracker`) and the lost targets' re-acquisition
from its instances. On frame 0, every ground-truth object of at least
:data:`MIN_TARGET_FRACTION` of the frame is added as a target from its true box, all in one
``add`` call. The oracle prompts the true box of each target's object on every frame (one
batched decode, single-mask output, as a box prompt is decoded). The measures and their exact
definitions are in :mod:`.tracking_metrics`.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bench.report import write_json
from .metrics import DEFAULT_MODEL_DIR, add_eval_arguments, iou_matrix, settings_values
from .tracking_metrics import (
    MotFrame,
    SequenceRun,
    TargetTrace,
    format_tracking,
    match_truth,
    tracking_report,
)

if TYPE_CHECKING:
    from ..bench.scene_motion import TrackingSequence
    from ..bench.scenes import Scene
    from ..masks import Instance
    from ..runtime.predictor import Predictor
    from ..segevery.base import SegEvery
    from ..tracking.instances import TrackLabel
    from ..tracking.settings import TrackingSettings
    from ..tracking.targets import TargetResult, TargetTracker

#: First seed of the held-out tracking sequences.
TRACKING_SEED_BASE = 3_000_000
#: Objects on frame 0 at least this fraction of the frame become prompted targets.
MIN_TARGET_FRACTION = 0.01
#: Frame interval of the sequences' stamps (10 Hz), nanoseconds.
FRAME_NS = 100_000_000


def run_sequence(
    predictor: Predictor,
    segevery: SegEvery,
    seq: TrackingSequence,
    settings: TrackingSettings,
    *,
    seed: int = 0,
    reacquire: bool = True,
) -> SequenceRun:
    """Track one sequence: SegEvery IDs on every frame, targets added on frame 0 and followed
    on every later frame, the oracle beside them."""
    from ..tracking.instances import InstanceTracker
    from ..tracking.targets import TargetTracker

    instances, targets = InstanceTracker(settings), TargetTracker(settings)
    run = SequenceRun(seed)
    objects: dict[int, int] = {}  # target ID -> ground-truth object ID
    rows: dict[int, list[tuple[bool, float, float, float]]] = {}
    calls = 0
    for t, frame in enumerate(seq.frames):
        key = (t + 1) * FRAME_NS
        run.timed("encoder", predictor.set_image, frame.image)
        if t == 0:
            objects = _add_targets(targets, predictor, frame, key, run)
            rows = {i: [] for i in objects}
            calls = targets.decoder_calls
        else:
            results = run.timed("targets", targets.step, predictor, key, frame.image)
            oracle = run.timed("oracle", _oracle_masks, predictor, frame, list(objects.values()))
            for result in results:
                rows[result.target_id].append(
                    _target_row(result, objects[result.target_id], frame, oracle)
                )
        found = run.timed("segevery", segevery, predictor, frame.image).instances
        labels = run.timed("instances", instances.update, found, frame.image.shape[:2])
        assignment, mot = _identity_frame(found, labels, frame)
        run.assignments.append(assignment)
        run.mot.append(mot)
        if reacquire and t > 0:
            run.timed("reacquire", targets.reacquire, found, key, frame.image)
    run.target_decoder_calls, run.steps = targets.decoder_calls - calls, len(seq) - 1
    run.traces = _traces(objects, rows, seq)
    return run


def _add_targets(
    targets: TargetTracker, predictor: Predictor, frame: Scene, key: int, run: SequenceRun
) -> dict[int, int]:
    """Add every object of at least :data:`MIN_TARGET_FRACTION` of the frame, in one call;
    target ID -> object ID. Should a box segment nothing (the call adds nothing then), the
    others are added one by one and the refused ones counted in ``run.refused``."""
    from ..tracking.targets import TargetError

    h, w = frame.image.shape[:2]
    big = frame.masks.sum(axis=(1, 2)) >= MIN_TARGET_FRACTION * h * w
    boxes, ids = frame.boxes[big], frame.ids[big].tolist()
    if not len(boxes):
        return {}
    try:
        added = targets.add(predictor, key, boxes=boxes, image=frame.image)
        return {r.target_id: i for r, i in zip(added, ids, strict=True)}
    except TargetError:
        pass
    out = {}
    for box, i in zip(boxes, ids, strict=True):
        try:
            out[targets.add(predictor, key, boxes=box[None], image=frame.image)[0].target_id] = i
        except TargetError:
            run.refused += 1
    return out


def _oracle_masks(
    predictor: Predictor, frame: Scene, wanted: Sequence[int]
) -> dict[int, np.ndarray]:
    """Object ID -> the mask its true box decodes to, for the ``wanted`` objects in the frame."""
    from ..segany import decode_prompt_sets, prompt_kwargs

    present = [i for i, obj in enumerate(frame.ids) if int(obj) in set(wanted)]
    if not present:
        return {}
    kwargs = prompt_kwargs((), (), frame.boxes[present], low_res_size=predictor.info.low_res_size)
    answers = decode_prompt_sets(predictor, kwargs)
    return {int(frame.ids[i]): a.masks[0] for i, a in zip(present, answers, strict=True)}


def _target_row(
    result: TargetResult, obj: int, frame: Scene, oracle: dict[int, np.ndarray]
) -> tuple[bool, float, float, float]:
    """``(tracked, own IoU, best other IoU, oracle IoU)`` of one target on one frame; the IoUs
    with its own object are NaN when the object is not in the ground truth."""
    from ..tracking.states import TRACK_TRACKED

    tracked = result.state == TRACK_TRACKED and result.mask is not None
    own_index = np.flatnonzero(frame.ids == obj)
    if tracked and len(frame):
        ious = iou_matrix(result.mask[None], frame.masks)[0]
    else:
        ious = np.zeros(len(frame))
    other = np.delete(ious, own_index)
    if not len(own_index):
        return tracked, float("nan"), float(other.max(initial=0.0)), float("nan")
    oracle_iou = iou_matrix(oracle[obj][None], frame.masks[own_index])[0, 0]
    return tracked, float(ious[own_index[0]]), float(other.max(initial=0.0)), float(oracle_iou)


def _identity_frame(
    found: Sequence[Instance], labels: Sequence[TrackLabel], frame: Scene
) -> tuple[dict[int, int], MotFrame]:
    """The frame's confirmed tracks matched to the ground truth: object ID -> track ID, and
    the frame for ``motmetrics``."""
    from ..masks import rle_to_mask
    from ..tracking.states import TRACK_TRACKED

    confirmed = [
        (inst, lab.track_id)
        for inst, lab in zip(found, labels, strict=True)
        if lab.state == TRACK_TRACKED and lab.track_id > 0
    ]
    hw = frame.image.shape[:2]
    masks = np.array([rle_to_mask(inst.rle) for inst, _ in confirmed], dtype=bool)
    iou = iou_matrix(frame.masks, masks.reshape(-1, *hw)) if len(frame) else np.zeros((0, 0))
    iou = iou.reshape(len(frame), len(confirmed))
    track_ids = np.array([tid for _, tid in confirmed], dtype=np.int64)
    matched = match_truth(iou)
    assignment = {int(frame.ids[g]): int(track_ids[p]) for g, p in matched.items()}
    return assignment, MotFrame(frame.ids.copy(), track_ids, iou)


def _traces(
    objects: dict[int, int], rows: dict[int, list], seq: TrackingSequence
) -> list[TargetTrace]:
    """Each target's rows as a :class:`TargetTrace` (index 0 = frame 1), with its exits."""
    exits: dict[int, list[int]] = {}
    for obj, f in seq.exits():
        exits.setdefault(obj, []).append(f - 1)
    traces = []
    for target_id, obj in sorted(objects.items()):
        tracked, own, other, oracle = (np.array(c) for c in zip(*rows[target_id], strict=True))
        traces.append(
            TargetTrace(obj, tracked.astype(bool), own, other, oracle, exits.get(obj, []))
        )
    return traces


# ----------------------------------------------------------------------------- the evaluation


def evaluate_tracking(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    sequences: int = 8,
    n_frames: int = 60,
    hw: tuple[int, int] = (240, 320),
    seed_base: int = TRACKING_SEED_BASE,
    precision: str = "int8",
    threads: int = 2,
    settings: TrackingSettings | None = None,
    reacquire: bool = True,
    mode: str = "object_aware",
) -> dict[str, Any]:
    """Run :func:`run_sequence` on ``sequences`` held-out sequences and measure.

    Args:
        model_dir: the demo model's folder (``encoder.<precision>.onnx``, ``decoder.fp32.onnx``,
            ``detector.onnx``); its SegEvery settings (``DEMO_SEGEVERY_PARAMS``) apply.
        sequences: sequences, seeds ``seed_base, seed_base + 1, ...``.
        n_frames: frames per sequence (>= 2).
        hw: ``(H, W)`` of the frames.
        seed_base: first seed (default: the held-out :data:`TRACKING_SEED_BASE`).
        precision: encoder precision (``segfast demo`` and the node default to int8).
        threads: ONNX Runtime intra-op threads.
        settings: the trackers' thresholds (None: the defaults).
        reacquire: re-acquire lost targets from SegEvery instances (as the node does).
        mode: SegEvery strategy.

    Returns:
        A JSON-ready dict: ``context``, ``segevery_ids``, ``targets``, ``goals`` (each measure
        with its goal and verdict), ``sequences`` (per-sequence measures) and ``timings_ms``.

    Raises:
        FileNotFoundError: a model file is missing.
        ValueError: a bad count or size.
    """
    from ..bench.scene_motion import generate_tracking_sequence
    from ..runtime.onnx_backend import OnnxRuntimeBackend
    from ..runtime.predictor import Predictor
    from ..tracking.settings import TrackingSettings
    from .model_choice import ModelChoice, segevery_for

    if sequences < 1:
        raise ValueError(f"sequences must be >= 1, got {sequences}")
    model_dir = Path(model_dir)
    settings = settings or TrackingSettings()
    backend = OnnxRuntimeBackend.from_dir(model_dir, precision, intra_op_threads=threads)
    predictor = Predictor(backend)
    detector = model_dir / "detector.onnx"
    choice = ModelChoice(model_dir, detector if detector.is_file() else None, "", demo=True)
    segevery, segevery_params, _ = segevery_for(choice, mode, choice.detector)
    runs = []
    for i in range(sequences):
        seq = generate_tracking_sequence(seed_base + i, n_frames, hw)
        runs.append(
            run_sequence(
                predictor, segevery, seq, settings, seed=seed_base + i, reacquire=reacquire
            )
        )
    context = {
        "model_dir": str(model_dir),
        "model": backend.info.name,
        "precision": precision,
        "threads": threads,
        "sequences": sequences,
        "frames": n_frames,
        "hw": list(hw),
        "seed_base": seed_base,
        "segevery": {"mode": mode, **{k: str(v) for k, v in segevery_params.items()}},
        "tracking_settings": asdict(settings),
        "reacquire": reacquire,
        "min_target_fraction": MIN_TARGET_FRACTION,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "commit": _commit(),
    }
    return tracking_report(runs, context)


def _commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when the trackers have uncommitted changes (what
    the numbers were measured on); None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "segfast_ros/tracking"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``segfast eval-tracking``'s flags."""
    add_eval_arguments(
        p,
        seed_base=TRACKING_SEED_BASE,
        held_out="training and the demo model's evaluation",
        settings="TrackingSettings",
        example="min_hits=1",
    )
    p.add_argument("--sequences", type=int, default=8, help="held-out sequences (default 8)")
    p.add_argument("--frames", type=int, default=60, help="frames per sequence (default 60)")
    p.add_argument("--hw", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument(
        "--no-reacquire", action="store_true", help="no re-acquisition from SegEvery instances"
    )


def tracking_settings(pairs: Sequence[str]) -> TrackingSettings:
    """TrackingSettings from ``FIELD=VALUE`` strings (``tracking.`` prefix optional).

    Raises:
        ValueError: a malformed pair, an unknown field or a value out of its range.
    """
    from ..tracking.settings import TrackingSettings

    return TrackingSettings.from_dict(settings_values(pairs, "tracking", "min_hits=1"))


def eval_tracking_command(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, write the JSON; exit 0 (missed goals are
    reported, not errors)."""
    report = evaluate_tracking(
        args.model_dir,
        sequences=args.sequences,
        n_frames=args.frames,
        hw=tuple(args.hw),
        seed_base=args.seed_base,
        precision=args.precision,
        threads=args.threads,
        settings=tracking_settings(args.set),
        reacquire=not args.no_reacquire,
    )
    print(format_tracking(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0
