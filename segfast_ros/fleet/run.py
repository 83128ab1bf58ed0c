"""``segfast replay-many``'s driver: the inputs found and planned, the bags run on a pool, the
manifest kept, the fleet table and the summary written.

The plan: every input bag, largest first (the long ones start early, so the run does not end
waiting on one big bag), less those ``--resume`` finds complete in the manifest (outputs there
with their recorded sizes, made from the same input and the same settings and model). The driver
alone writes the manifest, once per finished bag, atomically: whatever stops the run (Ctrl-C, a
crash), the manifest lists exactly the bags whose outputs are whole. The fleet table is rebuilt
at the end from the parts of every bag in the manifest, so a resumed run's table covers all of
them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..demo.run import replay_flags
from ..replay.outputs import Progress
from .inputs import BagInput, InputError, collect_inputs, fingerprint, frame_count
from .manifest import MANIFEST, BagEntry, Manifest, config_fingerprint, output_entry
from .pool import FleetError, LocalPool, OnTick, Pool, RayPool, import_ray
from .summary import FleetSummary
from .table import combine, table_format
from .worker import DONE, BagResult, BagTask, WorkerProgress

#: ``segfast replay-many``'s own flags: not part of how a bag is replayed, so not part of the
#: settings a resumed run must share with the one it continues.
FLEET_FLAGS = frozenset(
    {
        "inputs",
        "out",
        "address",
        "workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "resume",
        "table",
        "max_retries",
        "no_progress",
        "threads",
        "func",
        "command",
        "verbose",
    }
)


@dataclass
class FleetSettings:
    """How the fleet runs (``segfast replay-many``'s own flags).

    Attributes:
        out_dir: where everything goes (``--out``).
        address: ``local`` (this process, no Ray), None (a new local Ray instance, or the
            cluster ``RAY_ADDRESS`` names), ``auto`` or ``ray://host:port``.
        workers: Ray workers (None: as many as fit).
        cpus_per_worker, gpus_per_worker: what each Ray worker reserves; a worker runs ONNX
            Runtime on one thread fewer than its CPUs (at least one) unless ``--threads`` is
            given.
        resume: skip the bags the manifest lists as complete.
        table: ``auto``, ``parquet`` or ``csv``.
        max_retries: Ray's restarts of a dead worker and retries of its bag.
        progress: draw the progress bar.
    """

    out_dir: Path
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    resume: bool = False
    table: str = "auto"
    max_retries: int = 2
    progress: bool = False

    def check(self) -> None:
        """Raises ValueError naming a flag out of its range."""
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):
            raise ValueError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.address == "local" and (self.workers or 1) > 1:
            raise ValueError("--address local runs one worker in this process; drop --workers")


def run_fleet(
    args: argparse.Namespace,
    inputs: Sequence[str | Path],
    settings: FleetSettings,
    *,
    pool: Pool | None = None,
    on_result: Callable[[BagResult], None] | None = None,
    on_tick: OnTick | None = None,
) -> FleetSummary:
    """Replay every input bag into ``settings.out_dir``, each as ``segfast replay`` would.

    Args:
        args: ``segfast replay``'s flags (the model, SegEvery, 3D, prompts, topics).
        inputs: bags, folders of bags, or text files listing them.
        settings: the fleet's own flags.
        pool: where the bags run (default: from ``settings.address``).
        on_result: called with each bag's result once the manifest has it (tests).
        on_tick: called with the workers' progress now and then (tests).

    Returns:
        The summary; ``interrupted`` after Ctrl-C (the manifest and the table then hold the
        bags finished so far).

    Raises:
        FleetError: the run cannot start (no Ray, the output folder holds another run, ...).
        fleet.inputs.InputError, ValueError: bad inputs or flags.
    """
    settings.check()
    replay_flags(args)  # a bad replay flag is named before anything is written
    out = Path(settings.out_dir)
    fmt = table_format(settings.table)
    if pool is None and settings.address != "local":
        import_ray()  # says how to get it before anything is written
    manifest = Manifest.load(out)
    if manifest.entries and not settings.resume:
        raise FleetError(
            f"{out} already holds a fleet run ({MANIFEST} lists {len(manifest.entries)} bags): "
            "pass --resume to continue it, or choose another --out"
        )
    found = _outside(collect_inputs(inputs), out)
    bags = sorted(_keep_names(found, manifest), key=lambda b: (-b.size, b.name))
    out.mkdir(parents=True, exist_ok=True)
    manifest.save()  # from the start, the folder says it holds a fleet run (none done yet)
    config = config_fingerprint(_replay_settings(args), _model_files(args))
    summary = FleetSummary(out_dir=out, bags=len(bags), table_format=fmt)
    tasks, prints = [], {}
    for bag in bags:
        prints[bag.name] = _fingerprint(bag)
        ok, _ = manifest.complete(bag.name, prints[bag.name], config)
        ok = ok and not prints[bag.name].startswith(UNREADABLE)
        if settings.resume and ok:
            summary.skipped.append(bag.name)
        else:
            tasks.append(BagTask(bag, out, fmt))
    _threads_follow_cpus(args, settings)
    for marker in (out / "work").glob("*.attempts"):  # a past run's count: start again at 1
        marker.unlink()
    started = time.perf_counter()
    progress = Progress(_total_frames(tasks, args), enabled=settings.progress)
    finish = _Finisher(manifest, summary, prints, config, progress, on_result)
    if tasks:
        pool = pool or _pool(args, settings)
        summary.pool = pool.label
        try:
            pool.run(tasks, finish, lambda p: _tick(p, summary, progress, on_tick))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.wall_s = time.perf_counter() - started  # Ray's shutdown not counted
            pool.close()
            summary.startup_s = pool.startup_s
    else:
        summary.wall_s = time.perf_counter() - started
    summary.not_run = [t.bag.name for t in tasks if not summary.reported(t.bag.name)]
    progress.close(summary.frames, summary.progress_text())
    _write_table(manifest, out, fmt, summary)
    with contextlib.suppress(OSError):  # only when empty: nothing was left in progress
        (out / "work").rmdir()
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


class _Finisher:
    """Each finished bag into the manifest (done or failed) and the summary."""

    def __init__(
        self,
        manifest: Manifest,
        summary: FleetSummary,
        prints: dict[str, str],
        config: str,
        progress: Progress,
        on_result: Callable[[BagResult], None] | None,
    ) -> None:
        self.manifest, self.summary, self.prints, self.config = manifest, summary, prints, config
        self.progress, self.on_result = progress, on_result

    def __call__(self, result: BagResult) -> None:
        out = self.manifest.out_dir
        entry = BagEntry(
            name=result.name,
            input=result.input,
            fingerprint=self.prints[result.name],
            config=self.config,
            status=DONE if result.status == DONE else "failed",
            outputs={k: output_entry(out, Path(p)) for k, p in result.outputs.items()},
            frames=result.frames,
            instances=result.instances,
            wall_s=result.wall_s,
            worker=result.worker,
            attempts=result.attempts,
            error=result.error,
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.manifest.record(entry)
        self.summary.add(result)
        self.progress.update(self.summary.frames, self.summary.progress_text(), force=True)
        if self.on_result is not None:
            self.on_result(result)


#: The fingerprint of a bag the driver cannot read: never taken as complete.
UNREADABLE = "unreadable: "


def _fingerprint(bag: BagInput) -> str:
    """The bag's fingerprint; for a bag this process cannot read, :data:`UNREADABLE` and the
    reason, so the bag is replayed (and fails alone if its worker cannot read it either)."""
    try:
        return fingerprint(bag.path)
    except InputError as err:
        return f"{UNREADABLE}{err}"


def _outside(bags: list[BagInput], out: Path) -> list[BagInput]:
    """The inputs less the bags this run writes (``--out`` inside an input folder).

    Raises:
        InputError: nothing is left.
    """
    mine = out.resolve()
    kept = [b for b in bags if not b.path.resolve().is_relative_to(mine)]
    if not kept:
        raise InputError(f"the inputs hold no bag outside the output folder {out}")
    return kept


def _keep_names(bags: list[BagInput], manifest: Manifest) -> list[BagInput]:
    """Each bag under the name the manifest gave it before (a resumed run whose inputs now
    clash by name would otherwise rename it, and redo it); a new bag whose name an earlier
    bag of the manifest holds is numbered."""
    before = {e.input: name for name, e in manifest.entries.items()}
    paths = {str(b.path) for b in bags}
    taken = {name for name, e in manifest.entries.items() if e.input not in paths}
    kept = [replace(b, name=before[str(b.path)]) for b in bags if str(b.path) in before]
    taken |= {b.name for b in kept}
    for bag in bags:
        if str(bag.path) in before:
            continue
        name, number = bag.name, 1
        while name.casefold() in {t.casefold() for t in taken}:
            number += 1
            name = f"{bag.name}__{number}"
        taken.add(name)
        kept.append(replace(bag, name=name))
    return kept


def _tick(
    workers: list[WorkerProgress], summary: FleetSummary, progress: Progress, hook: OnTick | None
) -> None:
    """Redraw the bar with the frames of the bags in progress."""
    busy = sum(w.frames for w in workers if w.bag is not None)
    progress.update(summary.frames + busy, summary.progress_text())
    if hook is not None:
        hook(workers)


def _pool(args: argparse.Namespace, settings: FleetSettings) -> Pool:
    if settings.address == "local":
        return LocalPool(args)
    return RayPool(
        args,
        address=settings.address,
        workers=settings.workers,
        cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=settings.gpus_per_worker,
        max_retries=settings.max_retries,
    )


def _threads_follow_cpus(args: argparse.Namespace, settings: FleetSettings) -> None:
    """A Ray worker runs ONNX Runtime on one thread fewer than the CPUs it reserves (at least
    one), unless ``--threads`` says otherwise: the replay's reader and writer threads (image
    decoding, label images, serializing) need the rest, and workers sharing a machine must not
    oversubscribe it. Measured on 2 cores (docs/benchmarks.md, "Fleet replay"): a worker
    replayed bench-fleet's bags in 6.8 s busy with 1 ONNX Runtime thread, 12.3 s with 2 (its
    spinning pool starved the other threads) and 7.7 s with ONNX Runtime's default. In this
    process, as ``segfast replay``."""
    if settings.address != "local" and not args.threads:
        args.threads = max(1, math.floor(settings.cpus_per_worker) - 1)
    if settings.gpus_per_worker > 0 and not args.providers:
        args.providers = ["cuda", "cpu"]


def _total_frames(tasks: Sequence[BagTask], args: argparse.Namespace) -> int:
    """Frames the run expects, from the bags' metadata (bags without it count 0), for the
    progress bar; every N-th with ``--every``."""
    every = max(1, args.every or 1)
    counts = (frame_count(t.bag.path, args.topic) for t in tasks)
    return sum(math.ceil(n / every) for n in counts if n)


#: Flags naming files whose content :func:`_model_files` hashes instead: a model folder that is
#: mounted elsewhere on a cluster, or moved, does not make finished bags look stale.
FILE_FLAGS = frozenset({"onnx_dir", "checkpoint", "detector", "prompts"})


def _replay_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that make a bag's outputs what they are (for the manifest's config print)."""
    skip = FLEET_FLAGS | FILE_FLAGS
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


def _model_files(args: argparse.Namespace) -> list[Path]:
    """The files the outputs depend on besides the input: the model's graphs (or its
    checkpoint), the detector, the prompts file."""
    from ..demo.model_choice import shipped_demo_dir

    files: list[Path] = []
    folder = Path(args.onnx_dir) if args.onnx_dir else None
    if not (args.model or args.checkpoint or args.onnx_dir):
        folder = shipped_demo_dir()
    if folder is not None:
        files.extend(sorted(folder.glob("*.onnx")))
    files.extend(Path(f) for f in (args.checkpoint, args.detector, args.prompts) if f)
    return files


def _write_table(manifest: Manifest, out: Path, fmt: str, summary: FleetSummary) -> None:
    """The fleet table from the parts of every bag in the manifest, by name."""
    parts = [
        out / e.outputs["frames"]["path"]
        for _, e in sorted(manifest.entries.items())
        if "frames" in e.outputs and (out / e.outputs["frames"]["path"]).is_file()
    ]
    path, rows = combine(parts, out / "fleet", fmt)
    summary.table, summary.table_rows = str(path), rows
