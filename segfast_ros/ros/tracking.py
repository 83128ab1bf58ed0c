"""Prompted targets over ROS: the ``~/track`` service, ``~/tracks`` and ``~/tracks/label``.

A planner adds targets with ``~/track`` (``srv/Track.srv``) on a cached frame; from then on
every newly encoded frame is handed to a :class:`~segfast_ros.pipeline.frames.LatestWorker` of
its own (never the encoder's thread, so encoding is not delayed), which decodes every target in
one batched decoder call (:meth:`Tracking.on_frame <segfast_ros.pipeline.tracks.Tracking>`)
and publishes:

* ``~/tracks`` (``InstanceArray``): header = the source frame's, ``strategy`` "targets", one
  instance per target in ID order (``track_id`` = target ID, ``track_state`` TRACKED or LOST),
  ``decoder_prompts`` = targets decoded on this frame, ``segevery_ms`` = the step's wall time;
* ``~/tracks/label`` (``mono16``): pixel = target ID, 0 background, same header;
* with depth on (:mod:`.depth`), each target's ``position_3d`` (also in ``~/track``'s
  answers), and ``~/tracks/detections_3d`` right after ``~/tracks`` (:mod:`.vision`).

Nothing is published while there are no targets. Both are lifecycle publishers (created at
configure, publishing while active), with ``~/instances``'s and ``~/instances/label``'s QoS
(:mod:`.qos`, overridable).

``~/track`` calls run on the planner-call workers shared with ``~/segment``
(:class:`~.calls.ServiceCalls`): same admission, same drain at deactivate. ADD waits like
``~/segment`` for a stamp still being encoded, then steps the new targets through the cached
frames newer than that stamp (in stamp order), so they are current when the call returns.

Lifecycle: the targets (and SegEvery's track IDs) live from configure to cleanup. A
deactivate/activate cycle keeps them: a planner's targets are followed again from the first
frame after activation (a target no longer where it was is reported lost, then re-acquired).
Cleanup, shutdown and an error transition drop them with the model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from segfast_ros.msg import InstanceArray
from segfast_ros.pipeline.frames import EncodedFrame, LatestWorker
from segfast_ros.pipeline.render import InstanceRecord
from segfast_ros.pipeline.tracks import (
    Tracking,
    decoded_count,
    due_targets,
    target_records,
    targets_label_image,
)
from segfast_ros.ros.calls import ServiceCalls
from segfast_ros.ros.conversions import labels_to_mono16_msg, record_to_msg, stamp_to_ns
from segfast_ros.ros.depth import DepthInput
from segfast_ros.ros.diagnostics import Health, fmt_stamp
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.qos import image_output_qos, instances_qos, overridable
from segfast_ros.ros.segment_service import internal_error
from segfast_ros.ros.vision import VisionOutputs
from segfast_ros.runtime import Backend
from segfast_ros.srv import Track
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import TRACK_LOST
from segfast_ros.tracking.targets import TargetResult

#: Track.Request.action values and their names.
ACTIONS: dict[int, str] = {
    Track.Request.ADD: "ADD",
    Track.Request.REMOVE: "REMOVE",
    Track.Request.CLEAR: "CLEAR",
    Track.Request.LIST: "LIST",
}
#: The ``strategy`` of a ``~/tracks`` message.
TARGETS_STRATEGY = "targets"


def _prompt_fields(req: Track.Request) -> list[str]:
    """The ADD-only fields ``req`` sets."""
    fields = {
        "stamp": stamp_to_ns(req.stamp) != 0,
        "points": len(req.points) > 0,
        "labels": len(req.labels) > 0,
        "points_per_set": req.points_per_set != 0,
        "boxes": len(req.boxes) > 0,
    }
    return [name for name, given in fields.items() if given]


def check_request(req: Track.Request) -> str:
    """The action's name, once the request's fields fit it.

    Raises:
        ValueError: an unknown action, or fields the action does not take (so that a call
            meant as another action never does something else).
    """
    action = ACTIONS.get(req.action)
    if action is None:
        raise ValueError(
            f"unknown action {req.action}: expected ADD ({Track.Request.ADD}), REMOVE "
            f"({Track.Request.REMOVE}), CLEAR ({Track.Request.CLEAR}) or LIST "
            f"({Track.Request.LIST})"
        )
    extra = _prompt_fields(req) if action != "ADD" else []
    if action in ("CLEAR", "LIST") and len(req.ids) > 0:
        extra.append("ids")
    if extra:
        raise ValueError(
            f"{action} takes {'only ids' if action == 'REMOVE' else 'no other field'}, got "
            f"{', '.join(extra)} (stamp, points, labels, points_per_set and boxes are for ADD)"
        )
    if action == "REMOVE" and len(req.ids) == 0:
        raise ValueError(
            "REMOVE needs the target ids to remove (LIST gives them; CLEAR removes all)"
        )
    return action


class TargetTracking:
    """The node's prompted targets: the tracker, its service, worker and two outputs.

    Args:
        node: the lifecycle node that serves and publishes.
        health: counters, timings and logging.
        calls: the planner-call admission and workers ``~/track`` runs on.
        frames: the encoded frames (the cache ADD reads and catches up through).
        backend: the loaded model (None while unconfigured).
        depth: the depth input: ``~/tracks`` and ``~/track``'s answers carry the targets' 3D.
        vision: the vision_msgs outputs (``~/tracks/detections_3d`` after each ``~/tracks``).
    """

    def __init__(
        self,
        node: LifecycleNode,
        health: Health,
        calls: ServiceCalls,
        frames: FrameIntake,
        backend: Callable[[], Backend | None],
        depth: DepthInput,
        vision: VisionOutputs,
    ) -> None:
        self._node = node
        self._depth = depth
        self._vision = vision
        self._health = health
        self._calls = calls
        self._frames = frames
        self._backend = backend
        self.tracking: Tracking | None = None
        self.publishers: dict[str, Any] = {}
        self._worker: LatestWorker[EncodedFrame] | None = None
        self.name = node.resolve_service_name("~/track")

    # ------------------------------------------------------------------ lifecycle

    def configure(self, settings: TrackingSettings, segevery_ids: bool) -> None:
        """A fresh tracker and the two outputs, as lifecycle publishers (configure)."""
        self.tracking = Tracking(settings, segevery_ids=segevery_ids)
        node = self._node
        self.publishers = {
            "tracks": node.create_lifecycle_publisher(
                InstanceArray, "~/tracks", instances_qos(), qos_overriding_options=overridable()
            ),
            "label": node.create_lifecycle_publisher(
                Image,
                "~/tracks/label",
                image_output_qos(),
                qos_overriding_options=overridable(),
            ),
        }

    def reconfigure(self, settings: TrackingSettings, segevery_ids: bool) -> None:
        """New thresholds and limits at runtime; targets and track IDs are kept."""
        tracking = self.tracking
        if tracking is None:
            return  # configure reads the parameters
        tracking.configure(settings)
        tracking.segevery_ids = segevery_ids
        count = len(tracking.targets)
        if count > settings.max_targets:
            self._node.get_logger().warning(
                f"tracking.max_targets is now {settings.max_targets}, below the {count} "
                "targets followed: they are kept, and ~/track refuses adds until fewer than "
                f"{settings.max_targets} remain"
            )

    def release(self) -> None:
        """Undo configure: the targets, track IDs and outputs go."""
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}
        self.tracking = None

    def start(self) -> None:
        """Start the tracks worker and offer ``~/track`` (activate, once the workers run)."""
        self._worker = LatestWorker(self._step, "segfast-tracks", self._on_error)
        self.name = self._calls.offer(Track, "~/track", self._answer, "track")

    def stop_worker(self) -> None:
        """End the tracks worker after the step it runs (deactivate)."""
        if self._worker is not None:
            self._worker.stop()
        self._worker = None

    @property
    def worker(self) -> LatestWorker[EncodedFrame] | None:
        """The tracks worker, while active."""
        return self._worker

    def diagnostics(self) -> dict[str, str]:
        """``/diagnostics`` values: targets followed and lost, steps, their time."""
        tracking, worker, health = self.tracking, self._worker, self._health
        results = tracking.targets.results() if tracking is not None else []
        return {
            "targets": str(len(results)),
            "targets_lost": str(sum(r.state == TRACK_LOST for r in results)),
            "tracks_ms_p50": f"{health.tracks_runs.percentile(50):.2f}",
            "tracks_ms_p95": f"{health.tracks_runs.percentile(95):.2f}",
            "tracks_frames_dropped": str(worker.dropped if worker else 0),
        }

    # ------------------------------------------------------------------ ~/tracks

    def frame_encoded(self, encoded: EncodedFrame) -> None:
        """Hand a newly encoded frame to the tracks worker (on the encoder thread: no wait).

        Whether there are targets is asked on the worker: the tracker's lock is held during a
        step's decode, and the encoder must never wait on it.
        """
        worker = self._worker
        if worker is not None:
            # With its pixels: the step's appearance cue reads them. Memory: the frame waiting
            # is the cache's latest (one more reference to the array the cache holds); the
            # frame being stepped is at most one more, an older one the cache has let go.
            # A worker stopped meanwhile (deactivate) refuses.
            with contextlib.suppress(RuntimeError):
                worker.submit(encoded)

    def _step(self, encoded: EncodedFrame) -> None:
        """One frame's step of every target, then ``~/tracks`` and ``~/tracks/label``."""
        tracking, backend, pubs = self.tracking, self._backend(), dict(self.publishers)
        if tracking is None or backend is None or not pubs:
            return
        start = time.perf_counter()
        due = due_targets(tracking.targets.results(), encoded.key)
        results = tracking.on_frame(encoded.predictor(backend), encoded.key, encoded.frame.image)
        elapsed = (time.perf_counter() - start) * 1e3
        if not results:
            return  # no targets: nothing to publish
        newest = max(r.frame_key for r in results)
        if newest > encoded.key:
            # An ADD caught up through a newer cached frame first (its message follows), or
            # the stamps went back (a restarted bag): these results are not this frame's.
            self._health.counts["tracks_skipped"] += 1
            self._health.warn(
                f"~/tracks skipped frame {fmt_stamp(encoded.key)}: targets are at the newer "
                f"frame {fmt_stamp(newest)} (if stamps went back, CLEAR and add them again)"
            )
            return
        header = encoded.frame.header
        records = self._lift(encoded.key, encoded.hw, target_records(results, encoded.hw))
        pubs["tracks"].publish(
            InstanceArray(
                header=header,
                strategy=TARGETS_STRATEGY,
                instances=[record_to_msg(r) for r in records],
                decoder_prompts=decoded_count(due, results),
                segevery_ms=float(elapsed),
            )
        )
        self._vision.publish_targets(header, records, oriented=self._depth.settings.oriented_boxes)
        labels = targets_label_image(results, encoded.hw)
        pubs["label"].publish(labels_to_mono16_msg(labels, header))
        self._health.tracks_runs.add(elapsed)
        self._health.counts["tracks_published"] += 1

    def _on_error(self, encoded: EncodedFrame, err: BaseException) -> None:
        if not self._node.context.ok():
            return  # the shutdown under way, not an error to report
        health = self._health
        health.counts["tracks_errors"] += 1
        health.last_error = f"~/tracks step failed (stamp {fmt_stamp(encoded.key)}): {err}"
        health.warn(health.last_error, error=True)

    # ------------------------------------------------------------------ ~/track

    def _answer(self, req: Track.Request, resp: Track.Response, start: float) -> Track.Response:
        """The work of one ``~/track`` call, on a planner-call worker."""
        try:
            action = check_request(req)
            tracking = self.tracking
            if tracking is None:
                raise LookupError("the node is not configured (no model loaded)")
            if action == "ADD":
                self._add(tracking, req, resp)
            elif action == "REMOVE":
                resp.ids = tracking.targets.remove([int(i) for i in req.ids])
            elif action == "CLEAR":
                resp.ids = tracking.targets.clear()
            else:
                results = tracking.targets.results()
                resp.ids = [r.target_id for r in results]
                self._fill(resp, results)
            resp.success = True
        except (ValueError, LookupError) as err:  # TargetError is a ValueError
            resp.success, resp.message = False, str(err)
        except Exception as err:  # reported to the caller; the node keeps serving
            resp.success, resp.message = False, internal_error(self._node, "~/track", err)
        if not resp.success:
            resp.ids, resp.targets, resp.header = [], [], Header()
            self._health.counts["track_errors"] += 1
            self._health.warn(f"~/track refused: {resp.message}")
        return resp

    def _add(self, tracking: Tracking, req: Track.Request, resp: Track.Response) -> None:
        """ADD: decode the prompt sets on the requested frame, then catch up to the latest."""
        encoded = self._frames.frame_for(stamp_to_ns(req.stamp))
        backend = self._backend()
        if backend is None:
            raise LookupError("the node is not configured (no model loaded)")
        added = tracking.targets.add(
            encoded.predictor(backend),
            encoded.key,
            points=[(p.x, p.y) for p in req.points],
            labels=list(req.labels),
            boxes=list(req.boxes),
            points_per_set=int(req.points_per_set),
            ids=[int(i) for i in req.ids],
            # None on a cached frame older than the latest (its pixels are let go): the
            # targets then take their colours at their first confident step with an image.
            image=encoded.frame.image,
        )
        self.catch_up(tracking, encoded.key, backend)
        latest = {r.target_id: r for r in tracking.targets.results()}
        resp.ids = [r.target_id for r in added]
        # A target removed meanwhile (a concurrent REMOVE) answers with its add's result.
        self._fill(resp, [latest.get(r.target_id, r) for r in added])

    def catch_up(self, tracking: Tracking, key: int, backend: Backend) -> None:
        """Step the targets through the cached frames newer than ``key``, in stamp order.

        After an add on a cached frame (``~/track`` ADD, and the targets ``~/prompts``
        starts: :mod:`.prompts`), so the new targets are current.

        Targets already at a frame are not decoded again there, so only the new ones are.
        Only the latest cached frame still has its pixels: the steps before it run without the
        appearance cue.
        """
        cache = self._frames.cache
        if cache is None:
            return
        for newer in sorted(k for k in cache.list_keys() if k > key):
            encoded = cache.get(newer)
            if encoded is not None:  # evicted meanwhile: the next one still catches up
                tracking.targets.step(encoded.predictor(backend), newer, encoded.frame.image)

    def _fill(self, resp: Track.Response, results: Sequence[TargetResult]) -> None:
        """``targets`` and ``header`` of a response from target results."""
        if not results:
            return
        key = max(r.frame_key for r in results)
        header, hw = self._frame_of(key)
        records = self._lift(key, hw, target_records(results, hw))
        resp.targets = [record_to_msg(rec) for rec in records]
        resp.header = header

    def _lift(
        self, key: int, hw: tuple[int, int], records: list[InstanceRecord]
    ) -> list[InstanceRecord]:
        """The targets' records of frame ``key`` with their 3D (as they are without depth)."""
        return self._depth.lift(key, hw, records).records

    def _frame_of(self, key: int) -> tuple[Header, tuple[int, int]]:
        """The header and size of frame ``key``: from the cache, else rebuilt from the stamp
        and the latest frame (a frame evicted since its step)."""
        cache = self._frames.cache
        found = cache.get(key) if cache is not None else None
        if found is not None:
            return found.frame.header, found.hw
        latest = cache.latest() if cache is not None else None
        header = Header(frame_id=latest.frame.header.frame_id if latest else "")
        header.stamp.sec, header.stamp.nanosec = divmod(key, 1_000_000_000)
        return header, latest.hw if latest else (0, 0)
