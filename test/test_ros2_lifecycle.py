"""The node's lifecycle and a terminal's Ctrl-C, through a real ``ros2 launch`` (issue 15).

Two things a user does with the launch files, checked as they do them:

* A lifecycle manager drives a node that ``segfast.launch.py autostart:=false`` started: the
  ``ros2 lifecycle`` CLI takes it through every transition (configure, activate, deactivate,
  cleanup, shutdown) and reads its state, while a separate participant
  (:class:`~segfast_ros.ros.harness.Client`) sees on the DDS graph what each state offers and
  calls ``~/segment`` while the node is active.
* A terminal's Ctrl-C (SIGINT to the whole process group; launch then sends each node a second
  SIGINT while it shuts down) ends every node with exit code 0 and no traceback: on a running
  launch (three times), with two cameras (twice), while the node is still starting, twice in a
  row, and while the node's process is still importing.

launch exits 0 even when a node dies, so nothing here trusts its exit code alone: each check
reads launch's "finished cleanly / has died" line per process, the log, the processes left,
and the graph. A ``ros2`` CLI call costs seconds of start-up and discovery, so the Ctrl-C runs
go on in background threads, two at a time on a domain of their own, while the lifecycle tests
wait for the CLI.
"""

# ruff: noqa: E402 (imports after the skip when ROS 2 or its tools are absent)
from __future__ import annotations

import re
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from ros_launch import (
    Launch,
    launched,
    lifecycle,
    require_tools,
    running_pids,
    started_pids,
    wait,
    wait_ended,
)

require_tools()

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import NodeNameNonExistentError
from ros_node_fixtures import publish_and_wait, request
from ros_scenes import synthetic_scene
from sensor_msgs.msg import Image

from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, free_domain_id
from segfast_ros.srv import Segment

#: Every launch here runs the shipped demo model on the CPU profile.
MODEL = {"model_dir": "demo", "profile": "cpu"}
#: Generous: a node starts in about a second on an idle machine, far slower on a loaded one.
START_S = 120.0
#: How long launch may take to end after a Ctrl-C (its own escalation to SIGTERM is at 5 s).
END_S = 30.0


@pytest.fixture(scope="module")
def domains() -> tuple[int, int]:
    """Two distinct domains: the lifecycle manager's, and the Ctrl-C runs'."""
    first = free_domain_id()
    return first, first % 100 + 1


# ---------------------------------------------------------------------------- lifecycle

NODE = "/lc/segfast"
IMAGE = "/lc/camera/image"
#: The node's outputs (under its name): configure creates them, cleanup and shutdown destroy them.
OUTPUTS = ("instances", "instances/label", "overlay")


@pytest.fixture(scope="module")
def managed(domains: tuple[int, int], tmp_path_factory: pytest.TempPathFactory):
    """``segfast.launch.py autostart:=false``: the node waits for a lifecycle manager."""
    args = {**MODEL, "autostart": "false", "namespace": "lc", "camera_topic": IMAGE}
    log = tmp_path_factory.mktemp("managed") / "launch.log"
    yield from launched("segfast.launch.py", args, domains[0], log)


@pytest.fixture(scope="module")
def manager(managed: Launch, domains: tuple[int, int]):
    """The manager's participant: get_state, change_state, ~/segment, a camera, the outputs."""
    c = Client(domains[0], "segfast_lifecycle_manager")
    c.get_state = c.node.create_client(GetState, f"{NODE}/get_state")
    c.change_state = c.node.create_client(ChangeState, f"{NODE}/change_state")
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.image_pub = c.node.create_publisher(Image, IMAGE, 2)
    c.instances, c.labels = [], []
    c.node.create_subscription(InstanceArray, f"{NODE}/instances", c.instances.append, 10)
    c.node.create_subscription(Image, f"{NODE}/instances/label", c.labels.append, 10)
    try:
        c.spin_until(
            lambda: c.get_state.service_is_ready() or not managed.alive(),
            START_S,
            "the node's lifecycle services",
        )
        assert managed.alive(), managed.log()
        yield c
    finally:
        c.close()


def services(client: Client, node: str) -> set[str]:
    """The services the node ``node`` (fully qualified) serves, as the graph has it.

    Per node: the graph's plain service list names a service as soon as a client of it exists.
    """
    namespace, _, name = node.rpartition("/")
    try:
        found = client.node.get_service_names_and_types_by_node(name, namespace or "/")
    except NodeNameNonExistentError:
        return set()
    return {service for service, _ in found}


def offers(c: Client) -> dict[str, bool]:
    """Which of the node's state-dependent entities the graph shows."""
    shown = {f"~/{name}": c.node.count_publishers(f"{NODE}/{name}") > 0 for name in OUTPUTS}
    shown["~/segment"] = f"{NODE}/segment" in services(c, NODE)
    shown["image subscription"] = c.node.count_subscribers(IMAGE) > 0
    return shown


def wait_offers(c: Client, outputs: bool, active: bool) -> None:
    """Spin until the graph shows the outputs iff ``outputs``, service and input iff ``active``."""
    wanted = {f"~/{name}": outputs for name in OUTPUTS}
    wanted.update({"~/segment": active, "image subscription": active})
    try:
        c.spin_until(lambda: offers(c) == wanted, 30, "the graph")
    except AssertionError as err:
        raise AssertionError(f"{err}: wanted {wanted}, the graph shows {offers(c)}") from None


def state(c: Client) -> str:
    return c.call(c.get_state, GetState.Request(), resend_after=5.0).current_state.label


def cli(domain_id: int, *args: str) -> str:
    """``ros2 lifecycle <args>``; its output, once it succeeded."""
    result = lifecycle(domain_id, *args)
    assert result.returncode == 0, f"ros2 lifecycle {' '.join(args)}: {result}"
    return result.stdout.strip()


def test_without_autostart_the_node_waits_unconfigured(
    managed: Launch, manager: Client, domains: tuple[int, int]
) -> None:
    assert cli(domains[0], "get", NODE) == "unconfigured [1]"
    # Seconds after its lifecycle services were seen: the rest would be on the graph by now.
    assert offers(manager) == dict.fromkeys(offers(manager), False)
    assert "autostart is false" in managed.log()


def test_configure_creates_the_outputs_only(manager: Client, domains: tuple[int, int]) -> None:
    assert cli(domains[0], "set", NODE, "configure") == "Transitioning successful"
    wait_offers(manager, outputs=True, active=False)
    assert state(manager) == "inactive"


def test_activate_serves_segment_and_publishes(manager: Client, domains: tuple[int, int]) -> None:
    assert cli(domains[0], "set", NODE, "activate") == "Transitioning successful"
    with ThreadPoolExecutor(1) as pool:  # the CLI waits for discovery meanwhile
        reading = pool.submit(cli, domains[0], "get", NODE)
        wait_offers(manager, outputs=True, active=True)
        stamp = 21_000_000_000
        publish_and_wait(manager, synthetic_scene(seed=21), stamp)
        resp = manager.call(manager.segment, request(stamp, points=[(64, 48)], labels=[1]))
        assert resp.success, resp.message
        assert resp.results and resp.results[0].masks

        def published(msgs: list[Any]) -> bool:
            return any(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp for m in msgs)

        # SegEvery runs at the cpu profile's 0.2 Hz: within 5 s and one pass of the frame.
        manager.spin_until(lambda: published(manager.instances), 60, "~/instances of the frame")
        manager.spin_until(lambda: published(manager.labels), 30, "~/instances/label")
        assert reading.result() == "active [3]"


def test_deactivate_takes_service_and_input_away(
    manager: Client, domains: tuple[int, int]
) -> None:
    assert cli(domains[0], "set", NODE, "deactivate") == "Transitioning successful"
    wait_offers(manager, outputs=True, active=False)
    assert state(manager) == "inactive"


def test_cleanup_takes_the_outputs_away(manager: Client, domains: tuple[int, int]) -> None:
    assert cli(domains[0], "set", NODE, "cleanup") == "Transitioning successful"
    wait_offers(manager, outputs=False, active=False)
    assert state(manager) == "unconfigured"


def test_shutdown_finalizes_and_the_process_waits_for_launch(
    managed: Launch, manager: Client, domains: tuple[int, int]
) -> None:
    """After ``shutdown`` the node is ``finalized`` and cannot be configured again; its process
    does not end by itself (``main`` spins until a signal) but exits 0 when launch stops it."""
    assert cli(domains[0], "set", NODE, "shutdown") == "Transitioning successful"
    assert cli(domains[0], "get", NODE) == "finalized [4]"
    configure = ChangeState.Request(transition=Transition(label="configure"))
    assert not manager.call(manager.change_state, configure).success
    assert state(manager) == "finalized"
    assert managed.alive() and managed.finished() == {}, managed.log()
    wait_offers(manager, outputs=False, active=False)

    managed.ctrl_c()
    assert wait_ended(managed, END_S) == 0, managed.log()
    assert managed.finished() == {"segfast_node-1": "cleanly"}, managed.log()
    assert "Traceback" not in managed.log(), managed.log()
    assert not running_pids(started_pids(managed).values()), managed.log()


# ---------------------------------------------------------------------------- Ctrl-C runs


@dataclass(frozen=True)
class Scenario:
    """One launch and when its Ctrl-C comes.

    Attributes:
        launch_file: the package's launch file.
        args: its arguments (besides :data:`MODEL`).
        nodes: fully qualified names of the nodes it starts.
        when: ``"active"``: every node serves ``~/segment``; ``"handlers"``: the node's
            process has just installed its signal handlers (:func:`catches_sigterm`), so it
            has yet to build the node, configure and activate it; ``"importing"``: the
            node's process has loaded rclpy's extension (:func:`loaded`), while it imports
            rclpy and the package, before :func:`segfast_ros.ros.main.run` starts.
        sigints: Ctrl-Cs, 0.2 s apart.
    """

    launch_file: str
    args: dict[str, str]
    nodes: tuple[str, ...]
    when: str = "active"
    sigints: int = 1


def single(ns: str, **kw: Any) -> Scenario:
    return Scenario("segfast.launch.py", {"namespace": ns}, (f"/{ns}/segfast",), **kw)


def cameras(prefix: str) -> Scenario:
    names = (f"{prefix}a", f"{prefix}b")
    return Scenario(
        "multi_camera.launch.py",
        {"cameras": ",".join(f"{n}:/{n}/image" for n in names)},
        tuple(f"/{n}/segfast" for n in names),
    )


#: In the order they start, two at a time.
SCENARIOS = {
    "running_1": single("cc1"),
    "multi_camera_1": cameras("mc1"),
    "starting": single("st", when="handlers"),
    "double": single("dbl", sigints=2),
    "running_2": single("cc2"),
    "multi_camera_2": cameras("mc2"),
    "running_3": single("cc3"),
    "importing": single("imp", when="importing"),
}


@dataclass
class Outcome:
    """How a scenario's launch ended."""

    scenario: Scenario
    log: str = ""
    error: str = ""  # why the run never came to its Ctrl-C
    code: int | None = None  # launch's, None: still running END_S after the Ctrl-C
    finished: dict[str, str] = field(default_factory=dict)
    left: list[int] = field(default_factory=list)  # node pids alive once launch had ended
    active_at_ctrl_c: int = 0  # nodes that had logged "active" when the Ctrl-C came


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler: Python installs none of its own, so the
    node's process has one from the moment ``ShutdownSignals`` is in (False once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M)[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def loaded(pid: int, library: str) -> bool:
    """Whether process ``pid`` has mapped a shared library whose name contains ``library``."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _reach(s: Scenario, run: Launch, client: Client) -> None:
    """Wait until ``run`` is where ``s`` sends its Ctrl-C; AssertionError if it never is."""
    if s.when in ("importing", "handlers"):
        wait(lambda: started_pids(run), START_S, "the node's process", poll=0.005)
        (pid,) = started_pids(run).values()
        if s.when == "importing":
            wait(lambda: loaded(pid, "_rclpy_pybind11"), START_S, "rclpy's import", poll=0.003)
        else:
            wait(lambda: catches_sigterm(pid), START_S, "the node's signal handlers", poll=0.005)
    else:
        client.spin_until(
            lambda: all(f"{n}/segment" in services(client, n) for n in s.nodes) or not run.alive(),
            START_S,
            f"~/segment of {list(s.nodes)}",
        )
        # The service is offered at the end of activate, just before the "active" line.
        wait(
            lambda: run.log().count("]: active: ") >= len(s.nodes) or not run.alive(),
            START_S,
            "every node's 'active' line",
            poll=0.01,
        )
    assert run.alive(), "launch ended before the Ctrl-C"


def run_scenario(s: Scenario, domain_id: int, log: Path) -> Outcome:
    """Start ``s``'s launch, Ctrl-C it when ``s`` says, and see how it ends."""
    run = Launch(s.launch_file, {**MODEL, **s.args}, domain_id, log)
    client = Client(domain_id, f"ctrl_c_{log.stem}")
    out = Outcome(s)
    try:
        _reach(s, run, client)
        out.active_at_ctrl_c = run.log().count("]: active: ")
        for i in range(s.sigints):
            time.sleep(0.2 if i else 0.0)
            run.ctrl_c()
        out.code = wait_ended(run, END_S)
        out.left = running_pids(started_pids(run).values())
    except AssertionError as err:
        out.error = str(err)
    finally:
        client.close()
        run.stop()
    out.log, out.finished = run.log(), run.finished()
    return out


class CtrlCRuns:
    """Every scenario in :data:`SCENARIOS`, run in the background, two at a time."""

    def __init__(self, domain_id: int, folder: Path) -> None:
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="ctrl_c")
        self._runs: dict[str, Future[Outcome]] = {
            name: self._pool.submit(run_scenario, s, domain_id, folder / f"{name}.log")
            for name, s in SCENARIOS.items()
        }

    def outcome(self, name: str) -> Outcome:
        return self._runs[name].result(timeout=10 * START_S)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module", autouse=True)
def ctrl_c_runs(domains: tuple[int, int], tmp_path_factory: pytest.TempPathFactory):
    """The Ctrl-C runs, started before the first test so they overlap the CLI's waits."""
    runs = CtrlCRuns(domains[1], tmp_path_factory.mktemp("ctrl_c"))
    yield runs
    runs.close()


def assert_ended_cleanly(out: Outcome) -> None:
    """Every node of the run exited 0 through its own signal handler, with no traceback."""
    log = f"launch log:\n{out.log}"
    assert not out.error, f"{out.error}\n{log}"
    assert out.code is not None, f"launch still running {END_S:g} s after the Ctrl-C\n{log}"
    processes = {f"segfast_node-{i}": "cleanly" for i in range(1, len(out.scenario.nodes) + 1)}
    assert out.finished == processes, log
    for bad in ("Traceback", "KeyboardInterrupt", "never retrieved", "sending signal 'SIGTERM'"):
        assert bad not in out.log, f"{bad!r} in the launch's output\n{log}"
    said = out.log.count("segfast: SIGINT received, shutting down")
    assert said == len(out.scenario.nodes), f"{said} nodes said they got the SIGINT\n{log}"
    assert not out.left, f"processes {out.left} outlived launch\n{log}"
    assert out.code == 0, log


@pytest.mark.parametrize("name", ["running_1", "running_2", "running_3"])
def test_ctrl_c_ends_a_running_node_cleanly(ctrl_c_runs: CtrlCRuns, name: str) -> None:
    out = ctrl_c_runs.outcome(name)
    assert out.active_at_ctrl_c == 1, out.log
    assert_ended_cleanly(out)


@pytest.mark.parametrize("name", ["multi_camera_1", "multi_camera_2"])
def test_ctrl_c_ends_every_camera_node_cleanly(ctrl_c_runs: CtrlCRuns, name: str) -> None:
    out = ctrl_c_runs.outcome(name)
    assert out.active_at_ctrl_c == 2, out.log
    assert_ended_cleanly(out)


def test_ctrl_c_while_the_node_starts(ctrl_c_runs: CtrlCRuns) -> None:
    """The Ctrl-C comes as soon as the node's signal handlers are in, while rclpy starts and
    the node is built: it ends cleanly, and never activates after the signal."""
    out = ctrl_c_runs.outcome("starting")
    assert out.active_at_ctrl_c == 0, out.log
    assert_ended_cleanly(out)
    assert "]: active: " not in out.log, out.log


def test_a_double_ctrl_c_ends_the_node_cleanly(ctrl_c_runs: CtrlCRuns) -> None:
    out = ctrl_c_runs.outcome("double")
    assert out.active_at_ctrl_c == 1, out.log
    assert_ended_cleanly(out)


def test_ctrl_c_while_the_node_imports(ctrl_c_runs: CtrlCRuns) -> None:
    """The Ctrl-C comes while the node's process imports rclpy (its extension is loaded)."""
    out = ctrl_c_runs.outcome("importing")
    assert_ended_cleanly(out)
