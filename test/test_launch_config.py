"""Static checks of the launch file and parameter files.

``launch``/``launch_ros`` are not available as wheels here, so the launch file is read as
Python source: its arguments, the node it starts, the files it names. Every parameter in the
YAML files must be one the node declares, with a value the node accepts.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from segfast_ros.ros.params import all_params

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "segfast.launch.py"
CONFIGS = sorted((REPO / "config").glob("**/*.yaml"))  # the base and config/profiles/
#: Parameters every ROS node has, or the node declares outside the table.
EXTRA_PARAMS = {"use_sim_time", "autostart"}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def _kwargs(call: ast.Call) -> dict[str, Any]:
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            out[kw.arg] = ast.unparse(kw.value)
    return out


@pytest.fixture(scope="module")
def launch_tree() -> ast.AST:
    return ast.parse(LAUNCH.read_text())


def test_launch_arguments_are_declared_with_descriptions(launch_tree: ast.AST) -> None:
    args = {}
    for call in _calls(launch_tree, "DeclareLaunchArgument"):
        name = ast.literal_eval(call.args[0])
        kwargs = _kwargs(call)
        description = kwargs.get("description", "")
        assert isinstance(description, str) and len(description) > 10, name
        args[name] = kwargs
    for required in ("camera_topic", "namespace", "params_file", "use_sim_time"):
        assert required in args, f"launch argument {required} missing"
    assert args["use_sim_time"]["default_value"] == "false"
    assert "segfast.yaml" in args["params_file"]["default_value"]
    # Every LaunchConfiguration the file reads is declared.
    used = set(re.findall(r'arg\("(\w+)"\)', LAUNCH.read_text()))
    assert used <= set(args), used - set(args)


def test_launch_starts_the_installed_node_with_the_camera_remapped(launch_tree: ast.AST) -> None:
    (node,) = _calls(launch_tree, "Node")
    kwargs = _kwargs(node)
    assert kwargs["package"] == "segfast_ros" and kwargs["executable"] == "segfast_node"
    assert "('image', camera)" in kwargs["remappings"]
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "scripts/segfast_node" in cmake and "launch config" in cmake
    assert (REPO / "scripts" / "segfast_node").stat().st_mode & 0o111


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_parameter_files_name_only_declared_parameters_with_valid_values(path: Path) -> None:
    specs = {s.name: s for s in all_params()}
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["/**"], "parameter files apply to the node under any name"
    params = _flatten(doc["/**"]["ros__parameters"])
    assert params
    for name, value in params.items():
        if name in EXTRA_PARAMS:
            continue
        assert name in specs, f"{path.name}: {name} is not a parameter of the node"
        spec = specs[name]
        # ROS types are strict: an int for a double parameter refuses to load.
        assert type(value) is type(spec.default), f"{name}: {value!r} is not a {spec.default!r}"
        spec.check(value)


def test_base_config_covers_the_model_choice() -> None:
    params = _flatten(yaml.safe_load((REPO / "config" / "segfast.yaml").read_text())["/**"])
    for name in ("model_dir", "precision", "providers", "segevery.rate", "segevery.strategy"):
        assert f"ros__parameters.{name}" in params
