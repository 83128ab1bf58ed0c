"""One case of ``segfast bench-memory``, in this (fresh) process: ``python -m
segfast_ros.bench.memory_case CASE_JSON`` prints its :class:`CaseResult` as one JSON line.

The case builds the real :class:`~segfast_ros.ros.node.SegfastNode` (real rclpy, real ONNX
Runtime), configures and activates it, and then:

1. **take**: deserializes one ``sensor_msgs/Image`` (rgb8) from its CDR bytes with rclpy, as
   the subscription's take does (C message, then the Python message). The frame is handed to
   the node in-process, through the subscription's own callback: frames this large do not
   cross Fast DDS's default UDP transport (an 8K rgb8 frame never arrived in our tests), and
   the transport's own buffers are not the node's work.
2. **frame->embedding**: the image callback until the embedding is cached (encoder thread).
3. **SegEvery**: one pass of the configured strategy on the node's SegEvery thread (the timer
   is switched on for one frame), with its publications: ``~/instances``, the ``mono16``
   label image and, while a subscriber in the driver process listens, the ``rgb8`` overlay.
4. **~/segment**: one multimask point request (``--segment-sets`` sets) with
   ``return_images`` and ``return_low_res``, through the service's own callback.
5. **serialize response**: the response to CDR bytes with rclpy, as the service's reply does.

A frame above ``MAX_IMAGE_PIXELS`` (``over_limit``) stops after the take: the case records the
node's rejection message instead.

Recorded per stage: wall time, VmRSS before and after, and the stage's own peak (VmHWM, reset
before the stage through ``/proc/self/clear_refs`` where the kernel allows it); per case the
process peak (the largest VmHWM of the whole run; ``ru_maxrss`` is no use here, as Linux
carries it over from the driver through ``execve``), the node's own timings from its
diagnostics and the number of instances published.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .timing import time_ms

NAMESPACE = "/segfast_bench_memory"
RESULT_PREFIX = "BENCH_MEMORY_RESULT "
#: Longest wait for one stage of a case, seconds.
STAGE_TIMEOUT_S = 600.0


@dataclass
class Stage:
    """One stage of a case: wall time and RSS in MB (VmHWM: the stage's own peak)."""

    name: str
    ms: float
    rss_before_mb: float
    rss_after_mb: float
    peak_mb: float


@dataclass
class CaseResult:
    """One case: a frame size and a strategy in a fresh process."""

    hw: tuple[int, int]
    strategy: str
    stages: list[Stage] = field(default_factory=list)
    startup_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_is_per_stage: bool = False
    instances: int = 0
    segment_masks: int = 0
    response_image_mb: float = 0.0
    node_ms: dict[str, float] = field(default_factory=dict)
    rejected: str = ""
    error: str = ""


# ------------------------------------------------------------------------- memory probes


def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` field in MB (``VmRSS``, ``VmHWM``), NaN where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_mb() -> float:
    """The process's peak RSS so far (``ru_maxrss``: kB on Linux, bytes on macOS).

    Only a fallback: Linux carries ``ru_maxrss`` across ``execve``, so a case process starts
    with its driver's RSS at the fork as its "peak".
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class _StageRecorder:
    """Times stages and tracks peaks: each stage's own VmHWM, and the process's over all.

    VmHWM belongs to the process image (it starts afresh at exec); resetting it per stage
    would lose the process peak, so the recorder keeps the largest value seen before each
    reset.
    """

    def __init__(self, result: CaseResult) -> None:
        self.result = result
        self.process_peak = 0.0
        self._checkpoint()
        self.per_stage = _reset_peak()
        result.peak_is_per_stage = self.per_stage

    def _checkpoint(self) -> float:
        hwm = _status_mb("VmHWM")
        if hwm == hwm:  # not NaN: /proc is there
            self.process_peak = max(self.process_peak, hwm)
        return hwm

    def run(self, name: str, fn: Any) -> Any:
        self._checkpoint()
        if self.per_stage:
            _reset_peak()
        before = _status_mb("VmRSS")
        value, ms = time_ms(fn)
        after = _status_mb("VmRSS")
        peak = self._checkpoint()
        self.result.stages.append(Stage(name, ms, before, after, max(peak, after)))
        return value

    def peak_mb(self) -> float:
        """The process peak so far (VmHWM over the whole run; ``ru_maxrss`` without /proc)."""
        self._checkpoint()
        return self.process_peak if self.process_peak > 0 else _max_rss_mb()


# ------------------------------------------------------------------------------ the node


def _node_params(
    model_dir: str,
    strategy: str,
    precision: str,
    threads: int,
    detector: str,
    extra: dict[str, Any] | None = None,
) -> list[Any]:
    from rclpy.parameter import Parameter

    from segfast_ros.ros.params import all_params

    values: dict[str, Any] = {
        "model_dir": model_dir,
        "precision": precision,
        "intra_op_threads": threads,
        "segevery.rate": 0.0,
        "segevery.strategy": strategy,
        "diagnostics_period": 60.0,  # read on demand here, not published
    }
    if detector:
        values["segevery.object_aware.detector"] = detector
    if Path(model_dir).name == "demo":
        # The demo model's own SegEvery settings (chosen on validation scenes), where the node
        # has a parameter for them.
        from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS

        names = {spec.name for spec in all_params()}
        for name, kwargs in DEMO_SEGEVERY_PARAMS.items():
            for key, value in kwargs.items():
                if f"segevery.{name}.{key}" in names:
                    values[f"segevery.{name}.{key}"] = value
    values.update(extra or {})
    return [Parameter(k, value=v) for k, v in values.items()]


def _diag(node: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in node.diagnostic_status().values}


def _wait(
    what: str,
    done: Any,
    node: Any,
    timeout: float = STAGE_TIMEOUT_S,
    errors: tuple[str, ...] = ("encoder_errors", "segevery_errors"),
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        values = _diag(node)
        for key in errors:
            if int(values.get(key, "0")) > 0:
                raise RuntimeError(f"{what}: the node reports {key}: {values['last_error']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


@dataclass
class _Running:
    """The node under test, a listener counting its published instances, their executor and
    the thread that spins it (started once the node is active)."""

    context: Any
    node: Any
    listener: Any
    executor: Any
    spinner: threading.Thread
    published: list[int]


def _start(case: dict[str, Any]) -> _Running:
    """A fresh rclpy context with the node (configured by ``case``) and the listener."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from segfast_ros.msg import InstanceArray
    from segfast_ros.ros.node import SegfastNode

    context = Context()
    rclpy.init(context=context)
    node = SegfastNode(
        namespace=NAMESPACE,
        context=context,
        parameter_overrides=_node_params(
            case["model_dir"],
            case["strategy"],
            case["precision"],
            int(case["threads"]),
            case["detector"],
            case.get("params"),
        ),
    )
    listener = Node("segfast_bench_memory_listener", context=context)
    published: list[int] = []
    listener.create_subscription(
        InstanceArray,
        f"{NAMESPACE}/segfast/instances",
        lambda msg: published.append(len(msg.instances)),
        2,
    )
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    executor.add_node(listener)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    return _Running(context, node, listener, executor, spinner, published)


def _activate(run: _Running, overlay_subscriber: bool) -> None:
    """Configure and activate the node, spin, and wait for the driver's overlay subscriber."""
    from rclpy.lifecycle import TransitionCallbackReturn

    node = run.node
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise RuntimeError(f"configure failed: {_diag(node)['last_error']}")
    node.trigger_activate()
    run.spinner.start()
    if overlay_subscriber:
        overlay = f"{NAMESPACE}/segfast/overlay"
        deadline = time.monotonic() + 20.0
        while node.count_subscribers(overlay) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the driver's subscriber to {overlay} never matched")
            time.sleep(0.05)


def _stop(run: _Running) -> None:
    import rclpy

    run.executor.shutdown()
    run.node.destroy_node()
    run.listener.destroy_node()
    rclpy.try_shutdown(context=run.context)


def run_case(case: dict[str, Any]) -> CaseResult:
    """Run one case in this process (see the module docstring); call it in a fresh process."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    hw = (int(case["hw"][0]), int(case["hw"][1]))
    result = CaseResult(hw=hw, strategy=case["strategy"])
    recorder: _StageRecorder | None = None
    run = _start(case)
    try:
        _activate(run, bool(case["overlay_subscriber"]))
        image_sub = next(s for s in run.node.subscriptions if s.topic_name.endswith("/image"))
        result.startup_rss_mb = _status_mb("VmRSS")

        recorder = _StageRecorder(result)
        # What each stage hands on; popped when handed, so nothing here outlives its use
        # (after a real take only the node's frame keeps the pixels).
        held: dict[str, Any] = {"cdr": Path(case["frame_cdr"]).read_bytes()}
        held["msg"] = recorder.run(
            "take (CDR -> Image)", lambda: deserialize_message(held.pop("cdr"), Image)
        )
        if case.get("over_limit"):
            _reject(run.node, lambda: image_sub.callback(held.pop("msg")), recorder, result)
            return result

        def encode() -> None:
            image_sub.callback(held.pop("msg"))
            _wait("the embedding", lambda: _diag(run.node)["frames_encoded"] == "1", run.node)

        recorder.run("frame->embedding", encode)
        _segevery(run, recorder, case["strategy"], result)
        _segment(run, recorder, case, result)
        values = _diag(run.node)
        for key in ("encoder_ms_p50", "segevery_ms_p50", "segment_ms_p50"):
            result.node_ms[key.removesuffix("_p50")] = float(values[key])
    except Exception as err:  # reported in the table; the driver goes on with the next case
        result.error = f"{type(err).__name__}: {err}"
    finally:
        result.peak_rss_mb = recorder.peak_mb() if recorder else _status_mb("VmHWM")
        _stop(run)
    return result


def _reject(node: Any, hand_over: Any, recorder: _StageRecorder, result: CaseResult) -> None:
    """The frame above ``MAX_IMAGE_PIXELS``: handed over, it must be refused with a message
    naming its size and the limit (kept in ``result.rejected``)."""

    def reject() -> None:
        hand_over()

        def settled() -> bool:  # refused, or (wrongly) encoded
            values = _diag(node)
            return values["encoder_errors"] != "0" or values["frames_encoded"] != "0"

        _wait("the rejection", settled, node, errors=())

    recorder.run("frame rejected", reject)
    result.rejected = message = _diag(node)["last_error"]
    size = f"{result.hw[1]}x{result.hw[0]}"
    if size not in message or "MAX_IMAGE_PIXELS" not in message:
        raise RuntimeError(
            f"a {size} frame above MAX_IMAGE_PIXELS was not refused with a message "
            f"naming its size and the limit (last error: {message!r})"
        )


def _segevery(run: _Running, recorder: _StageRecorder, strategy: str, result: CaseResult) -> None:
    """One SegEvery pass on the node's own thread (its timer on for one frame), published."""
    from rclpy.parameter import Parameter

    node = run.node

    def set_rate(rate: float) -> None:
        (done,) = node.set_parameters([Parameter("segevery.rate", value=rate)])
        if not done.successful:
            raise RuntimeError(f"segevery.rate := {rate} refused: {done.reason}")

    def segevery() -> None:
        set_rate(20.0)
        run.executor.wake()  # the timer was made outside the executor: let it wait on it
        _wait("SegEvery", lambda: _diag(node)["segevery_ms_p50"] != "nan", node)
        set_rate(0.0)

    recorder.run(f"SegEvery {strategy} + publish", segevery)
    deadline = time.monotonic() + 10.0
    while not run.published and time.monotonic() < deadline:
        time.sleep(0.01)
    result.instances = run.published[0] if run.published else -1


def _segment(
    run: _Running, recorder: _StageRecorder, case: dict[str, Any], result: CaseResult
) -> None:
    """One multimask ``~/segment`` request through the service's callback, then its reply
    serialized."""
    from geometry_msgs.msg import Point
    from rclpy.serialization import serialize_message

    from segfast_ros.srv import Segment

    segment_srv = next(s for s in run.node.services if s.srv_name.endswith("/segment"))
    x, y = case["point"]
    sets, images = int(case.get("segment_sets", 1)), bool(case.get("segment_images", True))
    request = Segment.Request(
        points=[Point(x=float(x), y=float(y))] * sets,  # the same point, `sets` sets
        labels=[1] * sets,
        points_per_set=1,
        multimask=True,
        return_images=images,
        return_low_res=True,
    )

    def segment() -> Any:
        # As the executor runs a service callback (a coroutine here): as a task.
        task = run.executor.create_task(segment_srv.callback, request, Segment.Response())
        run.executor.wake()
        _wait("the ~/segment answer", task.done, run.node)
        return task.result()

    stage = f"~/segment {sets} set{'s' * (sets > 1)}, multimask{' + images' * images}"
    held = {"response": recorder.run(stage, segment)}
    response = held["response"]
    if not response.success:
        raise RuntimeError(f"~/segment failed: {response.message}")
    result.segment_masks = sum(len(r.masks) for r in response.results)
    result.response_image_mb = (
        sum(len(im.data) for r in response.results for im in r.images) / 2**20
    )
    del response
    recorder.run("serialize response", lambda: serialize_message(held.pop("response")))


def main(argv: list[str] | None = None) -> int:
    """Run the case given as JSON (the only argument) and print its result line."""
    (case,) = sys.argv[1:] if argv is None else argv
    result = run_case(json.loads(case))
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
