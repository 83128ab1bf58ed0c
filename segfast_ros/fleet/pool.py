"""Where the fleet's bags run: Ray actors (:class:`RayPool`), or this process
(:class:`LocalPool`, ``--address local``), behind one small interface.

Both hand bags out one at a time, in the order given (the driver sorts them largest first), to
whichever worker is free, and report each bag's :class:`~.worker.BagResult` as it comes. Ray
adds what a hand-written pool of processes lacks: workers on any number of machines, placement
by CPUs and GPUs, and fault tolerance. A Ray worker is an actor that keeps its model loaded; when
its process dies (killed, out of memory), Ray restarts it and runs the bag again, up to
``max_retries`` times, and the bag's outputs are whole because a retry starts from a clean work
folder (:mod:`.worker`). A worker that dies more often than that fails its bag alone and is
replaced. Ray is imported only here, and only by :class:`RayPool`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .worker import FAILED, INTERRUPTED, BagResult, BagTask, BagWorker, WorkerProgress

OnResult = Callable[[BagResult], None]
OnTick = Callable[[list[WorkerProgress]], None]

#: How to get Ray, for the message when it is missing.
RAY_HINT = (
    "pip install 'segfast_ros[fleet]' (Ray and pyarrow), or run in this process with "
    "--address local"
)
#: Seconds between progress polls.
TICK_S = 0.5


class FleetError(RuntimeError):
    """The run cannot go on at all (Ray missing or unreachable, workers that cannot load the
    model, an output folder of another run): the message says what and what to do."""


class Pool(Protocol):
    """Runs bag tasks on workers. ``label`` says where, ``workers`` how many, ``startup_s``
    how long the workers took to start (their models loaded)."""

    label: str
    workers: int
    startup_s: float

    def run(self, tasks: Sequence[BagTask], on_result: OnResult, on_tick: OnTick) -> None:
        """Replay every task, calling ``on_result`` with each bag's result as it finishes and
        ``on_tick`` with the workers' progress now and then.

        Raises:
            KeyboardInterrupt: Ctrl-C; the bags not finished are not reported.
        """
        ...

    def close(self) -> None:
        """Stop the workers (a bag in progress is abandoned in its work folder)."""
        ...


class LocalPool:
    """One worker in this process (``--address local``): no Ray, the same worker code.

    Args:
        args: ``segfast replay``'s flags.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.label = "this process (--address local)"
        self.workers = 1
        self.startup_s = 0.0
        self._worker: BagWorker | None = None

    def run(self, tasks: Sequence[BagTask], on_result: OnResult, on_tick: OnTick) -> None:
        if self._worker is None:
            started = time.perf_counter()
            self._worker = BagWorker(self.args, 0)
            self.startup_s = time.perf_counter() - started
        worker = self._worker
        worker.on_progress = lambda: on_tick([worker.progress()])
        for task in tasks:
            result = worker.replay_bag(task)
            if result.status == INTERRUPTED:  # the replay caught Ctrl-C and closed its output
                raise KeyboardInterrupt
            on_result(result)

    def close(self) -> None:
        self._worker = None


class RayPool:
    """Ray actors, each a :class:`~.worker.BagWorker` with its model loaded.

    Args:
        args: ``segfast replay``'s flags (each actor loads the model from them).
        address: ``None`` (a new local Ray instance, or the cluster ``RAY_ADDRESS`` names),
            ``auto`` (the running cluster) or ``ray://host:port`` (Ray Client). When Ray is
            already initialised in this process (a test's ``ray.init``), that instance is used
            and left running.
        workers: actors to start; None, as many as the cluster's CPUs (and GPUs, with
            ``gpus_per_worker``) allow now, which is also the most started (more would wait
            for resources that are not there; the label says so).
        cpus_per_worker, gpus_per_worker: what each actor reserves.
        max_retries: restarts of a dead actor, and retries of the bag it was replaying.

    Raises:
        FleetError: Ray is not installed, cannot be started or reached, or no worker fits
            the cluster.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        address: str | None,
        workers: int | None,
        cpus_per_worker: float,
        gpus_per_worker: float,
        max_retries: int,
    ) -> None:
        self.ray = import_ray()
        self.args, self.max_retries = args, max_retries
        self._owns = not self.ray.is_initialized()
        started = time.perf_counter()
        if self._owns:
            try:
                self.ray.init(address=address, include_dashboard=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = address or "a new local instance"
                raise FleetError(f"cannot start or reach Ray ({where}): {err}") from None
        resources = self.ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        fit = _fitting(resources, cpus_per_worker, gpus_per_worker)
        if fit < 1:  # an actor that fits nowhere would wait for ever
            raise FleetError(
                f"no worker fits the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs): each asks for "
                f"--cpus-per-worker {cpus_per_worker:g} and --gpus-per-worker "
                f"{gpus_per_worker:g}"
            )
        self.workers = min(workers or fit, fit)
        capped = f"; --workers {workers} asked, {fit} fit" if workers and workers > fit else ""
        self.label = (
            f"Ray ({cpus:g} CPUs, {gpus:g} GPUs; {self.workers} workers x "
            f"{cpus_per_worker:g} CPU"
            + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
            + f"{capped})"
        )
        self._actor_class = self.ray.remote(BagWorker).options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=max_retries,
            max_task_retries=max_retries,
            max_concurrency=2,  # progress() answers while replay_bag runs
        )
        self._actors: list[Any] = []
        self._init_s = time.perf_counter() - started
        self.startup_s = self._init_s

    def run(self, tasks: Sequence[BagTask], on_result: OnResult, on_tick: OnTick) -> None:
        ray = self.ray
        pending = deque(tasks)
        started = time.perf_counter()
        self._actors = self._start(range(min(self.workers, len(pending))))
        self.startup_s = self._init_s + time.perf_counter() - started
        running: dict[Any, tuple[int, BagTask]] = {}
        polls: dict[int, Any] = {}
        last: dict[int, WorkerProgress] = {}

        def submit(i: int) -> None:
            task = pending.popleft()
            running[self._actors[i].replay_bag.remote(task)] = (i, task)

        for i in range(len(self._actors)):
            submit(i)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=TICK_S)
            for ref in ready:
                i, task = running.pop(ref)
                polls.pop(i, None)
                last.pop(i, None)
                on_result(self._result(ref, i, task))
                if pending:
                    submit(i)
            on_tick(self._poll(polls, last, {i for i, _ in running.values()}))

    def _start(self, indices: Sequence[int]) -> list[Any]:
        """New actors, once their models are loaded (they load at the same time).

        Raises:
            FleetError: a worker could not load the model (its error).
        """
        actors = [self._actor_class.remote(self.args, i) for i in indices]
        for i, actor in zip(indices, actors, strict=True):
            try:
                self.ray.get(actor.progress.remote())
            except self.ray.exceptions.RayError as err:
                raise FleetError(f"worker {i} could not start: {_short(err)}") from None
        return actors

    def _result(self, ref: Any, index: int, task: BagTask) -> BagResult:
        """The bag's result; a worker that died more often than allowed, or an error the
        worker did not catch, fails the bag alone (the worker is replaced)."""
        errors = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except errors.RayActorError as err:
            self._actors[index] = self._start([index])[0]
            error = (
                "its worker died replaying it and Ray had no restart left (--max-retries "
                f"{self.max_retries} per worker; killed, or out of memory?): {_short(err)}"
            )
        except errors.RayTaskError as err:
            error = f"the worker failed: {_short(err)}"
        name, path = task.bag.name, str(task.bag.path)
        return BagResult(name, path, FAILED, error=error, worker=f"worker {index}")

    def _poll(
        self, polls: dict[int, Any], last: dict[int, WorkerProgress], busy: set[int]
    ) -> list[WorkerProgress]:
        """The busy workers' latest progress, asking each at most once at a time (a restarting
        worker answers late; its last answer stands in)."""
        ray = self.ray
        for i in busy:
            if i not in polls:
                polls[i] = self._actors[i].progress.remote()
        done, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=0)
        for i, ref in list(polls.items()):
            if ref in done:
                polls.pop(i)
                try:
                    last[i] = ray.get(ref)
                except ray.exceptions.RayError:
                    last.pop(i, None)
        return [last[i] for i in sorted(last) if i in busy]

    def close(self) -> None:
        """Stop the workers: the whole Ray instance when this pool started it, else each
        worker (a cluster's other work goes on)."""
        if self._owns:
            if self.ray.is_initialized():
                self.ray.shutdown()
        else:
            for actor in self._actors:
                with contextlib.suppress(Exception):  # already gone
                    self.ray.kill(actor, no_restart=True)
        self._actors = []


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        FleetError: Ray is not installed (the message says how to get it).
    """
    try:
        import ray
    except ImportError:
        raise FleetError(f"Ray is not installed: {RAY_HINT}") from None
    return ray


def _fitting(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` (and ``gpus``) the cluster holds now (0: none)."""
    n = math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)
    if gpus > 0:
        n = min(n, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
    return n


def _short(err: BaseException) -> str:
    """An error's last non-empty line (Ray wraps the worker's traceback around it)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__
