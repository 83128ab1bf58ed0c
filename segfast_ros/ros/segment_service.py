"""``~/segment``: admission, the worker pool, and the answer from a cached embedding.

Calls run on ``segment.workers`` threads of their own; at most ``segment.queue_depth`` are
held at once (running or waiting), and one more is answered at once with a "busy" refusal.
The service callback is a coroutine, so no executor thread waits for a decode and the
executor keeps taking requests off the DDS queue: each one is admitted or refused at once,
never left to overflow that queue.

A call's frame is chosen by stamp, the data's time (sim time under ``use_sim_time``); the waits
here and in :meth:`FrameIntake.frame_for <segfast_ros.ros.intake.FrameIntake.frame_for>` and the
service time in ``/diagnostics`` are wall time, so a paused ``/clock`` never holds a call.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rclpy.node import Node
from rclpy.task import Future

from segfast_ros.msg import SegmentResult
from segfast_ros.ros.conversions import stamp_to_ns
from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.params import NodeConfig
from segfast_ros.ros.qos import SERVICE_QOS
from segfast_ros.ros.segany import segment
from segfast_ros.runtime import Backend
from segfast_ros.srv import Segment

#: How long deactivate waits for admitted ~/segment calls to be answered before it removes the
#: service (a response sent on a destroyed service would be lost, and rclpy raises on it); wall
#: time.
SEGMENT_DRAIN_S = 10.0
#: The answer to a call that the node took while its service was being deactivated.
NOT_ACTIVE = "not active: ~/segment is being deactivated; call again once the node is active"


def _refused(resp: Segment.Response, message: str) -> Segment.Response:
    """``resp`` as a refusal that says why."""
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


class SegmentService:
    """The ``~/segment`` service of a node, while it is active.

    Args:
        node: the node that offers the service.
        health: counters and logging.
        frames: where the requested frame's embedding comes from.
        config: the node's current parameters (read per call: some change at runtime).
        backend: the loaded model (None while unconfigured).
        callback_group: a reentrant group, so that calls interleave.
    """

    def __init__(
        self,
        node: Node,
        health: Health,
        frames: FrameIntake,
        config: Callable[[], NodeConfig],
        backend: Callable[[], Backend | None],
        callback_group: Any,
    ) -> None:
        self._node = node
        self._health = health
        self._frames = frames
        self._config = config
        self._backend = backend
        self._group = callback_group
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._held = 0  # calls admitted and not yet answered
        self._service: Any = None

    @property
    def pool(self) -> ThreadPoolExecutor | None:
        """The worker pool, while the service is up."""
        return self._pool

    @property
    def name(self) -> str:
        """The service's resolved name (``<node namespace>/<node>/segment``)."""
        return self._node.resolve_service_name("~/segment")

    def start(self, workers: int) -> None:
        """Start ``workers`` worker threads and offer the service."""
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="segfast-segment")
        self._service = self._node.create_service(
            Segment,
            "~/segment",
            self._on_segment,
            qos_profile=SERVICE_QOS,
            callback_group=self._group,
        )

    def stop(self, *, drain: bool) -> None:
        """Take no more calls; running ones finish first, waiting ones are refused.

        Args:
            drain: answer the calls already admitted before the service goes (calls still
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
                    f"deactivating with {self._held} ~/segment calls unanswered after "
                    f"{SEGMENT_DRAIN_S:g} s"
                )
        if self._service is not None:
            self._node.destroy_service(self._service)
            self._service = None

    async def _on_segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        """``~/segment``: admit the call and await its answer from a segment worker."""
        start = time.perf_counter()
        health = self._health
        health.counts["segment_calls"] += 1
        depth = self._config().segment_queue_depth
        with self._lock:
            pool, held = self._pool, self._held
            admitted = pool is not None and held < depth
            if admitted:
                self._held += 1
        if pool is None:
            return _refused(resp, NOT_ACTIVE)
        if not admitted:
            health.counts["segment_busy"] += 1
            health.warn(f"~/segment refused: busy (segment.queue_depth={depth})")
            return _refused(
                resp,
                f"busy: {held} ~/segment calls are running or waiting, the most this node holds "
                f"(segment.queue_depth={depth}); call again later",
            )
        try:
            answered: Future = Future()
            executor = self._node.executor
            try:
                work = pool.submit(self._answer, req, resp, start)
            except RuntimeError:  # the pool shut down since this call was admitted
                return _refused(resp, NOT_ACTIVE)
            work.add_done_callback(lambda _: _resolve(answered, executor))
            await answered
            # Cancelled: deactivation came before a worker took this call.
            return _refused(resp, NOT_ACTIVE) if work.cancelled() else work.result()
        finally:
            with self._lock:
                self._held -= 1

    def _answer(
        self, req: Segment.Request, resp: Segment.Response, start: float
    ) -> Segment.Response:
        """The work of one ``~/segment`` call, on a segment worker thread."""
        config = self._config()
        try:
            encoded = self._frames.frame_for(stamp_to_ns(req.stamp))
            resp.header = encoded.frame.header
            backend = self._backend()
            if backend is None:
                raise LookupError("the node is not configured (no model loaded)")
            resp.results = segment(
                encoded.predictor(backend),
                req,
                encoded.frame.header,
                SegmentResult,
                max_sets=config.max_prompt_sets,
                max_image_bytes=config.segment_max_image_bytes,
            )
            resp.success = True
        except (ValueError, LookupError) as err:
            resp.success, resp.message = False, str(err)
        except Exception as err:  # reported to the caller; the node keeps serving
            resp.success = False
            resp.message = f"internal error ({type(err).__name__}): {err}"
            self._node.get_logger().error(f"~/segment failed:\n{traceback.format_exc()}")
        if not resp.success:
            self._health.counts["segment_errors"] += 1
            self._health.warn(f"~/segment refused: {resp.message}")
        self._health.segany.add((time.perf_counter() - start) * 1e3)
        return resp
