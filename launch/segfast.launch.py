"""Start the segfast lifecycle node next to a camera.

    ros2 launch segfast_ros segfast.launch.py camera_topic:=/camera/color/image_raw \
        model_dir:=/path/to/onnx profile:=auto

With an RGB-D camera, ``depth_topic:=/camera/aligned_depth_to_color/image_raw`` turns on 3D
(``depth.enabled``); the two CameraInfo topics default to the ``camera_info`` next to each
image topic (``camera_info_topic``, ``depth_info_topic`` override them).

The node configures and activates itself (``autostart:=true``, the default); with
``autostart:=false`` it waits in ``unconfigured`` for a lifecycle manager, which drives it
through ``<node>/change_state``. Parameters come from ``params_file`` (the base,
config/segfast.yaml), then ``profile`` (a platform layer from config/profiles/: ``auto`` picks
it from /proc/device-tree/model, falling back to ``cpu``), then ``profile_file`` (an optional
extra layer of your own), then the arguments; a later layer wins. The arguments and what they
become are in :mod:`segfast_ros.ros.launch_args` (``--show-args`` lists them).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription
from segfast_ros.ros.launch_args import ARGUMENTS, declare, node_parameters, remappings


def _node(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    share = Path(get_package_share_directory("segfast_ros"))
    return [
        LifecycleNode(
            package="segfast_ros",
            executable="segfast_node",
            name=arg("node_name"),
            namespace=arg("namespace"),
            parameters=node_parameters(arg, share),
            # image, camera_info and, with depth_topic, depth and depth/camera_info.
            remappings=remappings(arg),
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("segfast_ros"))
    return LaunchDescription([*declare(ARGUMENTS, share), OpaqueFunction(function=_node)])
