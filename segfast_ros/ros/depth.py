"""The depth input of the node: ``depth``, ``camera_info``, ``depth/camera_info``, and 3D lifting.

With ``depth.enabled`` (read-only, off by default) the node subscribes, while active, to

* ``depth`` (``sensor_msgs/Image``, ``16UC1`` millimetres or ``32FC1`` metres, aligned to the
  colour image, as RealSense and ZED publish it "aligned to color"),
* ``camera_info`` (the colour image's ``sensor_msgs/CameraInfo``) and
* ``depth/camera_info`` (the depth image's, which scales depth of another size),

all with the camera input's QoS (best effort, which takes reliable and best-effort drivers
alike; ``qos_overrides.<topic>.subscription.*`` change it, :mod:`.qos`). The launch files remap
them (``depth_topic``, ``camera_info_topic``, ``depth_info_topic``).

Depth images are kept by header stamp (:class:`~segfast_ros.pipeline.spatial.Spatial`);
whoever publishes results (SegEvery, the targets' step, ``~/segment`` with ``return_3d``) calls
:meth:`DepthInput.lift`, which takes the depth nearest the colour frame's stamp within
``depth.sync_tolerance`` and never waits: without one the results are 2D only
(``position_3d.valid`` false), the log says why (throttled) and ``/diagnostics`` turns WARN
with the reason until a frame is lifted again.

Bad input never stops the node: a depth image of another encoding or an inconsistent size, and
a CameraInfo that cannot back-project (K all zero, say), are each counted, warned about
(throttled, per distinct problem) and shown in ``/diagnostics`` until that topic sends a good
message.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from segfast_ros.pipeline.depth import DEPTH_ENCODINGS, DepthError
from segfast_ros.pipeline.render import InstanceRecord
from segfast_ros.pipeline.spatial import LiftOutcome, Spatial
from segfast_ros.ros.diagnostics import STALE_INPUT_S, Health, fmt_stamp
from segfast_ros.ros.qos import depth_input_qos, overridable
from segfast_ros.spatial.camera import CameraInfoError
from segfast_ros.spatial.lift import LiftSettings

#: The relative topic names the node subscribes to (remappable).
DEPTH_TOPIC = "depth"
COLOUR_INFO_TOPIC = "camera_info"
DEPTH_INFO_TOPIC = "depth/camera_info"

#: Why results are 2D only while ``depth.enabled`` is false.
DISABLED = "depth.enabled is false"


class DepthInput:
    """The depth subscriptions, what they keep (:class:`Spatial`), and its health.

    Configure sets what it does (:meth:`configure`), activate subscribes (:meth:`subscribe`);
    :meth:`unsubscribe` and :meth:`release` undo them.

    Args:
        node: the node that subscribes.
        health: a counter (``camera_info_rejected``; refused depth images are
            :class:`Spatial`'s ``depth_bad``) and throttled logging.
        callback_group: the subscriptions' group (not the colour images': decoding depth must
            not delay a frame).
    """

    def __init__(self, node: Node, health: Health, callback_group: Any) -> None:
        self._node = node
        self._health = health
        self._group = callback_group
        self.spatial = Spatial()
        self.enabled = False
        self.settings = LiftSettings()
        self.cloud_voxel = 0.01
        self.subscriptions: list[Any] = []
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}  # topic -> its latest bad input, until a good one
        self._outcome: tuple[int, str] | None = None  # (stamp, reason) of the newest lift
        self._last_depth: float | None = None  # node-clock time of the latest good depth
        self._since: float | None = None  # node-clock time of subscribing

    # ------------------------------------------------------------------ lifecycle

    def configure(
        self,
        enabled: bool,
        settings: LiftSettings,
        tolerance_s: float,
        cache_size: int,
        cloud_voxel: float,
    ) -> None:
        """Whether depth is used, and how (configure)."""
        self.enabled = bool(enabled)
        self.reconfigure(settings, tolerance_s, cache_size, cloud_voxel)

    def reconfigure(
        self, settings: LiftSettings, tolerance_s: float, cache_size: int, cloud_voxel: float
    ) -> None:
        """New lift settings, tolerance, cache size and voxel, at once (runtime changes)."""
        self.spatial.configure(settings, round(tolerance_s * 1e9), cache_size)
        self.settings, self.cloud_voxel = settings, float(cloud_voxel)

    def subscribe(self) -> None:
        """The three subscriptions, when enabled (activate)."""
        if not self.enabled:
            return
        node, qos = self._node, depth_input_qos
        handlers = (
            (Image, DEPTH_TOPIC, self._on_depth),
            (CameraInfo, COLOUR_INFO_TOPIC, self._on_colour_info),
            (CameraInfo, DEPTH_INFO_TOPIC, self._on_depth_info),
        )
        self.subscriptions = [
            node.create_subscription(
                kind,
                topic,
                handler,
                qos(),
                callback_group=self._group,
                qos_overriding_options=overridable(),
            )
            for kind, topic, handler in handlers
        ]
        self._since = self._health.now()

    def unsubscribe(self) -> None:
        """No more depth (deactivate); what is cached stays until :meth:`release`."""
        for sub in self.subscriptions:
            self._node.destroy_subscription(sub)
        self.subscriptions = []
        self._since = None

    def release(self) -> None:
        """Forget the depth frames, CameraInfos and problems (cleanup)."""
        self.spatial.clear()
        with self._lock:
            self._problems.clear()
            self._outcome = None
            self._last_depth = None

    @property
    def topics(self) -> list[str]:
        """The resolved topics (depth, colour CameraInfo, depth CameraInfo)."""
        names = (DEPTH_TOPIC, COLOUR_INFO_TOPIC, DEPTH_INFO_TOPIC)
        return [self._node.resolve_topic_name(n) for n in names]

    # ------------------------------------------------------------------ input

    def _on_depth(self, msg: Image) -> None:
        try:
            self.spatial.put_depth(msg)
        except DepthError as err:
            self._bad(  # Spatial counts it (depth_bad)
                DEPTH_TOPIC,
                None,
                f"depth image rejected ({err}; accepted encodings: "
                f"{', '.join(DEPTH_ENCODINGS)}, aligned to the colour image)",
            )
            return
        self._good(DEPTH_TOPIC)
        self._last_depth = self._health.now()

    def _on_colour_info(self, msg: CameraInfo) -> None:
        self._take_info(msg, COLOUR_INFO_TOPIC, self.spatial.set_colour_info)

    def _on_depth_info(self, msg: CameraInfo) -> None:
        self._take_info(msg, DEPTH_INFO_TOPIC, self.spatial.set_depth_info)

    def _take_info(self, msg: CameraInfo, topic: str, take: Any) -> None:
        try:
            take(msg)
        except CameraInfoError as err:
            self._bad(topic, "camera_info_rejected", f"CameraInfo refused ({err})")
            return
        self._good(topic)

    def _bad(self, topic: str, counter: str | None, text: str) -> None:
        """Count, remember (for /diagnostics) and warn (throttled) about a bad message."""
        name = self._node.resolve_topic_name(topic)
        message = f"{name}: {text}"
        health = self._health
        if counter is not None:
            health.counts[counter] += 1
        health.last_error = message
        with self._lock:
            self._problems[name] = message
        health.warn(message)

    def _good(self, topic: str) -> None:
        name = self._node.resolve_topic_name(topic)
        if name in self._problems:
            with self._lock:
                self._problems.pop(name, None)

    # ------------------------------------------------------------------ lifting

    def lift(
        self,
        key: int,
        hw: tuple[int, int],
        records: Sequence[InstanceRecord],
        *,
        points: bool = False,
    ) -> LiftOutcome:
        """``records`` with ``position_3d`` from the depth matched to stamp ``key``.

        Never waits and never raises for missing, stale or mismatched depth: the outcome's
        ``reason`` says why it is 2D only (also logged, throttled, and kept for /diagnostics
        while it is the newest frame's). Disabled: the records as they are.

        Args:
            key: the colour frame's stamp, integer nanoseconds.
            hw: the colour frame's (and the masks') size.
            records: the frame's instances.
            points: keep each instance's points (for ``~/points``).
        """
        if not self.enabled:
            return LiftOutcome(list(records), [], None, DISABLED)
        outcome = self.spatial.lift(key, hw, records, points=points)
        with self._lock:
            if self._outcome is None or key >= self._outcome[0]:
                self._outcome = (key, outcome.reason)
        if outcome.reason:
            self._health.warn(
                f"frame {fmt_stamp(key)} is 2D only (position_3d.valid false): {outcome.reason}",
                key="depth-lift",
            )
        return outcome

    # ------------------------------------------------------------------ diagnostics

    def warning(self) -> str:
        """Why 3D is missing or at risk now ("" when fine, or when depth is off).

        The newest lifted frame's reason, the topics whose latest message was refused, and
        no depth for :data:`STALE_INPUT_S` while subscribed: each a WARN in /diagnostics.
        """
        if not self.enabled:
            return ""
        now = self._health.now()
        with self._lock:
            parts = list(self._problems.values())
            reason = self._outcome[1] if self._outcome is not None else ""
            last, since = self._last_depth, self._since
        if reason:
            parts.append(f"2D only: {reason}")
        elif since is not None and now - max(since, last or since) > STALE_INPUT_S:
            parts.append(
                f"no depth image on {self._node.resolve_topic_name(DEPTH_TOPIC)} for "
                f"{now - max(since, last or since):.1f} s"
            )
        return "; ".join(parts)

    def diagnostics(self) -> dict[str, str]:
        """``/diagnostics`` values: whether depth is on, its counters, why frames are 2D.

        (Refused CameraInfos are :class:`Health`'s ``camera_info_rejected``, reported with the
        other counters.)
        """
        if not self.enabled:
            return {"depth": "off"}
        with self._lock:
            reason = self._outcome[1] if self._outcome is not None else "no frame lifted yet"
            problems = " | ".join(self._problems.values())
        counts = self.spatial.counters()
        return {
            "depth": "on",
            "depth_topics": ",".join(self.topics),
            **{(k if k.startswith("depth_") else f"depth_{k}"): str(v) for k, v in counts.items()},
            "depth_last_reason": reason,
            "depth_input_problems": problems,
        }
