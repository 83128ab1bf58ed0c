"""Run the real ROS 2 tools against the package: ``ros2 launch``, ``param``, ``lifecycle``.

``launch``, ``launch_ros``, ``ros2launch`` and ``ros2cli`` have no PyPI wheels; ``make setup``
installs their vendored Jazzy sources into the venv when ``../shared/vendor/ros2_jazzy`` exists
(or ``ROS2_VENDOR_DIR`` names a copy). Without them every test that uses this module skips,
saying so.

A launch runs as a terminal runs it: ``ros2 launch segfast_ros <file> name:=value ...`` in a
session of its own (so a Ctrl-C can go to the whole process group), with the venv's ``bin/``
first on ``PATH`` (``segfast_node`` starts with ``#!/usr/bin/env python3``), the venv as the
ament prefix (where ``make setup`` installed the package's share folder), and an isolated
domain. launch exits 0 even when a node dies at import, so the tests look at the ROS graph
from a separate participant, never at launch's exit code alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from segfast_ros.ros.harness import Client, LoggedProcess, ros_env

BIN = Path(sys.executable).parent
ROS2 = BIN / "ros2"
#: Seconds a ``ros2`` verb waits for discovery without a daemon (no daemon: nothing outlives
#: a test). Localhost discovery takes well under a second; the rest is margin for a busy box.
SPIN_TIME = "2"
#: The launch log's line for a process that ended (launch_ros prints it for every process).
_FINISHED = re.compile(r"\[(?P<name>[\w.-]+)\]: process (?P<how>has finished cleanly|has died)")


def tools_missing() -> str | None:
    """Why the vendored ROS 2 tools cannot run here, or None when they can."""
    missing = [m for m in ("launch", "launch_ros", "ros2launch", "ros2cli") if not _has(m)]
    if missing or not ROS2.exists():
        return (
            f"the ROS 2 tools {missing or ['ros2']} are not installed in this venv: `make "
            "setup` installs them from ../shared/vendor/ros2_jazzy (or ROS2_VENDOR_DIR)"
        )
    if not (Path(sys.prefix) / "share" / "segfast_ros" / "launch").is_dir():
        return "the package is not installed into the venv's share folder: run `make setup`"
    return None


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_tools() -> None:
    """Skip the calling test module when the tools are missing."""
    reason = tools_missing()
    if reason:
        pytest.skip(reason, allow_module_level=True)


def tools_env(domain_id: int) -> dict[str, str]:
    """The environment of a ``ros2`` command on ``domain_id``: venv first, venv as ament prefix."""
    env = ros_env(domain_id)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    prefixes = [sys.prefix, *filter(None, env.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(dict.fromkeys(prefixes))
    env.pop("PYTHONPATH", None)  # the venv's own packages, as an installed user has them
    return env


def ros2(
    domain_id: int, *args: str, timeout: float = 60.0, spin_time: str = SPIN_TIME
) -> subprocess.CompletedProcess:
    """Run ``ros2 <args>`` and return it (stdout and stderr as text); never raises on failure.

    Verbs that discover nodes get ``--no-daemon --spin-time <spin_time>``, so no daemon is
    left behind.
    """
    verb = list(args)
    if verb[:2] in (["param", "get"], ["param", "set"], ["param", "describe"],
                    ["param", "list"], ["lifecycle", "get"], ["lifecycle", "set"],
                    ["node", "list"], ["node", "info"]):  # fmt: skip
        verb[2:2] = ["--no-daemon", "--spin-time", spin_time]
    return subprocess.run(
        [str(ROS2), *verb],
        env=tools_env(domain_id),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Launch(LoggedProcess):
    """``ros2 launch segfast_ros <file> args...`` in its own session, its output in a file."""

    def __init__(self, launch_file: str, args: dict[str, Any], domain_id: int, log: Path):
        argv = [f"{k}:={v}" for k, v in args.items()]
        command = [str(ROS2), "launch", "segfast_ros", launch_file, *argv]
        super().__init__(command, tools_env(domain_id), log, new_session=True)

    def ctrl_c(self) -> None:
        """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C, wait for launch to end (kill the group after ``timeout``); launch's code."""
        self.ctrl_c()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def finished(self) -> dict[str, str]:
        """How each process launch started has ended so far: name -> "cleanly" or the line."""
        out = {}
        for line in self.log().splitlines():
            m = _FINISHED.search(line)
            if m:
                out[m["name"]] = "cleanly" if "cleanly" in m["how"] else line.strip()
        return out


class ShellLaunch(Launch):
    """A documented command line, run by ``bash -c`` as a user types it (its own ``X=...``
    assignments included), in its own session, from ``cwd``."""

    def __init__(self, line: str, env: dict[str, str], log: Path, cwd: Path):
        self.line = line
        LoggedProcess.__init__(self, ["bash", "-c", line], env, log, cwd=cwd, new_session=True)


def stop_all(runs: Iterable[Launch], timeout: float = 30.0) -> None:
    """Ctrl-C every launch at once, then wait for each (:meth:`Launch.stop`)."""
    runs = list(runs)
    for run in runs:
        run.ctrl_c()
    deadline = time.monotonic() + timeout
    for run in runs:
        # One still running gets a second Ctrl-C from stop(), then its group is killed.
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(max(0.1, deadline - time.monotonic()))
        run.stop(timeout=5.0)


def launched(
    launch_file: str, args: dict[str, Any], domain_id: int, log: Path
) -> Iterator[Launch]:
    """A launch for a fixture: yields it, then stops it and closes its log."""
    run = Launch(launch_file, args, domain_id, log)
    try:
        yield run
    finally:
        run.stop()


def wait_for_nodes(
    client: Client, names: set[str], timeout: float = 60.0, alive: Callable[[], bool] = bool
) -> None:
    """Spin ``client`` until every fully qualified node name in ``names`` is on the graph."""

    def seen() -> bool:
        return names <= set(graph_nodes(client)) or not alive()

    client.spin_until(seen, timeout, f"nodes {sorted(names)} on the graph")


def graph_nodes(client: Client) -> list[str]:
    """Fully qualified names of the nodes ``client`` sees."""
    return [f"{ns.rstrip('/')}/{name}" for name, ns in client.node.get_node_names_and_namespaces()]


def get_parameters(client: Client, node: str, names: list[str], timeout: float = 30.0) -> dict:
    """``node``'s parameters by name, read through its ``get_parameters`` service."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    service = client.node.create_client(GetParameters, f"{node}/get_parameters")
    try:
        response = client.call(service, GetParameters.Request(names=names), timeout)
    finally:
        client.node.destroy_client(service)
    return {n: parameter_value_to_python(v) for n, v in zip(names, response.values, strict=True)}


def wait(done: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``done()`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def ros2_many(
    calls: dict[Any, tuple[int, tuple[str, ...]]],
) -> dict[Any, subprocess.CompletedProcess]:
    """:func:`ros2_found` for every ``key: (domain_id, args)`` of ``calls`` at once (each costs
    seconds of Python start and discovery, mostly waiting); the results by the same keys."""
    with ThreadPoolExecutor(max(1, len(calls))) as pool:
        futures = {
            key: pool.submit(ros2_found, domain, *args) for key, (domain, args) in calls.items()
        }
        return {key: future.result() for key, future in futures.items()}


def wait_for_launches(
    client: Client, runs: Iterable[Launch], names: set[str], timeout: float = 120.0
) -> None:
    """:func:`wait_for_nodes` for nodes of several launches; the launches' logs on failure.

    Ends early when a launch has ended (all its nodes died), and fails then too.
    """
    runs = list(runs)
    try:
        wait_for_nodes(client, names, timeout, alive=lambda: all(r.alive() for r in runs))
        missing = names - set(graph_nodes(client))
        assert not missing, f"nodes {sorted(missing)} never appeared (a launch ended)"
    except AssertionError as err:
        logs = "\n".join(f"--- {r.log_path.name}:\n{r.log()[-3000:]}" for r in runs)
        raise AssertionError(f"{err}\n{logs}") from None


def list_parameters(client: Client, node: str, timeout: float = 30.0) -> set[str]:
    """Every parameter ``node`` declares, through its ``list_parameters`` service."""
    from rcl_interfaces.srv import ListParameters

    service = client.node.create_client(ListParameters, f"{node}/list_parameters")
    try:
        response = client.call(service, ListParameters.Request(depth=0), timeout)  # 0: all
    finally:
        client.node.destroy_client(service)
    return set(response.result.names)


#: The message types of a camera subscription (raw, or image_transport's compressed).
IMAGE_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"}


def image_subscriptions(client: Client, node: str) -> set[str]:
    """The image topics the node ``node`` (fully qualified) subscribes to, as the graph has it."""
    from rclpy.node import NodeNameNonExistentError

    namespace, _, name = node.rpartition("/")
    try:
        topics = client.node.get_subscriber_names_and_types_by_node(name, namespace or "/")
    except NodeNameNonExistentError:
        return set()
    return {topic for topic, types in topics if IMAGE_TYPES & set(types)}


def wait_for_subscriptions(
    client: Client, node: str, topics: set[str], timeout: float = 60.0
) -> None:
    """Spin until ``node`` subscribes to every one of ``topics`` (an active node does)."""
    client.spin_until(
        lambda: topics <= image_subscriptions(client, node),
        timeout,
        f"{node} subscribed to {sorted(topics)}",
    )


def parameter_file(path: Path) -> dict[str, Any]:
    """A ROS parameter file's values by dotted name: its ``/**: ros__parameters:`` flattened
    (``segevery: {rate: 1.0}`` is ``segevery.rate``), as the node declares them."""
    doc = yaml.safe_load(Path(path).read_text())
    assert list(doc) == ["/**"], f"{path}: one '/**' section expected, got {list(doc)}"
    return dotted(doc["/**"]["ros__parameters"])


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dictionaries as one ``{"a.b.c": value}`` dictionary."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: Spin times of :func:`lifecycle`'s tries. A participant often discovers a node within a
#: second, but can wait for the node's next periodic announcement instead (measured: 11 of 12
#: participants started one after another found the node after ~3 s), so a retry waits longer.
LIFECYCLE_SPIN_TIMES = (SPIN_TIME, "4", "8")


def lifecycle(domain_id: int, *args: str) -> subprocess.CompletedProcess:
    """``ros2 lifecycle <args>`` (``get <node>``, ``set <node> <transition>``), as :func:`ros2`.

    Both verbs first list the lifecycle nodes: the nodes, and the ``get_state`` services,
    discovered within the spin time; when discovery took longer the verb answers "Node not
    found" before it has asked the node anything. That answer is retried with the next of
    :data:`LIFECYCLE_SPIN_TIMES`; any other is returned as it is.
    """
    return ros2_found(domain_id, "lifecycle", *args)


def ros2_found(domain_id: int, *args: str) -> subprocess.CompletedProcess:
    """:func:`ros2` for a verb that first looks its node up (``lifecycle``, ``param``), retried
    with the next of :data:`LIFECYCLE_SPIN_TIMES` while it answers "Node not found"."""
    for spin_time in LIFECYCLE_SPIN_TIMES:
        result = ros2(domain_id, *args, spin_time=spin_time)
        if "Node not found" not in result.stderr:
            break
    return result


#: The launch log's line for a process launch started.
_STARTED = re.compile(r"\[(?P<name>[\w.-]+)\]: process started with pid \[(?P<pid>\d+)\]")


def started_pids(run: Launch) -> dict[str, int]:
    """The processes ``run`` has started so far: launch's name for each -> its pid."""
    return {m["name"]: int(m["pid"]) for m in _STARTED.finditer(run.log())}


def running_pids(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that still name a process that has not been reaped (not a zombie)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left


def wait_ended(run: Launch, timeout: float) -> int | None:
    """Wait up to ``timeout`` s for launch to end by itself (no signal sent); its code or None."""
    try:
        return run.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
