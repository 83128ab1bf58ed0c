"""Run a lifecycle node as a process: the executor, autostart, and a quiet end on any signal.

:func:`run` is what the ``segfast_node`` executable does (:func:`segfast_ros.ros.entry.main`):
build the node, configure and activate it unless its ``autostart`` parameter is false, spin
it on a multi-threaded executor of ``executor.threads`` threads until SIGINT or SIGTERM, then
take it through its shutdown transition and destroy it. The node's transitions are only ever
triggered through its state machine, never by calling the callbacks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from segfast_ros.ros.signals import ShutdownSignals

#: Longest the spin loop waits before it looks for a signal: how long after SIGINT or SIGTERM
#: the shutdown starts at most.
SIGNAL_POLL_S = 0.1


class ManagedNode(Protocol):
    """What :func:`run` needs of a node: an rclpy ``LifecycleNode`` with two settings."""

    autostart: bool

    @property
    def executor_threads(self) -> int: ...

    def trigger_configure(self) -> TransitionCallbackReturn: ...

    def trigger_activate(self) -> TransitionCallbackReturn: ...

    def trigger_shutdown(self) -> TransitionCallbackReturn: ...

    def destroy_node(self) -> None: ...

    def get_logger(self) -> Any: ...


def spin(executor: Any, signals: ShutdownSignals) -> None:
    """Spin until a signal or a shutdown, surviving entities destroyed mid-wait.

    A transition (deactivate, cleanup) runs on an executor thread and destroys subscriptions,
    publishers and services while this thread may be building the next wait set from them; the
    QoS event handlers of a destroyed subscription or publisher then raise ``InvalidHandle``
    there (rclpy guards timers, subscriptions and services against it, not waitables). It
    ended the node with a traceback, seen once in a full test run on a loaded machine. The
    entity is gone, so the next ``spin_once`` builds a wait set without it.
    """
    while not signals.received and rclpy.ok():
        try:
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
        except InvalidHandle:
            continue


def _autostart(node: ManagedNode, signals: ShutdownSignals) -> None:
    """Configure and activate ``node`` unless its ``autostart`` is false or a signal came."""
    if not node.autostart:
        node.get_logger().info(
            "autostart is false: unconfigured until a lifecycle manager configures the node"
        )
        return
    if signals.received or node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return
    if not signals.received:
        node.trigger_activate()


def _shut_down(node: ManagedNode) -> None:
    """The shutdown transition, from whichever primary state the node is in.

    None is possible once a lifecycle manager finalized the node, or while a transition it
    asked for still runs on an executor thread; ``destroy_node`` then releases the rest.
    """
    try:
        node.trigger_shutdown()
    except Exception as err:  # rclpy's RCLError: no shutdown transition from this state
        node.get_logger().debug(f"no shutdown transition ({err}); destroy_node releases all")


def _stop(executor: MultiThreadedExecutor) -> None:
    """Stop the executor once the callbacks already handed to its threads have returned.

    The spin loop hands out no more, but a callback still running on a pool thread when
    ``shutdown`` destroys the executor's guard condition fails on it (rclpy prints "exception
    was never retrieved: cannot use Destroyable"), and one running while the shutdown
    transition destroys its entity would fail the same way. So the executor's thread pool
    (``_executor`` in every rclpy release) is joined first: Jazzy's ``shutdown`` does not
    wait for running callbacks (Humble's does; later releases join the threads themselves).
    Queued callbacks run too: a cancelled one would leave its coroutine never awaited. A
    deactivate under way when the signal came holds the join for as long as it waits for
    admitted ``~/segment`` calls (SEGMENT_DRAIN_S at most): nothing spins to answer them now.
    """
    pool = getattr(executor, "_executor", None)
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=True)
    executor.shutdown()


def run(
    make_node: Callable[[], ManagedNode],
    args: list[str] | None = None,
    signals: ShutdownSignals | None = None,
) -> int:
    """Run the node ``make_node()`` builds until SIGINT or SIGTERM.

    Args:
        make_node: builds the node once rclpy is initialized (a bad parameter raises).
        args: command-line arguments for rclpy (None: ``sys.argv``).

    Returns:
        0 after a SIGINT or SIGTERM (any number of them), 2 when the node cannot be built (a
        parameter refused: the message is printed, no traceback).
    """
    signals = signals or ShutdownSignals()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = make_node()
    except Exception as err:  # a bad parameter ends the start with a message, no traceback
        print(f"segfast: cannot start: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=node.executor_threads)
    executor.add_node(node)  # type: ignore[arg-type]
    try:
        _autostart(node, signals)
        spin(executor, signals)
    except ExternalShutdownException:
        pass  # the context was shut down from outside: end as after a signal
    finally:
        _stop(executor)
        _shut_down(node)
        node.destroy_node()
        rclpy.try_shutdown()
        signals.ignore_from_now()
    return 0
