"""The launch files' arguments, in one table, and the node parameters they become.

``launch/segfast.launch.py`` declares all of :data:`ARGUMENTS`; ``launch/multi_camera.launch.py``
declares the same ones except the per-node :data:`PER_NODE` (it sets those per camera) and
forwards them to each camera's segfast.launch.py. What the arguments mean for the node is
:func:`node_parameters` and :func:`remappings`, plain Python, so it is tested without
``launch`` installed; only :func:`declare` needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segfast_ros.profiles import DEVICE_TREE_MODEL, PROFILES, resolve_profile
from segfast_ros.topics import camera_info_sibling


@dataclass(frozen=True)
class LaunchArg:
    """One launch argument.

    Attributes:
        name: the argument (``name:=value`` on the ``ros2 launch`` command line).
        default: its default; ``{share}`` stands for the package's share folder.
        description: what it does, shown by ``ros2 launch ... --show-args``.
    """

    name: str
    default: str
    description: str

    def default_in(self, share: Path) -> str:
        """The default with ``{share}`` filled in."""
        return self.default.format(share=share)


#: Every argument of segfast.launch.py, in the order ``--show-args`` lists them.
ARGUMENTS: tuple[LaunchArg, ...] = (
    LaunchArg(
        "camera_topic",
        "/camera/image_raw",
        "sensor_msgs/Image topic of the camera (its /compressed sibling is used when the "
        "node's use_compressed parameter is true).",
    ),
    LaunchArg(
        "camera_info_topic",
        "",
        "sensor_msgs/CameraInfo of the colour camera, for 3D (depth_topic); empty: the "
        "camera_info next to camera_topic, as image_transport names it (/cam/color/image_raw "
        "-> /cam/color/camera_info).",
    ),
    LaunchArg(
        "depth_topic",
        "",
        "Depth image aligned to the colour camera (sensor_msgs/Image, 16UC1 millimetres or "
        "32FC1 metres, e.g. /camera/aligned_depth_to_color/image_raw); non-empty turns 3D on "
        "(depth.enabled). Empty: no depth, 2D results only.",
    ),
    LaunchArg(
        "depth_info_topic",
        "",
        "sensor_msgs/CameraInfo of the depth image (scales depth of another resolution); "
        "empty: the camera_info next to depth_topic.",
    ),
    LaunchArg("namespace", "", "Namespace of the node (its topics and services follow it)."),
    LaunchArg("node_name", "segfast", "Name of the node."),
    LaunchArg("params_file", "{share}/config/segfast.yaml", "Base parameter file."),
    LaunchArg(
        "profile",
        "auto",
        "Platform profile layered over params_file: auto (from /proc/device-tree/model, else "
        f"cpu), none, {', '.join(PROFILES)}, or a parameter file path.",
    ),
    LaunchArg(
        "device_model_file",
        str(DEVICE_TREE_MODEL),
        "File naming the board for profile:=auto (Linux's device-tree model; another file "
        "stands in for it on a test bench).",
    ),
    LaunchArg(
        "profile_file",
        "",
        "Optional parameter file of your own, layered over the profile; empty for none.",
    ),
    LaunchArg(
        "model_dir",
        "",
        "Folder of the exported ONNX model; empty keeps the parameter files' value.",
    ),
    LaunchArg(
        "autostart",
        "true",
        "true: the node configures and activates itself at start; false: it waits in "
        "unconfigured for a lifecycle manager (its change_state service).",
    ),
    LaunchArg("use_sim_time", "false", "Use /clock (true when replaying a bag with --clock)."),
    LaunchArg("log_level", "info", "Logging level: debug, info, warn, error."),
)

#: Arguments that name one node; multi_camera.launch.py sets them per camera (its cameras
#: have no depth: each would need its own depth topics).
PER_NODE = (
    "camera_topic",
    "camera_info_topic",
    "depth_topic",
    "depth_info_topic",
    "namespace",
    "node_name",
)


def shared_arguments() -> tuple[LaunchArg, ...]:
    """The arguments every camera's node takes alike (all but :data:`PER_NODE`)."""
    return tuple(a for a in ARGUMENTS if a.name not in PER_NODE)


def declare(arguments: tuple[LaunchArg, ...], share: Path) -> list[Any]:
    """``DeclareLaunchArgument`` actions for ``arguments`` (needs the ``launch`` package)."""
    from launch.actions import DeclareLaunchArgument

    return [
        DeclareLaunchArgument(a.name, default_value=a.default_in(share), description=a.description)
        for a in arguments
    ]


def launch_flag(name: str, text: str) -> bool:
    """A true/false launch argument, read as launch's own conditions read one.

    Raises:
        ValueError: neither true nor false (1 and 0 count too), naming the argument.
    """
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"launch argument {name} must be true or false, got {text!r}")


def node_parameters(arg: Callable[[str], str], share: Path) -> list[Any]:
    """The node's ``parameters=``: parameter files, then the arguments' own values.

    Layers, a later one winning: ``params_file`` (the base), the ``profile`` (a platform layer
    from config/profiles/; ``auto`` picks it from ``device_model_file``), ``profile_file``,
    then ``model_dir`` (when given), ``autostart``, ``use_sim_time`` and, with a ``depth_topic``,
    ``depth.enabled`` (true).

    Args:
        arg: the value of a launch argument by name.
        share: the package's share folder.
    """
    layers: list[Any] = [arg("params_file")]
    profile = resolve_profile(
        arg("profile"), share / "config" / "profiles", arg("device_model_file")
    )
    if profile is not None:
        layers.append(str(profile))
    if arg("profile_file"):
        layers.append(arg("profile_file"))
    overrides: dict[str, Any] = {
        "use_sim_time": launch_flag("use_sim_time", arg("use_sim_time")),
        "autostart": launch_flag("autostart", arg("autostart")),
    }
    if arg("model_dir"):
        overrides["model_dir"] = arg("model_dir")
    if arg("depth_topic"):
        overrides["depth.enabled"] = True
    return [*layers, overrides]


def remappings(arg: Callable[[str], str]) -> list[tuple[str, str]]:
    """The node's ``remappings=``: ``image`` to ``camera_topic``, ``camera_info`` to
    ``camera_info_topic`` (default: its sibling), and with a ``depth_topic`` ``depth`` and
    ``depth/camera_info`` (``depth_info_topic``, default: the depth topic's sibling).

    The node subscribes to ``<camera_topic>/compressed`` itself (``use_compressed``).
    """
    camera = arg("camera_topic")
    pairs = [
        ("image", camera),
        ("camera_info", arg("camera_info_topic") or camera_info_sibling(camera)),
    ]
    depth = arg("depth_topic")
    if depth:
        info = arg("depth_info_topic") or camera_info_sibling(depth)
        pairs += [("depth", depth), ("depth/camera_info", info)]
    return pairs
