"""The node's standard outputs: ``vision_msgs`` detections (2D, 3D) and the masked point cloud.

Outputs (relative to the node, lifecycle publishers created at configure, publishing while
active):

* ``~/detections`` (``vision_msgs/Detection2DArray``): mirrors ``~/instances``, same header
  and order as its label image; each detection's box is the instance's, its hypothesis the
  instance's score (class ids when the strategy gives them), its ``id`` the track ID ("" for
  none). ``~/instances``' QoS.
* ``~/detections_3d`` (``vision_msgs/Detection3DArray``): the instances whose 3D position is
  valid, in ``~/instances`` order, for each frame lifted with a depth frame (depth on,
  :mod:`.depth`; a frame without depth near it gets none, not an empty array). The
  hypothesis pose is the robust centroid, the box the axis-aligned extent (or the oriented
  box with ``depth.oriented_boxes``), in the colour camera's optical frame; the header is the
  colour frame's. ``~/instances``' QoS.
* ``~/tracks/detections_3d`` (``vision_msgs/Detection3DArray``): the same for the prompted
  targets (``~/tracks``), ``id`` = target ID.
* ``~/points`` (``sensor_msgs/PointCloud2``): the masked points of every lifted instance,
  voxel-downsampled (``depth.cloud_voxel``), fields ``x y z`` (float32, metres) and ``id``
  (uint32: the instance's label in ``~/instances/label``, index + 1). Built only while somebody
  subscribes (:meth:`VisionOutputs.wants_points`: the lift is asked for its points then).
  sensor_msgs only, so it works without vision_msgs. Label images' QoS (a full cloud per frame).

Without vision_msgs (:func:`vision_msgs_module` is None): ``~/detections``,
``~/detections_3d``, ``~/tracks/detections_3d``, ``~/prompts`` and ``~/prompted/detections``
are off; the node says so once in its log, and ``/diagnostics`` keeps a ``vision_msgs`` entry
saying which outputs are off and how to install it.

Wiring (the node shell, :mod:`.node`): ``VisionOutputs(node, health)`` in ``__init__``;
:meth:`~VisionOutputs.create_publishers` at configure, :meth:`~VisionOutputs.release` at
cleanup/shutdown/error; :meth:`~VisionOutputs.publish_instances` after each ``~/instances``
publish, :meth:`~VisionOutputs.publish_targets` after each ``~/tracks`` publish (both from
the worker threads that publish those); :meth:`~VisionOutputs.diagnostics` merged into the
node's ``/diagnostics`` values.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence
from typing import Any

from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import PointCloud2, PointField

from segfast_ros.pipeline.detections import (
    Detection2DRecord,
    Detection3DRecord,
    Hypothesis,
    cloud_fields,
    detections_2d,
    detections_3d,
)
from segfast_ros.pipeline.render import InstanceRecord
from segfast_ros.ros.diagnostics import Health
from segfast_ros.ros.qos import image_output_qos, instances_qos, overridable
from segfast_ros.spatial.cloud import cloud_points
from segfast_ros.spatial.lift import Lifted

__all__ = ["VISION_MSGS_OUTPUTS", "VisionOutputs", "vision_msgs_missing", "vision_msgs_module"]

#: Every input and output that needs vision_msgs (off without it).
VISION_MSGS_OUTPUTS = (
    "~/detections",
    "~/detections_3d",
    "~/tracks/detections_3d",
    "~/prompts",
    "~/prompted/detections",
)


@functools.cache
def vision_msgs_module() -> Any | None:
    """``vision_msgs.msg``, or None when it cannot be imported (the outputs are then off)."""
    try:
        return importlib.import_module("vision_msgs.msg")
    except ImportError:
        return None


def vision_msgs_missing() -> str:
    """What ``/diagnostics`` and the log say when vision_msgs is not importable."""
    distro = os.environ.get("ROS_DISTRO") or "<distro>"
    return (
        f"off: {', '.join(VISION_MSGS_OUTPUTS)}: vision_msgs is not installed (rosdep install "
        f"vision_msgs / apt ros-{distro}-vision-msgs)"
    )


# ------------------------------------------------------------------------------ messages


def _hypotheses(vm: Any, results: Sequence[Hypothesis]) -> list[Any]:
    return [
        vm.ObjectHypothesisWithPose(
            hypothesis=vm.ObjectHypothesis(class_id=h.class_id, score=float(h.score))
        )
        for h in results
    ]


def detection2d_msg(vm: Any, header: Any, det: Detection2DRecord) -> Any:
    """One ``vision_msgs/Detection2D`` (``vm`` = :func:`vision_msgs_module`)."""
    msg = vm.Detection2D(header=header, id=det.id, results=_hypotheses(vm, det.results))
    msg.bbox.center.position.x, msg.bbox.center.position.y = (float(v) for v in det.center)
    msg.bbox.size_x, msg.bbox.size_y = (float(v) for v in det.size)
    return msg


def detection3d_msg(vm: Any, header: Any, det: Detection3DRecord) -> Any:
    """One ``vision_msgs/Detection3D``: hypothesis pose = centroid, bbox = the 3D box."""
    results = _hypotheses(vm, det.results)
    for hyp in results:
        p = hyp.pose.pose.position
        p.x, p.y, p.z = (float(v) for v in det.position)
    msg = vm.Detection3D(header=header, id=det.id, results=results)
    c, o, s = msg.bbox.center.position, msg.bbox.center.orientation, msg.bbox.size
    c.x, c.y, c.z = (float(v) for v in det.bbox_center)
    o.x, o.y, o.z, o.w = (float(v) for v in det.bbox_orientation)
    s.x, s.y, s.z = (float(v) for v in det.bbox_size)
    return msg


def cloud_msg(header: Any, fields: dict[str, Any]) -> PointCloud2:
    """A ``sensor_msgs/PointCloud2`` from :func:`~segfast_ros.pipeline.detections.cloud_fields`.

    ``data`` is assigned as ``bytes`` (one copy, no per-element checks).
    """
    msg = PointCloud2(
        header=header,
        height=int(fields["height"]),
        width=int(fields["width"]),
        fields=[
            PointField(name=name, offset=int(offset), datatype=int(kind), count=int(count))
            for name, offset, kind, count in fields["fields"]
        ],
        is_bigendian=bool(fields["is_bigendian"]),
        point_step=int(fields["point_step"]),
        row_step=int(fields["row_step"]),
        is_dense=bool(fields["is_dense"]),
    )
    data = fields["data"]
    msg.data = data if isinstance(data, bytes) else memoryview(data).cast("B").tobytes()
    return msg


# ------------------------------------------------------------------------------ outputs


class VisionOutputs:
    """The node's ``vision_msgs`` outputs and its point cloud (see the module docstring).

    Args:
        node: the lifecycle node that publishes.
        health: logging (the one note that vision_msgs is missing) and ``last_error``.

    Attributes:
        available: vision_msgs imports; otherwise only ``~/points`` is published.
        publishers: name (``detections``, ``detections_3d``, ``tracks_3d``, ``points``) to
            lifecycle publisher, while configured.
    """

    def __init__(self, node: LifecycleNode, health: Health) -> None:
        self._node = node
        self._health = health
        self._vm = vision_msgs_module()
        self.available = self._vm is not None
        self.publishers: dict[str, Any] = {}
        self._said_missing = False
        self.published = {"detections": 0, "detections_3d": 0, "tracks_3d": 0, "points": 0}

    @property
    def msgs(self) -> Any | None:
        """``vision_msgs.msg`` (None without it)."""
        return self._vm

    # ------------------------------------------------------------------ lifecycle

    def create_publishers(self) -> None:
        """The outputs, as lifecycle publishers (configure); without vision_msgs only
        ``~/points``, and the log says once which outputs are off and why."""
        node, vm = self._node, self._vm
        self.publishers = {
            "points": node.create_lifecycle_publisher(
                PointCloud2, "~/points", image_output_qos(), qos_overriding_options=overridable()
            )
        }
        if vm is None:
            if not self._said_missing:
                self._said_missing = True
                node.get_logger().warning(vision_msgs_missing())
            return
        for key, msg_type, topic in (
            ("detections", vm.Detection2DArray, "~/detections"),
            ("detections_3d", vm.Detection3DArray, "~/detections_3d"),
            ("tracks_3d", vm.Detection3DArray, "~/tracks/detections_3d"),
        ):
            self.publishers[key] = node.create_lifecycle_publisher(
                msg_type, topic, instances_qos(), qos_overriding_options=overridable()
            )

    def release(self) -> None:
        """Undo :meth:`create_publishers` (cleanup, shutdown, error)."""
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}

    def diagnostics(self) -> dict[str, str]:
        """``/diagnostics`` values: whether vision_msgs is there (which outputs are off if
        not) and the messages published on each output."""
        values = {"vision_msgs": "ok" if self.available else vision_msgs_missing()}
        values.update({f"{k}_published": str(v) for k, v in self.published.items()})
        return values

    # ------------------------------------------------------------------ publishing

    def wants_points(self) -> bool:
        """Somebody subscribes to ``~/points`` (ask the lift for its points then)."""
        pub = self.publishers.get("points")
        return pub is not None and pub.get_subscription_count() > 0

    def detection2d_array(self, header: Any, detections: Sequence[Detection2DRecord]) -> Any:
        """A ``Detection2DArray`` with ``header`` on the array and every detection.

        Raises:
            RuntimeError: vision_msgs is not installed.
        """
        vm = self._require()
        return vm.Detection2DArray(
            header=header, detections=[detection2d_msg(vm, header, d) for d in detections]
        )

    def detection3d_array(self, header: Any, detections: Sequence[Detection3DRecord]) -> Any:
        """A ``Detection3DArray`` with ``header`` on the array and every detection.

        Raises:
            RuntimeError: vision_msgs is not installed.
        """
        vm = self._require()
        return vm.Detection3DArray(
            header=header, detections=[detection3d_msg(vm, header, d) for d in detections]
        )

    def publish_instances(
        self,
        header: Any,
        records: Sequence[InstanceRecord],
        class_ids: Sequence[str] | None = None,
        lifted: Sequence[Lifted] | None = None,
        *,
        oriented: bool = False,
        voxel_m: float = 0.01,
    ) -> None:
        """``~/detections``, ``~/detections_3d`` and (while subscribed) ``~/points`` of one
        ``~/instances`` message.

        Args:
            header: the colour frame's header (``~/instances``').
            records: ``~/instances``' records, in its order (3D in ``position_3d`` when lifted).
            class_ids: one class id per record (None: none).
            lifted: the lift of each record with its points (for ``~/points``; None or empty:
                no cloud).
            oriented: ``~/detections_3d`` boxes are the oriented boxes, not the axis-aligned.
            voxel_m: the cloud's voxel size in metres (0: every point).
        """
        pubs = self.publishers
        if "detections" in pubs:
            pubs["detections"].publish(
                self.detection2d_array(header, detections_2d(records, class_ids))
            )
            self.published["detections"] += 1
        if "detections_3d" in pubs and _depth_matched(records):
            pubs["detections_3d"].publish(
                self.detection3d_array(
                    header, detections_3d(records, class_ids, oriented=oriented)
                )
            )
            self.published["detections_3d"] += 1
        if lifted and self.wants_points():
            ids = list(range(1, len(lifted) + 1))  # ~/instances/label's labels
            xyz, point_ids = cloud_points(lifted, ids, voxel_m)
            pubs["points"].publish(cloud_msg(header, cloud_fields(xyz, point_ids)))
            self.published["points"] += 1

    def publish_targets(
        self, header: Any, records: Sequence[InstanceRecord], *, oriented: bool = False
    ) -> None:
        """``~/tracks/detections_3d`` of one ``~/tracks`` message (targets with a valid 3D
        position; ``id`` = target ID)."""
        pub = self.publishers.get("tracks_3d")
        if pub is None or not _depth_matched(records):
            return
        pub.publish(self.detection3d_array(header, detections_3d(records, oriented=oriented)))
        self.published["tracks_3d"] += 1

    def _require(self) -> Any:
        if self._vm is None:
            raise RuntimeError(vision_msgs_missing())
        return self._vm


def _depth_matched(records: Sequence[InstanceRecord]) -> bool:
    """The records were lifted with a depth frame (valid or not each): a 3D message is due.

    Not lifted (depth off, or no depth frame near this one): no 3D message, rather than an
    empty one that would say "nothing here".
    """
    return any(getattr(r, "position_3d", None) is not None for r in records)
