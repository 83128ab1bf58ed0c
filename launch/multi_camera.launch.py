"""One segfast node per camera, each in its own namespace.

    ros2 launch segfast_ros multi_camera.launch.py model_dir:=/path/to/onnx \
        cameras:=front:/front/color/image_raw,rear:/rear/color/image_raw profile:=auto

Starts ``/front/segfast`` and ``/rear/segfast`` (services ``/front/segfast/segment``, ...),
each through segfast.launch.py with the same parameter layers. Every node loads its own
engines (on a Jetson the engine cache is shared, so only the first start builds them): the
GPU memory and encoder time add up per camera, so lower ``segevery.rate`` in a profile_file
when running several cameras on an Orin Nano or NX.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from segfast_ros.profiles import parse_cameras

#: Arguments passed through unchanged to every camera's segfast.launch.py.
FORWARDED = ("model_dir", "profile", "profile_file", "params_file", "use_sim_time", "log_level")


def _cameras(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    single = Path(get_package_share_directory("segfast_ros")) / "launch" / "segfast.launch.py"
    forwarded = {name: arg(name) for name in FORWARDED}
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(single)),
            launch_arguments={**forwarded, "namespace": name, "camera_topic": topic}.items(),
        )
        for name, topic in parse_cameras(arg("cameras"))
    ]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("segfast_ros"))
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "cameras",
                default_value="front:/front/image_raw,rear:/rear/image_raw",
                description="Comma-separated name:topic pairs; each name is a node's namespace.",
            ),
            DeclareLaunchArgument(
                "model_dir",
                default_value="",
                description="Folder of the exported ONNX model; empty keeps the parameter "
                "files' value.",
            ),
            DeclareLaunchArgument(
                "profile",
                default_value="auto",
                description="Platform profile for every node (see segfast.launch.py).",
            ),
            DeclareLaunchArgument(
                "profile_file",
                default_value="",
                description="Optional parameter file of your own, layered over the profile.",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=str(share / "config" / "segfast.yaml"),
                description="Base parameter file.",
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
            OpaqueFunction(function=_cameras),
        ]
    )
