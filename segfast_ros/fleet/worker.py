"""One fleet worker: the model loaded once, then bag after bag through the same
:func:`~segfast_ros.replay.replay` as ``segfast replay``.

A bag is replayed into its own folder under ``DIR/work/<name>/`` and its outputs are moved into
their final places (``DIR/bags/<name>``, ``DIR/coco/<name>.json``, ``DIR/summaries/<name>.json``,
``DIR/frames/<name>.<ext>``) only when the replay has ended by itself, complete or failed on a
corrupt input. A worker killed part-way (Ray retries the bag on a restarted worker) or a Ctrl-C
leaves only the work folder, which the next attempt deletes first: a bag's final outputs are
always whole. The output bag is written as ``<name>/`` inside the work folder, so its storage
file has the name a plain ``segfast replay IN DIR/bags/<name>`` gives it.

:class:`BagWorker` is a plain class: the in-process pool uses it as it is, the Ray pool as an
actor class (:mod:`.pool`); nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..replay.summary import FrameRow, ReplaySummary
from .inputs import BagInput
from .table import RowWriter

#: Where a bag's outputs end up: kind -> (folder under DIR, suffix; "" for the bag folder).
OUTPUT_PLACES: dict[str, tuple[str, str]] = {
    "bag": ("bags", ""),
    "coco": ("coco", ".json"),
    "summary": ("summaries", ".json"),
    "frames": ("frames", ""),  # the suffix is the table format's
}
DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BagTask:
    """One bag to replay.

    Attributes:
        bag: the input.
        out_dir: the fleet's output folder (``--out``), seen by every worker.
        table_format: ``parquet`` or ``csv`` (:func:`~.table.table_format`).
    """

    bag: BagInput
    out_dir: Path
    table_format: str


@dataclass
class BagResult:
    """What became of a bag.

    Attributes:
        name: the bag's output name.
        input: the input bag's path.
        status: ``done`` (complete), ``failed`` (the input could not be opened or is corrupt
            part-way: the outputs hold what was processed) or ``interrupted`` (Ctrl-C: nothing
            moved into place).
        error: why it failed.
        frames, instances: processed frames and SegEvery instances written.
        wall_s: the replay's own time (the bag opened to the output closed).
        worker: who replayed it.
        attempts: how many times it was started (more than 1: a worker died on it and Ray
            retried it).
        outputs: kind (``bag``, ``coco``, ``summary``, ``frames``) -> final path.
    """

    name: str
    input: str
    status: str
    error: str | None = None
    frames: int = 0
    instances: int = 0
    wall_s: float = 0.0
    worker: str = ""
    attempts: int = 1
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerProgress:
    """A worker's state for the progress bar (and for a test that kills it part-way)."""

    label: str
    pid: int
    bag: str | None
    frames: int


class BagWorker:
    """Loads the model as ``segfast replay``'s flags say, once, and replays bags with it.

    Args:
        args: ``segfast replay``'s flags (:func:`~segfast_ros.demo.run.prepare_replay`).
        index: the worker's number, for its label.
    """

    def __init__(self, args: argparse.Namespace, index: int) -> None:
        from ..demo.run import prepare_replay

        self.prepared = prepare_replay(args)
        self.label = f"worker {index} (pid {os.getpid()} on {socket.gethostname()})"
        self._lock = threading.Lock()
        self._bag: str | None = None
        self._frames = 0
        #: Called after each frame (the in-process pool redraws its progress bar).
        self.on_progress: Callable[[], None] | None = None

    def progress(self) -> WorkerProgress:
        """The bag being replayed and its frames done so far (callable while a bag runs: the
        Ray actor takes two calls at once)."""
        with self._lock:
            return WorkerProgress(self.label, os.getpid(), self._bag, self._frames)

    def replay_bag(self, task: BagTask) -> BagResult:
        """Replay one bag into its work folder, then move its outputs into place.

        Never raises for a bad bag: an input that cannot be opened, or is corrupt part-way,
        gives a ``failed`` result with the reason.
        """
        from ..replay import BagError, replay

        name, out = task.bag.name, Path(task.out_dir)
        work = out / "work" / name
        attempts = _next_attempt(out / "work" / f"{name}.attempts")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        prepared = self.prepared
        opts = dataclasses.replace(
            prepared.options, coco=work / "coco.json", overwrite=True, progress=False
        )
        rows = _Rows(work / "frames", task.table_format, str(task.bag.path), self.label)
        with self._lock:
            self._bag, self._frames = name, 0
        started = time.perf_counter()
        try:
            summary = replay(
                task.bag.path,
                work / name,
                prepared.predictor,
                prepared.segevery,
                opts,
                on_frame=lambda summary: self._count(summary, rows),
                on_row=rows.add,
            )
        except Exception as err:  # one bad bag (or a bug it meets) must not stop the fleet
            if not isinstance(err, (BagError, OSError, ValueError)):
                log.exception("replaying %s failed", task.bag.path)
            summary = ReplaySummary(input=task.bag.path, output=out / "bags" / name)
            summary.error = str(err) if isinstance(err, BagError) else _describe(err)
            summary.wall_s = time.perf_counter() - started
        finally:
            with self._lock:
                self._bag = None
        rows.close(summary.topic)
        result = BagResult(
            name,
            str(task.bag.path),
            INTERRUPTED if summary.interrupted else (DONE if summary.complete else FAILED),
            error=summary.error,
            frames=summary.processed,
            instances=summary.instances,
            wall_s=summary.wall_s,
            worker=self.label,
            attempts=attempts,
        )
        if result.status != INTERRUPTED:
            result.outputs = _move_into_place(work, out, name, summary, rows.path)
            shutil.rmtree(work, ignore_errors=True)
            (out / "work" / f"{name}.attempts").unlink(missing_ok=True)
        return result

    def _count(self, summary: ReplaySummary, rows: _Rows) -> None:
        rows.topic = summary.topic
        with self._lock:
            self._frames = summary.processed
        if self.on_progress is not None:
            self.on_progress()


class _Rows:
    """The bag's frame rows, streamed to its part of the fleet table; the writer is opened at
    the first row, when the replay has picked the topic (``on_frame`` of a frame always comes
    before its row)."""

    def __init__(self, stem: Path, fmt: str, bag: str, worker: str) -> None:
        self.stem, self.fmt, self.bag, self.worker = stem, fmt, bag, worker
        self.topic = ""
        self.writer: RowWriter | None = None
        self.path: Path | None = None

    def add(self, row: FrameRow) -> None:
        if self.writer is None:
            self.writer = RowWriter(
                self.stem, self.fmt, bag=self.bag, topic=self.topic, worker=self.worker
            )
        self.writer.add(row)

    def close(self, topic: str) -> None:
        """Close the part (an empty one when the bag gave no frames)."""
        if self.writer is None:
            self.topic = topic
            self.writer = RowWriter(self.stem, self.fmt, bag=self.bag, topic=topic, worker="")
        self.path = self.writer.close()


def _next_attempt(marker: Path) -> int:
    """Count this start of a bag in its marker file (left by a start that died)."""
    try:
        before = int(marker.read_text())
    except (OSError, ValueError):
        before = 0
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(before + 1))
    return before + 1


def _move_into_place(
    work: Path, out: Path, name: str, summary: ReplaySummary, frames: Path | None
) -> dict[str, Path]:
    """The work folder's outputs moved to their final places (replacing an older run's); the
    bag summary written there with the final paths. Returns kind -> final path."""
    final: dict[str, Path] = {}
    sources: dict[str, Path | None] = {
        "bag": work / name,
        "coco": work / "coco.json",
        "frames": frames,
    }
    for kind, source in sources.items():
        if source is None or not source.exists():
            continue
        folder, suffix = OUTPUT_PLACES[kind]
        target = out / folder / (name + (suffix or source.suffix))
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove(target)
        os.replace(source, target)
        final[kind] = target
    summary.output = out / "bags" / name
    moved = {"coco": "coco", "output bag": "bag"}  # the replay's names for its files
    summary.files = {
        what: str(final.get(moved.get(what, ""), path)) for what, path in summary.files.items()
    }
    doc: dict[str, Any] = summary.to_json()
    target = out / "summaries" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2))
    final["summary"] = target
    return final


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
