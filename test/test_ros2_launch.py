"""``ros2 launch`` for real: each profile's parameters, ``profile:=auto``, names and cameras.

Every launch of this module starts at once, on one domain, before the first test (each takes
seconds of Python start; side by side they share the cores), and each test reads its node from
a separate participant: parameters through the node's own services, subscriptions from the ROS
graph. launch's exit code says nothing (it exits 0 when a node dies), so every check is the
node's own answer.

Parameters: a node's values must equal the parameter files merged in the launch's order (the
base config/segfast.yaml, the profile's config/profiles/<name>.yaml, then the profile_file),
then the arguments (model_dir, autostart, use_sim_time), for every name those layers set; the
expected values are computed here from the repository's YAML files, so a stale install fails
too. The layering launches point model_dir at a folder that does not exist (and the TensorRT
and CUDA profiles could not load here anyway): their nodes stay up, unconfigured, which is all a
layering check needs. The naming and camera launches load the demo model on the CPU, since a
node subscribes to its camera only while active.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ros_launch import (
    Launch,
    get_parameters,
    graph_nodes,
    image_subscriptions,
    list_parameters,
    parameter_file,
    require_tools,
    stop_all,
    wait_for_launches,
    wait_for_subscriptions,
)

from segfast_ros.profiles import PROFILES
from segfast_ros.ros.harness import Client, free_domain_id

require_tools()

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "config" / "segfast.yaml"
PROFILE_DIR = ROOT / "config" / "profiles"
#: What the launch arguments add over the files (model_dir only when it is given).
ARGUMENT_VALUES = {"autostart": True, "use_sim_time": False}

#: The test's own profile_file, layered over orin_nano: it overrides values the base and the
#: profile set, adds one neither sets (segment.workers), and names a model_dir, which the
#: model_dir argument overrides in turn.
OWN_LAYER = """\
/**:
  ros__parameters:
    model_dir: /from/the/profile_file
    cache_size: 7
    max_prompt_sets: 5
    segment:
      workers: 3
    segevery:
      rate: 0.25
      strategy: grid
      grid:
        points_per_side: 12
"""
OWN_LAYER_OVER = "orin_nano"

#: profile:=auto against stand-ins for /proc/device-tree/model (None: no such file, as on x86),
#: and the profile each must pick.
DEVICE_MODELS: dict[str, tuple[str | None, str]] = {
    "auto_nano": ("NVIDIA Jetson Orin Nano Developer Kit\0", "orin_nano"),
    "auto_agx": ("NVIDIA Jetson AGX Orin\0", "orin_agx"),
    "auto_pi": ("Raspberry Pi 5 Model B Rev 1.0\0", "cpu"),
    "auto_missing": (None, "cpu"),
}

#: Every layering launch by name, which is also its node's namespace.
LAYERING = (*PROFILES, "none", "profile_file", *DEVICE_MODELS)

#: The naming launch: a namespace, a node name and a camera topic of its own.
NAMED = {
    "namespace": "robot",
    "node_name": "seg_front",
    "camera_topic": "/robot/front/image_raw",
    "profile": "cpu",
    "model_dir": "demo",
}
#: multi_camera.launch.py with two and with three cameras (names distinct across both, as
#: they share the domain): camera name -> its topic.
CAMERAS = {
    "two": {"left": "/left/image", "right": "/right/image"},
    "three": {"a": "/a/image", "b": "/b/image", "c": "/c/image"},
}


@dataclass
class Launched:
    """The module's launches, what each layering node must hold, and the client."""

    client: Client
    runs: dict[str, Launch]
    expected: dict[str, dict[str, Any]]


def _layering(tmp: Path) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Each layering launch's arguments and the parameters its node must hold."""
    base = parameter_file(BASE)
    own = tmp / "own_layer.yaml"
    own.write_text(OWN_LAYER)
    cases: dict[str, tuple[dict[str, str], list[Path]]] = {
        name: ({"profile": name}, [PROFILE_DIR / f"{name}.yaml"]) for name in PROFILES
    }
    cases["none"] = ({"profile": "none"}, [])
    cases["profile_file"] = (
        {"profile": OWN_LAYER_OVER, "profile_file": str(own)},
        [PROFILE_DIR / f"{OWN_LAYER_OVER}.yaml", own],
    )
    for name, (model, profile) in DEVICE_MODELS.items():
        device = tmp / f"device_tree_model_{name}"
        if model is not None:
            device.write_bytes(model.encode())
        args = {"profile": "auto", "device_model_file": str(device)}
        cases[name] = (args, [PROFILE_DIR / f"{profile}.yaml"])
    out = {}
    for name, (args, layers) in cases.items():
        expected = dict(base)
        for layer in layers:
            expected.update(parameter_file(layer))
        expected.update(ARGUMENT_VALUES)
        if name != "none":  # none keeps the files' model_dir: the argument is left empty
            args["model_dir"] = expected["model_dir"] = str(tmp / f"no_model_{name}")
        out[name] = ({**args, "namespace": name}, expected)
    return out


def _nodes() -> set[str]:
    """Every node this module's launches start, fully qualified."""
    cams = {f"/{cam}/segfast" for cameras in CAMERAS.values() for cam in cameras}
    return {f"/{name}/segfast" for name in LAYERING} | {_named_node()} | cams


def _named_node() -> str:
    return f"/{NAMED['namespace']}/{NAMED['node_name']}"


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    domain = free_domain_id()
    tmp = tmp_path_factory.mktemp("ros2_launch")
    client = Client(domain)
    runs: dict[str, Launch] = {}
    try:
        expected = {}
        for name, (args, values) in _layering(tmp).items():
            runs[name] = Launch("segfast.launch.py", args, domain, tmp / f"{name}.log")
            expected[name] = values
        runs["named"] = Launch("segfast.launch.py", NAMED, domain, tmp / "named.log")
        for name, cameras in CAMERAS.items():
            args = {
                "cameras": ",".join(f"{cam}:{topic}" for cam, topic in cameras.items()),
                "profile": "cpu",
                "model_dir": "demo",
            }
            runs[name] = Launch("multi_camera.launch.py", args, domain, tmp / f"{name}.log")
        wait_for_launches(client, runs.values(), _nodes(), timeout=180.0)
        yield Launched(client, runs, expected)
    finally:
        stop_all(runs.values())
        client.close()


@pytest.mark.parametrize("name", LAYERING)
def test_node_parameters_are_the_layers_merged_in_order(launched: Launched, name: str) -> None:
    node, expected = f"/{name}/segfast", launched.expected[name]
    undeclared = set(expected) - list_parameters(launched.client, node)
    assert not undeclared, f"{node}: the layers set parameters it lacks: {sorted(undeclared)}"
    got = get_parameters(launched.client, node, sorted(expected))
    wrong = {
        n: f"{got[n]!r}, expected {v!r}"
        for n, v in expected.items()
        if got[n] != v or type(got[n]) is not type(v)
    }
    assert not wrong, f"{node} ({launched.runs[name].log_path}): {wrong}"


@pytest.mark.parametrize("name", LAYERING)
def test_a_node_whose_model_cannot_load_stays_up_unconfigured(
    launched: Launched, name: str
) -> None:
    from lifecycle_msgs.srv import GetState

    run, node = launched.runs[name], f"/{name}/segfast"
    service = launched.client.node.create_client(GetState, f"{node}/get_state")
    try:
        state = launched.client.call(
            service, GetState.Request(), resend_after=5.0
        ).current_state.label
    finally:
        launched.client.node.destroy_client(service)
    assert state == "unconfigured"
    assert run.alive() and not run.finished(), run.log()
    assert "configure failed" in run.log()
    assert node in graph_nodes(launched.client)


def test_every_layer_changes_what_the_node_gets(tmp_path: Path) -> None:
    """Each profile and the test's own layer differ from what lies under them, so a launch
    that dropped one would fail the parameter check."""
    base = parameter_file(BASE)
    for name in PROFILES:
        layer = parameter_file(PROFILE_DIR / f"{name}.yaml")
        assert any(base.get(k) != v for k, v in layer.items()), name
    own = tmp_path / "own.yaml"
    own.write_text(OWN_LAYER)
    under = {**base, **parameter_file(PROFILE_DIR / f"{OWN_LAYER_OVER}.yaml")}
    changed = {k for k, v in parameter_file(own).items() if under.get(k) != v}
    assert {"cache_size", "segment.workers", "segevery.rate", "model_dir"} <= changed
    picked = {profile for _, profile in DEVICE_MODELS.values()}
    assert len(picked) == 3  # two boards and the fallback


def test_namespace_node_name_and_camera_remapping(launched: Launched) -> None:
    client, node, topic = launched.client, _named_node(), NAMED["camera_topic"]
    nodes = graph_nodes(client)
    assert node in nodes and "/robot/segfast" not in nodes and "/segfast" not in nodes
    wait_for_subscriptions(client, node, {topic})
    assert image_subscriptions(client, node) == {topic}  # not the default /camera/image_raw
    (sub,) = client.node.get_subscriptions_info_by_topic(topic)
    assert (sub.node_namespace, sub.node_name) == ("/robot", "seg_front")
    services = {name for name, _ in client.node.get_service_names_and_types()}
    assert f"{node}/segment" in services


@pytest.mark.parametrize("launch", CAMERAS)
def test_multi_camera_starts_one_node_per_camera_on_its_own_topic(
    launched: Launched, launch: str
) -> None:
    client, cameras = launched.client, CAMERAS[launch]
    cpu = parameter_file(PROFILE_DIR / "cpu.yaml")
    for cam, topic in cameras.items():
        node = f"/{cam}/segfast"
        wait_for_subscriptions(client, node, {topic})
        assert image_subscriptions(client, node) == {topic}
        subscribers = client.node.get_subscriptions_info_by_topic(topic)
        assert [(s.node_namespace, s.node_name) for s in subscribers] == [(f"/{cam}", "segfast")]
        # The shared arguments reach every camera's node.
        names = ["model_dir", "segevery.strategy", "segevery.rate"]
        assert get_parameters(client, node, names) == {
            "model_dir": "demo",
            "segevery.strategy": cpu["segevery.strategy"],
            "segevery.rate": cpu["segevery.rate"],
        }
    assert launched.runs[launch].alive() and not launched.runs[launch].finished()
