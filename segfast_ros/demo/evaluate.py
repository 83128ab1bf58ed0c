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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.scenes import Scene
from ..bench.timing import median_ms
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.predictor import Predictor
from ..segevery.base import SegEvery
from ..segevery.presets import DEMO_SEGEVERY_PARAMS
from ..segevery.registry import build_segevery
from .metrics import (
    DEFAULT_MODEL_DIR,
    EVAL_SEED_BASE,
    eval_scenes,
    prompt_ious,
    recall_at,
    result_masks,
)
from .tune import format_tuning, tune_segevery

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

    segevery = _strategies(model_dir, strategies, params)
    point_ious, box_ious, per_strategy = _measure_scenes(predictor, scenes, segevery, n_every)
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
        report["int8"] = _int8_report(
            backend, model_dir, scenes, report, threads=threads, timing_runs=timing_runs
        )
    report["comparisons"] = _comparisons(report["segevery"])
    report["floors"] = floors(report)
    return report


def _strategies(
    model_dir: Path, strategies: Sequence[str], params: Mapping[str, Mapping[str, Any]]
) -> dict[str, SegEvery]:
    """Each SegEvery strategy with its settings; object_aware runs the model's own detector."""
    segevery = {}
    for name in strategies:
        kwargs = dict(params.get(name, {}))
        if name == "object_aware":
            kwargs.setdefault("detector", str(model_dir / "detector.onnx"))
        segevery[name] = build_segevery(name, **kwargs)
    return segevery


def _measure_scenes(
    predictor: Predictor, scenes: Sequence[Scene], segevery: Mapping[str, SegEvery], n_every: int
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, dict[str, list[float]]]]:
    """Point and box IoUs of every scene, and each strategy's raw measures on the first
    ``n_every`` scenes (the encoder runs once per scene for both)."""
    point_ious, box_ious = [], []
    per_strategy: dict[str, dict[str, list[float]]] = {
        name: {
            "matched": [],
            "instances": [],
            "decoder_prompts": [],
            "decoder_ms": [],
            "total_ms": [],
        }
        for name in segevery
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
    return point_ious, box_ious, per_strategy


def _int8_report(
    backend: OnnxRuntimeBackend,
    model_dir: Path,
    scenes: Sequence[Scene],
    fp32: Mapping[str, Any],
    *,
    threads: int,
    timing_runs: int,
) -> dict[str, float]:
    """``encoder.int8.onnx`` (with the fp32 decoder): prompt mIoUs, their drop from ``fp32``'s,
    and both encoders' latency, medians of interleaved runs on the first scene."""
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
        fp32_ms.append(median_ms(lambda: backend.encode(x), 1))
        int8_ms.append(median_ms(lambda: q8.encode(x), 1))
    point8 = float(np.mean(np.concatenate(q8_point)))
    box8 = float(np.mean(np.concatenate(q8_box)))
    return {
        "point_miou": point8,
        "box_miou": box8,
        "point_drop": fp32["point_miou"] - point8,
        "box_drop": fp32["box_miou"] - box8,
        "fp32_ms": float(np.median(fp32_ms)),
        "int8_ms": float(np.median(int8_ms)),
        "speedup": float(np.median(fp32_ms) / np.median(int8_ms)),
    }


def _comparisons(every: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Hierarchical and object-aware against the grid: prompt, time and recall ratios."""
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
    return comparisons


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
