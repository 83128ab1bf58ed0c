"""Planner calls (``~/segment``, ``~/track``): one admission, one worker pool, one drain.

Calls run on ``segment.workers`` threads of their own; at most ``segment.queue_depth`` are
held at once (running or waiting, both services together), and one more is answered at once
with a "busy" refusal. Each service callback is a coroutine, so no executor thread waits for a
decode and the executor keeps taking requests off the DDS queue: each one is admitted or
refused at once, never left to overflow that queue.

The waits here are wall time, so a paused ``/clock`` never holds a call.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rclpy.node import Node
from rclpy.task import Future

from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.qos import SERVICE_QOS

#: How long deactivate waits for admitted calls to be answered before it removes the services
#: (a response sent on a destroyed service would be lost, and rclpy raises on it); wall time.
SEGMENT_DRAIN_S = 10.0

#: ``answer(request, response, start)``: the work of one call, on a worker thread; ``start`` is
#: ``time.perf_counter()`` when the call came in.
Answer = Callable[[Any, Any, float], Any]


def not_active(service: str) -> str:
    """The answer to a call that the node took while its services were being deactivated."""
    return f"not active: {service} is being deactivated; call again once the node is active"


def refused(resp: Any, message: str) -> Any:
    """``resp`` (any response with ``success`` and ``message``) as a refusal that says why."""
    resp.success, resp.message = False, message
    return resp


def _resolve(future: Future, executor: Any) -> None:
    """Complete ``future`` from a worker thread and wake ``executor`` to resume its awaiter.

    rclpy's executor resumes a waiting coroutine only when it wakes up; without the wake-up the
    answer would wait for the next unrelated event (a timer, a frame).
    """
    future.set_result(None)
    if executor is not None:
        with contextlib.suppress(Exception):  # the executor is gone (shutdown): nothing to wake
            executor.wake()


class ServiceCalls:
    """The admission and worker pool of a node's planner services, while it is active.

    Args:
        node: the node that offers the services.
        health: counters (``<kind>_calls``, ``<kind>_busy``) and logging.
        depth: the most calls held at once (read per call: ``segment.queue_depth``).
        callback_group: a reentrant group, so that calls interleave.
    """

    def __init__(
        self, node: Node, health: Health, depth: Callable[[], int], callback_group: Any
    ) -> None:
        self._node = node
        self._health = health
        self._depth = depth
        self._group = callback_group
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._held = 0  # calls admitted and not yet answered
        self._services: list[Any] = []

    @property
    def pool(self) -> ThreadPoolExecutor | None:
        """The worker pool, while the services are up."""
        return self._pool

    def start(self, workers: int) -> None:
        """Start ``workers`` worker threads (activate, before :meth:`offer`)."""
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="segfast-segment")

    def offer(self, srv_type: type, name: str, answer: Answer, kind: str) -> str:
        """Offer service ``name`` whose calls ``answer`` runs on the pool; its resolved name.

        ``kind`` names its counters in ``/diagnostics`` (``<kind>_calls``, ``<kind>_busy``).
        """
        resolved = self._node.resolve_service_name(name)

        async def on_call(req: Any, resp: Any) -> Any:
            return await self._admit(req, resp, answer, kind, resolved)

        self._services.append(
            self._node.create_service(
                srv_type, name, on_call, qos_profile=SERVICE_QOS, callback_group=self._group
            )
        )
        return resolved

    def stop(self, *, drain: bool) -> None:
        """Take no more calls; running ones finish first, waiting ones are refused.

        Args:
            drain: answer the calls already admitted before the services go (calls still
                waiting for a worker get a refusal); needs the executor to keep spinning, as
                it does during a lifecycle transition.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if drain:
            deadline = time.monotonic() + SEGMENT_DRAIN_S
            while self._held > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if self._held > 0:
                self._node.get_logger().warning(
                    f"deactivating with {self._held} ~/segment or ~/track calls unanswered "
                    f"after {SEGMENT_DRAIN_S:g} s"
                )
        for service in self._services:
            self._node.destroy_service(service)
        self._services = []

    async def _admit(self, req: Any, resp: Any, answer: Answer, kind: str, name: str) -> Any:
        """Admit one call and await its answer from a worker."""
        start = time.perf_counter()
        health = self._health
        health.counts[f"{kind}_calls"] += 1
        depth = self._depth()
        with self._lock:
            pool, held = self._pool, self._held
            admitted = pool is not None and held < depth
            if admitted:
                self._held += 1
        if pool is None:
            return refused(resp, not_active(name))
        if not admitted:
            health.counts[f"{kind}_busy"] += 1
            health.warn(f"{name} refused: busy (segment.queue_depth={depth})")
            return refused(
                resp,
                f"busy: {held} ~/segment or ~/track calls are running or waiting, the most "
                f"this node holds (segment.queue_depth={depth}); call again later",
            )
        try:
            answered: Future = Future()
            executor = self._node.executor
            try:
                work = pool.submit(answer, req, resp, start)
            except RuntimeError:  # the pool shut down since this call was admitted
                return refused(resp, not_active(name))
            work.add_done_callback(lambda _: _resolve(answered, executor))
            await answered
            # Cancelled: deactivation came before a worker took this call.
            return refused(resp, not_active(name)) if work.cancelled() else work.result()
        finally:
            with self._lock:
                self._held -= 1
