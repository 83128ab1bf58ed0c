"""Start the segfast node next to a camera.

    ros2 launch segfast_ros segfast.launch.py camera_topic:=/camera/color/image_raw \
        model_dir:=/path/to/onnx profile:=auto

Parameters come from ``params_file`` (the base, config/segfast.yaml), then ``profile`` (a
platform layer from config/profiles/: ``auto`` picks it from /proc/device-tree/model, falling
back to ``cpu``), then ``profile_file`` (an optional extra layer of your own), then the
arguments below; a later layer wins.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from segfast_ros.profiles import PROFILES, resolve_profile


def _node(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    camera = arg("camera_topic")
    layers = [arg("params_file")]
    share = Path(get_package_share_directory("segfast_ros"))
    profile = resolve_profile(arg("profile"), share / "config" / "profiles")
    if profile is not None:
        layers.append(str(profile))
    if arg("profile_file"):
        layers.append(arg("profile_file"))
    overrides = {"use_sim_time": arg("use_sim_time").lower() == "true"}
    if arg("model_dir"):
        overrides["model_dir"] = arg("model_dir")
    return [
        Node(
            package="segfast_ros",
            executable="segfast_node",
            name=arg("node_name"),
            namespace=arg("namespace"),
            parameters=[*layers, overrides],
            # The node subscribes to <camera_topic>/compressed itself (use_compressed).
            remappings=[("image", camera)],
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("segfast_ros"))
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "camera_topic",
                default_value="/camera/image_raw",
                description="sensor_msgs/Image topic of the camera (its /compressed sibling is "
                "used when the node's use_compressed parameter is true).",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="Namespace of the node (its topics and services follow it).",
            ),
            DeclareLaunchArgument(
                "node_name", default_value="segfast", description="Name of the node."
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=str(share / "config" / "segfast.yaml"),
                description="Base parameter file.",
            ),
            DeclareLaunchArgument(
                "profile",
                default_value="auto",
                description="Platform profile layered over params_file: auto (from "
                "/proc/device-tree/model, else cpu), none, "
                f"{', '.join(PROFILES)}, or a parameter file path.",
            ),
            DeclareLaunchArgument(
                "profile_file",
                default_value="",
                description="Optional parameter file of your own, layered over the profile; "
                "empty for none.",
            ),
            DeclareLaunchArgument(
                "model_dir",
                default_value="",
                description="Folder of the exported ONNX model; empty keeps the parameter "
                "files' value.",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="Use /clock (true when replaying a bag with --clock).",
            ),
            DeclareLaunchArgument(
                "log_level",
                default_value="info",
                description="Logging level: debug, info, warn, error.",
            ),
            OpaqueFunction(function=_node),
        ]
    )
