"""``~/segment``: the answer from a cached embedding, on the node's planner-call workers.

Admission, the worker pool and the drain at deactivate are :class:`~.calls.ServiceCalls`,
shared with ``~/track``. A request with ``return_3d`` gets each mask's ``position_3d`` from the
depth matched to the frame (:mod:`.depth`; ``valid`` false without one, never a wait).

A call's frame is chosen by stamp, the data's time (sim time under ``use_sim_time``); the waits
in :meth:`FrameIntake.frame_for <segfast_ros.ros.intake.FrameIntake.frame_for>` and the service
time in ``/diagnostics`` are wall time, so a paused ``/clock`` never holds a call.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from rclpy.node import Node

from segfast_ros.msg import SegmentResult
from segfast_ros.ros.calls import ServiceCalls
from segfast_ros.ros.conversions import stamp_to_ns
from segfast_ros.ros.depth import DepthInput
from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.params import NodeConfig
from segfast_ros.ros.segany import segment
from segfast_ros.runtime import Backend
from segfast_ros.srv import Segment


def internal_error(node: Node, service: str, err: Exception) -> str:
    """Log an unexpected failure of a call with its traceback; the message for the caller."""
    node.get_logger().error(f"{service} failed:\n{traceback.format_exc()}")
    return f"internal error ({type(err).__name__}): {err}"


class SegmentService:
    """The ``~/segment`` service of a node, while it is active.

    Args:
        node: the node that offers the service.
        health: counters and logging.
        calls: the admission and workers it runs on.
        frames: where the requested frame's embedding comes from.
        config: the node's current parameters (read per call: some change at runtime).
        backend: the loaded model (None while unconfigured).
        depth: the depth input (``return_3d`` lifts the masks with it).
    """

    def __init__(
        self,
        node: Node,
        health: Health,
        calls: ServiceCalls,
        frames: FrameIntake,
        config: Callable[[], NodeConfig],
        backend: Callable[[], Backend | None],
        depth: DepthInput,
    ) -> None:
        self._node = node
        self._depth = depth
        self._health = health
        self._calls = calls
        self._frames = frames
        self._config = config
        self._backend = backend
        self.name = node.resolve_service_name("~/segment")

    def start(self) -> None:
        """Offer the service (activate, once the workers run); :meth:`ServiceCalls.stop`
        removes it."""
        self.name = self._calls.offer(Segment, "~/segment", self._answer, "segment")

    def _answer(
        self, req: Segment.Request, resp: Segment.Response, start: float
    ) -> Segment.Response:
        """The work of one ``~/segment`` call, on a worker thread."""
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
                lift=lambda records: self._depth.lift(encoded.key, encoded.hw, records).records,
            )
            resp.success = True
        except (ValueError, LookupError) as err:
            resp.success, resp.message = False, str(err)
        except Exception as err:  # reported to the caller; the node keeps serving
            resp.success, resp.message = False, internal_error(self._node, "~/segment", err)
        if not resp.success:
            self._health.counts["segment_errors"] += 1
            self._health.warn(f"~/segment refused: {resp.message}")
        self._health.segany.add((time.perf_counter() - start) * 1e3)
        return resp
