"""Measure the demo model on held-out generated scenes (no torch: ONNX Runtime only).

``python -m segfast_ros.demo.evaluate --model-dir models/demo --json out/demo_eval.json``

Held out: scenes come from :func:`~segfast_ros.bench.scenes.generate_scene` with the integer
seeds ``EVAL_SEED_BASE + i``; training draws from a different seed stream (see
:func:`segfast_ros.demo.training_data.scene_stream`). What is measured, over every ground-truth
instance of every scene:

* **point mIoU**: one foreground point at the instance's interior pixel farthest from its
  edge (distance-transform maximum), multimask output, the mask with the best predicted IoU;
* **box mIoU**: the ground-truth box (XYXY pixel edges), single-mask output;
* **SegEvery recall@0.5** of grid, hierarchical and object_aware (with the shipped detector):
  the fraction of instances that some returned mask overlaps with IoU >= 0.5, plus each
  strategy's decoder prompts and decoder / total time;
* **INT8**: point and box mIoU with ``encoder.int8.onnx`` (same fp32 decoder), their drop from
  fp32, and the encoder latency of both (medians of interleaved runs).

Quality floors (the issue's): point >= 0.80, box >= 0.85, every recall >= 0.85, INT8 drop <=
0.02; hierarchical vs grid goal >= 2x faster decoding at recall within 0.02; object-aware
decoder time >= 16x lower than the grid's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..bench.scenes import Scene, generate_scene
from ..masks import rle_to_mask
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.predictor import Predictor
from ..segevery.base import SegEveryResult
from ..segevery.presets import DEMO_SEGEVERY_PARAMS
from ..segevery.registry import build_segevery

#: First seed of the evaluation scenes.
EVAL_SEED_BASE = 1_000_000
#: First seed of the validation scenes, on which :func:`tune_segevery` picks the SegEvery
#: settings; neither training nor the evaluation sees them.
VALIDATION_SEED_BASE = 2_000_000
#: Default folder of the shipped demo model.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
#: The issue's floors, checked by :func:`floors`.
FLOORS = {
    "point_miou": 0.80,
    "box_miou": 0.85,
    "recall": 0.85,
    "int8_drop": 0.02,
    "hierarchical_speedup": 2.0,
    "hierarchical_recall_gap": 0.02,
    "object_aware_decoder_ratio": 16.0,
}
STRATEGY_NAMES = ("grid", "hierarchical", "object_aware")


def eval_scenes(
    count: int, hw: tuple[int, int] = (256, 256), seed_base: int = EVAL_SEED_BASE
) -> list[Scene]:
    """The first ``count`` non-empty scenes of seeds ``seed_base, seed_base + 1, ...``.

    The default is the held-out evaluation set; :data:`VALIDATION_SEED_BASE` gives the
    validation set.
    """
    scenes = []
    seed = seed_base
    while len(scenes) < count:
        scene = generate_scene(seed, hw)
        seed += 1
        if len(scene):
            scenes.append(scene)
    return scenes


def interior_points(masks: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float64 (X, Y): each mask's pixel farthest from its edge.

    The distance transform runs on the mask padded by one background pixel, so the image
    border counts as an edge.
    """
    points = np.zeros((len(masks), 2), dtype=np.float64)
    for i, mask in enumerate(masks):
        padded = np.pad(mask.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points[i] = (x, y)
    return points


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, H, W)`` and ``(M, H, W)`` bool masks: ``(N, M)`` float64."""
    fa = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float32)
    fb = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def prompt_ious(predictor: Predictor, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance IoU of the point-prompt and box-prompt masks (image already set)."""
    n = len(scene)
    points = interior_points(scene.masks)[:, None]  # (N, 1, 2)
    pred = predictor.predict(points, np.ones((n, 1)), multimask_output=True)
    best = np.argmax(pred.scores, axis=1)
    point_masks = pred.masks[np.arange(n), best]
    boxes = predictor.predict(box=scene.boxes, multimask_output=False).masks[:, 0]
    point_iou = np.diag(iou_matrix(point_masks, scene.masks))
    box_iou = np.diag(iou_matrix(boxes, scene.masks))
    return point_iou, box_iou


def recall_at(found: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(N,)`` bool: ground-truth mask ``i`` is matched by a found mask with IoU >= threshold."""
    if len(found) == 0:
        return np.zeros(len(truth), dtype=bool)
    return iou_matrix(truth, found).max(axis=1) >= threshold


def result_masks(result: SegEveryResult) -> np.ndarray:
    """``(N, H, W)`` bool masks of a SegEvery result's instances."""
    found = np.array([rle_to_mask(inst.rle) for inst in result.instances], dtype=bool)
    return found.reshape(-1, *result.image_hw)


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def evaluate(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    num_scenes: int = 24,
    segevery_scenes: int | None = None,
    hw: tuple[int, int] = (256, 256),
    strategies: Sequence[str] = STRATEGY_NAMES,
    segevery_params: Mapping[str, Mapping[str, Any]] | None = None,
    int8: bool = True,
    threads: int = 2,
    timing_runs: int = 20,
) -> dict[str, Any]:
    """Evaluate the demo model in ``model_dir`` on held-out scenes.

    Args:
        model_dir: folder with ``encoder.fp32.onnx``, ``decoder.fp32.onnx`` and, as needed,
            ``encoder.int8.onnx`` and ``detector.onnx``.
        num_scenes: held-out scenes for the prompt metrics (and INT8).
        segevery_scenes: the first this many of them also run every SegEvery strategy (None:
            all).
        hw: ``(H, W)`` of the scenes.
        strategies: SegEvery strategies to run.
        segevery_params: per-strategy keyword arguments; None uses
            :data:`DEMO_SEGEVERY_PARAMS`.
        int8: also evaluate ``encoder.int8.onnx``.
        threads: ONNX Runtime intra-op threads.
        timing_runs: encoder runs per precision for the latency medians.

    Returns:
        A JSON-ready dict: ``point_miou``, ``box_miou``, ``segevery`` (per strategy:
        ``recall``, ``instances``, ``decoder_prompts``, ``decoder_ms``, ``total_ms``, means per
        scene), ``int8`` (``point_miou``, ``box_miou``, drops, ``fp32_ms``, ``int8_ms``,
        ``speedup``), ``comparisons`` and the settings.

    Raises:
        FileNotFoundError: a model file is missing (the message names it).
    """
    model_dir = Path(model_dir)
    params = {k: dict(v) for k, v in (segevery_params or DEMO_SEGEVERY_PARAMS).items()}
    backend = OnnxRuntimeBackend.from_dir(model_dir, "fp32", intra_op_threads=threads)
    predictor = Predictor(backend)
    scenes = eval_scenes(num_scenes, hw)
    n_every = len(scenes) if segevery_scenes is None else min(segevery_scenes, len(scenes))

    segevery = {}
    for name in strategies:
        kwargs = dict(params.get(name, {}))
        if name == "object_aware":
            kwargs.setdefault("detector", str(model_dir / "detector.onnx"))
        segevery[name] = build_segevery(name, **kwargs)

    point_ious, box_ious = [], []
    per_strategy: dict[str, dict[str, list[float]]] = {
        name: {
            "matched": [],
            "instances": [],
            "decoder_prompts": [],
            "decoder_ms": [],
            "total_ms": [],
        }
        for name in strategies
    }
    for index, scene in enumerate(scenes):
        predictor.set_image(scene.image)
        p, b = prompt_ious(predictor, scene)
        point_ious.append(p)
        box_ious.append(b)
        if index >= n_every:
            continue
        for name, strategy in segevery.items():
            result = strategy(predictor, scene.image)
            stats = per_strategy[name]
            stats["matched"].extend(recall_at(result_masks(result), scene.masks).tolist())
            stats["instances"].append(len(result.instances))
            stats["decoder_prompts"].append(result.decoder_prompts)
            stats["decoder_ms"].append(result.timings_ms.get("decoder", 0.0))
            stats["total_ms"].append(result.timings_ms.get("total", 0.0))

    report: dict[str, Any] = {
        "model_dir": str(model_dir),
        "model": backend.info.name,
        "scenes": len(scenes),
        "segevery_scenes": n_every,
        "instances": int(sum(len(s) for s in scenes)),
        "hw": list(hw),
        "eval_seed_base": EVAL_SEED_BASE,
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
        "point_miou": float(np.mean(np.concatenate(point_ious))),
        "box_miou": float(np.mean(np.concatenate(box_ious))),
        "segevery_params": params,
        "segevery": {
            name: {
                "recall": float(np.mean(s["matched"])) if s["matched"] else 0.0,
                **{k: float(np.mean(v)) for k, v in s.items() if k != "matched"},
            }
            for name, s in per_strategy.items()
        },
    }

    if int8:
        q8 = OnnxRuntimeBackend.from_dir(model_dir, "int8", intra_op_threads=threads)
        q8_predictor = Predictor(q8)
        q8_point, q8_box = [], []
        for scene in scenes:
            q8_predictor.set_image(scene.image)
            p, b = prompt_ious(q8_predictor, scene)
            q8_point.append(p)
            q8_box.append(b)
        from ..runtime.transforms import prepare_image

        x, _ = prepare_image(scenes[0].image, backend.info)
        backend.encode(x), q8.encode(x)  # warm-up
        fp32_ms, int8_ms = [], []
        for _ in range(timing_runs):  # interleaved: a busy machine slows both alike
            fp32_ms.append(_median_ms(lambda: backend.encode(x), 1))
            int8_ms.append(_median_ms(lambda: q8.encode(x), 1))
        point8 = float(np.mean(np.concatenate(q8_point)))
        box8 = float(np.mean(np.concatenate(q8_box)))
        report["int8"] = {
            "point_miou": point8,
            "box_miou": box8,
            "point_drop": report["point_miou"] - point8,
            "box_drop": report["box_miou"] - box8,
            "fp32_ms": float(np.median(fp32_ms)),
            "int8_ms": float(np.median(int8_ms)),
            "speedup": float(np.median(fp32_ms) / np.median(int8_ms)),
        }

    every = report["segevery"]
    comparisons: dict[str, Any] = {}
    if "grid" in every and "hierarchical" in every:
        g, h = every["grid"], every["hierarchical"]
        comparisons["hierarchical_vs_grid"] = {
            "prompt_ratio": g["decoder_prompts"] / max(h["decoder_prompts"], 1e-9),
            "decoder_speedup": g["decoder_ms"] / max(h["decoder_ms"], 1e-9),
            "total_speedup": g["total_ms"] / max(h["total_ms"], 1e-9),
            "recall_gap": g["recall"] - h["recall"],
        }
    if "grid" in every and "object_aware" in every:
        g, o = every["grid"], every["object_aware"]
        comparisons["object_aware_vs_grid"] = {
            "prompt_ratio": g["decoder_prompts"] / max(o["decoder_prompts"], 1e-9),
            "decoder_ratio": g["decoder_ms"] / max(o["decoder_ms"], 1e-9),
            "total_ratio": g["total_ms"] / max(o["total_ms"], 1e-9),
        }
    report["comparisons"] = comparisons
    report["floors"] = floors(report)
    return report


#: Settings :func:`tune_segevery` tries, strictest first: (pred_iou_thresh,
#: stability_score_thresh) for grid and hierarchical (one pair for both, so that their recall
#: stays comparable), and the object-aware detector's conf.
TUNE_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (0.88, 0.95),
    (0.7, 0.9),
    (0.5, 0.8),
    (0.3, 0.7),
)
TUNE_CONFS: tuple[float, ...] = (0.4, 0.25, 0.1)


def tune_segevery(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    num_scenes: int = 8,
    hw: tuple[int, int] = (256, 256),
    thresholds: Sequence[tuple[float, float]] = TUNE_THRESHOLDS,
    confs: Sequence[float] = TUNE_CONFS,
    threads: int = 2,
) -> dict[str, Any]:
    """Pick the demo's SegEvery settings on validation scenes (never the evaluation ones).

    Grid recall and precision at IoU 0.5 are measured for every threshold pair, object-aware
    ones for every detector conf, on the scenes of :data:`VALIDATION_SEED_BASE`. The pick is
    the best F1: recall alone would always pick the loosest setting, which returns several
    duplicate or background masks per object. A tie goes to the setting listed first.

    Returns:
        ``{"scenes", "grid": [{"pred_iou_thresh", "stability_score_thresh", "recall",
        "precision", "f1", "instances"}...], "object_aware": [{"conf", ...}...], "params"}``
        where ``params`` has the shape of :data:`DEMO_SEGEVERY_PARAMS`.

    Raises:
        FileNotFoundError: a model file is missing.
        ValueError: no thresholds or no confs.
    """
    if not thresholds or not confs:
        raise ValueError("tune_segevery needs at least one threshold pair and one conf")
    model_dir = Path(model_dir)
    backend = OnnxRuntimeBackend.from_dir(model_dir, "fp32", intra_op_threads=threads)
    predictor = Predictor(backend)
    snap = DEMO_SEGEVERY_PARAMS["object_aware"]["border_snap_px"]
    grids = [
        build_segevery("grid", pred_iou_thresh=p, stability_score_thresh=q) for p, q in thresholds
    ]
    detector = str(model_dir / "detector.onnx")
    aware = [
        build_segevery("object_aware", detector=detector, conf=c, border_snap_px=snap)
        for c in confs
    ]
    matched: list[list[bool]] = [[] for _ in grids + aware]
    correct: list[list[bool]] = [[] for _ in grids + aware]
    scenes = eval_scenes(num_scenes, hw, VALIDATION_SEED_BASE)
    for scene in scenes:
        predictor.set_image(scene.image)
        for i, strategy in enumerate(grids + aware):
            found = result_masks(strategy(predictor, scene.image))
            matched[i].extend(recall_at(found, scene.masks).tolist())
            correct[i].extend(recall_at(scene.masks, found).tolist())
    n = len(scenes)
    rows = []
    for m, c in zip(matched, correct, strict=True):
        recall = float(np.mean(m)) if m else 0.0
        precision = float(np.mean(c)) if c else 0.0
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        rows.append({"recall": recall, "precision": precision, "f1": f1, "instances": len(c) / n})
    grid_rows = [
        {"pred_iou_thresh": p, "stability_score_thresh": q, **row}
        for (p, q), row in zip(thresholds, rows[: len(grids)], strict=True)
    ]
    aware_rows = [{"conf": c, **row} for c, row in zip(confs, rows[len(grids) :], strict=True)]
    best_grid = max(grid_rows, key=lambda row: row["f1"])  # first of equals
    best_conf = max(aware_rows, key=lambda row: row["f1"])["conf"]
    pair = {k: best_grid[k] for k in ("pred_iou_thresh", "stability_score_thresh")}
    return {
        "scenes": n,
        "validation_seed_base": VALIDATION_SEED_BASE,
        "grid": grid_rows,
        "object_aware": aware_rows,
        "params": {
            "grid": dict(pair),
            "hierarchical": dict(pair),
            "object_aware": {"conf": best_conf, "border_snap_px": snap},
        },
    }


def _quality(row: Mapping[str, float]) -> str:
    return (
        f"recall {row['recall']:.3f}, precision {row['precision']:.3f}, F1 {row['f1']:.3f}, "
        f"{row['instances']:.1f} instances/scene"
    )


def format_tuning(tuning: Mapping[str, Any]) -> str:
    """:func:`tune_segevery`'s result as a plain-text table."""
    lines = [
        f"SegEvery settings on {tuning['scenes']} validation scenes (seeds "
        f"{tuning['validation_seed_base']}+), at IoU 0.5 (picked by F1):"
    ]
    for row in tuning["grid"]:
        lines.append(
            f"  grid pred_iou {row['pred_iou_thresh']:.2f} stability "
            f"{row['stability_score_thresh']:.2f}: {_quality(row)}"
        )
    for row in tuning["object_aware"]:
        lines.append(f"  object_aware conf {row['conf']:.2f}: {_quality(row)}")
    lines.append(f"  picked: {json.dumps(tuning['params'])}")
    return "\n".join(lines)


def floors(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each floor of :data:`FLOORS` that the report can judge: value, floor and verdict."""
    out: dict[str, dict[str, Any]] = {}

    def check(name: str, value: float, floor: float, higher_is_better: bool = True) -> None:
        ok = value >= floor if higher_is_better else value <= floor
        out[name] = {"value": value, "floor": floor, "pass": bool(ok)}

    check("point_miou", report["point_miou"], FLOORS["point_miou"])
    check("box_miou", report["box_miou"], FLOORS["box_miou"])
    for name, s in report.get("segevery", {}).items():
        check(f"recall_{name}", s["recall"], FLOORS["recall"])
    if "int8" in report:
        for key in ("point_drop", "box_drop"):
            check(f"int8_{key}", report["int8"][key], FLOORS["int8_drop"], False)
    comp = report.get("comparisons", {})
    if "hierarchical_vs_grid" in comp:
        c = comp["hierarchical_vs_grid"]
        check("hierarchical_decoder_speedup", c["decoder_speedup"], FLOORS["hierarchical_speedup"])
        check("hierarchical_recall_gap", c["recall_gap"], FLOORS["hierarchical_recall_gap"], False)
    if "object_aware_vs_grid" in comp:
        c = comp["object_aware_vs_grid"]
        check(
            "object_aware_decoder_ratio", c["decoder_ratio"], FLOORS["object_aware_decoder_ratio"]
        )
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [
        f"demo model {report['model']} ({report['model_dir']}): {report['scenes']} held-out "
        f"scenes {report['hw'][0]}x{report['hw'][1]} (seeds {report['eval_seed_base']}+), "
        f"{report['instances']} instances; SegEvery on {report['segevery_scenes']} scenes",
        f"  point-prompt mIoU   {report['point_miou']:.3f}",
        f"  box-prompt mIoU     {report['box_miou']:.3f}",
        "",
        f"  {'strategy':14s} {'recall@0.5':>10s} {'instances':>9s} {'prompts':>8s} "
        f"{'decoder ms':>10s} {'total ms':>9s}",
    ]
    for name, s in report["segevery"].items():
        lines.append(
            f"  {name:14s} {s['recall']:10.3f} {s['instances']:9.1f} {s['decoder_prompts']:8.1f} "
            f"{s['decoder_ms']:10.1f} {s['total_ms']:9.1f}"
        )
    comp = report.get("comparisons", {})
    if "hierarchical_vs_grid" in comp:
        c = comp["hierarchical_vs_grid"]
        lines.append(
            f"  hierarchical vs grid: {c['prompt_ratio']:.2f}x fewer prompts, decoder "
            f"{c['decoder_speedup']:.2f}x, total {c['total_speedup']:.2f}x faster, recall gap "
            f"{c['recall_gap']:+.3f}"
        )
    if "object_aware_vs_grid" in comp:
        c = comp["object_aware_vs_grid"]
        lines.append(
            f"  object_aware vs grid: {c['prompt_ratio']:.1f}x fewer prompts, decoder time "
            f"{c['decoder_ratio']:.1f}x lower, total {c['total_ratio']:.1f}x lower"
        )
    if "int8" in report:
        q = report["int8"]
        lines += [
            "",
            f"  int8 encoder: point mIoU {q['point_miou']:.3f} (drop {q['point_drop']:+.3f}), "
            f"box mIoU {q['box_miou']:.3f} (drop {q['box_drop']:+.3f})",
            f"  encoder latency: fp32 {q['fp32_ms']:.1f} ms, int8 {q['int8_ms']:.1f} ms "
            f"({q['speedup']:.2f}x, {report['threads']} threads)",
        ]
    lines.append("")
    for name, f in report["floors"].items():
        verdict = "pass" if f["pass"] else "MISS"
        lines.append(f"  {name:32s} {f['value']:8.3f}  floor {f['floor']:g}  {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--scenes", type=int, default=24, help="held-out scenes")
    parser.add_argument(
        "--segevery-scenes", type=int, default=None, help="scenes that also run SegEvery"
    )
    parser.add_argument("--hw", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 encoder")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="instead: pick the SegEvery settings on --scenes validation scenes",
    )
    args = parser.parse_args(argv)
    if args.tune:
        tuning = tune_segevery(
            args.model_dir, num_scenes=args.scenes, hw=tuple(args.hw), threads=args.threads
        )
        print(format_tuning(tuning))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(tuning, indent=1) + "\n")
        return
    report = evaluate(
        args.model_dir,
        num_scenes=args.scenes,
        segevery_scenes=args.segevery_scenes,
        hw=tuple(args.hw),
        int8=not args.no_int8,
        threads=args.threads,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
