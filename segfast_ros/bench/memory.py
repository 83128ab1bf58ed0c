"""Peak memory of the node on one frame of any size: ``segfast bench-memory``.

Each case (frame size x SegEvery strategy) runs in a fresh Python process, so that its peak
RSS is its own. That process builds the real :class:`~segfast_ros.ros.node.SegfastNode` (real
rclpy, real ONNX Runtime), configures and activates it, and then:

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

Recorded per stage: wall time, VmRSS before and after, and the stage's own peak (VmHWM, reset
before the stage through ``/proc/self/clear_refs`` where the kernel allows it); per case the
process peak (the largest VmHWM of the whole run; ``ru_maxrss`` is no use here, as Linux
carries it over from the driver through ``execve``), the node's own timings from its
diagnostics and the number of instances published.

The frame is a generated scene (:mod:`segfast_ros.bench.scenes`, rendered at a quarter of the
size and resized up: rendering 8K directly takes 4 GB), so SegEvery keeps real masks; the
~/segment point is inside the largest object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The issue's target for an 8K frame: the whole process, model and frame included.
PEAK_RSS_TARGET_MB = 1500.0
#: Frame sizes measured by default, (H, W): 8K UHD and 1080p.
DEFAULT_SIZES = ((4320, 7680), (1080, 1920))
DEFAULT_STRATEGIES = ("object_aware", "grid")
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
        start = time.perf_counter()
        value = fn()
        ms = (time.perf_counter() - start) * 1e3
        after = _status_mb("VmRSS")
        peak = self._checkpoint()
        self.result.stages.append(Stage(name, ms, before, after, max(peak, after)))
        return value

    def peak_mb(self) -> float:
        """The process peak so far (VmHWM over the whole run; ``ru_maxrss`` without /proc)."""
        self._checkpoint()
        return self.process_peak if self.process_peak > 0 else _max_rss_mb()


# ------------------------------------------------------------------------------- frames


def make_frame(hw: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """A generated scene of ``hw = (H, W)`` and a point inside its largest object.

    Rendered at a quarter of the size and resized up (linear), as rendering 8K directly takes
    4 GB and 15 s.

    Returns:
        ``(H, W, 3)`` uint8 RGB and the point ``(X, Y)`` in pixels.
    """
    import cv2

    from segfast_ros.bench.scenes import generate_scene

    h, w = hw
    small_hw = (max(64, h // 4), max(64, w // 4))
    scene = generate_scene(seed, small_hw, num_objects=(8, 12))
    image = cv2.resize(scene.image, (w, h), interpolation=cv2.INTER_LINEAR)
    if not len(scene.masks):
        return image, (w / 2, h / 2)
    largest = scene.masks[int(np.argmax(scene.masks.sum(axis=(1, 2))))]
    # The pixel farthest from the object's boundary: surely inside at any scale.
    dist = cv2.distanceTransform(largest.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return image, ((x + 0.5) * w / small_hw[1], (y + 0.5) * h / small_hw[0])


def write_frame_cdr(image: np.ndarray, path: Path) -> None:
    """``image`` as a serialized ``sensor_msgs/Image`` (rgb8, stamp 1 s), the bytes DDS carries."""
    from rclpy.serialization import serialize_message

    from segfast_ros.ros.harness import image_msg

    path.write_bytes(serialize_message(image_msg(image, 1_000_000_000, encoding="rgb8")))


# ------------------------------------------------------------------------ one case (child)


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


def run_case(case: dict[str, Any]) -> CaseResult:
    """Run one case in this process (see the module docstring); call it in a fresh process."""
    hw = (int(case["hw"][0]), int(case["hw"][1]))
    result = CaseResult(hw=hw, strategy=case["strategy"])
    import rclpy
    from geometry_msgs.msg import Point
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from segfast_ros.msg import InstanceArray
    from segfast_ros.ros.node import SegfastNode
    from segfast_ros.srv import Segment

    recorder: _StageRecorder | None = None
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
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"configure failed: {_diag(node)['last_error']}")
        node.trigger_activate()
        spinner.start()
        if case["overlay_subscriber"]:
            overlay = f"{NAMESPACE}/segfast/overlay"
            deadline = time.monotonic() + 20.0
            while node.count_subscribers(overlay) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the driver's subscriber to {overlay} never matched")
                time.sleep(0.05)
        image_sub = next(s for s in node.subscriptions if s.topic_name.endswith("/image"))
        segment_srv = next(s for s in node.services if s.srv_name.endswith("/segment"))
        result.startup_rss_mb = _status_mb("VmRSS")

        recorder = _StageRecorder(result)
        # What each stage hands on; popped when handed, so nothing here outlives its use
        # (after a real take only the node's frame keeps the pixels).
        held: dict[str, Any] = {"cdr": Path(case["frame_cdr"]).read_bytes()}
        held["msg"] = recorder.run(
            "take (CDR -> Image)", lambda: deserialize_message(held.pop("cdr"), Image)
        )

        if case.get("over_limit"):

            def reject() -> None:
                image_sub.callback(held.pop("msg"))

                def settled() -> bool:  # refused, or (wrongly) encoded
                    values = _diag(node)
                    return values["encoder_errors"] != "0" or values["frames_encoded"] != "0"

                _wait("the rejection", settled, node, errors=())

            recorder.run("frame rejected", reject)
            result.rejected = message = _diag(node)["last_error"]
            size = f"{hw[1]}x{hw[0]}"
            if size not in message or "MAX_IMAGE_PIXELS" not in message:
                raise RuntimeError(
                    f"a {size} frame above MAX_IMAGE_PIXELS was not refused with a message "
                    f"naming its size and the limit (last error: {message!r})"
                )
            return result

        def encode() -> None:
            image_sub.callback(held.pop("msg"))
            _wait("the embedding", lambda: _diag(node)["frames_encoded"] == "1", node)

        recorder.run("frame->embedding", encode)

        def set_rate(rate: float) -> None:
            (done,) = node.set_parameters([Parameter("segevery.rate", value=rate)])
            if not done.successful:
                raise RuntimeError(f"segevery.rate := {rate} refused: {done.reason}")

        def segevery() -> None:
            set_rate(20.0)
            executor.wake()  # the timer was made outside the executor: let it wait on it
            _wait("SegEvery", lambda: _diag(node)["segevery_ms_p50"] != "nan", node)
            set_rate(0.0)

        recorder.run(f"SegEvery {case['strategy']} + publish", segevery)
        deadline = time.monotonic() + 10.0
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
        result.instances = published[0] if published else -1

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
            task = executor.create_task(segment_srv.callback, request, Segment.Response())
            executor.wake()
            _wait("the ~/segment answer", task.done, node)
            return task.result()

        stage = f"~/segment {sets} set{'s' * (sets > 1)}, multimask{' + images' * images}"
        held["response"] = response = recorder.run(stage, segment)
        if not response.success:
            raise RuntimeError(f"~/segment failed: {response.message}")
        result.segment_masks = sum(len(r.masks) for r in response.results)
        result.response_image_mb = (
            sum(len(im.data) for r in response.results for im in r.images) / 2**20
        )
        del response
        recorder.run("serialize response", lambda: serialize_message(held.pop("response")))
        values = _diag(node)
        for key in ("encoder_ms_p50", "segevery_ms_p50", "segment_ms_p50"):
            result.node_ms[key.removesuffix("_p50")] = float(values[key])
    except Exception as err:  # reported in the table; the driver goes on with the next case
        result.error = f"{type(err).__name__}: {err}"
    finally:
        result.peak_rss_mb = recorder.peak_mb() if recorder else _status_mb("VmHWM")
        executor.shutdown()
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
    return result


# ------------------------------------------------------------------------- driver (parent)


def bench_memory(
    model_dir: str,
    *,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    precision: str = "fp32",
    threads: int = 0,
    detector: str = "",
    overlay_subscriber: bool = True,
    seed: int = 0,
    segment_sets: int = 1,
    segment_images: bool = True,
    over_limit: bool = True,
    params: dict[str, Any] | None = None,
    log_dir: Path | None = None,
) -> list[CaseResult]:
    """Run every (size, strategy) case in its own process; see the module docstring.

    Args:
        model_dir: the node's ``model_dir`` (``demo``: the shipped demo model).
        sizes: frame sizes ``(H, W)``.
        strategies: SegEvery strategies.
        precision: encoder precision the node loads.
        threads: ONNX Runtime intra-op threads (0: its choice).
        detector: object-aware detector ONNX; empty: ``<model_dir>/detector.onnx``.
        overlay_subscriber: subscribe to ``~/overlay`` from this process, so the node renders
            and publishes it as it does for rviz.
        seed: scene seed.
        segment_sets: prompt sets in the ~/segment request (3 masks each).
        segment_images: the request asks for mono8 images of the masks.
        over_limit: also hand the node one frame just above ``MAX_IMAGE_PIXELS`` and record
            its rejection message.
        params: more node parameters, ``{name: value}`` (e.g. the decoder batch,
            ``segevery.object_aware.prompts_per_batch``).
        log_dir: where each case's stderr goes (default: a temporary folder).
    """
    from segfast_ros.runtime.paths import resolve_model_path

    resolved = resolve_model_path(model_dir)
    if not detector and (resolved / "detector.onnx").is_file():
        detector = str(resolved / "detector.onnx")
    results = []
    base = {
        "model_dir": str(resolved),
        "precision": precision,
        "threads": threads,
        "detector": detector,
        "overlay_subscriber": overlay_subscriber,
        "segment_sets": segment_sets,
        "segment_images": segment_images,
        "params": dict(params or {}),
    }
    with tempfile.TemporaryDirectory(prefix="segfast_bench_memory_") as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for hw in sizes:
            image, point = make_frame(hw, seed)
            frame = Path(tmp) / f"frame_{hw[1]}x{hw[0]}.cdr"
            write_frame_cdr(image, frame)
            del image
            for strategy in strategies:
                case = {**base, "hw": list(hw), "strategy": strategy, "point": list(point)}
                results.append(_run_in_process({**case, "frame_cdr": str(frame)}, logs))
        if over_limit:
            from segfast_ros.runtime.transforms import MAX_IMAGE_PIXELS

            # The smallest 8192-wide frame above the limit; its pixels do not matter.
            hw = (MAX_IMAGE_PIXELS // 8192 + 1, 8192)
            frame = Path(tmp) / "frame_over_limit.cdr"
            write_frame_cdr(np.zeros((*hw, 3), np.uint8), frame)
            case = {**base, "hw": list(hw), "strategy": strategies[0], "point": [0.0, 0.0]}
            case.update(frame_cdr=str(frame), over_limit=True, overlay_subscriber=False)
            results.append(_run_in_process(case, logs))
    return results


def _run_in_process(case: dict[str, Any], logs: Path) -> CaseResult:
    """Run one case in a fresh interpreter on an isolated ROS domain."""
    from segfast_ros.ros.harness import Client, free_domain_id, ros_env

    hw, strategy = (case["hw"][0], case["hw"][1]), case["strategy"]
    domain = free_domain_id()
    client = None
    if case["overlay_subscriber"]:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        # rviz's role: someone watches the overlay (best effort; the frames need not arrive,
        # the node renders and sends them either way).
        client = Client(domain, "segfast_bench_memory_viewer")
        client.node.create_subscription(
            Image, f"{NAMESPACE}/segfast/overlay", lambda _: None, qos_profile_sensor_data
        )
    log = logs / f"case_{hw[1]}x{hw[0]}_{strategy}.log"
    try:
        with open(log, "w") as err:
            proc = subprocess.run(
                [sys.executable, "-m", "segfast_ros.bench.memory", "--case", json.dumps(case)],
                env=ros_env(domain),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=4 * STAGE_TIMEOUT_S,
            )
    finally:
        if client is not None:
            client.close()
    return _parse_case(proc.stdout, hw, strategy, log)


def _parse_case(stdout: str, hw: tuple[int, int], strategy: str, log: Path) -> CaseResult:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            data["hw"] = tuple(data["hw"])
            data["stages"] = [Stage(**s) for s in data["stages"]]
            return CaseResult(**data)
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    return CaseResult(hw=hw, strategy=strategy, error=f"the case printed no result:\n{tail}")


def format_table(results: list[CaseResult]) -> str:
    """One row per stage, then each case's peak against the target."""
    header = (
        f"{'frame':>10} {'strategy':<13} {'stage':<34} {'ms':>9} {'RSS before':>10} "
        f"{'RSS after':>9} {'peak':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        frame = f"{r.hw[1]}x{r.hw[0]}"
        if r.rejected or (r.stages and r.stages[-1].name == "frame rejected"):
            for s in r.stages:
                lines.append(
                    f"{frame:>10} {'over limit':<13} {s.name:<34} {s.ms:9.0f} "
                    f"{s.rss_before_mb:10.0f} {s.rss_after_mb:9.0f} {s.peak_mb:7.0f}"
                )
            lines.append(f"{'':>10} rejected: {r.rejected or '(no message)'}")
            if r.error:
                lines.append(f"{'':>10} ERROR: {r.error}")
            continue
        for s in r.stages:
            lines.append(
                f"{frame:>10} {r.strategy:<13} {s.name:<34} {s.ms:9.0f} {s.rss_before_mb:10.0f} "
                f"{s.rss_after_mb:9.0f} {s.peak_mb:7.0f}"
            )
        verdict = "met" if r.peak_rss_mb < PEAK_RSS_TARGET_MB else "MISSED"
        lines.append(
            f"{frame:>10} {r.strategy:<13} {'process peak RSS (VmHWM)':<34} {'':>9} "
            f"{r.startup_rss_mb:10.0f} {'':>9} {r.peak_rss_mb:7.0f}  "
            f"(target < {PEAK_RSS_TARGET_MB:.0f} MB: {verdict})"
        )
        lines.append(
            f"{'':>10} {'':<13} instances published {r.instances}, ~/segment masks "
            f"{r.segment_masks} ({r.response_image_mb:.0f} MB of mono8 images); node's own ms: "
            + ", ".join(f"{k} {v:.0f}" for k, v in r.node_ms.items())
        )
        if r.error:
            lines.append(f"{'':>10} ERROR: {r.error}")
    return "\n".join(lines)


NOTES = (
    "MB are MiB of resident memory (VmRSS), the whole process: Python, rclpy, ONNX Runtime, "
    "the model and the frame.",
    "peak: the stage's own VmHWM (reset before each stage via /proc/self/clear_refs), or the "
    "process peak so far where the kernel refuses the reset; the process peak is the largest "
    "VmHWM of the run, from the case process's start (its startup RSS is the RSS before the "
    "first stage).",
    "frames are handed to the node in-process through its subscription callback: an 8K rgb8 "
    "frame does not cross Fast DDS's default UDP transport; the take (CDR -> message) is "
    "measured, the transport's own buffers are not.",
    "the response's serialization stands in for the reply's send; the overlay is published "
    "to a subscriber in the driver process, as to rviz.",
)


# ----------------------------------------------------------------------------------- CLI


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected a frame size WxH (e.g. 7680x4320), got {text!r}"
        ) from err
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return h, w


def _param(text: str) -> tuple[str, Any]:
    """``NAME:=VALUE`` as ROS's ``-p`` takes it; VALUE is read as JSON, else a string."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected a node parameter NAME:=VALUE (e.g. segevery.object_aware.conf:=0.1), "
            f"got {text!r}"
        )
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segfast bench-memory`` options (no ROS import: the cases import rclpy)."""
    parser.add_argument(
        "--model-dir",
        default="demo",
        help="the node's model_dir (default: demo, the shipped demo model with its detector); "
        "e.g. a folder of full-size MobileSAM graphs from `segfast export`",
    )
    parser.add_argument("--detector", default="", help="object-aware detector ONNX file")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=list(DEFAULT_SIZES),
        metavar="WxH",
        help="frame sizes (default: 7680x4320 1920x1080)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEFAULT_STRATEGIES),
        choices=("object_aware", "grid", "hierarchical"),
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--no-overlay", action="store_true", help="no ~/overlay subscriber (no overlay is made)"
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument(
        "--segment-sets", type=int, default=1, help="prompt sets in the ~/segment request"
    )
    parser.add_argument(
        "--no-segment-images", action="store_true", help="~/segment without mono8 images"
    )
    parser.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="another node parameter, e.g. -p segevery.object_aware.prompts_per_batch:=32",
    )
    parser.add_argument(
        "--no-over-limit",
        action="store_true",
        help="skip the frame just above MAX_IMAGE_PIXELS (its rejection message)",
    )
    parser.add_argument("--json", help="write the results as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """``segfast bench-memory``: run, print the table and notes, write JSON."""
    results = bench_memory(
        args.model_dir,
        sizes=tuple(args.sizes),
        strategies=tuple(args.strategies),
        precision=args.precision,
        threads=args.threads,
        detector=args.detector,
        overlay_subscriber=not args.no_overlay,
        seed=args.seed,
        segment_sets=args.segment_sets,
        segment_images=not args.no_segment_images,
        over_limit=not args.no_over_limit,
        params=dict(args.param),
    )
    extra = "".join(f", {k}:={v}" for k, v in args.param)
    print(f"model_dir {args.model_dir} ({args.precision}){extra}, {os.cpu_count()} CPUs")
    print(format_table(results))
    for note in NOTES:
        print(f"note: {note}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "model_dir": args.model_dir,
            "precision": args.precision,
            "params": dict(args.param),
            "peak_rss_target_mb": PEAK_RSS_TARGET_MB,
            "cpu_count": os.cpu_count(),
            "notes": list(NOTES),
            "cases": [asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m segfast_ros.bench.memory`` (``--case`` runs one case: the child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.case:
        result = run_case(json.loads(args.case))
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
        return 0
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
