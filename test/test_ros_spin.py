"""The node's spin loop survives an entity destroyed while a wait set is being built.

A transition on an executor thread destroys subscriptions and publishers; rclpy raises
``InvalidHandle`` from their QoS event handlers when the spinning thread adds them to the next
wait set. Seen once in a full test run: the node ended with exit code 1 mid-deactivate.
"""

from __future__ import annotations

import rclpy
from rclpy.exceptions import InvalidHandle

from segfast_ros.ros.main import spin
from segfast_ros.ros.signals import ShutdownSignals


class _Executor:
    """Raises InvalidHandle on its first spin, then spins until the third, when a SIGINT
    comes."""

    def __init__(self, signals: ShutdownSignals) -> None:
        self.signals = signals
        self.spins = 0

    def spin_once(self, timeout_sec: float) -> None:
        self.spins += 1
        if self.spins == 1:
            raise InvalidHandle("cannot use Destroyable because destruction was requested")
        if self.spins == 3:
            self.signals.received.append("SIGINT")


def test_an_entity_destroyed_mid_wait_does_not_end_the_spin() -> None:
    rclpy.init()
    try:
        signals = ShutdownSignals()
        executor = _Executor(signals)
        spin(executor, signals)
        assert executor.spins == 3
    finally:
        rclpy.try_shutdown()
