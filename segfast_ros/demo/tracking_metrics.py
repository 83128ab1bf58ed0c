"""The measures of the tracking evaluation, on plain arrays (no model): ID persistence, the MOT
metrics through ``motmetrics``, and a prompted target's quality, wrong-object frames and lost
latency; then the report (:func:`tracking_report`: every measure, per sequence and overall,
against :data:`GOALS`) and its table (:func:`format_tracking`). :mod:`.tracking_eval` runs the
trackers and feeds them :class:`SequenceRun` records; the tests check the measures on hand-made
cases.

Definitions (the issue's goals are judged on them):

* **ID kept** (SegEvery): a ground-truth object counts once for every two consecutive frames
  on which it is matched (Hungarian on mask IoU, >= :data:`MATCH_IOU`) to an instance with a
  confirmed track ID; it is *kept* when both frames give the same ID.
* **IDF1, MOTA, ID switches**: ``motmetrics`` over all frames, distance ``1 - IoU``, pairs
  farther than ``1 - MATCH_IOU`` never match; hypotheses are the instances with a track ID.
* **Target quality**: a target's mean IoU with its object over the frames after the add on
  which the object is in the ground truth (a lost frame counts 0), against the same mean of an
  oracle that prompts the true box on every such frame. The ratio is the mean over targets of
  the target's mean IoU over the mean over targets of the oracle's.
* **Wrong object**: a frame on which the target is reported tracked while its mask overlaps
  another ground-truth object better than its own object (IoU with that other object above
  both its IoU with its own object, 0 when its object is hidden or gone, and
  :data:`WRONG_IOU`). The rate is over all target-frames after the add.
* **Lost latency**: when a target's object leaves the view on frame ``f`` (see
  :meth:`~segfast_ros.bench.scene_motion.TrackingSequence.exits`), the frames from ``f`` to the
  first frame it is reported lost (0: lost on ``f`` or before). An exit with no lost report
  before the sequence ends counts as a miss when more than :data:`LOST_WITHIN` frames were
  left, and is not judged otherwise.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bench.report import format_columns

#: Least mask IoU of a prediction matched to a ground-truth object.
MATCH_IOU = 0.5
#: Least IoU with another object for a tracked frame to count as on the wrong object.
WRONG_IOU = 0.3
#: Frames within which a target whose object left must be reported lost (the issue's 3).
LOST_WITHIN = 3


def match_truth(iou: np.ndarray, min_iou: float = MATCH_IOU) -> dict[int, int]:
    """Ground-truth index -> prediction index, one-to-one, maximising the summed IoU.

    Args:
        iou: ``(N_truth, N_pred)`` mask IoU.
        min_iou: pairs below this do not match.
    """
    from ..tracking.associate import match  # scipy: not at `segfast --help` time

    pairs = match(np.asarray(iou, dtype=np.float64), min_iou).pairs
    return {int(g): int(p) for g, p in pairs}


def ids_kept(assignments: Sequence[Mapping[int, int]]) -> tuple[int, int]:
    """``(kept, pairs)``: of the ground-truth objects matched to a track on two consecutive
    frames, how many keep the same track ID.

    Args:
        assignments: per frame, ground-truth object ID -> the track ID it is matched to (only
            objects matched to a confirmed track).
    """
    kept = pairs = 0
    for prev, cur in itertools.pairwise(assignments):
        for obj, track in cur.items():
            if obj in prev:
                pairs += 1
                kept += int(prev[obj] == track)
    return kept, pairs


@dataclass
class MotFrame:
    """One frame for ``motmetrics``: ground-truth IDs, hypothesis (track) IDs and their IoU."""

    truth: np.ndarray  # (N,) object IDs
    tracks: np.ndarray  # (M,) track IDs
    iou: np.ndarray  # (N, M)


#: The ``motmetrics`` measures reported, and the report's names for them.
MOT_METRICS = {
    "idf1": "idf1",
    "mota": "mota",
    "num_switches": "id_switches",
    "num_false_positives": "false_positives",
    "num_misses": "misses",
    "num_objects": "objects",
    "num_fragmentations": "fragmentations",
}


def mot_metrics(sequences: Sequence[Sequence[MotFrame]]) -> dict[str, float]:
    """IDF1, MOTA, ID switches (and the counts they come from) over all ``sequences``."""
    import motmetrics as mm

    accumulators = []
    for frames in sequences:
        acc = mm.MOTAccumulator(auto_id=True)
        for f in frames:
            dist = 1.0 - np.asarray(f.iou, dtype=np.float64).reshape(len(f.truth), len(f.tracks))
            dist[dist > 1.0 - MATCH_IOU] = np.nan  # farther than this: never a match
            acc.update(list(map(int, f.truth)), list(map(int, f.tracks)), dist)
        accumulators.append(acc)
    summary = mm.metrics.create().compute_many(
        accumulators, metrics=list(MOT_METRICS), generate_overall=True
    )
    row = summary.loc["OVERALL"]
    return {name: float(row[key]) for key, name in MOT_METRICS.items()}


@dataclass
class TargetTrace:
    """One prompted target over the frames after its add.

    Attributes:
        object_id: the ground-truth object it was added on.
        tracked: ``(T,)`` bool, reported tracked (else lost).
        own_iou: ``(T,)`` IoU of its mask with its object's visible mask; NaN where the object
            is not in the ground truth (hidden or gone); 0 on lost frames.
        other_iou: ``(T,)`` the best IoU of its mask with another ground-truth object (0 lost).
        oracle_iou: ``(T,)`` IoU of the oracle's mask (true box prompt); NaN where the object
            is not in the ground truth.
        exits: frames (indices into the trace) on which its object leaves the view.
    """

    object_id: int
    tracked: np.ndarray
    own_iou: np.ndarray
    other_iou: np.ndarray
    oracle_iou: np.ndarray
    exits: list[int] = field(default_factory=list)


def target_miou(trace: TargetTrace) -> tuple[float, float, int]:
    """``(tracker, oracle, frames)``: mean IoU over the frames its object is in the ground
    truth (lost frames count 0); NaN means when there is no such frame."""
    seen = ~np.isnan(trace.own_iou)
    if not seen.any():
        return float("nan"), float("nan"), 0
    own = np.where(trace.tracked[seen], trace.own_iou[seen], 0.0)
    return float(own.mean()), float(trace.oracle_iou[seen].mean()), int(seen.sum())


def wrong_frames(trace: TargetTrace, min_iou: float = WRONG_IOU) -> np.ndarray:
    """``(T,)`` bool: tracked, and overlapping another object better than its own and above
    ``min_iou``."""
    own = np.nan_to_num(trace.own_iou, nan=0.0)
    return trace.tracked & (trace.other_iou > np.maximum(own, min_iou))


def lost_latency(tracked: np.ndarray, exit_frame: int) -> int | None:
    """Frames from ``exit_frame`` to the first lost report at or after it (0 when already lost
    on it); None when the target is tracked to the end."""
    lost = np.flatnonzero(~np.asarray(tracked, dtype=bool)[exit_frame:])
    return int(lost[0]) if len(lost) else None


def target_summary(traces: Sequence[TargetTrace]) -> dict[str, Any]:
    """The prompted targets' measures over all ``traces`` (see the module docstring)."""
    quality = [target_miou(t) for t in traces]
    judged = [(own, oracle) for own, oracle, n in quality if n]
    own_mean = float(np.mean([q[0] for q in judged])) if judged else float("nan")
    oracle_mean = float(np.mean([q[1] for q in judged])) if judged else float("nan")
    per_target = [own / oracle for own, oracle in judged if oracle > 0]
    wrong = [wrong_frames(t) for t in traces]
    frames = sum(len(t.tracked) for t in traces)
    tracked = sum(int(t.tracked.sum()) for t in traces)
    wrong_count = sum(int(w.sum()) for w in wrong)
    latencies, misses, unjudged = [], 0, 0
    for t in traces:
        for f in t.exits:
            latency = lost_latency(t.tracked, f)
            if latency is not None:
                latencies.append(latency)
            elif len(t.tracked) - f > LOST_WITHIN:
                misses += 1
            else:
                unjudged += 1
    exits = len(latencies) + misses
    within = sum(lat <= LOST_WITHIN for lat in latencies)
    return {
        "targets": len(traces),
        "target_frames": frames,
        "visible_frames": int(sum(q[2] for q in quality)),
        "miou": own_mean,
        "oracle_miou": oracle_mean,
        "ratio": own_mean / oracle_mean if oracle_mean > 0 else float("nan"),
        "targets_at_ratio_0_9": float(np.mean([r >= 0.9 for r in per_target]))
        if per_target
        else float("nan"),
        "worst_target_ratio": float(min(per_target)) if per_target else float("nan"),
        "tracked_frames": tracked,
        "wrong_frames": wrong_count,
        "wrong_object_rate": wrong_count / frames if frames else float("nan"),
        "wrong_rate_of_tracked": wrong_count / tracked if tracked else float("nan"),
        "targets_ever_wrong": sum(int(w.any()) for w in wrong),
        "exits": exits,
        "exits_unjudged": unjudged,
        "lost_within_3": within / exits if exits else float("nan"),
        "lost_never": misses,
        "lost_latency_max": max(latencies) if latencies else None,
        "lost_latency_mean": float(np.mean(latencies)) if latencies else None,
    }


#: The issue's goals: (measure, goal, higher is better).
GOALS: tuple[tuple[str, float, bool], ...] = (
    ("id_kept", 0.98, True),
    ("target_ratio", 0.9, True),
    ("wrong_object_rate", 0.02, False),
    ("lost_within_3", 1.0, True),
)


@dataclass
class SequenceRun:
    """What one sequence gives the measures."""

    seed: int
    assignments: list[dict[int, int]] = field(default_factory=list)
    mot: list[MotFrame] = field(default_factory=list)
    traces: list[TargetTrace] = field(default_factory=list)
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    target_decoder_calls: int = 0
    steps: int = 0
    refused: int = 0  # objects whose box segmented nothing on frame 0 (no target)

    def timed(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, its wall time added to :attr:`timings_ms` under ``name``."""
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings_ms.setdefault(name, []).append(1e3 * (time.perf_counter() - start))
        return out


def _identity(runs: Sequence[SequenceRun]) -> dict[str, Any]:
    kept = [ids_kept(r.assignments) for r in runs]
    pairs = sum(p for _, p in kept)
    return {
        "pairs": pairs,
        "kept": sum(k for k, _ in kept),
        "id_kept": sum(k for k, _ in kept) / pairs if pairs else float("nan"),
        **mot_metrics([r.mot for r in runs]),
    }


def tracking_report(runs: Sequence[SequenceRun], context: dict[str, Any]) -> dict[str, Any]:
    """The measures of all ``runs``, per sequence and overall, with the goals' verdicts.

    A measure with nothing to measure (no exits, say) is None, and so is its goal's verdict.
    """
    identity = _identity(runs)
    targets = target_summary([t for r in runs for t in r.traces])
    steps = sum(r.steps for r in runs)
    targets["decoder_calls_per_frame"] = sum(r.target_decoder_calls for r in runs) / max(steps, 1)
    targets["refused"] = sum(r.refused for r in runs)
    per_sequence = []
    for r in runs:
        one, tg = _identity([r]), target_summary(r.traces)
        per_sequence.append(
            {"seed": r.seed, **{k: one[k] for k in ("id_kept", "idf1", "mota", "id_switches")}}
            | {
                k: tg[k]
                for k in ("targets", "ratio", "wrong_object_rate", "exits", "lost_within_3")
            }
        )
    values = {
        "id_kept": identity["id_kept"],
        "target_ratio": targets["ratio"],
        "wrong_object_rate": targets["wrong_object_rate"],
        "lost_within_3": targets["lost_within_3"],
    }
    goals = {}
    for name, goal, higher in GOALS:
        v = values[name]
        ok = None if np.isnan(v) else bool(v >= goal) if higher else bool(v <= goal)
        goals[name] = {"value": v, "goal": goal, "higher_is_better": higher, "pass": ok}
    timings: dict[str, list[float]] = {}
    for r in runs:
        for name, ms in r.timings_ms.items():
            timings.setdefault(name, []).extend(ms)
    return _no_nan(
        {
            "context": context,
            "segevery_ids": identity,
            "targets": targets,
            "goals": goals,
            "sequences": per_sequence,
            "timings_ms": {k: float(np.median(v)) for k, v in timings.items()},
        }
    )


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN (a measure with nothing to measure) as None: plain JSON."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    return value


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def format_tracking(report: dict[str, Any]) -> str:
    """The goals table, the measures behind them and the per-sequence table."""
    c, ids, tg = report["context"], report["segevery_ids"], report["targets"]
    verdicts = {True: "pass", False: "MISS", None: "n/a"}
    goal_cols = [
        ("measure", lambda r: r[0], "<20s"),
        ("value", lambda r: r[1]["value"], ">8.4f"),
        (
            "goal",
            lambda r: (">= " if r[1]["higher_is_better"] else "<= ") + f"{r[1]['goal']:g}",
            ">8s",
        ),
        ("verdict", lambda r: verdicts[r[1]["pass"]], ">7s"),
    ]
    seq_cols = [
        ("seed", "seed", ">8d"),
        ("id kept", "id_kept", ">8.3f"),
        ("IDF1", "idf1", ">6.3f"),
        ("MOTA", "mota", ">7.3f"),
        ("IDsw", "id_switches", ">5.0f"),
        ("targets", "targets", ">7d"),
        ("ratio", "ratio", ">6.3f"),
        ("wrong", "wrong_object_rate", ">6.3f"),
        ("exits", "exits", ">5d"),
        ("lost<=3", "lost_within_3", ">7.2f"),
    ]
    seq_cols = [(title, lambda r, k=key: r[k], spec) for title, key, spec in seq_cols]
    lines = [
        f"eval-tracking: {c['model']} ({c['model_dir']}, {c['precision']}), {c['sequences']} "
        f"held-out sequences x {c['frames']} frames {c['hw'][0]}x{c['hw'][1]} (seeds "
        f"{c['seed_base']}+), SegEvery {c['segevery']['mode']}, reacquire {c['reacquire']}",
        "",
        format_columns(list(report["goals"].items()), goal_cols),
        "",
        f"SegEvery IDs: {ids['kept']}/{ids['pairs']} consecutive matches kept their ID; IDF1 "
        f"{_f(ids['idf1'])}, MOTA {_f(ids['mota'])}, {_f(ids['id_switches'], '.0f')} ID "
        f"switches, {_f(ids['misses'], '.0f')} misses, {_f(ids['false_positives'], '.0f')} false "
        f"positives of {_f(ids['objects'], '.0f')} object-frames",
        f"targets: {tg['targets']}, mIoU {_f(tg['miou'])} vs oracle {_f(tg['oracle_miou'])} "
        f"({_f(tg['targets_at_ratio_0_9'], '.2f')} of targets at >= 0.9x, worst "
        f"{_f(tg['worst_target_ratio'], '.2f')}x); wrong object on {tg['wrong_frames']} of "
        f"{tg['target_frames']} target-frames ({tg['targets_ever_wrong']} targets); exits "
        f"{tg['exits']}: lost within {LOST_WITHIN} {_f(tg['lost_within_3'], '.2f')}, never "
        f"{tg['lost_never']}, max latency {_f(tg['lost_latency_max'], 'd')}; target decoder "
        f"calls per frame {tg['decoder_calls_per_frame']:.2f}",
        "median ms per frame: "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_ms"].items()),
        "",
        format_columns(report["sequences"], seq_cols),
    ]
    return "\n".join(lines)
