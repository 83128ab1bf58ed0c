"""SIGINT and SIGTERM recorded, never raised: the node process's handlers. Standard library only.

Installed by the ``segfast_node`` executable before it imports rclpy and the model stack
(:mod:`segfast_ros.ros.entry`), so a Ctrl-C in the process's first moments is recorded like
any other instead of raising ``KeyboardInterrupt`` inside an import.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


class ShutdownSignals:
    """SIGINT and SIGTERM end the node once, quietly, however many arrive and whenever.

    A terminal's Ctrl-C under ``ros2 launch`` reaches the node twice (from the process group
    and from launch), the second often while the node is cleaning up. Python's default SIGINT
    handler raises ``KeyboardInterrupt`` wherever the main thread is, which tore the clean-up
    apart (a traceback, exit code -2, threads left running). Here a signal is only recorded,
    never raised, and :func:`segfast_ros.ros.main.run`'s spin loop ends when it sees one.

    rclpy's own handlers are not installed (``run`` initializes rclpy without them): they
    shut the ROS context down at the first signal, after which the node's shutdown transition
    could not publish its transition event, and the state machine refuses a transition it
    cannot announce.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[str] = []
        for sig in self.SIGNALS:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.received:  # the first one says why the node goes; repeats say nothing
            print(f"segfast: {name} received, shutting down", file=sys.stderr)
        self.received.append(name)

    def ignore_from_now(self) -> None:
        """Ignore both signals for the rest of the process's life.

        For after the clean-up: Python resets the handlers it installed to the default while
        the interpreter finalizes (DDS teardown included), and a late second Ctrl-C would then
        kill the process with -2 instead of letting it exit 0.
        """
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
