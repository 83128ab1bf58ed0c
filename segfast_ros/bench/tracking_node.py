"""The node's frame-to-tracks latency against its encoder: part 3 of ``segfast bench-tracking``.

A real node process (on an isolated domain, SegEvery off, the tracking thresholds of
:func:`~.tracking.lenient_settings` so that no target is lost) holds N targets added through
``~/track`` with box prompts on its first frame. Frames of a generated camera-motion sequence
(:func:`~.tracking.target_sequence`) are then published one at a time; each waits until the
node's ``~/tracks`` message with that frame's stamp arrives. The latency is publish to
receipt: DDS transport of the frame, conversion, the encoder, the batched target step, building
and publishing the InstanceArray.

Against it: the node's own encoder time and frame-to-embedding time (its ``/diagnostics``,
last 100 frames), the step time it reports in each ``~/tracks`` message (``segevery_ms``), and
``Predictor.set_image`` on the same frames in this process, run while the node is idle.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray

from segfast_ros.bench.latency import BenchRow, bench_row
from segfast_ros.bench.node import NS, latest_values, running_node
from segfast_ros.bench.timing import percentile, time_ms
from segfast_ros.bench.tracking import (
    LENIENT_FIELDS,
    lenient_settings,
    target_boxes,
    target_sequence,
)
from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, image_msg
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.srv import Track
from segfast_ros.tracking.states import TRACK_TRACKED


@dataclass(frozen=True)
class NodeTrackingResult:
    """The stage rows, and frame-to-tracks against the node's encoder median."""

    rows: list[BenchRow]
    targets: int
    frames: int
    frame_to_tracks_ms: float
    node_encoder_ms: float
    over_encoder_ms: float
    over_encoder_ratio: float
    tracked_per_frame: float
    frames_resent: int
    frames_sent: int
    node_frames_received: int

    def notes(self) -> list[str]:
        return [
            f"frame -> ~/tracks median {self.frame_to_tracks_ms:.1f} ms = node encoder median "
            f"{self.node_encoder_ms:.1f} ms + {self.over_encoder_ms:.1f} ms "
            f"({self.over_encoder_ratio:.2f}x the encoder); {self.targets} targets, "
            f"{self.tracked_per_frame:.1f} tracked per ~/tracks message on average",
            f"frames sent again after no ~/tracks within 1 s: {self.frames_resent}; the node "
            f"received {self.node_frames_received} of the {self.frames_sent} sent (best-effort "
            "camera QoS; the others were lost in transport). Each send has a stamp of its own: "
            "latency from the send the ~/tracks message answers",
        ]


def bench_node_tracking(
    model_dir: str | Path,
    precision: str,
    *,
    targets: int = 4,
    frames: int = 20,
    warmup: int = 3,
    hw: tuple[int, int] = (480, 640),
    threads: int = 0,
    providers: tuple[str, ...] = ("cpu",),
    seed: int = 0,
    log_path: str | Path = "out/bench_tracking_node.log",
) -> NodeTrackingResult:
    """Run part 3 (see the module docstring): ``frames`` timed frames after ``warmup`` ones."""
    sequence = target_sequence(warmup + frames + 1, hw, seed)
    backend = OnnxRuntimeBackend.from_dir(
        model_dir, precision, providers=list(providers), intra_op_threads=threads
    )
    direct = Predictor(backend)
    # As the library part: no target declared lost, so every frame decodes all of them.
    settings = lenient_settings(targets)
    node_args = [
        "-p", f"precision:={precision}",
        "-p", f"providers:={list(providers)}",
        "-p", f"intra_op_threads:={threads}",
        *(a for f in LENIENT_FIELDS for a in ("-p", f"tracking.{f}:={getattr(settings, f)}")),
    ]  # fmt: skip
    with running_node(model_dir, node_args, log_path) as (node, client, pub, _):
        tracks: dict[int, tuple[float, Any]] = {}

        def on_tracks(msg: Any) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            tracks.setdefault(stamp, (time.perf_counter(), msg))

        client.node.create_subscription(InstanceArray, f"{NS}/segfast/tracks", on_tracks, 10)
        diagnostics: list[Any] = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
        track = client.node.create_client(Track, f"{NS}/segfast/track")
        sent = _add_targets(node, client, pub, track, sequence[0], targets)
        latency, direct_ms, steps, tracked, resent = [], [], [], [], 0
        for i, scene in enumerate(sequence[1:], start=1):
            elapsed, sends, msg = _frame_to_tracks(node, client, pub, tracks, scene.image, i)
            resent, sent = resent + sends - 1, sent + sends
            _, encode = time_ms(lambda scene=scene: direct.set_image(scene.image))
            if i > warmup:
                latency.append(elapsed)
                direct_ms.append(encode)
                steps.append(float(msg.segevery_ms))
                tracked.append(sum(t.track_state == TRACK_TRACKED for t in msg.instances))
        values = latest_values(client, diagnostics)
    result = _result(precision, targets, latency, direct_ms, steps, tracked, values)
    received = int(values["frames_received"])
    return replace(result, frames_resent=resent, frames_sent=sent, node_frames_received=received)


def _stamp_ns(i: int) -> int:
    """Frame ``i``'s stamp: ``i`` seconds."""
    return i * 1_000_000_000


def _add_targets(
    node: NodeProcess, client: Client, pub: Any, track: Any, scene: Any, targets: int
) -> int:
    """Publish the first frame (stamp 0.5 s: a zero stamp in ~/track means "the latest")
    until ~/track adds ``targets`` box targets on it; returns how often it was sent."""
    boxes = target_boxes(scene.boxes, targets, scene.image.shape[:2])
    request = Track.Request(action=Track.Request.ADD, boxes=boxes.reshape(-1).tolist())
    msg = image_msg(scene.image, 500_000_000, encoding="rgb8")
    request.stamp.nanosec = 500_000_000
    deadline = time.monotonic() + 60
    for sends in itertools.count(1):
        pub.publish(msg)  # best effort: a large frame can be lost, so send it again
        pause = time.monotonic() + 0.5
        while time.monotonic() < pause:
            client.executor.spin_once(timeout_sec=0.05)
        response = client.call(track, request)
        if response.success:
            if len(response.ids) != targets:
                raise RuntimeError(f"~/track added {len(response.ids)} of {targets} targets")
            return sends
        if time.monotonic() > deadline or not node.alive():
            raise RuntimeError(
                f"~/track never added the targets ({response.message}); node log:\n{node.log()}"
            )
    raise AssertionError("unreachable")


def _frame_to_tracks(
    node: NodeProcess,
    client: Client,
    pub: Any,
    tracks: dict[int, tuple[float, Any]],
    image: np.ndarray,
    i: int,
) -> tuple[float, int, Any]:
    """Publish frame ``i`` until a ~/tracks message for it arrives: publish-to-receipt ms, the
    number of sends and the message. A lost frame is sent again after a second with the next
    nanosecond as its stamp, so the message's stamp says which send it answers and the
    latency runs from that send."""
    sent_at: dict[int, float] = {}
    for sends in range(1, 31):
        stamp = _stamp_ns(i) + sends - 1
        msg = image_msg(image, stamp, encoding="rgb8")
        sent_at[stamp] = time.perf_counter()
        pub.publish(msg)
        try:
            client.spin_until(lambda: not sent_at.keys().isdisjoint(tracks), 1.0, "~/tracks")
        except AssertionError:
            continue
        answered = min(sent_at.keys() & tracks.keys())
        received, tracks_msg = tracks[answered]
        return (received - sent_at[answered]) * 1e3, sends, tracks_msg
    raise RuntimeError(f"no ~/tracks for frame {i}; node log:\n{node.log()}")


def _result(
    precision: str,
    targets: int,
    latency: list[float],
    direct_ms: list[float],
    steps: list[float],
    tracked: list[int],
    values: dict[str, str],
) -> NodeTrackingResult:
    frames = len(latency)

    def node_row(stage: str, key: str) -> BenchRow:
        """A row from the node's own p50/p95 of ``key`` in its diagnostics."""
        p50, p95 = float(values[f"{key}_p50"]), float(values[f"{key}_p95"])
        return BenchRow("node", precision, stage, p50, p95, frames)

    rows = [
        bench_row("direct", precision, "set_image", direct_ms),
        node_row("encoder (in node)", "encoder_ms"),
        node_row("frame->embedding", "frame_to_embedding_ms"),
        bench_row("node", precision, "targets step", steps),
        bench_row("node", precision, "frame->~/tracks", latency),
    ]
    to_tracks = percentile(latency, 50)
    encoder = float(values["encoder_ms_p50"])
    return NodeTrackingResult(
        rows=rows,
        targets=targets,
        frames=frames,
        frame_to_tracks_ms=to_tracks,
        node_encoder_ms=encoder,
        over_encoder_ms=to_tracks - encoder,
        over_encoder_ratio=to_tracks / encoder,
        tracked_per_frame=float(np.mean(tracked)) if tracked else 0.0,
        frames_resent=0,
        frames_sent=0,
        node_frames_received=0,
    )
