"""One segfast lifecycle node per camera, each in its own namespace.

    ros2 launch segfast_ros multi_camera.launch.py model_dir:=/path/to/onnx \
        cameras:=front:/front/color/image_raw,rear:/rear/color/image_raw profile:=auto

Starts ``/front/segfast`` and ``/rear/segfast`` (services ``/front/segfast/segment``, ...),
each through segfast.launch.py with the same parameter layers and the same arguments (those of
segfast.launch.py but the per-node ones, from :mod:`segfast_ros.ros.launch_args`), so
``autostart:=false`` leaves every node to a lifecycle manager. Every node loads its own engines
(on a Jetson the engine cache is shared, so only the first start builds them): the GPU memory
and encoder time add up per camera, so lower ``segevery.rate`` in a profile_file when running
several cameras on an Orin Nano or NX.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from segfast_ros.profiles import parse_cameras
from segfast_ros.ros.launch_args import declare, shared_arguments


def _cameras(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    single = Path(get_package_share_directory("segfast_ros")) / "launch" / "segfast.launch.py"
    forwarded = {a.name: arg(a.name) for a in shared_arguments()}
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(single)),
            launch_arguments={**forwarded, "namespace": name, "camera_topic": topic}.items(),
        )
        for name, topic in parse_cameras(arg("cameras"))
    ]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("segfast_ros"))
    cameras = DeclareLaunchArgument(
        "cameras",
        default_value="front:/front/image_raw,rear:/rear/image_raw",
        description="Comma-separated name:topic pairs; each name is a node's namespace.",
    )
    return LaunchDescription(
        [cameras, *declare(shared_arguments(), share), OpaqueFunction(function=_cameras)]
    )
