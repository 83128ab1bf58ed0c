"""``ros2 param`` through the real CLI against launched nodes, and the README's ``ros2`` lines.

One launched node (``profile:=cpu``, the demo model, so it is active and its SegEvery strategy
is built) takes ``ros2 param set`` calls: one value it accepts, and values it refuses, each
for a different reason: ROS's own range check, and the node's own checks that ROS cannot
express (a choice of names, an open range, a value the SegEvery strategy itself refuses). The
refusal the CLI prints must be the node's message, naming what was wrong and what was expected.

The README's ``ros2`` lines run as written (through ``bash``, from the repository root, in the
venv as ``. .venv/bin/activate`` sets it up): each line that starts the node on a domain of its
own, then each ``ros2 param`` line against every such node. The one liberty taken: verbs that
discover nodes get ``--no-daemon`` (:func:`ros_launch.ros2`), so no daemon outlives the test,
and are retried when discovery was slower than their spin time (:func:`ros_launch.ros2_found`).

Every ``ros2`` call costs seconds (Python start, discovery), so the calls of a phase run at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml
from ros_launch import (
    Launch,
    ShellLaunch,
    get_parameters,
    parameter_file,
    require_tools,
    ros2_found,
    ros2_many,
    stop_all,
    tools_env,
    wait_for_launches,
    wait_for_subscriptions,
)
from test_readme import ros2_argv, ros2_lines

from segfast_ros.ros.harness import Client, free_domain_id
from segfast_ros.ros.launch_args import ARGUMENTS
from segfast_ros.ros.params import all_params, ros_range
from segfast_ros.segevery import build_segevery

require_tools()

ROOT = Path(__file__).resolve().parents[1]
SPECS = {s.name: s for s in all_params()}
CPU = {**parameter_file(ROOT / "config" / "segfast.yaml"),
       **parameter_file(ROOT / "config" / "profiles" / "cpu.yaml")}  # fmt: skip

#: The node the parameter calls go to.
NODE = "/params/segfast"
LAUNCH_ARGS = {"namespace": "params", "profile": "cpu", "model_dir": "demo"}
#: A value the node takes at runtime.
ACCEPTED = ("segevery.rate", "2.0")
#: Values the node refuses, by reason: parameter and value (as typed on the command line).
REFUSED = {
    "ros_range": ("segevery.rate", "50.0"),
    "choice": ("segevery.strategy", "bogus"),
    "open_range": ("segevery.object_aware.conf", "1.0"),
    "strategy_check": ("segevery.hierarchical.points_per_side", "2"),
}
DESCRIBED = "segevery.rate"
#: How ``ros2 param describe`` names the type of a ranged parameter.
ROS_TYPES = {"floating_point": "double", "integer": "integer"}

#: The README's ros2 lines: those that start a node, and the parameter calls.
README_STARTS = [line for line in ros2_lines() if ros2_argv(line)[0] in ("launch", "run")]
README_PARAMS = [line for line in ros2_lines() if ros2_argv(line)[0] == "param"]


@dataclass
class Session:
    """The module's launches, clients (one per domain) and every ``ros2`` call's result."""

    client: Client
    readme: dict[str, tuple[ShellLaunch, Client]]
    results: dict[object, CompletedProcess]


def _started(line: str) -> tuple[str, str]:
    """The node a README line starts (fully qualified) and the camera topic it must take."""
    verb, *rest = ros2_argv(line)
    if verb == "launch":
        assert rest[:2] == ["segfast_ros", "segfast.launch.py"], f"teach this test: {line}"
        given = dict(a.split(":=", 1) for a in rest[2:])
        args = {a.name: given.get(a.name, a.default) for a in ARGUMENTS}
        namespace, name, camera = args["namespace"], args["node_name"], args["camera_topic"]
    else:  # ros2 run segfast_ros segfast_node --ros-args -r from:=to ...
        remaps = dict(rest[i + 1].split(":=", 1) for i, w in enumerate(rest) if w == "-r")
        namespace, name = remaps.get("__ns", ""), remaps.get("__node", "segfast")
        camera = remaps.get("image", "/image")
    namespace = namespace.strip("/")
    return (f"/{namespace}/{name}" if namespace else f"/{name}"), camera


def _readme_env(line: str, domain: int) -> dict[str, str]:
    """The activated venv's environment on ``domain``; the ament prefix only where the line
    does not set it itself (the robot's lines have it from install/setup.bash)."""
    env = tools_env(domain)
    if re.match(r"(\w+=\S*\s+)*AMENT_PREFIX_PATH=", line):
        env.pop("AMENT_PREFIX_PATH")
    return env


def _calls(domain: int, readme_domains: dict[str, int]) -> dict[object, tuple[int, tuple]]:
    """Phase one: the sets and the describe on the module's node, the README's param lines."""
    calls: dict[object, tuple[int, tuple]] = {
        "accepted": (domain, ("param", "set", NODE, *ACCEPTED)),
        "describe": (domain, ("param", "describe", NODE, DESCRIBED)),
    }
    for reason, (name, value) in REFUSED.items():
        calls[reason] = (domain, ("param", "set", NODE, name, value))
    for start, param in product(README_STARTS, README_PARAMS):
        calls[start, param] = (readme_domains[start], tuple(ros2_argv(param)))
    return calls


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("ros2_cli")
    domain = free_domain_id()
    # A domain per README line (each starts /segfast), next to the module's own.
    readme_domains = {line: (domain + i) % 100 + 1 for i, line in enumerate(README_STARTS)}
    client, runs, readme = Client(domain), [], {}
    try:
        runs.append(Launch("segfast.launch.py", LAUNCH_ARGS, domain, tmp / "params.log"))
        for i, (line, d) in enumerate(readme_domains.items()):
            run = ShellLaunch(line, _readme_env(line, d), tmp / f"readme_{i}.log", ROOT)
            readme[line] = (run, Client(d))
            runs.append(run)
        wait_for_launches(client, runs[:1], {NODE}, timeout=120.0)
        wait_for_subscriptions(client, NODE, {"/camera/image_raw"})  # active: strategy built
        for line, (run, readme_client) in readme.items():
            node, camera = _started(line)
            wait_for_launches(readme_client, [run], {node}, timeout=120.0)
            wait_for_subscriptions(readme_client, node, {camera})
        results = ros2_many(_calls(domain, readme_domains))
        results["get"] = ros2_found(domain, "param", "get", NODE, ACCEPTED[0])  # after the set
        yield Session(client, readme, results)
    finally:
        stop_all(runs)
        for c in [client, *(c for _, c in readme.values())]:
            c.close()


def _out(result: CompletedProcess) -> str:
    return result.stdout + result.stderr


def test_param_set_takes_a_value_in_range(session: Session) -> None:
    name, value = ACCEPTED
    assert "Set parameter successful" in _out(session.results["accepted"])
    assert get_parameters(session.client, NODE, [name]) == {name: float(value)}
    assert "Double value is: 2.0" in _out(session.results["get"])


def test_param_set_out_of_the_ros_range_is_refused_with_the_range(session: Session) -> None:
    name, value = REFUSED["ros_range"]
    _, low, high = ros_range(SPECS[name])
    out = _out(session.results["ros_range"])
    assert "Setting parameter failed" in out, out
    # What was wrong and what was expected: the name, the value and both ends.
    for text in (name, value, f"Min: {low}", f"Max: {high}"):
        assert text in out, f"{text!r} not in {out!r}"
    assert get_parameters(session.client, NODE, [name]) == {name: float(ACCEPTED[1])}


def _own_refusal(name: str, value: str) -> str:
    """The node's own message for ``name:=value``: the parameter's check, else the strategy's."""
    parsed = yaml.safe_load(value)
    try:
        SPECS[name].check(parsed)
    except ValueError as err:
        return str(err)
    strategy, field = name.split(".")[1:]
    assert strategy == CPU["segevery.strategy"], "the refusal must come from the live strategy"
    with pytest.raises(ValueError) as err:
        build_segevery(strategy, **{field: parsed})
    return str(err.value)


@pytest.mark.parametrize("reason", ["choice", "open_range", "strategy_check"])
def test_param_set_is_refused_with_the_nodes_own_message(session: Session, reason: str) -> None:
    name, value = REFUSED[reason]
    message = _own_refusal(name, value)
    assert value in message and len(message) > len(name) + len(value) + 20  # says what to do
    out = _out(session.results[reason])
    assert f"Setting parameter failed: {message}" in out, out
    assert get_parameters(session.client, NODE, [name]) == {name: CPU[name]}  # unchanged


def test_param_set_refusals_name_what_is_expected() -> None:
    assert "['grid', 'hierarchical', 'object_aware']" in _own_refusal(*REFUSED["choice"])
    assert "[0, 1)" in _own_refusal(*REFUSED["open_range"])
    assert ">= 4" in _own_refusal(*REFUSED["strategy_check"])


def test_param_describe_shows_the_description_and_range(session: Session) -> None:
    spec = SPECS[DESCRIBED]
    kind, low, high = ros_range(spec)
    out = _out(session.results["describe"])
    for text in (
        f"Parameter name: {DESCRIBED}",
        f"Type: {ROS_TYPES[kind]}",
        f"Description: {spec.description}",
        f"Min value: {low}",
        f"Max value: {high}",
    ):
        assert text in out, f"{text!r} not in {out!r}"


def test_the_readme_has_lines_to_run() -> None:
    assert README_STARTS and README_PARAMS


@pytest.mark.parametrize("line", README_STARTS)
def test_readme_line_starts_an_active_node(session: Session, line: str) -> None:
    run, client = session.readme[line]
    node, camera = _started(line)
    wait_for_subscriptions(client, node, {camera})  # active: the model loaded
    assert run.alive() and not run.finished(), run.log()


@pytest.mark.parametrize(("start", "param"), list(product(README_STARTS, README_PARAMS)))
def test_readme_param_line_answers(session: Session, start: str, param: str) -> None:
    result = session.results[start, param]
    out = _out(result)
    assert result.returncode == 0 and "failed" not in out.lower(), out
    action, node, *names = ros2_argv(param)[1:]
    assert node == _started(start)[0], f"{param!r} asks another node than {start!r} starts"
    if action == "describe":
        for name in names:
            assert f"Parameter name: {name}" in out and SPECS[name].description in out, out
    elif action == "get":
        (value,) = get_parameters(session.readme[start][1], node, names).values()
        assert f"value is: {value}" in out, out
    else:
        assert action == "set" and "Set parameter successful" in out, out
