"""What the node reports: its counters and recent timings, throttled log lines, ``/diagnostics``.

:class:`Health` is shared by the node's parts (frame intake, ``~/segment``, SegEvery,
``~/track``): each counts its events and failures there, and :func:`diagnostic_status` turns
it, with the node's state, into the one ``diagnostic_msgs/DiagnosticStatus`` the node
publishes.

The prompted targets (``~/track``, ``~/tracks``) add how many targets are followed and lost,
their step's time, and their calls' and steps' counters. The depth input adds its counters and
why frames are 2D only; missing or stale depth, and refused depth or CameraInfo messages, turn
the status WARN with the reason (:mod:`.depth`).

Two kinds of time. Rates and the staleness of the input are about the data, so they are in the
clock ``Health`` is given, the node's (sim time under ``use_sim_time``, as diagnostic_updater
does): frames played from a bag at 10 per bag second read 10 Hz whatever speed the bag plays
at, and a paused bag is not a dead camera. The latencies (encoder, frame to embedding,
``~/segment``, SegEvery) are durations of CPU work, measured in wall time by whoever reports
them. Throttling of log lines is about log spam and uses wall time too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from segfast_ros.pipeline.frames import EmbeddingCache, LatestWorker, RateWindow
from segfast_ros.ros.params import NodeConfig

#: Seconds between repeats of the same input warning (wall time: it is about log spam).
WARN_THROTTLE_S = 5.0
#: No frame for this long (in the node's clock) while active turns the diagnostics to WARN.
STALE_INPUT_S = 3.0
#: Distinct warning texts remembered for throttling before the memory is reset.
_MAX_WARNED = 256

#: The counters /diagnostics reports, all zero at start.
COUNTERS = (
    "rejected_frames",
    "encoder_errors",
    "segment_calls",
    "segment_errors",
    "segment_busy",
    "segevery_skipped",
    "segevery_errors",
    "track_calls",
    "track_errors",
    "track_busy",
    "tracks_published",
    "tracks_skipped",
    "tracks_errors",
    "camera_info_rejected",
)


def fmt_stamp(key: int) -> str:
    """A stamp key in nanoseconds as ``sec.nanosec``."""
    return f"{key // 1_000_000_000}.{key % 1_000_000_000:09d}"


class Health:
    """Windows of recent events, counters, the last error, and throttled logging.

    Args:
        logger: where :meth:`warn` writes.
        clock: the time the windows' events are recorded and rates computed in, in seconds
            (the node passes its ROS clock; ``time.monotonic`` unless told).

    Attributes:
        frames_in: frame arrivals.
        encodes: encoder runs (value: encoder ms).
        latency: frame arrival to embedding ready (value: ms).
        segany: ``~/segment`` calls (value: service ms).
        segevery_runs: SegEvery passes (value: ms).
        tracks_runs: prompted-target steps published on ``~/tracks`` (value: ms).
        now: the clock given, in seconds.
        counts: the :data:`COUNTERS`.
        last_error: the latest failure, as reported in ``/diagnostics``.
    """

    def __init__(self, logger: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self.now = clock
        self.frames_in = RateWindow(clock=clock)
        self.encodes = RateWindow(clock=clock)
        self.latency = RateWindow(clock=clock)
        self.segany = RateWindow(clock=clock)
        self.segevery_runs = RateWindow(clock=clock)
        self.tracks_runs = RateWindow(clock=clock)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.last_error = ""
        self._lock = threading.Lock()
        self._warned: dict[str, float] = {}

    def warn(
        self, text: str, details: str = "", *, error: bool = False, key: str | None = None
    ) -> None:
        """Log ``text`` at most once per WARN_THROTTLE_S for each distinct text.

        ROS's own throttling is per call site, so one bad input would hide a different one
        that follows it; here each distinct problem gets its own line. Wall time: a paused
        ``/clock`` must not silence a warning for good, nor a fast one repeat it.

        Args:
            key: throttle by this instead of the text, for a problem whose text changes with
                every occurrence (a stamp or a distance in it).
        """
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(key or text)
            if last is not None and now - last < WARN_THROTTLE_S:
                return
            if len(self._warned) > _MAX_WARNED:
                self._warned.clear()
            self._warned[key or text] = now
        log = self._logger
        (log.error if error else log.warning)(f"{text}\n{details}" if details else text)


@dataclass
class NodeState:
    """What the node is doing, for :func:`diagnostic_status`.

    Attributes:
        problem: why the node cannot run ("configure failed: ..."), or empty.
        active: the node is in the active state.
        model: the loaded model's name, or empty.
        strategy: the SegEvery strategy's name, or empty.
        fallback: why the asked-for SegEvery strategy was replaced, while it is.
        model_warnings: what loading the model warned about.
        encoder: the encoder worker, while active.
        cache: the embedding cache, while configured.
        tracks: the prompted targets' values (:meth:`TargetTracking.diagnostics
            <segfast_ros.ros.tracking.TargetTracking.diagnostics>`).
        parts: the other parts' values (depth, vision_msgs outputs, ``~/prompts``).
        warnings: what the parts say is degraded now (depth missing or stale, say): WARN.
    """

    problem: str = ""
    active: bool = False
    model: str = ""
    strategy: str = ""
    fallback: str = ""
    model_warnings: list[str] = field(default_factory=list)
    encoder: LatestWorker | None = None
    cache: EmbeddingCache | None = None
    tracks: dict[str, str] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _level(state: NodeState, health: Health, now: float) -> tuple[int, str]:
    """The status level and message: an outage first, then what runs other than asked."""
    last_frame, last_encode = health.frames_in.last_time(), health.encodes.last_time()
    level, message = DiagnosticStatus.OK, "ok"
    if state.problem:
        level, message = DiagnosticStatus.ERROR, state.problem
    elif not state.active:
        level, message = DiagnosticStatus.OK, "inactive"
    elif last_frame is None or now - last_frame > STALE_INPUT_S:
        level, message = DiagnosticStatus.WARN, "no input images"
    elif last_encode is None or now - last_encode > STALE_INPUT_S:
        level, message = DiagnosticStatus.WARN, "images arrive but none is encoded"
    standing = [f"SegEvery {state.fallback}"] if state.fallback else []
    standing += [f"model: {text}" for text in state.model_warnings]
    standing += state.warnings if state.active else []
    if standing and level != DiagnosticStatus.ERROR:
        # None is an outage, but the node runs other than the user asked (another
        # strategy, a model that drifts on this CPU, results without the 3D asked for):
        # WARN while it lasts, so a robot's monitor sees it and not only the log.
        level = DiagnosticStatus.WARN
        message = "; ".join(standing if message == "ok" else [message, *standing])
    return level, message


def _values(config: NodeConfig, state: NodeState, health: Health, now: float) -> dict[str, str]:
    encoder, cache = state.encoder, state.cache
    return {
        "backend": config.backend,
        "providers": ",".join(config.providers),
        "precision": config.precision,
        "model": state.model,
        "input_rate_hz": f"{health.frames_in.rate_hz(now):.2f}",
        "encoded_rate_hz": f"{health.encodes.rate_hz(now):.2f}",
        "encoder_ms_p50": f"{health.encodes.percentile(50):.2f}",
        "encoder_ms_p95": f"{health.encodes.percentile(95):.2f}",
        "frame_to_embedding_ms_p50": f"{health.latency.percentile(50):.2f}",
        "frame_to_embedding_ms_p95": f"{health.latency.percentile(95):.2f}",
        "frames_received": str(encoder.submitted if encoder else 0),
        "frames_encoded": str(encoder.handled if encoder else 0),
        "frames_dropped": str(encoder.dropped if encoder else 0),
        "cache_size": f"{len(cache) if cache else 0}/{config.cache_size}",
        "segment_ms_p50": f"{health.segany.percentile(50):.2f}",
        "segment_ms_p95": f"{health.segany.percentile(95):.2f}",
        "segevery_strategy": state.strategy,
        "segevery_fallback": state.fallback,
        "model_warnings": " | ".join(state.model_warnings),
        "segevery_ms_p50": f"{health.segevery_runs.percentile(50):.1f}",
        **state.tracks,
        **state.parts,
        **{k: str(v) for k, v in health.counts.items()},
        "last_error": health.last_error,
    }


def diagnostic_status(
    name: str, config: NodeConfig, state: NodeState, health: Health
) -> DiagnosticStatus:
    """The node's health as one ``diagnostic_msgs/DiagnosticStatus``.

    Args:
        name: the node's fully qualified name (the status is ``<name>: segfast``).
        config: the node's parameters.
        state: what the node is doing.
        health: its counters and timings.
    """
    now = health.now()
    level, message = _level(state, health, now)
    values = _values(config, state, health, now)
    return DiagnosticStatus(
        level=level,
        name=f"{name}: segfast",
        message=message,
        hardware_id=f"{config.backend}:{','.join(config.providers)}",
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )
