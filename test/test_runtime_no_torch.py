"""The runtime must run on a robot without torch: importing it never loads torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "imports",
    [
        "import segfast_ros.runtime",
        "from segfast_ros.runtime import Predictor, Prediction, ModelInfo, Backend",
        "from segfast_ros.runtime import OnnxRuntimeBackend, load_backend",
        "from segfast_ros.runtime import *",
        "import segfast_ros.runtime.transforms, segfast_ros.runtime.onnx_backend",
        # The offline replay needs rosbags, not torch or rclpy.
        "import segfast_ros.replay, segfast_ros.replay.pipeline\n"
        "assert 'rclpy' not in sys.modules, 'rclpy imported'",
    ],
)
def test_runtime_imports_without_torch(imports: str) -> None:
    result = _run(f"import sys\n{imports}\nassert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr


def test_onnxruntime_is_imported_only_on_demand() -> None:
    result = _run(
        "import sys, segfast_ros.runtime as rt\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "rt.OnnxRuntimeBackend\n"
        "assert 'onnxruntime' in sys.modules and 'torch' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_and_backend_kind() -> None:
    import segfast_ros.runtime as rt

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        rt.Nope  # noqa: B018
    with pytest.raises(ValueError, match=r"unknown backend kind 'tensorflow'; expected one of"):
        rt.load_backend("tensorflow", "models/")


def test_cli_and_segevery_start_without_torch_or_onnx() -> None:
    """A robot with only onnxruntime can run `segfast segment --onnx-dir ...` and SegEvery."""
    result = _run(
        "import sys, segfast_ros.cli, segfast_ros.segevery\n"
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    assert result.returncode == 0, result.stderr


def test_ray_and_pyarrow_stay_out_of_the_node_the_runtime_and_the_cli() -> None:
    """Ray and pyarrow are the offline `fleet` extra: the runtime, the node's modules and the
    CLI (replay-many included, until it runs) never load them."""
    result = _run(
        "import sys, segfast_ros.runtime, segfast_ros.ros.node, segfast_ros.cli\n"
        "import segfast_ros.fleet.run, segfast_ros.fleet.command\n"
        "bad = [m for m in ('ray', 'pyarrow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    assert result.returncode == 0, result.stderr
