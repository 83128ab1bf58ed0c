"""Start the segfast lifecycle node next to a camera.

    ros2 launch segfast_ros segfast.launch.py camera_topic:=/camera/color/image_raw \
        model_dir:=/path/to/onnx profile:=auto

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
from segfast_ros.ros.launch_args import ARGUMENTS, declare, node_parameters


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
            # The node subscribes to <camera_topic>/compressed itself (use_compressed).
            remappings=[("image", arg("camera_topic"))],
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("segfast_ros"))
    return LaunchDescription([*declare(ARGUMENTS, share), OpaqueFunction(function=_node)])
