"""The ``segfast_node`` executable: the signal handlers first, then everything else.

Importing rclpy, numpy, cv2, onnxruntime and the node takes a noticeable moment (about 0.3 s
on a desktop, more on a Jetson). A Ctrl-C in that moment, which ``ros2 launch`` passes on when
it is stopped right after starting, raised ``KeyboardInterrupt`` inside an import: a traceback
and exit code -2. So this module imports nothing heavy at the top: it installs
:class:`~segfast_ros.ros.signals.ShutdownSignals`, then imports the node and runs it with
those handlers, and a signal that came early ends the run cleanly before it configures.
"""

from __future__ import annotations

import sys

from segfast_ros.ros.signals import ShutdownSignals


def main(args: list[str] | None = None) -> int:
    """Run the node: ``segfast_node --ros-args -p model_dir:=... -r image:=/camera/image``.

    Returns 0 after a SIGINT or SIGTERM (any number of them, at any moment), 2 when a parameter
    is refused (see :func:`segfast_ros.ros.main.run`).
    """
    signals = ShutdownSignals()
    from segfast_ros.ros.main import run
    from segfast_ros.ros.node import SegfastNode

    return run(SegfastNode, args, signals)


if __name__ == "__main__":
    sys.exit(main())
