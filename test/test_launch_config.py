"""Checks of the launch files and parameter files, without ``launch`` or ``launch_ros``.

``launch``/``launch_ros`` are not available as wheels here. The launch arguments and what they
become for the node are plain Python (``segfast_ros.ros.launch_args``), tested directly; the
launch files themselves are read as source (the node action they start, the files they
name) and run against stand-ins of the launch classes that record what they are given. Every
parameter in the YAML files must be one the node declares, with a value the node accepts.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from ros_launch import dotted

from segfast_ros.ros.launch_args import (
    ARGUMENTS,
    PER_NODE,
    launch_flag,
    node_parameters,
    shared_arguments,
)
from segfast_ros.ros.params import all_params

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "segfast.launch.py"
MULTI = REPO / "launch" / "multi_camera.launch.py"
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


def test_launch_arguments_have_descriptions_and_the_expected_defaults() -> None:
    args = {a.name: a for a in ARGUMENTS}
    assert len(args) == len(ARGUMENTS), "an argument is declared twice"
    for a in ARGUMENTS:
        assert len(a.description) > 15, a.name
    for required in ("camera_topic", "namespace", "params_file", "use_sim_time", "autostart"):
        assert required in args, f"launch argument {required} missing"
    assert args["use_sim_time"].default == "false"
    # Without a lifecycle manager, `ros2 launch` alone must still bring the node up.
    assert args["autostart"].default == "true"
    assert args["params_file"].default_in(Path("/share")) == "/share/config/segfast.yaml"
    assert set(PER_NODE) <= set(args)


@pytest.mark.parametrize("path", [LAUNCH, MULTI], ids=lambda p: p.name)
def test_launch_files_read_only_declared_arguments_from_the_one_table(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    declared = {a.name for a in (ARGUMENTS if path == LAUNCH else shared_arguments())}
    own = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    # multi_camera declares only what segfast.launch.py has not: the camera list.
    assert own == (set() if path == LAUNCH else {"cameras"})
    used = set(re.findall(r'arg\("(\w+)"\)', source))
    assert used <= declared | own, used - declared - own
    assert _calls(tree, "declare"), "the arguments come from segfast_ros.ros.launch_args"


def test_launch_starts_the_installed_lifecycle_node_with_the_camera_remapped() -> None:
    tree = ast.parse(LAUNCH.read_text())
    assert not _calls(tree, "Node"), "a plain Node cannot be driven by a lifecycle manager"
    (node,) = _calls(tree, "LifecycleNode")
    kwargs = _kwargs(node)
    assert kwargs["package"] == "segfast_ros" and kwargs["executable"] == "segfast_node"
    # Humble's launch_ros.actions.LifecycleNode requires both.
    assert "name" in kwargs and "namespace" in kwargs
    # image, camera_info and the depth topics, from the one table (launch_args.remappings).
    assert kwargs["remappings"] == "remappings(arg)"
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "scripts/segfast_node" in cmake and "launch config" in cmake
    assert (REPO / "scripts" / "segfast_node").stat().st_mode & 0o111


def test_launch_flags_read_as_launch_conditions_do() -> None:
    assert launch_flag("autostart", "True") is True and launch_flag("autostart", "1") is True
    assert launch_flag("autostart", "false") is False and launch_flag("autostart", "0") is False
    with pytest.raises(ValueError, match="autostart must be true or false, got 'yes'"):
        launch_flag("autostart", "yes")


def _defaults(**changes: str) -> dict[str, str]:
    values = {a.name: a.default_in(REPO) for a in ARGUMENTS}
    return {**values, **changes}


def test_node_parameters_layer_the_files_then_the_arguments() -> None:
    values = _defaults(profile="orin_nx", profile_file="/mine.yaml", autostart="false")
    layers = node_parameters(values.__getitem__, REPO)
    assert layers[:3] == [
        str(REPO / "config" / "segfast.yaml"),
        str(REPO / "config" / "profiles" / "orin_nx.yaml"),
        "/mine.yaml",
    ]
    assert layers[3] == {"use_sim_time": False, "autostart": False}  # model_dir kept
    values = _defaults(profile="none", model_dir="/models/m", use_sim_time="true")
    assert node_parameters(values.__getitem__, REPO) == [
        str(REPO / "config" / "segfast.yaml"),
        {"use_sim_time": True, "autostart": True, "model_dir": "/models/m"},
    ]


class _Recorded:
    """A stand-in launch class: keeps what it was built with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context: dict[str, str]) -> str:
        return context[self.args[0]]


@pytest.fixture
def launch_module(monkeypatch: pytest.MonkeyPatch):
    """``load(path)``: a launch file run against stand-ins of launch, launch_ros and ament."""
    kinds = {
        "launch": {"LaunchDescription": type("LaunchDescription", (_Recorded,), {})},
        "launch.actions": {
            name: type(name, (_Recorded,), {})
            for name in ("DeclareLaunchArgument", "IncludeLaunchDescription", "OpaqueFunction")
        },
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch.launch_description_sources": {
            "PythonLaunchDescriptionSource": type("Source", (_Recorded,), {})
        },
        "launch_ros": {},
        "launch_ros.actions": {"LifecycleNode": type("LifecycleNode", (_Recorded,), {})},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda name: str(REPO)},
    }
    for name, attributes in kinds.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)

    def load(path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _run(description: Any, context: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
    """The declared arguments of a launch description, and what its OpaqueFunction returns."""
    declared = {
        e.args[0]: e.kwargs for e in description.args[0] if type(e).__name__.startswith("Decl")
    }
    (opaque,) = [e for e in description.args[0] if type(e).__name__ == "OpaqueFunction"]
    return declared, opaque.kwargs["function"](context)


def test_segfast_launch_passes_autostart_to_the_lifecycle_node(launch_module) -> None:
    module = launch_module(LAUNCH)
    context = _defaults(profile="cpu", autostart="false", namespace="front", camera_topic="/c")
    declared, (node,) = _run(module.generate_launch_description(), context)
    assert declared["autostart"]["default_value"] == "true"
    assert set(declared) == {a.name for a in ARGUMENTS}
    assert type(node).__name__ == "LifecycleNode"
    assert (node.kwargs["name"], node.kwargs["namespace"]) == ("segfast", "front")
    assert node.kwargs["parameters"][-1]["autostart"] is False
    assert node.kwargs["remappings"] == [("image", "/c"), ("camera_info", "/camera_info")]
    assert "depth.enabled" not in node.kwargs["parameters"][-1]  # no depth_topic: 2D only


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            {"camera_topic": "/cam/color/image_raw"},
            [("image", "/cam/color/image_raw"), ("camera_info", "/cam/color/camera_info")],
        ),
        (
            {
                "camera_topic": "/cam/color/image_raw",
                "depth_topic": "/cam/aligned_depth_to_color/image_raw",
            },
            [
                ("image", "/cam/color/image_raw"),
                ("camera_info", "/cam/color/camera_info"),
                ("depth", "/cam/aligned_depth_to_color/image_raw"),
                ("depth/camera_info", "/cam/aligned_depth_to_color/camera_info"),
            ],
        ),
        (
            {
                "camera_topic": "image",
                "camera_info_topic": "/calib/colour",
                "depth_topic": "depth_raw",
                "depth_info_topic": "/calib/depth",
            },
            [
                ("image", "image"),
                ("camera_info", "/calib/colour"),
                ("depth", "depth_raw"),
                ("depth/camera_info", "/calib/depth"),
            ],
        ),
    ],
    ids=["colour_only", "depth_siblings", "given_infos"],
)
def test_segfast_launch_remaps_the_camera_info_and_depth_topics(
    launch_module, given: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    """CameraInfo topics default to the ``camera_info`` next to each image topic, as
    image_transport names it; a depth_topic turns depth.enabled on."""
    module = launch_module(LAUNCH)
    _, (node,) = _run(module.generate_launch_description(), _defaults(profile="none", **given))
    assert node.kwargs["remappings"] == expected
    overrides = node.kwargs["parameters"][-1]
    assert overrides.get("depth.enabled", False) is ("depth_topic" in given)


def test_multi_camera_forwards_segfast_arguments_to_every_camera(launch_module) -> None:
    module = launch_module(MULTI)
    context = {
        **{a.name: a.default_in(REPO) for a in shared_arguments()},
        "cameras": "front:/front/image,rear:/rear/image",
        "autostart": "false",
    }
    declared, includes = _run(module.generate_launch_description(), context)
    assert set(declared) == {"cameras"} | {a.name for a in shared_arguments()}
    for include, name in zip(includes, ("front", "rear"), strict=True):
        forwarded = dict(include.kwargs["launch_arguments"])
        assert forwarded["autostart"] == "false"
        assert (forwarded["namespace"], forwarded["camera_topic"]) == (name, f"/{name}/image")
        # Each include is segfast.launch.py, and it declares every argument it is given.
        assert include.args[0].args[0].endswith("launch/segfast.launch.py")
        assert set(forwarded) <= {a.name for a in ARGUMENTS}


def _qos_override(name: str) -> bool:
    """A standard QoS override (``qos_overrides./topic.publisher.depth``), which the node
    declares when it creates the topic's entity, with the policies it makes overridable."""
    parts = name.split(".")
    return (
        parts[0] == "qos_overrides"
        and parts[-2] in ("publisher", "subscription")
        and parts[-1] in ("history", "depth", "reliability")
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_parameter_files_name_only_declared_parameters_with_valid_values(path: Path) -> None:
    specs = {s.name: s for s in all_params()}
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["/**"], "parameter files apply to the node under any name"
    params = dotted(doc["/**"]["ros__parameters"])
    assert params
    for name, value in params.items():
        if name in EXTRA_PARAMS or _qos_override(name):
            continue
        assert name in specs, f"{path.name}: {name} is not a parameter of the node"
        spec = specs[name]
        # ROS types are strict: an int for a double parameter refuses to load.
        assert type(value) is type(spec.default), f"{name}: {value!r} is not a {spec.default!r}"
        spec.check(value)


def test_qos_overrides_may_be_set_in_a_parameter_file() -> None:
    text = """
/**:
  ros__parameters:
    qos_overrides:
      /camera/image_raw:
        subscription:
          reliability: reliable
      /segfast/overlay:
        publisher:
          depth: 3
"""
    params = dotted(yaml.safe_load(text)["/**"]["ros__parameters"])
    assert set(params) == {
        "qos_overrides./camera/image_raw.subscription.reliability",
        "qos_overrides./segfast/overlay.publisher.depth",
    }
    assert all(_qos_override(name) for name in params)
    assert not _qos_override("qos_overrides./segfast/overlay.publisher.durability")


def test_base_config_covers_the_model_choice() -> None:
    params = dotted(yaml.safe_load((REPO / "config" / "segfast.yaml").read_text())["/**"])
    for name in ("model_dir", "precision", "providers", "segevery.rate", "segevery.strategy"):
        assert f"ros__parameters.{name}" in params
