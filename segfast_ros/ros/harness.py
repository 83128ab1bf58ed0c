"""Drive a real segfast node over DDS from another process: for tests and the node benchmark.

The node runs as a user would start it (the ``segfast_node`` console script with
``--ros-args``) in its own process; the caller is a separate ROS 2 participant on an isolated
domain that publishes frames and calls services.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment for a participant on ``domain_id``, discovery on this machine only."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


def free_domain_id() -> int:
    """A domain id unlikely to clash with a parallel run (ids 1..100 are valid everywhere)."""
    return random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)


def node_command(*ros_args: str) -> list[str]:
    """``segfast_node --ros-args ...`` from this interpreter's environment."""
    script = shutil.which("segfast_node", path=str(Path(sys.executable).parent))
    base = [script] if script else [sys.executable, "-m", "segfast_ros.ros.entry"]
    return [*base, "--ros-args", *ros_args]


class LoggedProcess:
    """A subprocess whose output (stdout and stderr) goes to a file for the tests to read.

    Args:
        command: the program and its arguments.
        env: its environment.
        log_path: the file its output goes to (closed by the subclass's ``stop``).
        cwd: its working folder (None: this one).
        new_session: start it in a session (and process group) of its own.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


class NodeProcess(LoggedProcess):
    """A segfast node in a subprocess; its log goes to a file for the tests to read."""

    def __init__(self, args: list[str], domain_id: int, log_path: Path) -> None:
        super().__init__(node_command(*args), ros_env(domain_id), log_path)

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(subprocess.signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Client:
    """A client participant: a node with an executor, on its own rclpy context."""

    def __init__(self, domain_id: int, name: str = "segfast_test_client") -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``done()``; AssertionError naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def call(
        self, client: Any, request: Any, timeout: float = 30.0, resend_after: float | None = None
    ) -> Any:
        """Call a service and wait for the response.

        ``resend_after`` (seconds; only for idempotent queries such as ``get_state``) sends the
        request again while no response has come. Fast DDS drops a response when the server has
        not yet matched the client's response reader within 100 ms of answering
        (ros2/rmw_fastrtps#390, "client will not receive response"), which happens on a loaded
        machine right after discovery; the call would otherwise wait for ever.
        """
        self.spin_until(client.service_is_ready, timeout, f"service {client.srv_name}")
        deadline = time.monotonic() + timeout
        future = client.call_async(request)
        resend_at = deadline if resend_after is None else time.monotonic() + resend_after
        while not future.done():
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for a response from {client.srv_name}"
                )
            if now >= resend_at and resend_after is not None:
                client.remove_pending_request(future)
                future = client.call_async(request)
                resend_at = now + resend_after
            self.executor.spin_once(timeout_sec=0.05)
        return future.result()


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "bgr8"):
    """A sensor_msgs/Image of ``rgb`` (sent as ``encoding``) with the given stamp."""
    from sensor_msgs.msg import Image

    channels = {"rgb8": rgb, "bgr8": rgb[..., ::-1]}
    pixels = np.ascontiguousarray(channels[encoding])
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.step = rgb.shape[1] * 3
    msg.data = array("B", pixels.tobytes())  # array: no per-byte check in the setter
    return msg
