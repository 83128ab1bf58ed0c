"""``segfast bench-fleet``: ``replay-many`` with 2 workers vs 1 vs plain ``segfast replay``, on
2 cores, over the same generated bags, and what Ray itself costs per bag.

The bags (6 by default, of 60, 50, ... 10 frames: ``--frames`` is the largest) are generated once
into ``--work`` (kept, and reused while the bags asked for are the same) or a temporary folder.
Each configuration runs as a whole process, timed around it, as a user runs it, with the same
replay flags (the shipped demo model, ``--mode``, ``--precision``):

* ``sequential``: ``segfast replay BAG OUT --coco ...`` once per bag, one after another;
* ``local``: ``segfast replay-many BAGS --address local`` (one process, no Ray);
* ``ray-1x2``: a fresh local Ray instance, 1 worker of 2 CPUs (its ONNX Runtime on 2 threads);
* ``ray-2x1``: a fresh local Ray instance, 2 workers of 1 CPU each.

Rounds alternate the configurations (1 2 3 4 1 2 3 4 ...) so the machine's noise hits them all;
the table gives each one's median wall time, frames/s over it and its speed-up over
``sequential``. On a machine with more cores the runs are pinned to 2 of them (and Ray is told it
has 2 CPUs), so the figures stay 2-core figures.

Ray's own cost, per Ray run, from ``DIR/summary.json`` and ``DIR/manifest.json``:

* ``startup_s``: Ray started and the workers' models loaded (summary ``startup_s``);
* ``sched_per_bag_s`` = (summary ``wall_s`` - ``startup_s`` - sum of the bags' ``wall_s``
  (each replay's own time, manifest) / workers) / bags: the time the workers were not replaying,
  spread over the bags: handing bags out and results back, the manifest written, the progress
  polls, and (with more than one worker) the last bags' uneven end. Noise can make it slightly
  negative; it is reported as it is, not clamped;
* ``process_per_bag_s`` = (median wall of ``ray-1x2`` - median wall of ``local``) / bags: all
  that Ray adds to the same one-worker run, seen from outside (its start included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from ..bench.report import Column, format_columns, write_json
from ..bench.timing import time_ms
from ..bench.tracking import count_arg, machine_context, machine_line, parse_size
from ..model_args import MODES, PRECISIONS
from .manifest import Manifest
from .pool import RAY_HINT

CORES = 2
#: name -> (Ray workers, CPUs per worker); None: no Ray.
CONFIGS: dict[str, tuple[int, int] | None] = {
    "sequential": None,
    "local": None,
    "ray-1x2": (1, 2),
    "ray-2x1": (2, 1),
}
SEED = 2026
NO_RAY = f"Ray is not installed: {RAY_HINT}"


class BenchError(RuntimeError):
    """A run failed or left incomplete outputs: the message names the run and why."""


@dataclass
class Run:
    """One timed run of one configuration; the Ray figures only for Ray runs."""

    config: str
    round: int
    wall_s: float
    frames: int
    startup_s: float | None = None
    fleet_wall_s: float | None = None
    bag_wall_s: float | None = None
    sched_per_bag_s: float | None = None


@dataclass
class ConfigRow:
    """A configuration's medians over its rounds."""

    config: str
    walls_s: list[float]
    median_s: float
    fps: float
    speedup: float | None = None
    startup_s: float | None = None
    sched_per_bag_s: float | None = None


COLUMNS: list[Column] = [
    ("config", "config", "<11s"),
    ("runs", lambda r: len(r.walls_s), ">4d"),
    ("median s", "median_s", ">9.2f"),
    ("frames/s", "fps", ">9.2f"),
    ("x seq", "speedup", ">6.2f"),
    ("start-up s", "startup_s", ">10.2f"),
    ("sched/bag s", "sched_per_bag_s", ">11.3f"),
]


def bag_lengths(bags: int, largest: int) -> list[int]:
    """Frames per bag: ``largest`` down in equal steps (6 bags of 60: 60, 50, ... 10)."""
    return [max(1, round(largest * (bags - i) / bags)) for i in range(bags)]


def prepare_bags(work: Path, lengths: list[int], hw: tuple[int, int]) -> list[Path]:
    """The bags under ``work/bags``: generated demo scenes, or those already there when they
    were generated with the same lengths and size."""
    from ..bench.scenes import generate_sequence
    from ..replay.bags import write_image_bag

    folder, spec = work / "bags", {"lengths": lengths, "hw": list(hw), "seed": SEED}
    paths = [folder / f"bag{i}_{n}f" for i, n in enumerate(lengths)]
    stamp = folder / "spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec and all(map(Path.is_dir, paths)):
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, (path, n) in enumerate(zip(paths, lengths, strict=True)):
        write_image_bag(path, (s.image for s in generate_sequence(SEED + i, n, hw)))
    stamp.write_text(json.dumps(spec))
    return paths


def _process(argv: list[str], env: dict[str, str], what: str) -> float:
    """Run ``segfast ARGV`` as its own process: its wall time in seconds.

    Raises:
        BenchError: it exited non-zero (its last output lines in the message).
    """
    cmd = [sys.executable, "-m", "segfast_ros.cli", *argv]
    done, ms = time_ms(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True))
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise BenchError(f"{what}: `segfast {argv[0]}` exited {done.returncode}:\n{tail}")
    return ms / 1e3


def run_sequential(bags: list[Path], out: Path, flags: list[str], env: dict[str, str]) -> Run:
    """``segfast replay`` of each bag, one process after another."""
    wall, frames = 0.0, 0
    for bag in bags:
        files = [out / bag.name, "--coco", out / f"{bag.name}.json", "--json", out / "s.json"]
        argv = ["replay", str(bag), *map(str, files), "--overwrite", *flags]
        wall += _process(argv, env, f"sequential {bag.name}")
        summary = json.loads((out / "s.json").read_text())
        if summary["error"] or summary["processed"] != summary["selected"]:
            raise BenchError(f"sequential {bag.name}: incomplete: {summary['error']}")
        frames += summary["processed"]
    return Run("sequential", 0, wall, frames)


def run_replay_many(
    config: str, bags: list[Path], out: Path, flags: list[str], env: dict[str, str]
) -> Run:
    """``segfast replay-many`` of all bags in one process; checks every bag is done."""
    shape = CONFIGS[config]
    where = ["--address", "local"]
    if shape is not None:
        where = ["--workers", str(shape[0]), "--cpus-per-worker", str(shape[1])]
    argv = ["replay-many", *map(str, bags), "--out", str(out), *where, *flags]
    wall = _process(argv, env, config)
    summary = json.loads((out / "summary.json").read_text())
    done = [e for e in Manifest.load(out).entries.values() if e.status == "done"]
    if not summary["complete"] or len(done) != len(bags):
        raise BenchError(
            f"{config}: {len(done)} of {len(bags)} bags done (failed: {summary['failed']})"
        )
    run = Run(config, 0, wall, summary["frames"], startup_s=summary["startup_s"])
    if shape is not None:
        run.fleet_wall_s = summary["wall_s"]
        run.bag_wall_s = sum(e.wall_s for e in done)
        run.sched_per_bag_s = sched_per_bag(
            summary["wall_s"], summary["startup_s"], run.bag_wall_s, shape[0], len(done)
        )
    return run


def sched_per_bag(wall_s: float, startup_s: float, bags_s: float, workers: int, bags: int):
    """Ray's scheduling overhead per bag: ``(wall_s - startup_s - bags_s / workers) / bags``,
    where ``bags_s`` is the sum of the bags' own replay times. Not clamped: noise (and workers
    overlapping their start) can make it slightly negative."""
    return (wall_s - startup_s - bags_s / workers) / bags


def run_rounds(flags: dict[str, list[str]], bags: list[Path], rounds: int, work: Path, env):
    """Every configuration (``flags``: its replay flags) once per round, in turn; each run's
    outputs in ``work/runs/<name>`` (the last round's are left there).

    Raises:
        BenchError: a run failed, or processed other than every frame.
    """
    runs: list[Run] = []
    expected = None
    for r in range(1, rounds + 1):
        for name, mine in flags.items():
            out = work / "runs" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if name == "sequential":
                run = run_sequential(bags, out, mine, env)
            else:
                run = run_replay_many(name, bags, out, mine, env)
            run.round, expected = r, expected or run.frames
            if run.frames != expected:
                raise BenchError(f"{name}: {run.frames} frames processed, the others {expected}")
            print(f"round {r}/{rounds} {name}: {run.wall_s:.2f} s", flush=True)
            runs.append(run)
    return runs


def config_rows(runs: list[Run], configs: list[str]) -> list[ConfigRow]:
    """Each configuration's medians; the speed-up is ``sequential``'s median wall over its."""
    rows = []
    for name in configs:
        mine = [r for r in runs if r.config == name]
        walls = [r.wall_s for r in mine]
        row = ConfigRow(name, walls, median(walls), mine[0].frames / median(walls))
        if mine[0].startup_s is not None:
            row.startup_s = median(r.startup_s or 0.0 for r in mine)
        if mine[0].sched_per_bag_s is not None:
            row.sched_per_bag_s = median(r.sched_per_bag_s or 0.0 for r in mine)
        rows.append(row)
    seq = next((r.median_s for r in rows if r.config == "sequential"), None)
    for row in rows:
        row.speedup = seq / row.median_s if seq else None
    return rows


def child_env() -> tuple[dict[str, str], dict[str, Any]]:
    """The runs' environment (``RAY_ADDRESS`` dropped: each Ray run starts its own local
    instance) and how they are held to :data:`CORES` cores: on a machine with more, pinned to
    the first of this process's cores and Ray told it has that many CPUs.

    Raises:
        BenchError: fewer cores than :data:`CORES` (a 2-CPU worker could never be placed).
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    count = len(usable) or os.cpu_count() or 1
    if count < CORES:
        raise BenchError(f"bench-fleet runs on {CORES} cores; this machine has {count}")
    info: dict[str, Any] = {"cores": CORES, "usable_cores": count, "pinned_to": None}
    if count > CORES:
        env["RAY_OVERRIDE_RESOURCES"] = json.dumps({"CPU": CORES})
        info["pinned_to"] = usable[:CORES] or None
    return env, info


def ray_version() -> str | None:
    """The installed Ray's version (None: not installed), without importing it."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


def add_bench_fleet_parser(sub: Any) -> None:
    """``bench-fleet`` on ``sub`` (the ``segfast`` subparsers)."""
    p = sub.add_parser(
        "bench-fleet",
        help="replay-many with 2 workers vs 1 vs sequential segfast replay on 2 cores, and "
        "Ray's overhead per bag (table + JSON)",
        description="Generates --bags bags (of --frames, then steps down) and times, as whole "
        "processes, each configuration: sequential (segfast replay per bag), local (replay-many "
        "--address local), ray-1x2 (1 Ray worker of 2 CPUs), ray-2x1 (2 workers of 1 CPU), in "
        "alternating rounds; prints the median wall, frames/s, speed-up over sequential, and "
        "Ray's start-up and scheduling overhead per bag. Runs on 2 cores (pinned to 2 on a "
        "larger machine).",
    )
    p.add_argument("--bags", type=count_arg, default=6, help="generated bags (default 6)")
    p.add_argument(
        "--frames", type=count_arg, default=60, help="frames of the largest bag; the others "
        "step down by 1/bags of it (default 60: 60, 50, ... 10)"
    )  # fmt: skip
    p.add_argument("--size", type=parse_size, default="640x480", help="frame WxH")
    p.add_argument("--rounds", type=count_arg, default=3, help="runs of each config (default 3)")
    p.add_argument("--mode", choices=MODES, default="object_aware")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--work", help="keep the bags and the last runs' outputs here (reused)")
    p.add_argument("--json", help="write every run, the medians and the overheads as JSON")
    p.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
        help="the configurations to run (default: all)",
    )  # fmt: skip
    p.set_defaults(func=bench_fleet_command)


def bench_fleet_command(args: argparse.Namespace) -> int:
    """Generate the bags, run the rounds, print the table and notes, write the JSON."""
    context = machine_context()  # first: the load of the others, not this run's
    configs = list(dict.fromkeys(args.configs))
    context["ray_version"] = ray_version()
    skipped = {c: NO_RAY for c in configs if CONFIGS[c] and context["ray_version"] is None}
    if skipped:
        print(f"skipping {' and '.join(skipped)}: {NO_RAY}")
        configs = [c for c in configs if c not in skipped]
    if not configs:
        raise BenchError("nothing to run: every configuration asked for needs Ray")
    env, context["cores"] = child_env()
    print(machine_line(context))
    if context["cores"]["pinned_to"]:
        print(f"runs pinned to cores {context['cores']['pinned_to']} (Ray told: {CORES} CPUs)")
    lengths = bag_lengths(args.bags, args.frames)
    with _work_dir(args.work) as work:
        bags = prepare_bags(work, lengths, args.size)
        print(f"{len(bags)} bags of {lengths} frames, {args.size[1]}x{args.size[0]}")
        flags = ["--mode", args.mode, "--precision", args.precision, "--no-progress"]
        # Pinned, the runs without Ray are told their cores (ONNX Runtime's default is the
        # machine's); a Ray worker's follow its CPUs (fleet.run: one thread fewer).
        pinned = context["cores"]["pinned_to"]
        own = ["--threads", str(CORES)] if pinned else []
        each = {c: flags + ([] if CONFIGS[c] else own) for c in configs}
        with _pinned(pinned):
            runs = run_rounds(each, bags, args.rounds, work, env)
    context["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = config_rows(runs, configs)
    print(f"\nreplay-many vs segfast replay, {sum(lengths)} frames, medians of {args.rounds}")
    print(format_columns(rows, COLUMNS))
    overhead = overheads(rows, len(bags))
    for note in overhead["notes"]:
        print(f"note: {note}")
    if args.json:
        given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose")}
        settings = {**given, "lengths": lengths, "replay_flags": each}
        doc = {"context": context, "settings": settings, "skipped": skipped}
        write_json(args.json, {**doc, "runs": runs, "configs": rows, "overhead": overhead})
        print(f"wrote {args.json}")
    return 0


OVERHEAD_HOW = {
    "startup_s": "summary.json startup_s: Ray started and the workers' models loaded (local: "
    "the model loaded in the process)",
    "sched_per_bag_s": "(summary wall_s - startup_s - sum of the manifest's bag wall_s / "
    "workers) / bags, median over the rounds; wall_s ends at the last bag's result (Ray's "
    "shutdown and the table come after); not clamped (noise can make it negative)",
    "process_per_bag_s": "(median wall of ray-1x2 - median wall of local) / bags: whole "
    "processes, Ray's start included",
}


def overheads(rows: list[ConfigRow], bags: int) -> dict[str, Any]:
    """Ray's overhead per bag (see the module's docstring), with how each is computed and a
    line for the report about each."""
    by = {r.config: r for r in rows}
    ray = [r for r in rows if CONFIGS[r.config]]
    doc: dict[str, Any] = {
        "how": OVERHEAD_HOW,
        "startup_s": {r.config: r.startup_s for r in ray},
        "sched_per_bag_s": {r.config: r.sched_per_bag_s for r in ray},
        "process_per_bag_s": None,
        "notes": [
            f"{r.config}: Ray's start and the workers' models {r.startup_s or 0:.2f} s; "
            f"scheduling {1e3 * (r.sched_per_bag_s or 0):.0f} ms per bag"
            for r in ray
        ],
    }
    if "ray-1x2" in by and "local" in by:
        per_bag = (by["ray-1x2"].median_s - by["local"].median_s) / bags
        doc["process_per_bag_s"] = per_bag
        doc["notes"].append(f"ray-1x2 - local, whole processes: {per_bag:.2f} s per bag")
    return doc


@contextlib.contextmanager
def _work_dir(work: str | None) -> Iterator[Path]:
    """``--work`` (made if needed), or a temporary folder removed afterwards."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="segfast-bench-fleet-") as tmp:
            yield Path(tmp)
        return
    path = Path(work)
    if path.exists() and not path.is_dir():
        raise BenchError(f"--work {work} is a file; expected a folder (made if missing)")
    path.mkdir(parents=True, exist_ok=True)
    yield path


@contextlib.contextmanager
def _pinned(cores: list[int] | None) -> Iterator[None]:
    """This process (so the runs it starts) on ``cores`` while in the block; None: as is."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
