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
STAMPS = (".installed", ".ros-interfaces", ".ros-installed-files")

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


def _dry_run(venv: Path, *changed: str) -> str:
    """What ``make setup`` would run if the ``changed`` paths had just been modified."""
    argv = ["make", "-n", "-C", str(REPO), f"VENV={venv}", "setup"]
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
