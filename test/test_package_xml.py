"""package.xml names, as rosdep keys, every ROS package and system library the code imports.

rosdep installs a robot's dependencies from package.xml alone, so an import without its key
works here (the venv has everything) and fails on the robot. Every third-party import of the
package, its launch files and its scripts must be either mapped to a rosdep key below (and be
an exec dependency in package.xml), or listed as deliberately not one, with the reason.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from ros_msg_files import referenced_packages

catkin_pkg_package = pytest.importorskip(
    "catkin_pkg.package", reason="catkin_pkg is not installed (requirements-ros.txt)"
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "segfast_ros"

# Imported module -> rosdep key. A ROS package's key is its name.
ROSDEP_KEYS = {
    **{
        name: name
        for name in (
            "ament_index_python",
            "builtin_interfaces",
            "diagnostic_msgs",
            "geometry_msgs",
            "launch",
            "launch_ros",
            "lifecycle_msgs",
            "rcl_interfaces",
            "rclpy",
            "sensor_msgs",
            "std_msgs",
            "std_srvs",
            "vision_msgs",
        )
    },
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "scipy": "python3-scipy",
}

# Imported, but deliberately not a rosdep dependency of the ROS package.
NOT_ROSDEP = {
    "onnxruntime": "pip (onnxruntime, or onnxruntime-gpu on Jetson); see package.xml's comment",
    "tensorrt": "ships with JetPack / NVIDIA's wheels; optional backend",
    "cuda": "cuda-python (pip), the tensorrt backend's GPU buffers; optional backend",
    "rosbags": "bag replay from the segfast CLI, pip only; the node does not use it",
    "lz4": "mcap chunk decompression in the replay; comes with rosbags",
    "backports": "zstd (backports.zstd) for mcap chunks in the replay; comes with rosbags",
    "compression": "zstd in the standard library from Python 3.14 (the replay's mcap chunks)",
    "torch": "exporting and training only (pip extra [export]); never on the robot",
    "torchvision": "exporting and training only",
    "timm": "exporting only (EfficientViT-SAM)",
    "onnx": "exporting only",
    "onnxscript": "exporting only",
    "ultralytics": "converting the object-aware detector, optional",
    "segment_anything": "test oracle only",
    "mobile_sam": "bench-segany's comparison with upstream, from a source tree the user names",
    "pycocotools": "test oracle only",
    "motmetrics": "tracking evaluation only (IDF1, MOTA), requirements-dev.txt",
    "pandas": "comes with motmetrics: the tracking evaluation reads its summary",
    "ray": "replay-many's workers (pip extra [fleet]); offline only, never on the robot",
    "pyarrow": "replay-many's Parquet table (pip extra [fleet]); offline only",
}


def _python_files() -> list[Path]:
    files = sorted((REPO / PACKAGE).rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    for script in sorted((REPO / "scripts").glob("*")):
        first_line = script.read_text(errors="replace").partition("\n")[0]
        if script.is_file() and first_line.startswith("#!") and "python" in first_line:
            files.append(script)
    return files


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (lazy imports included)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != PACKAGE and top not in sys.stdlib_module_names:
                    found[top].add(str(path.relative_to(REPO)))
    return found


@pytest.fixture(scope="module")
def package() -> object:
    return catkin_pkg_package.parse_package(REPO / "package.xml")


def _names(dependencies: list) -> set[str]:
    return {dependency.name for dependency in dependencies}


def test_package_xml_parses_and_validates(package) -> None:
    package.validate()  # raises InvalidPackage (e.g. a maintainer e-mail catkin_pkg rejects)
    assert package.name == PACKAGE
    assert package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {group.name for group in package.member_of_groups}
    assert {"ament_cmake", "rosidl_default_generators"} <= _names(package.buildtool_depends)
    assert "rosidl_default_runtime" in _names(package.exec_depends)


def test_version_matches_setup_py(package) -> None:
    setup_py = (REPO / "setup.py").read_text()
    assert f'version="{package.version}"' in setup_py


def test_every_import_is_classified() -> None:
    unknown = {
        module: sorted(files)
        for module, files in _imports().items()
        if module not in ROSDEP_KEYS and module not in NOT_ROSDEP
    }
    assert not unknown, (
        "new third-party imports: add each to ROSDEP_KEYS (and package.xml) or to NOT_ROSDEP "
        f"(with the reason) in {Path(__file__).name}: {unknown}"
    )


def test_every_imported_ros_package_is_an_exec_depend(package) -> None:
    exec_depends = _names(package.exec_depends)
    missing = {
        ROSDEP_KEYS[module]: sorted(files)
        for module, files in _imports().items()
        if module in ROSDEP_KEYS and ROSDEP_KEYS[module] not in exec_depends
    }
    assert not missing, f"package.xml lacks <exec_depend> (or <depend>) for: {missing}"


def test_nodes_indirect_ros_dependencies(package) -> None:
    """The lifecycle node's parameters and transitions use these message packages."""
    assert {"lifecycle_msgs", "rcl_interfaces"} <= _names(package.exec_depends)


def test_interface_dependencies_are_declared(package) -> None:
    """Every package whose types msg/ and srv/ use: <depend>, find_package and DEPENDENCIES."""
    used = referenced_packages()
    assert used, "no message package referenced: the msg parser is broken"
    assert used <= _names(package.build_depends), used - _names(package.build_depends)
    assert used <= _names(package.exec_depends), used - _names(package.exec_depends)
    cmake = (REPO / "CMakeLists.txt").read_text()
    dependencies = re.search(r"DEPENDENCIES([^)]*)\)", cmake)
    assert dependencies, "rosidl_generate_interfaces(... DEPENDENCIES ...) not found"
    for name in sorted(used):
        assert re.search(rf"find_package\({name}\s+REQUIRED\)", cmake), name
        assert name in dependencies[1].split(), name
