"""The node's QoS profiles, in one place, and the parameters that override them.

Every topic the node subscribes or publishes takes the standard ROS 2 QoS override
parameters (``QoSOverridingOptions.with_default_policies()``, as image_pipeline's nodes do):
``qos_overrides.<resolved topic>.<publisher|subscription>.<history|depth|reliability>``, for
example ``-p qos_overrides./camera/image.subscription.reliability:=reliable`` or
``-p qos_overrides./segfast/overlay.publisher.depth:=3``. They are read-only, read when the
entity is created (the outputs at ``configure``, the image subscriptions at ``activate``), and
``ros2 param describe`` lists them once it exists.

Defaults, and why:

* camera input: best effort, keep last 1, volatile. The newest frame only, and a camera
  driver is never held back by a slow encoder (it matches reliable and best-effort cameras).
* depth input (``depth``, ``camera_info``, ``depth/camera_info``): best effort, keep last 5,
  volatile (ROS's sensor-data profile). Best effort matches reliable and best-effort drivers
  (and a latched CameraInfo publisher); 5 because depth images are kept by stamp for matching,
  so a short burst should not lose one that a colour frame will ask for.
* ``~/prompts`` (a detector's ``Detection2DArray``): reliable, keep last 10, volatile.
* ``~/instances`` and ``~/tracks``, and likewise ``~/prompted``, ``~/detections``,
  ``~/detections_3d`` and ``~/tracks/detections_3d``: reliable, keep last 2, volatile (as
  before QoS became overridable: small messages a planner should not lose).
* ``~/instances/label``, ``~/tracks/label``, ``~/overlay`` and ``~/points``: reliable, keep last 1,
  volatile. rviz's Image display asks for reliable, keep last 5, volatile (rviz_common's
  ``qos_profile(5)``), which a best-effort publisher would never match; ``ros2 bag record``
  asks for what the publishers offer (reliable when all are), so it records these reliably
  too. Keep last 1 because each is a full frame (66 MB of labels and 100 MB of overlay at
  8K): a reliable writer keeps that many for resending, and only the newest is worth
  resending.

Each call returns a new profile: rclpy writes the overrides into the profile it is given, and
a shared one would carry one node's overrides into the next entity.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions


def _keep_last(depth: int, reliability: ReliabilityPolicy) -> QoSProfile:
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=reliability,
        durability=DurabilityPolicy.VOLATILE,
    )


def image_input_qos() -> QoSProfile:
    """Camera input (raw and compressed): best effort, keep last 1, volatile."""
    return _keep_last(1, ReliabilityPolicy.BEST_EFFORT)


def depth_input_qos() -> QoSProfile:
    """Depth images and CameraInfos: best effort, keep last 5, volatile (sensor data)."""
    return _keep_last(5, ReliabilityPolicy.BEST_EFFORT)


def instances_qos() -> QoSProfile:
    """``~/instances`` and ``~/tracks``: reliable, keep last 2, volatile."""
    return _keep_last(2, ReliabilityPolicy.RELIABLE)


def image_output_qos() -> QoSProfile:
    """Label images and ``~/overlay``: reliable, keep last 1, volatile (rviz, bags)."""
    return _keep_last(1, ReliabilityPolicy.RELIABLE)


def prompts_qos() -> QoSProfile:
    """``~/prompts``: reliable, keep last 10, volatile.

    Reliable, as detectors publish by default (a reliable subscription does not match a
    best-effort publisher: such a detector needs
    ``qos_overrides./<ns>/<node>/prompts.subscription.reliability:=best_effort``); 10 so that a
    burst is taken whole, and the node's worker answers the newest.
    """
    return _keep_last(10, ReliabilityPolicy.RELIABLE)


def overridable() -> QoSOverridingOptions:
    """History, depth and reliability overridable by ``qos_overrides.<topic>...`` parameters."""
    return QoSOverridingOptions.with_default_policies()


#: ``~/segment``'s and ``~/track``'s DDS request queue: reliable, and every request is kept
#: until the node takes it. rclpy's default keeps the last 10 and DDS drops older requests
#: silently when a burst outgrows that before the executor takes them, so those callers never
#: got an answer. The node bounds what it holds itself (``segment.queue_depth``) and refuses
#: the rest as busy. Clients with many calls in flight use it too, so that no response is
#: dropped on their side. (Services take no QoS override parameters: rclpy has none for them.)
SERVICE_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE
)
