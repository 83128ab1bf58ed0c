"""`make setup` re-installs what cmake copies into the venv when the copied files change.

Dry runs (``make -n``) against setup stamps in a temporary venv folder: nothing is built or
installed, and the repository's own venv is not touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The Makefile's setup stamps, in its order.
STAMPS = (
    ".installed",
    ".ros-interfaces",
    ".ros-installed-files",
    ".ros2-vendor",
    ".vision-msgs",
)

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv folder whose setup stamps are newer than every source (an hour ahead)."""
    venv = tmp_path / "venv"
    venv.mkdir()
    future = time.time() + 3600
    for name in STAMPS:
        (venv / name).touch()
        os.utime(venv / name, (future, future))
    return venv


def _dry_run(venv: Path, *changed: str, vendor: Path | str | None = None) -> str:
    """What ``make setup`` would run if the ``changed`` paths had just been modified, with the
    vendored ROS 2 tools at ``vendor`` (None: as the Makefile finds them)."""
    argv = ["make", "-n", "-C", str(REPO), f"VENV={venv}", "setup"]
    if vendor is not None:
        argv.append(f"ROS2_VENDOR_DIR={vendor}")
    for path in changed:
        argv += ["-W", path]
    # Not the flags of a `make test` that runs this suite (jobserver, -n, -W of its own).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    run = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, env=env)
    return run.stdout


def test_setup_does_nothing_when_nothing_changed(venv: Path) -> None:
    out = _dry_run(venv)
    assert "cmake --install" not in out and "pip install" not in out


@pytest.mark.parametrize(
    "changed",
    [
        "config/segfast.yaml",
        "config/profiles/cpu.yaml",
        "launch/segfast.launch.py",
        "scripts/segfast_node",
        "models/demo/encoder.fp32.onnx",
        "config/profiles",  # the folder: a file was added to it or removed from it
    ],
)
def test_setup_reinstalls_what_cmake_copies_into_the_venv(venv: Path, changed: str) -> None:
    assert (REPO / changed).exists()
    out = _dry_run(venv, changed)
    # The old copies are removed (from cmake's install manifest), then installed afresh; the
    # venv's packages and the interface build stay as they are.
    assert "install_manifest.txt" in out and "cmake --install build/ros" in out
    assert "pip install" not in out and "cmake --build" not in out


def test_setup_installs_the_vendored_ros_tools_only_when_a_copy_is_given(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    future = time.time() + 3600
    for name in STAMPS[:3]:  # set up, but never with the vendored tools
        (venv / name).touch()
        os.utime(venv / name, (future, future))
    vendor = tmp_path / "ros2_jazzy"
    (vendor / "launch").mkdir(parents=True)
    out = _dry_run(venv, vendor=vendor)
    # Built from a temporary copy, never in the vendored folder or the repository.
    assert f"cmake -S {vendor}/composition_interfaces" in out
    assert "mktemp -d" in out and "pip install --quiet --no-deps --no-build-isolation" in out
    assert "requirements-vendor.txt" in out
    # Without a copy (no ../shared, ROS2_VENDOR_DIR empty) setup has nothing more to do.
    out = _dry_run(venv, vendor="")
    assert "composition_interfaces" not in out and "pip install" not in out


def test_setup_builds_vision_msgs_only_when_the_vendored_copy_has_it(
    venv: Path, tmp_path: Path
) -> None:
    vendor = tmp_path / "ros2_jazzy"
    (vendor / "launch").mkdir(parents=True)
    (venv / ".vision-msgs").unlink()
    # A vendored folder without vision_msgs: nothing to build (the outputs are optional).
    assert "vision_msgs" not in _dry_run(venv, vendor=vendor)
    (vendor / "vision_msgs").mkdir()
    (vendor / "vision_msgs" / "package.xml").touch()
    out = _dry_run(venv, vendor=vendor)
    assert (
        f"cmake -S {vendor}/vision_msgs" in out
        and "cmake --install build/vendor/vision_msgs" in out
    )
    assert "vision_msgs" not in _dry_run(venv, vendor="")


def test_setup_reinstalls_the_vendored_tools_when_their_requirements_change(
    venv: Path, tmp_path: Path
) -> None:
    vendor = tmp_path / "ros2_jazzy"
    (vendor / "launch").mkdir(parents=True)
    assert "composition_interfaces" not in _dry_run(venv, vendor=vendor)
    out = _dry_run(venv, "requirements-vendor.txt", vendor=vendor)
    assert "pip install --quiet -r requirements-vendor.txt" in out
