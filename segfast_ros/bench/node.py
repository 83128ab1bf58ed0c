"""What the node costs on top of the library: ``segfast bench-node``.

The node runs in its own process, started as a user would, on an isolated ROS domain; this
process is its client and, in between, runs the same work directly on the same ONNX files:

* **SegAny**: a ``~/segment`` round trip (one point, one mask, from the cached embedding)
  against ``Predictor.predict`` with the same prompt here. Calls alternate, so both see the
  same machine load. Overhead = median round trip - median direct call (target < 3 ms). The
  node's own time in the handler (from ``/diagnostics``, its last 100 calls) splits that into
  work in the node and transport.
* **Frames**: frame arrival in the node's image callback to embedding cached (conversion,
  hand-off to the encoder thread, pre-processing, encoder), read from the node's
  ``/diagnostics``, against ``Predictor.set_image`` on the same image here, run while the node
  is idle. Overhead = (node median - direct median) / direct median (target < 5 %). DDS
  transport of the frame is not included (it depends on the transport, not on the node).

``--concurrent N ...`` measures the service under load instead (:func:`bench_concurrent`):
N calls sent at once, then how many were answered with masks, refused as busy or never
answered, and the p50/p95 time from sending to the answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from sensor_msgs.msg import Image

from segfast_ros.bench.latency import BenchRow, bench_row
from segfast_ros.bench.report import format_columns
from segfast_ros.bench.timing import percentile, time_ms
from segfast_ros.ros.harness import Client, NodeProcess, free_domain_id, image_msg
from segfast_ros.ros.qos import SERVICE_QOS
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.srv import Segment

#: The issue's targets.
SERVICE_OVERHEAD_TARGET_MS = 3.0
NODE_OVERHEAD_TARGET_PCT = 5.0
NS = "/segfast_bench"


@dataclass(frozen=True)
class NodeBenchResult:
    """Rows (direct vs node, per stage) and the two overheads."""

    rows: list[BenchRow]
    service_overhead_ms: float
    node_overhead_pct: float
    frames_resent: int = 0

    def notes(self) -> list[str]:
        """One line per target: met or missed, with the figure."""
        svc = self.service_overhead_ms
        node = self.node_overhead_pct
        return [
            f"~/segment overhead {svc:.2f} ms (median round trip - median direct predict); "
            f"target < {SERVICE_OVERHEAD_TARGET_MS:g} ms: "
            f"{'met' if svc < SERVICE_OVERHEAD_TARGET_MS else 'MISSED'}",
            f"frame-to-embedding overhead {node:+.1f} % of the direct set_image median; target "
            f"< {NODE_OVERHEAD_TARGET_PCT:g} %: "
            f"{'met' if node < NODE_OVERHEAD_TARGET_PCT else 'MISSED'}",
            f"frames sent again after a transport loss: {self.frames_resent} (best-effort "
            "delivery of large frames; not part of the figures above)",
        ]


def bench_node(
    model_dir: str | Path,
    precision: str,
    image: np.ndarray,
    *,
    calls: int = 100,
    frames: int = 20,
    warmup: int = 5,
    providers: tuple[str, ...] = ("cpu",),
    threads: int = 0,
    log_path: str | Path = "out/bench_node.log",
) -> NodeBenchResult:
    """Run the node benchmark (see the module docstring).

    Args:
        model_dir: exported ONNX folder, used by the node and the direct calls alike.
        precision: encoder precision to load.
        image: ``(H, W, 3)`` uint8 RGB frame, sent as ``rgb8``.
        calls: timed service calls (and as many direct calls).
        frames: frames sent, one at a time (each waits until encoded).
        warmup: untimed calls of each kind first.
        providers: ONNX Runtime providers for both sides.
        threads: intra-op threads for both sides (0: ONNX Runtime's choice).
        log_path: where the node's log goes.
    """
    direct = Predictor(
        OnnxRuntimeBackend.from_dir(
            model_dir, precision, providers=list(providers), intra_op_threads=threads
        )
    )
    node_args = [
        "-p", f"precision:={precision}",
        "-p", f"providers:={list(providers)}",
        "-p", f"intra_op_threads:={threads}",
        "-p", f"cache_size:={max(4, frames + 1)}",
    ]  # fmt: skip
    with running_node(model_dir, node_args, log_path) as (node, client, pub, segment):
        diagnostics: list[Any] = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
        direct_encode, resent = _time_frames(
            node, client, pub, diagnostics, direct, image, frames, warmup
        )
        # The node's own windows (last 100 frames) hold the timed frames and the warm-up ones;
        # the warm-up is small, and medians are robust to it.
        values = latest_values(client, diagnostics)
        # The request names the last frame sent, which is in the node's cache.
        service_ms, predict_ms = _time_calls(
            client, segment, direct, image, frames + warmup, calls, warmup
        )
        # The node's own view of the calls: time inside the service handler.
        handler = latest_values(client, diagnostics)

    def node_row(stage: str, values: dict[str, str], key: str, runs: int) -> BenchRow:
        """A row from the node's own p50/p95 of ``key`` in its diagnostics."""
        p50, p95 = float(values[f"{key}_p50"]), float(values[f"{key}_p95"])
        return BenchRow("node", precision, stage, p50, p95, runs)

    rows = [
        bench_row("direct", precision, "set_image", direct_encode),
        node_row("encoder (in node)", values, "encoder_ms", frames),
        node_row("frame->embedding", values, "frame_to_embedding_ms", frames),
        bench_row("direct", precision, "predict (1 pt)", predict_ms),
        node_row("segment handler", handler, "segment_ms", calls),
        bench_row("node", precision, "~/segment (1 pt)", service_ms),
    ]
    encode_med = percentile(direct_encode, 50)
    return NodeBenchResult(
        rows=rows,
        service_overhead_ms=percentile(service_ms, 50) - percentile(predict_ms, 50),
        node_overhead_pct=(float(values["frame_to_embedding_ms_p50"]) - encode_med)
        / encode_med
        * 100.0,
        frames_resent=resent,
    )


def _time_frames(
    node: NodeProcess,
    client: Client,
    pub: Any,
    diagnostics: list[Any],
    direct: Predictor,
    image: np.ndarray,
    frames: int,
    warmup: int,
) -> tuple[list[float], int]:
    """Send frames one at a time, each until the node has encoded it; time the direct
    ``set_image`` while the node is idle. Returns the direct times (ms, after the warm-up) and
    how many frames had to be sent again."""
    direct_encode: list[float] = []
    resent = 0
    for i in range(1, frames + warmup + 1):
        msg = image_msg(image, i * 1_000_000_000, encoding="rgb8")
        for _ in range(30):
            # Best-effort delivery of a large frame can be lost in transport (UDP
            # fragments over a small socket buffer); send it again after a second.
            pub.publish(msg)
            try:
                client.spin_until(lambda i=i: _encoded(diagnostics) >= i, 1.0, "encoded")
                break
            except AssertionError:
                resent += 1
        else:
            raise RuntimeError(f"frame {i} was never encoded; node log:\n{node.log()}")
        _, elapsed = time_ms(lambda: direct.set_image(image))
        if i > warmup:
            direct_encode.append(elapsed)
    return direct_encode, resent


def _time_calls(
    client: Client,
    segment: Any,
    direct: Predictor,
    image: np.ndarray,
    stamp_sec: int,
    calls: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Alternate ``~/segment`` calls (one point, one mask, on the frame of ``stamp_sec``) and
    the same ``predict`` here, so both see the same machine load. Returns both times (ms,
    after the warm-up)."""
    h, w = image.shape[:2]
    req = Segment.Request(points=[Point(x=0.45 * w, y=0.5 * h)], labels=[1])
    req.stamp.sec = stamp_sec
    point = np.array([[0.45 * w, 0.5 * h]])
    service_ms: list[float] = []
    predict_ms: list[float] = []
    for i in range(calls + warmup):
        resp, elapsed = time_ms(lambda: client.call(segment, req))
        if not resp.success:
            raise RuntimeError(f"~/segment failed: {resp.message}")
        _, direct_elapsed = time_ms(
            lambda: direct.predict(point, np.array([1]), multimask_output=False)
        )
        if i >= warmup:
            service_ms.append(elapsed)
            predict_ms.append(direct_elapsed)
    return service_ms, predict_ms


def latest_values(client: Client, diagnostics: list[Any]) -> dict[str, str]:
    """The node's diagnostic values from its next ``/diagnostics`` message."""
    diagnostics.clear()
    client.spin_until(lambda: _encoded(diagnostics) > 0, 5, "diagnostics")
    return _values(diagnostics[-1]) or {}


@contextmanager
def running_node(
    model_dir: str | Path, args: list[str], log_path: str | Path, segment_qos: Any = None
) -> Iterator[tuple[NodeProcess, Client, Any, Any]]:
    """The node process on a fresh domain (SegEvery off), and a client with an image
    publisher and a ``~/segment`` client, once the node's service and subscriber are up."""
    domain = free_domain_id()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "-r", f"__ns:={NS}",
        "-p", f"model_dir:={Path(model_dir).resolve()}",
        "-p", "segevery.rate:=0.0",
        "-p", "diagnostics_period:=0.1",
        *args,
    ]  # fmt: skip
    node = NodeProcess(args, domain, log_path)
    client = Client(domain, "segfast_bench_client")
    try:
        pub = client.node.create_publisher(Image, f"{NS}/image", 2)
        qos = {} if segment_qos is None else {"qos_profile": segment_qos}
        segment = client.node.create_client(Segment, f"{NS}/segfast/segment", **qos)
        client.spin_until(
            lambda: segment.service_is_ready() or not node.alive(), 120, "the node to start"
        )
        if not node.alive():
            raise RuntimeError(f"the node exited:\n{node.log()}")
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30, "the image subscriber")
        yield node, client, pub, segment
    finally:
        client.close()
        node.stop()


@dataclass(frozen=True)
class ConcurrencyRow:
    """``in_flight`` calls sent at once: what came back, and how long it took.

    Latencies run from sending all calls to each answer (masks and busy refusals alike).
    """

    in_flight: int
    answered: int
    with_masks: int
    busy: int
    unanswered: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    wall_s: float


def format_concurrency(rows: list[ConcurrencyRow]) -> str:
    """A fixed-width table of :func:`bench_concurrent`'s rows."""
    return format_columns(
        rows,
        [
            ("in flight", "in_flight", ">9d"),
            ("answered", "answered", ">8d"),
            ("masks", "with_masks", ">6d"),
            ("busy", "busy", ">5d"),
            ("lost", "unanswered", ">5d"),
            ("p50 ms", "p50_ms", ">9.1f"),
            ("p95 ms", "p95_ms", ">9.1f"),
            ("max ms", "max_ms", ">9.1f"),
            ("wall s", "wall_s", ">7.2f"),
        ],
    )


def bench_concurrent(
    model_dir: str | Path,
    precision: str,
    image: np.ndarray,
    *,
    in_flight: tuple[int, ...] = (1, 8, 32, 200),
    queue_depth: int = 32,
    workers: int = 2,
    multimask: bool = True,
    providers: tuple[str, ...] = ("cpu",),
    threads: int = 0,
    timeout_s: float = 120.0,
    log_path: str | Path = "out/bench_node.log",
) -> list[ConcurrencyRow]:
    """``~/segment`` under load: for each count, that many calls at once on one cached frame.

    The client keeps every response (KEEP_ALL, as the node's own request queue): rclpy's
    default client keeps only the last 10, and a burst of busy refusals would overflow it on
    the caller's side. A call still unanswered after ``timeout_s`` counts as lost.

    Args:
        model_dir: exported ONNX folder.
        precision: encoder precision to load.
        image: ``(H, W, 3)`` uint8 RGB frame, sent once as ``rgb8``.
        in_flight: call counts, one round each.
        queue_depth: the node's ``segment.queue_depth``.
        workers: the node's ``segment.workers``.
        multimask: one point prompt with 3 masks (else 1).
        providers: ONNX Runtime providers of the node.
        threads: the node's intra-op threads (0: ONNX Runtime's choice).
        timeout_s: how long a round waits for its last answer.
        log_path: where the node's log goes.
    """
    args = [
        "-p", f"precision:={precision}",
        "-p", f"providers:={list(providers)}",
        "-p", f"intra_op_threads:={threads}",
        "-p", f"segment.queue_depth:={queue_depth}",
        "-p", f"segment.workers:={workers}",
    ]  # fmt: skip
    with running_node(model_dir, args, log_path, SERVICE_QOS) as (node, client, pub, segment):
        h, w = image.shape[:2]
        req = Segment.Request(
            points=[Point(x=0.45 * w, y=0.5 * h)], labels=[1], multimask=multimask
        )
        req.stamp.sec = 1
        _send_until_encoded(node, client, pub, segment, req, image)
        return [_burst(client, segment, req, count, timeout_s) for count in in_flight]


def _send_until_encoded(
    node: NodeProcess, client: Client, pub: Any, segment: Any, req: Any, image: np.ndarray
) -> None:
    """Publish ``image`` (stamp 1 s) until ``req`` on it succeeds."""
    msg = image_msg(image, 1_000_000_000, encoding="rgb8")
    deadline = time.monotonic() + 60
    while not client.call(segment, req).success:  # until the frame is encoded
        if time.monotonic() > deadline:
            raise RuntimeError(f"the frame was never encoded; node log:\n{node.log()}")
        pub.publish(msg)  # best effort: a large frame can be lost, so send it again
        pause = time.monotonic() + 0.5
        while time.monotonic() < pause:
            client.executor.spin_once(timeout_sec=0.05)


def _burst(client: Client, segment: Any, req: Any, count: int, timeout_s: float) -> ConcurrencyRow:
    """``count`` calls of ``req`` at once: what came back within ``timeout_s``, and when."""
    start = time.perf_counter()
    futures = [segment.call_async(req) for _ in range(count)]
    answered_at: dict[int, float] = {}
    end = time.monotonic() + timeout_s
    while len(answered_at) < count and time.monotonic() < end:
        client.executor.spin_once(timeout_sec=0.01)
        now = time.perf_counter()
        for i, f in enumerate(futures):
            if i not in answered_at and f.done():
                answered_at[i] = now
    responses = [futures[i].result() for i in answered_at]
    latencies = [(t - start) * 1e3 for t in answered_at.values()] or [float("nan")]
    for f in futures:  # a lost call must not be answered into the next round
        if not f.done():
            segment.remove_pending_request(f)
    return ConcurrencyRow(
        in_flight=count,
        answered=len(responses),
        with_masks=sum(r.success for r in responses),
        busy=sum(not r.success and r.message.startswith("busy:") for r in responses),
        unanswered=count - len(responses),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        max_ms=max(latencies),
        wall_s=(max(answered_at.values(), default=start) - start),
    )


def _values(msg: Any) -> dict[str, str] | None:
    """The benchmarked node's diagnostic values in ``msg``, None if it has none."""
    for status in msg.status:
        if status.name.startswith(f"{NS}/segfast:"):
            return {kv.key: kv.value for kv in status.values}
    return None


def _encoded(diagnostics: list[Any]) -> int:
    """Frames the node has encoded, from its latest diagnostics."""
    for msg in reversed(diagnostics):
        values = _values(msg)
        if values is not None:
            return int(values["frames_encoded"])
    return 0
