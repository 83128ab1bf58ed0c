"""``segfast bench-postprocess``: SegEvery post-processing and rendering against the decoder,
this checkout against another one (issue 18), on ``make demo``'s bag, in one run.

``segfast demo``'s bag (30 generated 640x480 frames, seed 2026) is written once into
``--work``; then ``segfast replay`` of it runs as it runs in ``make demo`` (the shipped demo
model, INT8 encoder, object-aware SegEvery unless ``--mode``, COCO and contact sheet), as a
whole process, once per round from each source tree: ``--base`` (the code before a change,
e.g. a ``git worktree`` of the commit) and this checkout, in turn (base, this, base, this,
...), so that the machine's noise hits both. Each process imports ``segfast_ros`` from its
tree (``PYTHONPATH``; checked before the rounds) and runs in it.

Per tree the table gives, as medians over the rounds of each replay's per-frame medians:
``decoder``, ``postprocess`` (SegEvery's time minus the detector and the decoder: upscale,
threshold, stability, boxes, RLE, filters, NMS, clean-up), ``render`` (label image, and the
overlay on contact-sheet frames), ``inference`` (encoder + SegEvery + track IDs) and the
inference-bound throughput (1 / median inference) the replay reports. The two trees' COCO
files are compared: the same instances in the same frames, scores within
:data:`MAX_SCORE_DIFF` and masks of IoU at least :data:`MIN_MASK_IOU` (float rounding of a
reformulated decoder), or the benchmark fails; whether they are identical is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from ..model_args import MODES
from .report import Column, format_columns, write_json
from .timing import time_ms
from .tracking import machine_context, machine_line

#: ``segfast demo``'s defaults: the bag that ``make demo`` replays.
DEMO_SEED, DEMO_FRAMES, DEMO_HW = 2026, 30, (480, 640)
#: The replay stages compared.
STAGES = ("decoder", "postprocess", "render", "inference")


class BenchError(RuntimeError):
    """A replay failed, a tree imported the wrong code, or the trees' outputs differ."""


@dataclass
class TreeRun:
    """One replay of the bag by one tree: its stage medians (ms) and throughput."""

    tree: str
    round: int
    wall_s: float
    stages_ms: dict[str, float]
    inference_bound_fps: float
    fps: float
    instances: int


@dataclass
class TreeRow:
    """One tree's medians over its rounds."""

    tree: str
    runs: int
    decoder_ms: float
    postprocess_ms: float
    render_ms: float
    inference_ms: float
    inference_bound_fps: float
    fps: float
    instances: int

    @property
    def post_per_decoder(self) -> float:
        return self.postprocess_ms / self.decoder_ms

    @property
    def post_render_per_decoder(self) -> float:
        return (self.postprocess_ms + self.render_ms) / self.decoder_ms


COLUMNS: list[Column] = [
    ("tree", "tree", "<6s"),
    ("runs", "runs", ">4d"),
    ("decoder ms", "decoder_ms", ">10.2f"),
    ("postproc ms", "postprocess_ms", ">11.2f"),
    ("render ms", "render_ms", ">9.2f"),
    ("post/dec", "post_per_decoder", ">8.2f"),
    ("(post+rnd)/dec", "post_render_per_decoder", ">14.2f"),
    ("inference ms", "inference_ms", ">12.2f"),
    ("infer-bound fps", "inference_bound_fps", ">15.2f"),
    ("replay fps", "fps", ">10.2f"),
    ("instances", "instances", ">9d"),
]


def write_demo_bag(work: Path) -> Path:
    """``segfast demo``'s bag under ``work/sample_bag`` (written anew)."""
    from ..replay.bags import write_image_bag
    from .scenes import generate_sequence

    bag = work / "sample_bag"
    shutil.rmtree(bag, ignore_errors=True)
    write_image_bag(bag, (f.image for f in generate_sequence(DEMO_SEED, DEMO_FRAMES, DEMO_HW)))
    return bag


def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a process that imports ``segfast_ros`` from ``tree``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def check_imports(tree: Path) -> str:
    """Where a process started as the runs are imports ``segfast_ros`` from.

    Raises:
        BenchError: not from ``tree``.
    """
    code = "import segfast_ros; print(segfast_ros.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=tree_env(tree), capture_output=True, text=True
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not Path(where).resolve().is_relative_to(tree.resolve()):
        raise BenchError(f"{tree}: segfast_ros imports from {where or done.stderr.strip()!r}")
    return where


def replay_once(tree: Path, name: str, bag: Path, out: Path, round_: int, mode: str) -> TreeRun:
    """``segfast replay`` of ``bag`` as ``make demo`` runs it (SegEvery ``mode``), with
    ``tree``'s code.

    Raises:
        BenchError: it failed or did not process every frame.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = [
        *(sys.executable, "-m", "segfast_ros.cli", "replay", str(bag), str(out / "bag")),
        *("--mode", mode, "--precision", "int8", "--overwrite", "--no-progress"),
        *("--coco", str(out / "coco.json"), "--contact-sheet", str(out / "contact_sheet.png")),
        *("--json", str(out / "summary.json")),
    ]
    env = tree_env(tree)
    done, ms = time_ms(lambda: subprocess.run(argv, cwd=tree, env=env, capture_output=True))
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()[-8:]
        raise BenchError(
            f"{name} round {round_}: replay exited {done.returncode}:\n" + "\n".join(tail)
        )
    summary = json.loads((out / "summary.json").read_text())
    if summary["error"] or summary["processed"] != DEMO_FRAMES:
        raise BenchError(
            f"{name} round {round_}: {summary['processed']} frames, {summary['error']}"
        )
    return TreeRun(
        tree=name,
        round=round_,
        wall_s=ms / 1e3,
        stages_ms={s: summary["stages"][s]["median_ms"] for s in STAGES},
        inference_bound_fps=summary["inference_bound_fps"],
        fps=summary["fps"],
        instances=summary["instances"],
    )


def coco_results(path: Path) -> list[dict[str, Any]]:
    """A COCO file's annotations, the fields that say what was found."""
    keys = ("image_id", "segmentation", "bbox", "area", "score")
    return [{k: a.get(k) for k in keys} for a in json.loads(path.read_text())["annotations"]]


#: How far the two trees' instances may differ when they are not identical: a change of the
#: decoder graph's form moves its logits by float rounding (issue 18), which may move a score
#: in its last digits or a pixel at a mask's edge, never an instance.
MAX_SCORE_DIFF = 1e-3
MIN_MASK_IOU = 0.99


def compare_results(base: list[dict[str, Any]], this: list[dict[str, Any]]) -> dict[str, Any]:
    """How far ``this`` tree's instances are from ``base``'s, instance by instance.

    Raises:
        BenchError: other instances (count or frames), or a score or mask further apart than
            :data:`MAX_SCORE_DIFF` / :data:`MIN_MASK_IOU`.
    """
    from ..masks import rle_to_mask

    if [a["image_id"] for a in base] != [a["image_id"] for a in this]:
        raise BenchError(
            f"the two trees found other instances ({len(base)} vs {len(this)}, or in other frames)"
        )
    score_diff, min_iou, pixels = 0.0, 1.0, 0
    for a, b in zip(base, this, strict=True):
        score_diff = max(score_diff, abs(float(a["score"]) - float(b["score"])))
        if a["segmentation"] != b["segmentation"]:
            ma, mb = rle_to_mask(a["segmentation"]), rle_to_mask(b["segmentation"])
            union = int(np.count_nonzero(ma | mb))
            pixels += int(np.count_nonzero(ma ^ mb))
            min_iou = min(min_iou, int(np.count_nonzero(ma & mb)) / union if union else 1.0)
    if score_diff > MAX_SCORE_DIFF or min_iou < MIN_MASK_IOU:
        raise BenchError(
            f"the two trees' instances differ: scores by up to {score_diff:.2e} (at most "
            f"{MAX_SCORE_DIFF}), masks down to IoU {min_iou:.4f} (at least {MIN_MASK_IOU})"
        )
    return {"instances": len(this), "max_score_diff": score_diff, "min_mask_iou": min_iou,
            "pixels_differing": pixels}  # fmt: skip


def tree_row(name: str, runs: list[TreeRun]) -> TreeRow:
    """``name``'s medians over its runs."""
    mine = [r for r in runs if r.tree == name]
    stage = {s: median(r.stages_ms[s] for r in mine) for s in STAGES}
    return TreeRow(
        tree=name,
        runs=len(mine),
        decoder_ms=stage["decoder"],
        postprocess_ms=stage["postprocess"],
        render_ms=stage["render"],
        inference_ms=stage["inference"],
        inference_bound_fps=median(r.inference_bound_fps for r in mine),
        fps=median(r.fps for r in mine),
        instances=mine[0].instances,
    )


def bench_postprocess(
    base: Path, rounds: int, work: Path, mode: str = "object_aware"
) -> tuple[list[TreeRow], dict[str, Any]]:
    """The table's rows, and the JSON document: the rounds, the rows and the ratios.

    Raises:
        BenchError: see :class:`BenchError`.
    """
    here = Path(__file__).resolve().parents[2]
    trees = {"base": base.resolve(), "this": here}
    imports = {name: check_imports(tree) for name, tree in trees.items()}
    context = machine_context()  # the load before the runs
    bag = write_demo_bag(work)
    runs: list[TreeRun] = []
    for r in range(1, rounds + 1):
        for name, tree in trees.items():
            run = replay_once(tree, name, bag, work / name, r, mode)
            print(
                f"round {r}/{rounds} {name}: postprocess {run.stages_ms['postprocess']:.2f} ms, "
                f"decoder {run.stages_ms['decoder']:.2f} ms, inference-bound "
                f"{run.inference_bound_fps:.2f} frames/s",
                flush=True,
            )
            runs.append(run)
    theirs, ours = (coco_results(work / name / "coco.json") for name in trees)
    same = theirs == ours
    agreement = compare_results(theirs, ours)
    rows = [tree_row(name, runs) for name in trees]
    base_row, this_row = rows
    ratios = {
        "postprocess_base_over_this": base_row.postprocess_ms / this_row.postprocess_ms,
        "render_base_over_this": base_row.render_ms / this_row.render_ms,
        "inference_bound_fps_this_over_base": (
            this_row.inference_bound_fps / base_row.inference_bound_fps
        ),
    }
    context["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return rows, {
        "context": {**context, "trees": {k: str(v) for k, v in trees.items()}, "imports": imports},
        "bag": {"seed": DEMO_SEED, "frames": DEMO_FRAMES, "hw": list(DEMO_HW)},
        "mode": mode,
        "outputs_identical": same,
        "outputs_agreement": agreement,
        "rows": [{**vars(r), "post_per_decoder": r.post_per_decoder,
                  "post_render_per_decoder": r.post_render_per_decoder} for r in rows],
        "ratios": ratios,
        "runs": runs,
    }  # fmt: skip


def run_cli(args: argparse.Namespace) -> int:
    """``segfast bench-postprocess``: the table, the ratios, the machine line; JSON if asked."""
    with tempfile.TemporaryDirectory(prefix="bench_postprocess_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        try:
            rows, doc = bench_postprocess(Path(args.base), args.rounds, work, args.mode)
        except BenchError as err:
            print(f"segfast bench-postprocess: {err}", file=sys.stderr)
            return 1
    print(format_columns(rows, COLUMNS))
    ratios = doc["ratios"]
    print(
        f"this vs base: postprocess {ratios['postprocess_base_over_this']:.2f}x faster, render "
        f"{ratios['render_base_over_this']:.2f}x, inference-bound throughput "
        f"{ratios['inference_bound_fps_this_over_base']:.2f}x; outputs identical: "
        f"{doc['outputs_identical']}"
    )
    agree = doc["outputs_agreement"]
    print(
        f"{agree['instances']} instances in both; scores within {agree['max_score_diff']:.1e}, "
        f"masks' IoU at least {agree['min_mask_iou']:.4f} ({agree['pixels_differing']} pixels "
        "differ in all)"
    )
    print(machine_line(doc["context"]))
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``bench-postprocess``'s flags."""
    p.add_argument(
        "--base",
        required=True,
        help="the source tree to compare with (e.g. `git worktree add /tmp/base COMMIT`)",
    )
    p.add_argument("--rounds", type=int, default=3, help="replays per tree, alternating")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="object_aware",
        help="SegEvery (make demo's: object_aware)",
    )
    p.add_argument("--work", help="folder for the bag and the outputs (default: a temporary one)")
    p.add_argument("--json", help="write the rounds, the table and the ratios as JSON")
