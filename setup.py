"""pip-installable library and `segfast` CLI, for users without ROS (export, benchmarks, replay).

On a robot the ROS package is built with colcon instead (package.xml); both install the same
`segfast_ros` Python package.
"""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="segfast_ros",
    version="0.1.0",
    description="Efficient Segment Anything (MobileSAM, TinySAM, SAM) for ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["segfast_ros", "segfast_ros.*"]),
    install_requires=[
        "numpy>=1.23",
        "opencv-python-headless>=4.8",
        "onnxruntime>=1.16",
        "PyYAML",
        "scipy>=1.9",
    ],
    extras_require={
        # Building, exporting and quantizing models; never needed on the robot.
        "export": ["torch>=2.1", "onnx>=1.15", "onnxscript"],
        # Offline rosbag replay (`segfast replay`): reads and writes rosbag2 without ROS.
        "replay": ["rosbags>=0.10"],
        # A whole archive of bags on Ray (`segfast replay-many`), into a Parquet table. Without
        # it, `--address local` runs in one process and the table is CSV.
        "fleet": ["rosbags>=0.10", "ray>=2.9", "pyarrow>=12"],
    },
    # The replay registers our message types from these files (segfast_ros.replay.bags).
    data_files=[("share/segfast_ros/msg", sorted(glob("msg/*.msg")))],
    entry_points={
        "console_scripts": [
            "segfast = segfast_ros.cli:main",
            # Needs rclpy and the generated interfaces (a ROS 2 environment).
            "segfast_node = segfast_ros.ros.entry:main",
        ]
    },
)
