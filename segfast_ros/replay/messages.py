"""The replay's output messages as rosbags dataclasses, from the pipeline's plain records.

``Instance`` / ``InstanceArray`` (with ``position_3d``) from
:class:`~segfast_ros.pipeline.render.InstanceRecord`, and vision_msgs' ``Detection2DArray`` /
``Detection3DArray`` from :mod:`segfast_ros.pipeline.detections`' records, field for field as
the node fills its rclpy messages. rosbags' dataclasses take every field, so nested messages
are built in full (a hypothesis' pose covariance is all zero: not estimated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline.detections import Detection2DRecord, Detection3DRecord, Hypothesis
from ..pipeline.render import InstanceRecord
from . import bags


class Messages:
    """Builds the output messages with the types of ``store`` (the replay's typestore).

    Attributes:
        vision: whether ``store`` has vision_msgs (:meth:`detection2d_array` and
            :meth:`detection3d_array` need it).
    """

    def __init__(self, store: Any) -> None:
        self.types = store.types
        self.vision = bags.has_vision_msgs(store)

    def _t(self, name: str) -> Any:
        return self.types[name]

    def point(self, xyz: Sequence[float]) -> Any:
        x, y, z = (float(v) for v in xyz)
        return self._t("geometry_msgs/msg/Point")(x=x, y=y, z=z)

    def pose(self, position: Sequence[float], orientation: Sequence[float]) -> Any:
        x, y, z, w = (float(v) for v in orientation)
        quaternion = self._t("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w)
        return self._t("geometry_msgs/msg/Pose")(
            position=self.point(position), orientation=quaternion
        )

    def vector3(self, xyz: Sequence[float]) -> Any:
        x, y, z = (float(v) for v in xyz)
        return self._t("geometry_msgs/msg/Vector3")(x=x, y=y, z=z)

    def position_3d(self, rec: InstanceRecord) -> Any:
        """``Position3D`` of a record (all zero, ``valid`` false, when it was not lifted)."""
        f = rec.position_fields()
        return self._t(bags.msg_type("Position3D"))(
            valid=bool(f["valid"]),
            centroid=self.point(f["centroid"]),
            min=self.point(f["min"]),
            max=self.point(f["max"]),
            obb_pose=self.pose(f["obb_position"], f["obb_orientation"]),
            obb_size=self.vector3(f["obb_size"]),
            num_points=int(f["num_points"]),
            valid_fraction=float(f["valid_fraction"]),
        )

    def instance(self, rec: InstanceRecord) -> Any:
        return self._t(bags.msg_type("Instance"))(
            **rec.scalar_fields(),
            box=self._t("sensor_msgs/msg/RegionOfInterest")(**rec.roi_fields()),
            rle_counts=rec.rle_counts,
            prompt=rec.prompt,
            position_3d=self.position_3d(rec),
        )

    def instance_array(
        self, header: Any, strategy: str, records: Sequence[InstanceRecord], n: int, ms: float
    ) -> Any:
        return self._t(bags.msg_type("InstanceArray"))(
            header=header,
            strategy=strategy,
            instances=[self.instance(r) for r in records],
            decoder_prompts=n,
            segevery_ms=ms,
        )

    def _results(self, results: Sequence[Hypothesis], position: Sequence[float]) -> list[Any]:
        """``ObjectHypothesisWithPose`` list: each hypothesis at ``position`` (identity
        orientation, zero covariance)."""
        pose = self._t("geometry_msgs/msg/PoseWithCovariance")(
            pose=self.pose(position, (0.0, 0.0, 0.0, 1.0)), covariance=np.zeros(36)
        )
        hypothesis = self._t(bags.vision_type("ObjectHypothesis"))
        with_pose = self._t(bags.vision_type("ObjectHypothesisWithPose"))
        return [
            with_pose(hypothesis=hypothesis(class_id=h.class_id, score=float(h.score)), pose=pose)
            for h in results
        ]

    def detection2d_array(self, header: Any, detections: Sequence[Detection2DRecord]) -> Any:
        """``vision_msgs/Detection2DArray``: each detection with the array's header."""
        point2d, pose2d = self._t(bags.vision_type("Point2D")), self._t(bags.vision_type("Pose2D"))
        box = self._t(bags.vision_type("BoundingBox2D"))
        detection = self._t(bags.vision_type("Detection2D"))
        out = [
            detection(
                header=header,
                results=self._results(d.results, (0.0, 0.0, 0.0)),
                bbox=box(
                    center=pose2d(
                        position=point2d(x=float(d.center[0]), y=float(d.center[1])), theta=0.0
                    ),
                    size_x=float(d.size[0]),
                    size_y=float(d.size[1]),
                ),
                id=d.id,
            )
            for d in detections
        ]
        return self._t(bags.vision_type("Detection2DArray"))(header=header, detections=out)

    def detection3d_array(self, header: Any, detections: Sequence[Detection3DRecord]) -> Any:
        """``vision_msgs/Detection3DArray``: each detection with the array's header, its
        hypotheses at the centroid, its box the 3D extent."""
        box = self._t(bags.vision_type("BoundingBox3D"))
        detection = self._t(bags.vision_type("Detection3D"))
        out = [
            detection(
                header=header,
                results=self._results(d.results, d.position),
                bbox=box(
                    center=self.pose(d.bbox_center, d.bbox_orientation),
                    size=self.vector3(d.bbox_size),
                ),
                id=d.id,
            )
            for d in detections
        ]
        return self._t(bags.vision_type("Detection3DArray"))(header=header, detections=out)
