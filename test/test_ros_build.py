"""The package builds with colcon as on a robot, and its install space is one Python package.

The checkout is copied (as a clone would have it: tracked and new files, nothing git ignores)
into a temporary workspace `src/segfast_ros` and built with colcon against the ROS 2 wheels of
this venv. Then, with nothing but `. install/setup.bash`, the generated interfaces and the
hand-written modules must import from one folder, install/segfast_ros/lib/python3.X/
site-packages/segfast_ros, and the executables, package.xml, launch/ and config/ must be where
`ros2 run` and `ros2 launch` look for them. About 20 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "segfast_ros"
PREFIX = Path(sys.prefix)
# Left out of the copy when git cannot list the files (a source archive, not a clone).
_NOT_SOURCES = {".git", ".venv", "build", "install", "log", "out", ".pytest_cache", ".ruff_cache"}


def _colcon() -> str | None:
    beside_python = Path(sys.executable).parent / "colcon"
    return str(beside_python) if beside_python.is_file() else shutil.which("colcon")


def _copy_sources(destination: Path) -> None:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            REPO,
            destination,
            ignore=lambda folder, names: [
                n
                for n in names
                if n == "__pycache__" or (Path(folder) == REPO and n in _NOT_SOURCES)
            ],
        )
        return
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # listed but deleted in the working tree: skip
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def install_space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed (pip install -r requirements-ros.txt)")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: colcon cannot build the ROS interfaces")
    if not (PREFIX / "share" / "ament_cmake").is_dir() and "AMENT_PREFIX_PATH" not in os.environ:
        pytest.skip("no ROS 2 to build against (neither the wheels nor a sourced ROS 2)")

    workspace = tmp_path_factory.mktemp("colcon_ws")
    _copy_sources(workspace / "src" / PACKAGE)
    env = dict(os.environ)
    if (PREFIX / "share" / "ament_cmake").is_dir():  # the pip wheels: this venv is the prefix
        for variable in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
            env[variable] = os.pathsep.join(filter(None, [str(PREFIX), env.get(variable)]))
    env["COLCON_HOME"] = str(workspace / "colcon_home")  # no user defaults.yaml
    # colcon's default adds `-l<cores>`, which drops to one job when other work loads the machine.
    env.setdefault("MAKEFLAGS", f"-j{os.cpu_count() or 2}")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [
        colcon,
        "--log-base",
        "log",
        "build",
        "--base-paths",
        "src",
        "--event-handlers",
        "console_cohesion+",
        "--cmake-args",
        f"-DCMAKE_PROJECT_INCLUDE={REPO / 'cmake' / 'pip_wheels_fixup.cmake'}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DBUILD_TESTING=OFF",
    ]
    result = subprocess.run(
        command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600
    )
    output = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"colcon build failed:\n{output}"
    return workspace / "install"


_IMPORT_CHECK = """
import json, sys
import rclpy
import segfast_ros, segfast_ros.msg, segfast_ros.srv, segfast_ros.spec
from segfast_ros.msg import Instance, InstanceArray, SegmentResult
from segfast_ros.srv import Segment

context = rclpy.Context()
rclpy.init(context=context)
node = rclpy.create_node("segfast_colcon_test", context=context)
node.create_publisher(InstanceArray, "segfast_colcon_test/instances", 1)
node.create_service(Segment, "segfast_colcon_test/segment", lambda _request, response: response)
node.destroy_node()
rclpy.shutdown(context=context)

with open("/proc/self/maps") as maps:
    libraries = sorted({
        line.split()[-1] for line in maps
        if "/libsegfast_ros__" in line or "/segfast_ros_s__" in line
    })
modules = {m.__name__: m.__file__ for m in (segfast_ros, segfast_ros.msg, segfast_ros.srv,
                                              segfast_ros.spec)}
print(json.dumps({"modules": modules, "libraries": libraries}))
"""


def test_install_space_is_one_package(install_space: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "PYTHONPATH", "COLCON_PREFIX_PATH")
    }
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    script = f'. "{install_space}/setup.bash" && exec "$0" -c "$1"'
    result = subprocess.run(
        ["bash", "-c", script, sys.executable, _IMPORT_CHECK],
        env=env,
        cwd=install_space.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
    package_dir = install_space / PACKAGE / "lib" / python_dir / "site-packages" / PACKAGE
    modules = {name: Path(file) for name, file in report["modules"].items()}
    assert modules == {
        "segfast_ros": package_dir / "__init__.py",
        "segfast_ros.msg": package_dir / "msg" / "__init__.py",
        "segfast_ros.srv": package_dir / "srv" / "__init__.py",
        "segfast_ros.spec": package_dir / "spec.py",
    }
    # The typesupport the publisher and service loaded is the workspace's own build, not a copy
    # that a development setup put elsewhere.
    assert report["libraries"], "no segfast_ros typesupport library was loaded"
    for library in report["libraries"]:
        assert Path(library).is_relative_to(install_space / PACKAGE), library


def test_install_space_has_every_hand_written_module(install_space: Path) -> None:
    python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
    package_dir = install_space / PACKAGE / "lib" / python_dir / "site-packages" / PACKAGE
    sources = {p.relative_to(REPO / PACKAGE) for p in (REPO / PACKAGE).rglob("*.py")}
    installed = {p.relative_to(package_dir) for p in package_dir.rglob("*.py")}
    assert sources <= installed, sorted(map(str, sources - installed))


def test_executables_and_share_files(install_space: Path) -> None:
    prefix = install_space / PACKAGE
    for name in ("segfast_node", "segfast"):
        program = prefix / "lib" / PACKAGE / name
        assert program.is_file(), program
        assert os.access(program, os.X_OK), f"{program} is not executable"
    # `ros2 run` and get_package_share_directory find the package through the ament index.
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    for folder in ("launch", "config"):
        assert (share / folder).is_dir(), f"share/{PACKAGE}/{folder} is missing"
        sources = {p.name for p in (REPO / folder).iterdir() if p.is_file()}
        assert sources <= {p.name for p in (share / folder).iterdir()}, folder
