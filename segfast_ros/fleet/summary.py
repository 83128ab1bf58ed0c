"""What a ``segfast replay-many`` run did: bags done, failed, skipped and not run, frames,
throughput in all and per worker, where the results are.

Filled by the driver (:mod:`.run`) as bags finish; printed (:meth:`FleetSummary.format`) and
written as ``DIR/summary.json`` (:meth:`FleetSummary.to_json`) at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .worker import DONE, BagResult


@dataclass
class WorkerStats:
    """One worker's share: bags, frames, and the seconds it spent replaying them."""

    bags: int = 0
    frames: int = 0
    busy_s: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class FleetSummary:
    """What a fleet run did.

    Attributes:
        out_dir: the output folder.
        bags: input bags found.
        table_format: ``parquet`` or ``csv``.
        pool: where the bags ran.
        done: bags replayed completely in this run.
        failed: bags that failed in this run, with why (a corrupt input, a worker that kept
            dying); their outputs hold what was processed.
        skipped: bags the manifest already had complete (``--resume``).
        not_run: bags not finished when the run was interrupted.
        retried: bags started more than once (a worker died on them), with the attempts.
        frames, instances: processed in this run.
        wall_s: the run's time, from the workers' start (Ray's too, when the run starts it)
            to the last bag's result; stopping Ray and writing the table come after.
        startup_s: Ray's start (when the run starts it) and the workers' (their models
            loaded); part of ``wall_s``.
        workers: each worker's share.
        table, table_rows: the fleet table and its rows (every bag in the manifest).
        interrupted: Ctrl-C stopped the run.
    """

    out_dir: Path
    bags: int = 0
    table_format: str = ""
    pool: str = ""
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    retried: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    instances: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    table: str = ""
    table_rows: int = 0
    interrupted: bool = False

    def add(self, result: BagResult) -> None:
        """Count a finished bag."""
        if result.status == DONE:
            self.done.append(result.name)
        else:
            self.failed[result.name] = result.error or "failed"
        if result.attempts > 1:
            self.retried[result.name] = result.attempts
        self.frames += result.frames
        self.instances += result.instances
        stats = self.workers.setdefault(result.worker, WorkerStats())
        stats.bags += 1
        stats.frames += result.frames
        stats.busy_s += result.wall_s

    def reported(self, name: str) -> bool:
        return name in self.failed or name in self.done

    @property
    def complete(self) -> bool:
        """Every bag is complete (done now or before) and the run was not interrupted."""
        return not self.failed and not self.not_run and not self.interrupted

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def progress_text(self) -> str:
        finished = len(self.done) + len(self.failed) + len(self.skipped)
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{finished}/{self.bags} bags{failed}"

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "bags": self.bags,
            "pool": self.pool,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "not_run": self.not_run,
            "retried": self.retried,
            "frames": self.frames,
            "instances": self.instances,
            "wall_s": self.wall_s,
            "startup_s": self.startup_s,
            "fps": self.fps,
            "workers": {
                label: {"bags": s.bags, "frames": s.frames, "busy_s": s.busy_s, "fps": s.fps}
                for label, s in sorted(self.workers.items())
            },
            "table": self.table,
            "table_format": self.table_format,
            "table_rows": self.table_rows,
            "interrupted": self.interrupted,
            "complete": self.complete,
        }

    def format(self) -> str:
        """The summary for a person: counts, throughput, each worker, each failure."""
        lines = [
            f"replay-many -> {self.out_dir} on {self.pool or 'nothing (all complete)'}",
            f"  bags: {self.bags} found, {len(self.done)} done, {len(self.failed)} failed, "
            f"{len(self.skipped)} already complete (--resume), {len(self.not_run)} not run",
            f"  frames: {self.frames} in {self.wall_s:.1f} s = {self.fps:.2f} frames/s in all "
            f"(start-up {self.startup_s:.1f} s); {self.instances} instances",
        ]
        for label, s in sorted(self.workers.items()):
            lines.append(
                f"  {label}: {s.bags} bags, {s.frames} frames in {s.busy_s:.1f} s busy = "
                f"{s.fps:.2f} frames/s"
            )
        for name, attempts in sorted(self.retried.items()):
            lines.append(f"  retried: {name} ({attempts} attempts: a worker died on it)")
        for name, error in sorted(self.failed.items()):
            lines.append(f"  FAILED {name}: {error}")
        lines.append(
            f"  table: {self.table} ({self.table_rows} rows); manifest: "
            f"{self.out_dir / 'manifest.json'}"
        )
        if self.interrupted:
            lines.append(
                f"  INTERRUPTED: {len(self.not_run)} bags not finished; the manifest lists "
                "the finished ones; --resume continues"
            )
        return "\n".join(lines)
