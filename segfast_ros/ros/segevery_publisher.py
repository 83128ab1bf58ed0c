"""SegEvery on the latest encoded frame: ``~/instances``, ``~/instances/label``, ``~/overlay``.

A timer at ``segevery.rate`` hands the newest cached frame (if SegEvery has not seen it) to a
:class:`~segfast_ros.pipeline.frames.LatestWorker` of its own; a pass that is still running
when the next tick comes makes that tick a skip. The three outputs are lifecycle publishers:
created at ``configure``, they publish only while the node is active.

Each pass's instances go through the node's tracking (:mod:`.tracking`): with
``tracking.segevery_ids`` they carry a ``track_id`` and ``track_state`` that persist while the
object stays in view (``TRACK_NONE`` otherwise), and a lost prompted target that an instance
overlaps well is re-acquired. ``~/instances/label`` keeps the index + 1 labels. With depth on
(:mod:`.depth`) each instance's ``position_3d`` is filled from the depth matched to the frame,
and right after ``~/instances`` the vision_msgs outputs mirror it (:mod:`.vision`:
``~/detections``, ``~/detections_3d``, ``~/points`` while subscribed).

The timer runs on the node's clock: under ``use_sim_time`` it ticks ``segevery.rate`` times per
second of sim time (faster than wall time when a bag plays fast, never while ``/clock`` is
paused), as the replay schedules SegEvery on bag time. A pass's ``segevery_ms`` is the CPU work's
wall time.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import Image

from segfast_ros.msg import InstanceArray
from segfast_ros.pipeline.frames import EmbeddingCache, EncodedFrame, LatestWorker
from segfast_ros.pipeline.render import instance_record
from segfast_ros.pipeline.tracks import Tracking
from segfast_ros.ros.conversions import (
    instances_to_label_image,
    labels_to_mono16_msg,
    overlay,
    record_to_msg,
    rgb_to_image_msg,
)
from segfast_ros.ros.depth import DepthInput
from segfast_ros.ros.diagnostics import Health, fmt_stamp
from segfast_ros.ros.params import SEGEVERY, strategy_kwargs
from segfast_ros.ros.qos import image_output_qos, instances_qos, overridable
from segfast_ros.ros.vision import VisionOutputs
from segfast_ros.runtime import Backend
from segfast_ros.runtime.paths import resolve_model_path
from segfast_ros.segevery.base import SegEvery
from segfast_ros.segevery.registry import build_segevery


class SegEveryPublisher:
    """The SegEvery strategy, its timer and worker thread, and the three outputs.

    Args:
        node: the lifecycle node that publishes.
        health: counters and logging.
        backend: the loaded model (None while unconfigured).
        cache: the embedding cache (None while unconfigured).
        timer_group: the callback group of the SegEvery timer.
        tracking: the node's tracking (None while unconfigured): each pass's instances get
            their track IDs from it, and its lost targets a chance to be re-acquired.
        depth: the depth input; each pass's instances are lifted to 3D with it.
        vision: the vision_msgs outputs (``~/detections``, ``~/detections_3d``, ``~/points``),
            published right after ``~/instances`` with the same header and records.
    """

    def __init__(
        self,
        node: LifecycleNode,
        health: Health,
        backend: Callable[[], Backend | None],
        cache: Callable[[], EmbeddingCache | None],
        timer_group: Any,
        tracking: Callable[[], Tracking | None],
        depth: DepthInput,
        vision: VisionOutputs,
    ) -> None:
        self._node = node
        self._depth = depth
        self._vision = vision
        self._tracking = tracking
        self._health = health
        self._backend = backend
        self._cache = cache
        self._timer_group = timer_group
        self.strategy: SegEvery | None = None
        self.fallback = ""  # why object_aware was replaced by grid, while it is
        self.publishers: dict[str, Any] = {}
        self._timer: Any = None
        self._worker: LatestWorker[EncodedFrame] | None = None
        # (stamp key, ready time) of the frame SegEvery last took: not the frame itself, which
        # would keep its pixels alive after the cache let them go.
        self._last: tuple[int, float] | None = None

    # ------------------------------------------------------------------ strategy

    def build_strategy(self, values: dict[str, Any], *, fallback: bool) -> SegEvery:
        """The configured SegEvery strategy (the caller makes it :attr:`strategy`).

        With ``fallback``, an object-aware strategy whose detector is unset or does not load
        becomes the grid strategy, with a warning that ``/diagnostics`` repeats (WARN) until a
        strategy is built without falling back; without, that is a ValueError.
        """
        name = values[f"{SEGEVERY}.strategy"]
        kwargs = strategy_kwargs(values, name)
        if name != "object_aware":
            strategy = build_segevery(name, **kwargs)
            self.fallback = ""
            return strategy
        problem = ""
        if not kwargs["detector"]:
            problem = (
                f"parameter {SEGEVERY}.object_aware.detector is empty (expected a YOLOv8-layout "
                "detector ONNX file)"
            )
        else:
            kwargs["detector"] = str(resolve_model_path(kwargs["detector"]))
            try:
                strategy = build_segevery(name, **kwargs)
                self.fallback = ""
                return strategy
            except (FileNotFoundError, ValueError) as err:
                problem = str(err)
        if not fallback:
            raise ValueError(f"object_aware SegEvery cannot start: {problem}")
        strategy = build_segevery("grid", **strategy_kwargs(values, "grid"))
        self.fallback = f"object_aware unavailable, using grid: {problem}"
        self._health.last_error = self.fallback
        self._node.get_logger().warning(
            f"object_aware SegEvery unavailable: {problem}; using grid"
        )
        return strategy

    # ------------------------------------------------------------------ lifecycle

    def create_publishers(self) -> None:
        """The three outputs, as lifecycle publishers (configure)."""
        node = self._node
        self.publishers = {
            "instances": node.create_lifecycle_publisher(
                InstanceArray,
                "~/instances",
                instances_qos(),
                qos_overriding_options=overridable(),
            ),
            "label": node.create_lifecycle_publisher(
                Image,
                "~/instances/label",
                image_output_qos(),
                qos_overriding_options=overridable(),
            ),
            "overlay": node.create_lifecycle_publisher(
                Image, "~/overlay", image_output_qos(), qos_overriding_options=overridable()
            ),
        }

    def release(self) -> None:
        """Undo configure: the publishers and the strategy go."""
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}
        self.strategy = None
        self.fallback = ""
        self._last = None

    def start(self, rate: float) -> None:
        """Start the worker thread and the timer (activate)."""
        self._worker = LatestWorker(self._run, "segfast-segevery", self._on_error)
        self.restart_timer(rate)

    def restart_timer(self, rate: float) -> None:
        """Tick at ``rate`` Hz from now on (0: no timer, SegEvery off)."""
        self.stop_timer()
        if rate > 0:
            self._timer = self._node.create_timer(1.0 / rate, self._on_timer, self._timer_group)

    def stop_timer(self) -> None:
        """No more ticks (deactivate); a pass already handed to the worker still runs."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None

    def stop_worker(self) -> None:
        """End the worker thread after the pass it runs (deactivate)."""
        if self._worker is not None:
            self._worker.stop()
        self._worker = None

    # ------------------------------------------------------------------ passes

    def _on_timer(self) -> None:
        cache, worker = self._cache(), self._worker
        if cache is None or worker is None:
            return
        latest = cache.latest()
        if latest is None or (latest.key, latest.ready) == self._last:
            return  # nothing new to segment
        if worker.busy:
            self._health.counts["segevery_skipped"] += 1
            return
        self._last = (latest.key, latest.ready)
        worker.submit(latest)

    def _run(self, encoded: EncodedFrame) -> None:
        backend, strategy, pubs = self._backend(), self.strategy, dict(self.publishers)
        if backend is None or strategy is None or not pubs:
            return
        start = time.perf_counter()
        image = encoded.frame.image  # the latest frame's, which the cache keeps
        result = strategy(encoded.predictor(backend), image)
        elapsed = (time.perf_counter() - start) * 1e3
        header = encoded.frame.header
        tracking = self._tracking()
        if tracking is not None:  # track IDs (or TRACK_NONE) and re-acquisition
            records = tracking.on_segevery(result.instances, encoded.key, encoded.hw, image)
        else:
            records = [instance_record(inst, i) for i, inst in enumerate(result.instances)]
        # 3D from the depth nearest this frame's stamp (never waits: 2D only without one).
        depth, vision = self._depth, self._vision
        lift = depth.lift(encoded.key, encoded.hw, records, points=vision.wants_points())
        records = lift.records
        pubs["instances"].publish(
            InstanceArray(
                header=header,
                strategy=result.strategy,
                instances=[record_to_msg(rec) for rec in records],
                decoder_prompts=int(result.decoder_prompts),
                segevery_ms=float(elapsed),
            )
        )
        vision.publish_instances(
            header,
            records,
            lifted=lift.lifted,
            oriented=depth.settings.oriented_boxes,
            voxel_m=depth.cloud_voxel,
        )
        # One full-frame array or message at a time: at 8K the label image is 66 MB, the
        # overlay 100 MB, and each message holds a copy of its array.
        labels = instances_to_label_image(result.instances, encoded.hw)
        del result, records, lift
        pubs["label"].publish(labels_to_mono16_msg(labels, header))
        if image is not None and pubs["overlay"].get_subscription_count() > 0:
            drawn = overlay(image, labels)
            del labels
            pubs["overlay"].publish(rgb_to_image_msg(drawn, header))
        self._health.segevery_runs.add(elapsed)

    def _on_error(self, encoded: EncodedFrame, err: BaseException) -> None:
        if not self._node.context.ok():
            # The context was shut down while this pass ran, so its publish failed: that is
            # the shutdown under way, not an error to report.
            return
        health = self._health
        health.counts["segevery_errors"] += 1
        health.last_error = f"SegEvery failed (stamp {fmt_stamp(encoded.key)}): {err}"
        health.warn(health.last_error, "".join(traceback.format_exception(err)), error=True)
