"""``segfast eval-depth``: masks to 3D on held-out generated RGB-D scenes, against the issue's
goal (centroid error <= 2% of the object's distance for objects with >= 50% valid depth).

Scenes come from :func:`~segfast_ros.bench.scene_depth.generate_rgbd_scene` with the integer
seeds ``DEPTH_SEED_BASE + i`` (:data:`DEPTH_SEED_BASE` = 4,000,000): training draws from a
SeedSequence stream, the demo model's evaluation from 1,000,000, its SegEvery tuning from
2,000,000 and the tracking evaluation from 3,000,000, so none of them has seen these. The
ground truth is exact (:class:`~segfast_ros.bench.scene_depth.RGBDScene`): each instance's
centroid is the mean of its visible surface, back-projected with the true depth.

Two sets of masks are lifted with :func:`~segfast_ros.spatial.lift.lift_dense`, the scene's
camera and its *measured* depth (noise, holes, stereo shadows, out of range):

* **ground-truth masks**: the geometry alone;
* **the demo model's masks**: the shipped model in ``models/demo`` running the SegEvery
  strategy ``segfast demo`` runs (object_aware with its detector and ``DEMO_SEGEVERY_PARAMS``),
  each ground-truth instance matched one-to-one to a mask with IoU >= 0.5 (match recall).

Errors are Euclidean, relative to the true centroid's distance from the camera. Objects
whose mask has < 50% valid depth are reported apart. An instance the lift finds no valid
position for counts as missing the goal. Beside the goal the report splits the ground-truth
masks' error into depth (z) and lateral parts, per shape, and estimates the same masks'
centroids two other ways and on the true depth (``diagnosis``), which separate what the
estimator does from what the sensor's data allows.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bench.report import write_json
from ..bench.scene_depth import BASELINE_M, NOISE_PER_M2, RANGE_M, RGBDScene, generate_rgbd_scene
from .metrics import (
    DEFAULT_MODEL_DIR,
    add_eval_arguments,
    iou_matrix,
    result_masks,
    settings_values,
)
from .tracking_metrics import match_truth

if TYPE_CHECKING:
    from ..runtime.predictor import Predictor
    from ..segevery.base import SegEvery
    from ..spatial.lift import Lifted, LiftSettings

#: First seed of the held-out RGB-D scenes.
DEPTH_SEED_BASE = 4_000_000
#: The issue's goal: centroid error over distance, for objects with this much valid depth.
GOAL_REL_ERROR = 0.02
MIN_VALID_FRACTION = 0.5
#: A model mask stands for a ground-truth instance at this IoU or more.
MATCH_IOU = 0.5
#: The ground-truth masks' centroids, one column each: the goal's (``lift``), then diagnosis.
GT_WAYS = ("lift", "same_points_mean", "same_points_median", "exact_depth")
DIAGNOSIS = {
    "same_points_mean": "the mean of the lift's own valid points (eroded mask, measured "
    "depth): the visible surface's mean taken literally, pulled by wrong depths",
    "same_points_median": "the per-axis median of those points (the estimator before): "
    "biased for lopsided shapes, whose median pixel column and row are off their centre",
    "exact_depth": "the lift on the true depth (no noise, holes, shadows or range limits): "
    "the estimator's own error on tilted planes; the rest of the lift's is the sensor's",
}


def _rel_errors(
    lifted: Sequence[Lifted],
    truth: np.ndarray,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` relative error and ``(N,)`` relative depth error of each lift (inf when the lift
    is not valid); ``reduce`` takes the estimate from the lift's ``(n, 3)`` points instead of
    its centroid."""
    dist = np.linalg.norm(truth, axis=1)
    est = np.full(truth.shape, np.inf)
    for k, one in enumerate(lifted):
        if one.valid:
            est[k] = one.centroid if reduce is None else reduce(one.points)
    with np.errstate(invalid="ignore"):
        rel = np.linalg.norm(est - truth, axis=1) / dist
        z_rel = np.abs(est[:, 2] - truth[:, 2]) / dist
    return rel, z_rel


def gt_errors(rgbd: RGBDScene, settings: LiftSettings) -> dict[str, np.ndarray]:
    """Per ground-truth instance: relative error of each of :data:`GT_WAYS`, and the lift's
    relative depth error (``z``)."""
    from ..spatial.lift import lift_dense

    masks, truth, cam = rgbd.scene.masks, rgbd.centroids, rgbd.camera
    lifted = lift_dense(masks, rgbd.depth, cam, settings, points=True)
    exact = lift_dense(masks, rgbd.true_depth, cam, settings)
    out = {}
    out["lift"], out["z"] = _rel_errors(lifted, truth)
    out["same_points_mean"] = _rel_errors(lifted, truth, lambda p: p.mean(axis=0))[0]
    out["same_points_median"] = _rel_errors(lifted, truth, lambda p: np.median(p, axis=0))[0]
    out["exact_depth"] = _rel_errors(exact, truth)[0]
    return out


def model_errors(
    rgbd: RGBDScene, found: np.ndarray, settings: LiftSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ground-truth instance: matched (bool), relative error and relative depth error of
    its matched model mask's lift (inf when unmatched or not valid)."""
    from ..spatial.lift import lift_dense

    n = len(rgbd.scene)
    rel, z_rel = np.full(n, np.inf), np.full(n, np.inf)
    matched = np.zeros(n, dtype=bool)
    if n == 0 or len(found) == 0:
        return matched, rel, z_rel
    pairs = match_truth(iou_matrix(rgbd.scene.masks, found), MATCH_IOU)
    if pairs:
        truth_idx = np.array(list(pairs))
        lifted = lift_dense(found[list(pairs.values())], rgbd.depth, rgbd.camera, settings)
        rel[truth_idx], z_rel[truth_idx] = _rel_errors(lifted, rgbd.centroids[truth_idx])
        matched[truth_idx] = True
    return matched, rel, z_rel


def error_stats(rel: np.ndarray, z_rel: np.ndarray | None = None) -> dict[str, Any]:
    """``objects``, ``lifted`` (a valid position), ``meet`` (fraction of all objects within
    :data:`GOAL_REL_ERROR`; not lifted = missed), and ``median``/``p95``/``max`` of the
    relative error over the lifted ones (and of the depth part, ``z_*``)."""
    rel = np.asarray(rel, dtype=np.float64)
    ok = np.isfinite(rel)
    out: dict[str, Any] = {
        "objects": int(rel.size),
        "lifted": int(ok.sum()),
        "meet": float(np.mean(rel <= GOAL_REL_ERROR)) if rel.size else None,
    }
    for name, values in (("", rel), ("z_", z_rel)):
        if values is None:
            continue
        v = np.asarray(values)[ok]
        out[f"{name}median"] = float(np.median(v)) if v.size else None
        out[f"{name}p95"] = float(np.percentile(v, 95)) if v.size else None
        out[f"{name}max"] = float(v.max()) if v.size else None
    return out


# ----------------------------------------------------------------------------- the evaluation


def _segmenter(model_dir: Path, precision: str, threads: int) -> tuple[Predictor, SegEvery, dict]:
    """The demo model's predictor and the SegEvery strategy ``segfast demo`` runs with it."""
    from ..runtime.onnx_backend import OnnxRuntimeBackend
    from ..runtime.predictor import Predictor
    from .model_choice import ModelChoice, segevery_for

    backend = OnnxRuntimeBackend.from_dir(model_dir, precision, intra_op_threads=threads)
    detector = model_dir / "detector.onnx"
    choice = ModelChoice(model_dir, detector if detector.is_file() else None, "", demo=True)
    segevery, params, _ = segevery_for(choice, "object_aware", choice.detector)
    return Predictor(backend), segevery, {"mode": "object_aware", **params}


def _run(
    seeds: Sequence[int],
    hw: tuple[int, int],
    settings: LiftSettings,
    segmenter: tuple[Predictor, SegEvery] | None,
) -> tuple[dict[str, list], dict[str, float]]:
    """Every scene's per-object columns, concatenated later, and the mean timings."""
    cols: dict[str, list] = {"seed": [], "index": [], "kind": [], "distance": [], "valid": []}
    cols.update({k: [] for k in (*GT_WAYS, "z", "matched", "model", "model_z")})
    clock = {"generate": 0.0, "lift": 0.0, "model": 0.0}
    for seed in seeds:
        t0 = time.perf_counter()
        rgbd = generate_rgbd_scene(seed, hw)
        t1 = time.perf_counter()
        for key, values in gt_errors(rgbd, settings).items():
            cols[key].append(values)
        t2 = time.perf_counter()
        clock["generate"] += t1 - t0
        clock["lift"] += t2 - t1
        n = len(rgbd)
        cols["seed"].append(np.full(n, seed))
        cols["index"].append(np.arange(n))
        cols["kind"].append(np.array(rgbd.scene.kinds, dtype=object))
        cols["distance"].append(np.linalg.norm(rgbd.centroids, axis=1))
        cols["valid"].append(rgbd.depth_valid_fraction)
        if segmenter is not None:
            predictor, segevery = segmenter
            predictor.set_image(rgbd.scene.image)
            found = result_masks(segevery(predictor, rgbd.scene.image))
            matched, rel, z_rel = model_errors(rgbd, found, settings)
            clock["model"] += time.perf_counter() - t2
            cols["matched"].append(matched)
            cols["model"].append(rel)
            cols["model_z"].append(z_rel)
    timings = {k: 1000 * v / max(len(seeds), 1) for k, v in clock.items()}
    return cols, timings


def _report(cols: Mapping[str, np.ndarray], model: bool) -> dict[str, Any]:
    """The goal's verdict and the tables from the per-object columns."""
    good = cols["valid"] >= MIN_VALID_FRACTION
    gt = {
        "measurable": error_stats(cols["lift"][good], cols["z"][good]),
        "low_valid": error_stats(cols["lift"][~good], cols["z"][~good]),
        "by_kind": {
            kind: error_stats(cols["lift"][good & (cols["kind"] == kind)])
            for kind in sorted(set(cols["kind"][good]))
        },
        "diagnosis": {
            way: {"what": DIAGNOSIS[way], **error_stats(cols[way][good])} for way in DIAGNOSIS
        },
        "worst": _worst(cols, good),
    }
    m = gt["measurable"]
    report: dict[str, Any] = {
        "goal": {
            "rel_error": GOAL_REL_ERROR,
            "min_valid_fraction": MIN_VALID_FRACTION,
            "objects": m["objects"],
            "meet": m["meet"],
            "max": m["max"],
            "pass": bool(m["objects"] and m["meet"] == 1.0),
        },
        "gt_masks": gt,
    }
    if model:
        matched = cols["matched"]
        report["model_masks"] = {
            "match_iou": MATCH_IOU,
            "recall": float(matched.mean()) if matched.size else None,
            "recall_measurable": float(matched[good].mean()) if good.any() else None,
            "measurable": error_stats(
                cols["model"][good & matched], cols["model_z"][good & matched]
            ),
            "low_valid": error_stats(
                cols["model"][~good & matched], cols["model_z"][~good & matched]
            ),
        }
    return report


def _worst(cols: Mapping[str, np.ndarray], good: np.ndarray, count: int = 8) -> list[dict]:
    """The measurable ground-truth objects with the largest lift error."""
    order = [i for i in np.argsort(-np.nan_to_num(cols["lift"], posinf=1e9)) if good[i]]
    return [
        {
            "seed": int(cols["seed"][i]),
            "index": int(cols["index"][i]),
            "kind": str(cols["kind"][i]),
            "distance_m": float(cols["distance"][i]),
            "valid_fraction": float(cols["valid"][i]),
            **{way: float(cols[way][i]) for way in (*GT_WAYS, "z")},
        }
        for i in order[:count]
    ]


def evaluate_depth(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    scenes: int = 50,
    hw: tuple[int, int] = (480, 640),
    seed_base: int = DEPTH_SEED_BASE,
    precision: str = "int8",
    threads: int = 2,
    settings: LiftSettings | None = None,
    model: bool = True,
) -> dict[str, Any]:
    """Lift ground-truth and (with ``model``) demo-model masks on ``scenes`` held-out RGB-D
    scenes (seeds ``seed_base ...``) and measure their centroids.

    Returns:
        A JSON-ready dict: ``context``, ``goal`` (the issue's, on ground-truth masks),
        ``gt_masks``, ``model_masks`` (with ``model``) and ``timings_ms`` (per scene).

    Raises:
        FileNotFoundError: a model file is missing.
        ValueError: ``scenes < 1`` or a bad size.
    """
    from ..spatial.lift import LiftSettings

    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    settings = settings or LiftSettings()
    model_dir = Path(model_dir)
    context: dict[str, Any] = {
        "scenes": scenes,
        "hw": list(hw),
        "seed_base": seed_base,
        "lift_settings": asdict(settings),
        "sensor": {
            "range_m": list(RANGE_M),
            "noise_per_m2": NOISE_PER_M2,
            "baseline_m": BASELINE_M,
        },
        "threads": threads,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    segmenter = None
    if model:
        predictor, segevery, params = _segmenter(model_dir, precision, threads)
        segmenter = (predictor, segevery)
        context.update(
            model_dir=str(model_dir),
            model=predictor.info.name,
            precision=precision,
            segevery={k: str(v) for k, v in params.items()},
        )
    start = time.perf_counter()
    seeds = range(seed_base, seed_base + scenes)
    cols, timings = _run(seeds, tuple(hw), settings, segmenter)
    context["instances"] = int(sum(len(c) for c in cols["seed"]))
    context["seconds"] = round(time.perf_counter() - start, 1)
    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    return {"context": context, **_report(flat, model), "timings_ms": timings}


# ----------------------------------------------------------------------------- output


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _stats_line(name: str, s: Mapping[str, Any]) -> str:
    meet = "-" if s["meet"] is None else f"{100 * s['meet']:.1f}%"
    return (
        f"  {name:30s} {s['objects']:7d} {s['lifted']:6d} {meet:>8s} {_pct(s['median']):>8s} "
        f"{_pct(s['p95']):>8s} {_pct(s['max']):>8s}"
    )


def format_depth_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table."""
    c, g, gt = report["context"], report["goal"], report["gt_masks"]
    model = f", {c['model']} {c['precision']} ({c['segevery']['mode']})" if "model" in c else ""
    lines = [
        f"RGB-D depth eval: {c['scenes']} held-out scenes {c['hw'][0]}x{c['hw'][1]} (seeds "
        f"{c['seed_base']}+), {c['instances']} instances{model}; {c['seconds']} s",
        f"  centroid error / distance; 'measurable': >= {100 * MIN_VALID_FRACTION:.0f}% valid "
        "depth in the mask; meet: within the goal (not lifted = missed)",
        f"  {'masks':30s} {'objects':>7s} {'lifted':>6s} {'meet':>8s} {'median':>8s} "
        f"{'p95':>8s} {'max':>8s}",
        _stats_line("ground truth, measurable", gt["measurable"]),
        _stats_line("ground truth, < 50% valid", gt["low_valid"]),
    ]
    if "model_masks" in report:
        m = report["model_masks"]
        lines += [
            _stats_line("demo model, measurable", m["measurable"]),
            _stats_line("demo model, < 50% valid", m["low_valid"]),
            f"  demo model match recall (IoU >= {m['match_iou']}): {_pct(m['recall'])} of all, "
            f"{_pct(m['recall_measurable'])} of the measurable",
        ]
    s = gt["measurable"]
    lines += [
        f"  ground truth, measurable: depth (z) part median {_pct(s['z_median'])}, p95 "
        f"{_pct(s['z_p95'])}, max {_pct(s['z_max'])}",
        "",
        "  by shape (ground truth, measurable):",
        *(_stats_line(kind, k) for kind, k in gt["by_kind"].items()),
        "",
        "  diagnosis (ground truth, measurable), the same masks' centroids otherwise:",
        *(_stats_line(way, d) for way, d in gt["diagnosis"].items()),
        "",
        f"  goal: error <= {100 * g['rel_error']:.0f}% of distance for every measurable object "
        f"(ground-truth masks): {_pct(g['meet'])} meet, max {_pct(g['max'])} -> "
        + ("pass" if g["pass"] else "MISS"),
    ]
    t = report["timings_ms"]
    lines.append(
        f"  per scene: generate {t['generate']:.0f} ms, lift x2 {t['lift']:.0f} ms, "
        f"model + lift {t['model']:.0f} ms"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``segfast eval-depth``'s flags."""
    add_eval_arguments(
        p,
        seed_base=DEPTH_SEED_BASE,
        held_out="training, the demo model's evaluation and tuning, and the tracking evaluation",
        settings="LiftSettings",
        example="erode_px=2",
    )
    p.add_argument("--scenes", type=int, default=50, help="held-out RGB-D scenes (default 50)")
    p.add_argument("--hw", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--gt-only", action="store_true", help="ground-truth masks only, no model")


def lift_settings(pairs: Sequence[str]) -> LiftSettings:
    """LiftSettings from ``FIELD=VALUE`` strings (``depth.`` prefix optional, as the node's
    parameters).

    Raises:
        ValueError: a malformed pair, an unknown field or a value out of its range.
    """
    from ..spatial.lift import LiftSettings

    return LiftSettings.from_dict(settings_values(pairs, "depth", "erode_px=2"))


def eval_depth_command(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, write the JSON; exit 0 (a missed goal is
    reported, not an error)."""
    report = evaluate_depth(
        args.model_dir,
        scenes=args.scenes,
        hw=tuple(args.hw),
        seed_base=args.seed_base,
        precision=args.precision,
        threads=args.threads,
        settings=lift_settings(args.set),
        model=not args.gt_only,
    )
    print(format_depth_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0
