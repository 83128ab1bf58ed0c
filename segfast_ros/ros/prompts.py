"""``~/prompts``: a detector's boxes as box prompts, answered on ``~/prompted``.

A ``vision_msgs/Detection2DArray`` on ``~/prompts`` (an external YOLO, say) is matched by its
header stamp to the embedding cache (:meth:`FrameIntake.frame_for
<segfast_ros.ros.intake.FrameIntake.frame_for>`: a frame still being encoded is waited for
briefly; a zero stamp means the latest frame, as for ``~/segment``). Each detection's box
becomes a box prompt (:func:`~segfast_ros.pipeline.detections.prompt_boxes`, at most
``prompts.max_detections``), and all of one message are decoded in ONE decoder batch on that
frame's cached embedding. The answer:

* ``~/prompted`` (``segfast_ros/msg/InstanceArray``): header = the matched frame's, strategy
  ``"prompts"``, one instance per kept detection in the message's order (``prompt`` = its box,
  ``decoder_prompts`` = boxes decoded, ``segevery_ms`` = the answer's wall time); with depth on
  (:mod:`.depth`) each carries its 3D position. ``~/instances``' QoS.
* ``~/prompted/detections`` (``vision_msgs/Detection2DArray``): the same instances in the same
  order, each box the mask's, and each detection's class hypotheses and ``id`` carried through
  from the prompting detection.

With ``prompts.start_tracks`` the boxes whose mask no tracked target already covers (mask IoU
below ``tracking.match_iou`` with every tracked target's latest mask) start prompted targets,
as ``~/track`` ADD does (added on the matched frame, then caught up through the newer cached
frames): they are followed on ``~/tracks`` from then on, and their ``~/prompted`` instances
carry the target ID (a covered box carries the covering target's). Adding decodes the new
targets' boxes once more (:meth:`TargetTracker.add
<segfast_ros.tracking.targets.TargetTracker.add>` decodes its own prompts); at most
``tracking.max_targets`` are held, the rest are reported and not started.

What is dropped, and said: a message whose stamp is not cached (never received, evicted) is
counted, warned about (throttled) and dropped, never queued; bad boxes (non-finite, empty,
outside the image, past ``prompts.max_detections``) are skipped and counted with the reason;
an empty message gets an empty answer. ``/diagnostics`` has the counts and the last problem.

Threads: the subscription callback only hands the message to a
:class:`~segfast_ros.pipeline.frames.LatestWorker` of its own; the wait for the frame and the
decode run there, never on an executor thread. Latest wins: a message that arrives while
another waits replaces it (counted as dropped), so a detector faster than the decoder is
answered on its newest frames and nothing piles up. Not the planner services' pool
(:class:`~.calls.ServiceCalls`): a detector at camera rate would take the workers and the
``segment.queue_depth`` admission from ``~/segment`` and ``~/track``, and several workers
would answer frames out of order.

Without vision_msgs there is nothing to subscribe to: ``~/prompts``, ``~/prompted`` and
``~/prompted/detections`` are off (:mod:`.vision` says so).

Wiring (the node shell, :mod:`.node`): ``PromptTopic(node, health, frames, tracks, backend,
vision, depth=...)`` in ``__init__``; :meth:`~PromptTopic.configure` at configure (with the
``prompts.*`` parameters; :meth:`~PromptTopic.reconfigure` when they change),
:meth:`~PromptTopic.activate` at activate (after the encoder starts),
:meth:`~PromptTopic.deactivate` at deactivate/shutdown/error (before the encoder stops),
:meth:`~PromptTopic.release` at cleanup/shutdown/error, :meth:`~PromptTopic.diagnostics`
merged into ``/diagnostics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import Header

from segfast_ros.msg import InstanceArray
from segfast_ros.pipeline.detections import PromptBoxes, detections_2d, prompt_boxes
from segfast_ros.pipeline.frames import EncodedFrame, LatestWorker
from segfast_ros.pipeline.render import InstanceRecord, mask_record
from segfast_ros.pipeline.tracks import Tracking
from segfast_ros.ros.conversions import record_to_msg, stamp_to_ns
from segfast_ros.ros.diagnostics import Health, fmt_stamp
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.qos import instances_qos, overridable, prompts_qos
from segfast_ros.ros.tracking import TargetTracking
from segfast_ros.ros.vision import VisionOutputs
from segfast_ros.runtime import Backend
from segfast_ros.segany import decode_prompt_sets, prompt_kwargs
from segfast_ros.tracking.associate import match
from segfast_ros.tracking.overlap import Footprints, iou_matrix
from segfast_ros.tracking.states import TRACK_TRACKED

__all__ = ["PROMPTS_STRATEGY", "PromptTopic"]

#: The ``strategy`` of a ``~/prompted`` message.
PROMPTS_STRATEGY = "prompts"

_COUNTERS = (
    "received",
    "answered",
    "unmatched",
    "dropped",
    "boxes",
    "boxes_skipped",
    "tracks_started",
    "tracks_not_started",
    "errors",
)


class PromptTopic:
    """``~/prompts`` in, ``~/prompted`` and ``~/prompted/detections`` out (module docstring).

    Args:
        node: the lifecycle node.
        health: throttled warnings and ``last_error``.
        frames: the embedding cache the stamps are matched in.
        tracks: the prompted targets (``prompts.start_tracks`` adds to them).
        backend: the loaded model (None while unconfigured).
        vision: the node's vision_msgs outputs (its module and message builders).
        depth: the depth input while depth is on (``DepthInput``: ``lift(key, hw, records)``
            giving a ``LiftOutcome``), else None.
        callback_group: the subscription's callback group (None: the node's default).
    """

    def __init__(
        self,
        node: LifecycleNode,
        health: Health,
        frames: FrameIntake,
        tracks: TargetTracking,
        backend: Callable[[], Backend | None],
        vision: VisionOutputs,
        depth: Callable[[], Any | None] = lambda: None,
        callback_group: Any = None,
    ) -> None:
        self._node = node
        self._health = health
        self._frames = frames
        self._tracks = tracks
        self._backend = backend
        self._vision = vision
        self._depth = depth
        self._group = callback_group
        self.max_detections = 100
        self.start_tracks = False
        self.publishers: dict[str, Any] = {}
        self.subscription: Any = None
        self._worker: LatestWorker[Any] | None = None
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.last_problem = ""

    @property
    def available(self) -> bool:
        """vision_msgs imports (otherwise the topic and its outputs are off)."""
        return self._vision.available

    # ------------------------------------------------------------------ lifecycle

    def configure(self, max_detections: int, start_tracks: bool) -> None:
        """The two outputs, as lifecycle publishers, and the ``prompts.*`` values (configure).

        Args:
            max_detections: most boxes of one message decoded (``prompts.max_detections``).
            start_tracks: boxes no target covers start targets (``prompts.start_tracks``).
        """
        self.reconfigure(max_detections, start_tracks)
        vm = self._vision.msgs
        if vm is None:
            return
        node = self._node
        self.publishers = {
            "prompted": node.create_lifecycle_publisher(
                InstanceArray, "~/prompted", instances_qos(), qos_overriding_options=overridable()
            ),
            "detections": node.create_lifecycle_publisher(
                vm.Detection2DArray,
                "~/prompted/detections",
                instances_qos(),
                qos_overriding_options=overridable(),
            ),
        }

    def reconfigure(self, max_detections: int, start_tracks: bool) -> None:
        """New ``prompts.*`` values, used from the next message on."""
        if int(max_detections) < 1:
            raise ValueError(f"prompts.max_detections must be >= 1, got {max_detections}")
        self.max_detections = int(max_detections)
        self.start_tracks = bool(start_tracks)

    def activate(self) -> None:
        """Start the worker and subscribe to ``~/prompts`` (activate)."""
        vm = self._vision.msgs
        if vm is None:
            return
        self._worker = LatestWorker(self._answer, "segfast-prompts", self._on_error)
        self.subscription = self._node.create_subscription(
            vm.Detection2DArray,
            "~/prompts",
            self._on_prompts,
            prompts_qos(),
            callback_group=self._group,
            qos_overriding_options=overridable(),
        )

    def deactivate(self) -> None:
        """Unsubscribe, then end the worker after the answer it is working on (deactivate)."""
        if self.subscription is not None:
            self._node.destroy_subscription(self.subscription)
        self.subscription = None
        if self._worker is not None:
            self._worker.stop()
            self.counts["dropped"] += self._worker.dropped
        self._worker = None

    def release(self) -> None:
        """Undo :meth:`configure`: the publishers go (cleanup, shutdown, error)."""
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}

    @property
    def worker(self) -> LatestWorker[Any] | None:
        """The prompts worker, while active."""
        return self._worker

    def diagnostics(self) -> dict[str, str]:
        """``/diagnostics`` values: ``prompts_<counter>`` and ``prompts_last_problem``."""
        if not self.available:
            return {"prompts": "off (vision_msgs is not installed)"}
        counts = dict(self.counts)
        worker = self._worker
        if worker is not None:
            counts["dropped"] += worker.dropped
        values = {f"prompts_{k}": str(v) for k, v in counts.items()}
        values["prompts_last_problem"] = self.last_problem
        return values

    # ------------------------------------------------------------------ messages

    def _on_prompts(self, msg: Any) -> None:
        """On the executor: hand the message to the worker (newest wins), nothing else."""
        self.counts["received"] += 1
        worker = self._worker
        if worker is not None:
            with contextlib.suppress(RuntimeError):  # stopped meanwhile (deactivate)
                worker.submit(msg)

    def _answer(self, msg: Any) -> None:
        """One message: match its frame, decode its boxes in one batch, publish the answer."""
        start = time.perf_counter()
        key = stamp_to_ns(msg.header.stamp)
        if not msg.detections:
            self._publish(self._empty_header(msg, key), [], [], start, decoded=0)
            return
        try:
            encoded = self._frames.frame_for(key)
        except LookupError as err:
            self._problem("unmatched", f"~/prompts message dropped: {err}")
            return
        backend = self._backend()
        if backend is None:
            return  # unconfigured meanwhile
        prompt = prompt_boxes(msg.detections, encoded.hw, self.max_detections)
        if prompt.skipped:
            left_out = len(msg.detections) - len(prompt.boxes)
            self._problem(
                "boxes_skipped",
                f"~/prompts (stamp {fmt_stamp(key)}): {left_out} of {len(msg.detections)} "
                f"boxes skipped: {'; '.join(prompt.skipped)}",
                left_out,
            )
        tracking = self._tracks.tracking if self.start_tracks else None
        records, found = decode_boxes(
            encoded, backend, prompt.boxes, footprints=tracking is not None
        )
        self.counts["boxes"] += len(records)
        if records and tracking is not None and found is not None:
            records = self._start_tracks(tracking, encoded, backend, records, found)
        depth = self._depth()
        if depth is not None and records:
            records = list(depth.lift(encoded.key, encoded.hw, records).records)
        self._publish(encoded.frame.header, records, _carried(records, prompt), start)

    def _problem(self, counter: str, text: str, count: int = 1) -> None:
        """Count ``count`` in ``counter``; log ``text`` throttled per counter (the texts name
        stamps and boxes, so a per-text throttle would let each through); ``/diagnostics``
        keeps the latest."""
        self.counts[counter] += count
        self.last_problem = text
        self._health.warn(text, key=f"prompts-{counter}")

    def _empty_header(self, msg: Any, key: int) -> Any:
        """The answer's header for an empty message: the cached frame's, else the message's."""
        cache = self._frames.cache
        found = cache.get(key) if cache is not None and key else None
        return found.frame.header if found is not None else msg.header

    def _publish(
        self,
        header: Header,
        records: Sequence[InstanceRecord],
        detections: Sequence[Any],
        start: float,
        decoded: int | None = None,
    ) -> None:
        pubs = dict(self.publishers)
        if not pubs:
            return
        pubs["prompted"].publish(
            InstanceArray(
                header=header,
                strategy=PROMPTS_STRATEGY,
                instances=[record_to_msg(r) for r in records],
                decoder_prompts=len(records) if decoded is None else decoded,
                segevery_ms=float((time.perf_counter() - start) * 1e3),
            )
        )
        pubs["detections"].publish(self._vision.detection2d_array(header, detections))
        self.counts["answered"] += 1

    def _start_tracks(
        self,
        tracking: Tracking,
        encoded: EncodedFrame,
        backend: Backend,
        records: list[InstanceRecord],
        found: Footprints,
    ) -> list[InstanceRecord]:
        """Start targets from the boxes no tracked target covers; records with track IDs."""
        owners = covering_targets(tracking, found)
        new = [i for i, owner in enumerate(owners) if owner == 0 and records[i].area > 0]
        limit = tracking.targets.settings.max_targets
        room = max(0, limit - len(tracking.targets))
        if len(new) > room:
            self._problem(
                "tracks_not_started",
                f"~/prompts: {len(new) - room} of {len(new)} new boxes not started as targets: "
                f"tracking.max_targets is {limit}",
                len(new) - room,
            )
            new = new[:room]
        if new:
            added = tracking.targets.add(
                encoded.predictor(backend),
                encoded.key,
                boxes=np.stack([records[i].prompt for i in new]),
                image=encoded.frame.image,
            )
            self._tracks.catch_up(tracking, encoded.key, backend)
            self.counts["tracks_started"] += len(added)
            for i, result in zip(new, added, strict=True):
                owners[i] = result.target_id
        return [
            dataclasses.replace(r, track_id=o, track_state=TRACK_TRACKED) if o else r
            for r, o in zip(records, owners, strict=True)
        ]

    def _on_error(self, msg: Any, err: BaseException) -> None:
        if not self._node.context.ok():
            return  # the shutdown under way
        stamp = fmt_stamp(stamp_to_ns(msg.header.stamp))
        self.counts["errors"] += 1
        self.last_problem = f"~/prompts answer failed (stamp {stamp}): {err}"
        self._health.last_error = self.last_problem
        self._health.warn(self.last_problem, "".join(traceback.format_exception(err)), error=True)


def decode_boxes(
    encoded: EncodedFrame, backend: Backend, boxes: np.ndarray, *, footprints: bool = False
) -> tuple[list[InstanceRecord], Footprints | None]:
    """One mask per box, all boxes in ONE decoder batch on ``encoded``'s embedding.

    Args:
        footprints: also return the masks' :class:`Footprints` (for :func:`covering_targets`),
            taken as each mask is made: the full-size masks are never all held at once.

    Returns:
        One record per box, in order (``id`` = position, ``prompt`` = the box; a box on
        nothing gives an empty mask, area 0), and the footprints (None unless asked).
    """
    if len(boxes) == 0:
        return [], (Footprints.empty(encoded.hw) if footprints else None)
    predictor = encoded.predictor(backend)
    kwargs = prompt_kwargs((), (), boxes, low_res_size=predictor.info.low_res_size)
    records, parts = [], []
    for i, answer in enumerate(decode_prompt_sets(predictor, kwargs)):
        mask = answer.masks[0]
        records.append(
            mask_record(
                mask, float(answer.scores[0]), float(answer.stability[0]), i, answer.prompt
            )
        )
        if footprints:
            parts.append(Footprints.from_masks(mask[None]))
    return records, (Footprints.concat(parts, encoded.hw) if footprints else None)


def covering_targets(tracking: Tracking, found: Footprints) -> list[int]:
    """For each mask of ``found``, the tracked target whose latest mask covers it (0: none).

    Covers: mask IoU >= ``tracking.match_iou``, the SegEvery association's threshold (the
    target's latest frame may be a little newer than the prompt's); one mask per target, the
    pairs that overlap most in all (:func:`~segfast_ros.tracking.associate.match`).
    """
    owners = [0] * len(found)
    tracked = [
        r
        for r in tracking.targets.results()
        if r.state == TRACK_TRACKED and r.mask is not None and r.mask.shape == found.hw
    ]
    if not tracked or not len(found):
        return owners
    iou = iou_matrix(Footprints.from_masks(np.stack([t.mask for t in tracked])), found)
    for row, col in match(iou, tracking.targets.settings.match_iou).pairs:
        owners[int(col)] = tracked[int(row)].target_id
    return owners


def _carried(records: Sequence[InstanceRecord], prompt: PromptBoxes) -> list[Any]:
    """``~/prompted/detections``: each record's 2D detection (box of its mask) with the
    prompting detection's hypotheses and id."""
    return [
        dataclasses.replace(det, id=prompt.ids[i], results=tuple(prompt.results[i]))
        for i, det in enumerate(detections_2d(records))
    ]
