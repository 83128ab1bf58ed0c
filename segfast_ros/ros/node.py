"""The ``segfast`` lifecycle node: encode each camera frame once, answer prompts, publish SegEvery.

Topics and services (relative names, remappable; ``~`` is the node's namespace):

* ``image`` (``sensor_msgs/Image``, sensor-data QoS) and, with ``use_compressed``,
  ``<image>/compressed`` (follows the remapped image topic, as image_transport does): the
  camera. The encoder runs on a thread of its own, latest frame wins.
* ``~/segment`` (``segfast_ros/srv/Segment``): SegAny from the cached embedding of a frame.
  Calls run on ``segment.workers`` threads of their own; at most ``segment.queue_depth`` are
  held at once (running or waiting), and one more is answered at once with a "busy" refusal.
* ``~/instances`` (``segfast_ros/msg/InstanceArray``), ``~/instances/label`` (``mono16``) and
  ``~/overlay`` (``rgb8``, only while subscribed): SegEvery at ``segevery.rate``.
* ``/diagnostics``: input rate, encoder latency, drops, cache, backend.

Lifecycle: ``configure`` loads the model, ``activate`` starts subscriptions, the service and
timers, ``deactivate`` and ``cleanup`` release them. ``main()`` configures and activates at once
unless the ``autostart`` parameter is false.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image

from segfast_ros.msg import InstanceArray, SegmentResult
from segfast_ros.pipeline.frames import (
    EmbeddingCache,
    EncodedFrame,
    Frame,
    LatestWorker,
    RateWindow,
    encode_frame,
)
from segfast_ros.ros.conversions import (
    ACCEPTED_ENCODINGS,
    ImageError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    instance_to_msg,
    instances_to_label_image,
    labels_to_mono16_msg,
    overlay,
    rgb_to_image_msg,
    stamp_to_ns,
)
from segfast_ros.ros.params import (
    SEGEVERY,
    NodeConfig,
    ParamSpec,
    all_params,
    backend_options,
    ros_range,
    strategy_kwargs,
)
from segfast_ros.ros.segany import segment
from segfast_ros.runtime import Backend, Predictor, load_backend
from segfast_ros.runtime.paths import resolve_model_path
from segfast_ros.segevery.base import SegEvery
from segfast_ros.segevery.registry import build_segevery
from segfast_ros.srv import Segment

#: Camera input: newest frame only, never block the camera driver (sensor-data QoS, depth 1).
IMAGE_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
)
#: Outputs: reliable (matches reliable and best-effort subscribers, rviz included), depth 2.
OUTPUT_QOS = QoSProfile(
    depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
)
#: Seconds between repeats of the same input warning.
WARN_THROTTLE_S = 5.0
#: No frame for this long while active turns the diagnostics to WARN.
STALE_INPUT_S = 3.0
#: How long ~/segment waits for a requested frame that is still being encoded.
SEGMENT_WAIT_S = 2.0
#: How long deactivate waits for admitted ~/segment calls to be answered before it removes the
#: service (a response sent on a destroyed service would be lost, and rclpy raises on it).
SEGMENT_DRAIN_S = 10.0
#: The answer to a call that the node took while its service was being deactivated.
NOT_ACTIVE = "not active: ~/segment is being deactivated; call again once the node is active"


#: ``~/segment``'s DDS request queue: reliable, and every request is kept until the node takes
#: it. rclpy's default keeps the last 10 and DDS drops older requests silently when a burst
#: outgrows that before the executor takes them, so those callers never got an answer. The
#: node bounds what it holds itself (``segment.queue_depth``) and refuses the rest as busy.
SERVICE_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE
)


class SegfastNode(LifecycleNode):
    """The segfast lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = "segfast", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._specs: dict[str, ParamSpec] = {s.name: s for s in all_params()}
        self._values = self._declare_parameters()
        self._config = NodeConfig.from_values(self._values)
        self.autostart = bool(
            self.declare_parameter(
                "autostart",
                True,
                ParameterDescriptor(
                    description="main() configures and activates the node at start.",
                    read_only=True,
                ),
            ).value
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._lock = threading.Lock()
        self._frame_ready = threading.Condition(self._lock)
        self._inflight: dict[int, int] = {}
        self._warned: dict[str, float] = {}
        self._backend: Backend | None = None
        self._cache: EmbeddingCache | None = None
        self._strategy: SegEvery | None = None
        self._encode_predictor: Predictor | None = None
        self._encoder: LatestWorker[Frame] | None = None
        self._segevery_worker: LatestWorker[EncodedFrame] | None = None
        # (stamp key, ready time) of the frame SegEvery last took: not the frame itself, which
        # would keep its pixels alive after the cache let them go.
        self._last_segevery: tuple[int, float] | None = None
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._service: Any = None
        self._segment_pool: ThreadPoolExecutor | None = None
        self._segment_held = 0  # ~/segment calls admitted and not yet answered
        self._segevery_fallback = ""  # why object_aware was replaced by grid, while it is
        self._model_warnings: list[str] = []  # what loading the model warned about
        self._segevery_timer: Any = None

        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()

        # Statistics for /diagnostics (windows of recent events).
        self._frames_in = RateWindow()
        self._encodes = RateWindow()  # value: encoder ms
        self._latency = RateWindow()  # value: frame arrival to embedding ready, ms
        self._segany = RateWindow()  # value: service ms
        self._segevery_runs = RateWindow()  # value: SegEvery ms
        self._counts = {
            "rejected_frames": 0,
            "encoder_errors": 0,
            "segment_calls": 0,
            "segment_errors": 0,
            "segment_busy": 0,
            "segevery_skipped": 0,
            "segevery_errors": 0,
        }
        self._last_error = ""
        self._configure_error = ""
        self._active = False

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(
            self._config.diagnostics_period, self._publish_diagnostics, self._timer_group
        )

    # ------------------------------------------------------------------ parameters

    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for spec in self._specs.values():
            descriptor = ParameterDescriptor(
                description=spec.description, read_only=spec.read_only
            )
            if spec.choices:
                descriptor.additional_constraints = f"one of {list(spec.choices)}"
            elif spec.range is not None:
                descriptor.additional_constraints = spec.range.describe()
            bounds = ros_range(spec)
            if bounds is not None and bounds[0] == "integer":
                descriptor.integer_range = [
                    IntegerRange(from_value=bounds[1], to_value=bounds[2], step=1)
                ]
            elif bounds is not None:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=bounds[1], to_value=bounds[2], step=0.0)
                ]
            value = self.declare_parameter(spec.name, spec.default, descriptor).value
            # Ranges ROS cannot express (open ends, choices) are checked here too.
            values[spec.name] = spec.check(value)
        return values

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        values = dict(self._values)
        changed = []
        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:
                continue
            try:
                values[p.name] = spec.check(p.value)
            except ValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
            changed.append(p.name)
        if not changed:
            return SetParametersResult(successful=True)
        strategy_changed = any(
            n.startswith(f"{SEGEVERY}.") and n != f"{SEGEVERY}.rate" for n in changed
        )
        if strategy_changed and self._backend is not None:
            # Build first: a value the strategy refuses (or a detector that does not load)
            # leaves the running one untouched and is reported to the caller.
            try:
                self._strategy = self._build_strategy(values, fallback=False)
            except (ValueError, FileNotFoundError) as err:
                return SetParametersResult(successful=False, reason=str(err))
        config = NodeConfig.from_values(values)
        if self._cache is not None:
            self._cache.resize(config.cache_size)
        old_rate = self._config.segevery_rate
        self._values, self._config = values, config
        if self._active and config.segevery_rate != old_rate:
            self._start_segevery_timer()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._config
        if not cfg.model_dir:
            return self._configure_failed(
                "parameter model_dir is empty: set it to a folder of exported ONNX files "
                "(encoder.<precision>.onnx and decoder.*.onnx, written by `segfast export`)"
            )
        model_dir = resolve_model_path(cfg.model_dir)
        try:
            options = backend_options(cfg, model_dir)
            if cfg.backend == "tensorrt":
                options["log"] = self.get_logger().info  # cache hits, rebuilds and why
            # A model that loads but is wrong for this machine (an int8 file whose kernels
            # saturate on this CPU) warns; on a robot that must reach the ROS log and
            # /diagnostics, not only a terminal nobody reads.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._backend = load_backend(cfg.backend, model_dir, **options)
        except Exception as err:  # any load failure is reported; the node stays up
            return self._configure_failed(f"cannot load the model from {model_dir}: {err}")
        self._model_warnings = [str(w.message) for w in caught]
        for text in self._model_warnings:
            self.get_logger().warning(text)
        try:
            self._strategy = self._build_strategy(self._values, fallback=True)
        except ValueError as err:  # e.g. hierarchical with fewer than 4 points per side
            return self._configure_failed(f"SegEvery settings refused: {err}")
        self._encode_predictor = Predictor(self._backend, interpolation=cfg.resize_interpolation)
        self._cache = EmbeddingCache(cfg.cache_size)
        self._pubs = {
            "instances": self.create_publisher(InstanceArray, "~/instances", OUTPUT_QOS),
            "label": self.create_publisher(Image, "~/instances/label", OUTPUT_QOS),
            "overlay": self.create_publisher(Image, "~/overlay", OUTPUT_QOS),
        }
        self._configure_error = ""
        info = self._backend.info
        self.get_logger().info(
            f"configured: model {info.name!r} ({info.image_size}px input) from {model_dir}, "
            f"{cfg.precision} encoder on "
            f"{cfg.backend if cfg.backend != 'onnxruntime' else list(cfg.providers)}; SegEvery "
            f"{getattr(self._strategy, 'name', '?')} at {cfg.segevery_rate:g} Hz"
        )
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self._configure_error = message
        self._last_error = message
        self.get_logger().error(f"configure failed: {message}")
        self._release_model()
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._encoder = LatestWorker(self._encode, "segfast-encoder", self._on_encode_error)
        self._segevery_worker = LatestWorker(
            self._run_segevery, "segfast-segevery", self._on_segevery_error
        )
        self._subs = [
            self.create_subscription(
                Image, "image", self._on_image, IMAGE_QOS, callback_group=self._input_group
            )
        ]
        if self._config.use_compressed:
            self._subs.append(
                # As image_transport names it: the remapped image topic + "/compressed".
                self.create_subscription(
                    CompressedImage,
                    self.resolve_topic_name("image") + "/compressed",
                    self._on_compressed,
                    IMAGE_QOS,
                    callback_group=self._input_group,
                )
            )
        self._segment_pool = ThreadPoolExecutor(
            self._config.segment_workers, thread_name_prefix="segfast-segment"
        )
        self._service = self.create_service(
            Segment,
            "~/segment",
            self._on_segment,
            qos_profile=SERVICE_QOS,
            callback_group=self._service_group,
        )
        self._active = True
        self._start_segevery_timer()
        self.get_logger().info(
            f"active: images on {self._subs[0].topic_name}, service "
            f"{self.resolve_service_name('~/segment')}, instances on "
            f"{self._pubs['instances'].topic_name}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io(drain=True)
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        # No executor spins any more when main() gets here, so admitted calls cannot be
        # answered: they are dropped with the service rather than waited for.
        self._stop_io(drain=False)
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def _stop_io(self, *, drain: bool) -> None:
        """Undo activate: no more input, service or timers; running work finishes first.

        Args:
            drain: answer the ~/segment calls already admitted before the service goes (calls
                still waiting for a worker get a refusal); needs the executor to keep
                spinning, as it does during a lifecycle transition.
        """
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        pool, self._segment_pool = self._segment_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if drain:
            deadline = time.monotonic() + SEGMENT_DRAIN_S
            while self._segment_held > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if self._segment_held > 0:
                self.get_logger().warning(
                    f"deactivating with {self._segment_held} ~/segment calls unanswered after "
                    f"{SEGMENT_DRAIN_S:g} s"
                )
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        if self._segevery_timer is not None:
            self.destroy_timer(self._segevery_timer)
            self._segevery_timer = None
        for worker in (self._encoder, self._segevery_worker):
            if worker is not None:
                worker.stop()
        self._encoder = self._segevery_worker = None
        with self._frame_ready:
            self._inflight.clear()
            self._frame_ready.notify_all()

    def _release_model(self) -> None:
        """Undo configure: publishers, model, cache."""
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self._cache is not None:
            self._cache.clear()
        self._cache = None
        self._backend = None
        self._encode_predictor = None
        self._strategy = None
        self._segevery_fallback = ""
        self._model_warnings = []
        self._last_segevery = None

    # ------------------------------------------------------------------ input

    def _warn(self, text: str, details: str = "", *, error: bool = False) -> None:
        """Log ``text`` at most once per WARN_THROTTLE_S for each distinct text.

        ROS's own throttling is per call site, so one bad input would hide a different one
        that follows it; here each distinct problem gets its own line.
        """
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(text)
            if last is not None and now - last < WARN_THROTTLE_S:
                return
            if len(self._warned) > 256:
                self._warned.clear()
            self._warned[text] = now
        log = self.get_logger()
        (log.error if error else log.warning)(f"{text}\n{details}" if details else text)

    def _on_image(self, msg: Image) -> None:
        self._take_frame(msg, image_msg_to_rgb, "image")

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._take_frame(msg, compressed_msg_to_rgb, "<image>/compressed")

    def _take_frame(self, msg: Any, convert: Any, topic: str) -> None:
        received = time.monotonic()  # frame-to-embedding latency includes the conversion
        self._frames_in.add(now=received)
        encoder = self._encoder
        if encoder is None:
            return
        try:
            rgb = convert(msg)
        except ImageError as err:
            self._counts["rejected_frames"] += 1
            self._last_error = f"frame rejected on {topic}: {err}"
            self._warn(f"{self._last_error} (accepted encodings: {', '.join(ACCEPTED_ENCODINGS)})")
            return
        frame = Frame(stamp_to_ns(msg.header.stamp), rgb, msg.header, received)
        with self._frame_ready:
            self._inflight[frame.key] = self._inflight.get(frame.key, 0) + 1
        replaced = encoder.submit(frame)
        if replaced is not None:
            self._frame_done(replaced.key)

    def _frame_done(self, key: int) -> None:
        with self._frame_ready:
            left = self._inflight.get(key, 0) - 1
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)
            self._frame_ready.notify_all()

    def _encode(self, frame: Frame) -> None:
        predictor, cache = self._encode_predictor, self._cache
        try:
            if predictor is None or cache is None:
                return
            encoded = encode_frame(predictor, frame)
            cache.put(encoded)
            self._encodes.add(encoded.encode_ms, encoded.ready)
            self._latency.add((encoded.ready - frame.received) * 1e3, encoded.ready)
        finally:
            self._frame_done(frame.key)

    def _on_encode_error(self, frame: Frame, err: BaseException) -> None:
        self._counts["encoder_errors"] += 1
        kind = "frame rejected" if isinstance(err, ValueError) else "encoder failed"
        self._last_error = f"{kind} (stamp {_fmt_stamp(frame.key)}): {err}"
        if isinstance(err, ValueError):
            self._warn(self._last_error)
        else:
            self._warn(self._last_error, "".join(traceback.format_exception(err)), error=True)

    # ------------------------------------------------------------------ SegAny

    async def _on_segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        """``~/segment``: admit the call and await its answer from a segment worker.

        A coroutine, so the executor thread is free while the call waits or runs, and goes on
        taking requests off the DDS queue: each one is either admitted or refused as busy at
        once, never left to overflow that queue.
        """
        start = time.perf_counter()
        self._counts["segment_calls"] += 1
        depth = self._config.segment_queue_depth
        with self._lock:
            pool, held = self._segment_pool, self._segment_held
            admitted = pool is not None and held < depth
            if admitted:
                self._segment_held += 1
        if pool is None:
            return _refused(resp, NOT_ACTIVE)
        if not admitted:
            self._counts["segment_busy"] += 1
            self._warn(f"~/segment refused: busy (segment.queue_depth={depth})")
            return _refused(
                resp,
                f"busy: {held} ~/segment calls are running or waiting, the most this node holds "
                f"(segment.queue_depth={depth}); call again later",
            )
        try:
            answered: Future = Future()
            executor = self.executor
            try:
                work = pool.submit(self._answer_segment, req, resp, start)
            except RuntimeError:  # the pool shut down since this call was admitted
                return _refused(resp, NOT_ACTIVE)
            work.add_done_callback(lambda _: _resolve(answered, executor))
            await answered
            # Cancelled: deactivation came before a worker took this call.
            return _refused(resp, NOT_ACTIVE) if work.cancelled() else work.result()
        finally:
            with self._lock:
                self._segment_held -= 1

    def _answer_segment(
        self, req: Segment.Request, resp: Segment.Response, start: float
    ) -> Segment.Response:
        """The work of one ``~/segment`` call, on a segment worker thread."""
        try:
            encoded = self._frame_for(stamp_to_ns(req.stamp))
            resp.header = encoded.frame.header
            backend = self._backend
            if backend is None:
                raise LookupError("the node is not configured (no model loaded)")
            resp.results = segment(
                encoded.predictor(backend),
                req,
                encoded.frame.header,
                SegmentResult,
                max_sets=self._config.max_prompt_sets,
                max_image_bytes=self._config.segment_max_image_bytes,
            )
            resp.success = True
        except (ValueError, LookupError) as err:
            resp.success, resp.message = False, str(err)
        except Exception as err:  # reported to the caller; the node keeps serving
            resp.success = False
            resp.message = f"internal error ({type(err).__name__}): {err}"
            self.get_logger().error(f"~/segment failed:\n{traceback.format_exc()}")
        if not resp.success:
            self._counts["segment_errors"] += 1
            self._warn(f"~/segment refused: {resp.message}")
        self._segany.add((time.perf_counter() - start) * 1e3)
        return resp

    def _frame_for(self, key: int) -> EncodedFrame:
        """The cached frame for stamp ``key`` (0: latest), waiting for one being encoded.

        Raises:
            LookupError: no frame yet, or the stamp is unknown or evicted (says which are
                cached).
        """
        cache = self._cache
        if cache is None:
            raise LookupError("the node is not configured (no model loaded)")
        deadline = time.monotonic() + SEGMENT_WAIT_S
        with self._frame_ready:
            while True:
                found = cache.latest() if key == 0 else cache.get(key)
                if found is not None:
                    return found
                waiting = key in self._inflight if key else bool(self._inflight)
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                self._frame_ready.wait(left)
        topic = self._subs[0].topic_name if self._subs else "image"
        if key == 0:
            raise LookupError(
                f"no frame yet: no image has been received and encoded on {topic}; publish "
                f"a sensor_msgs/Image ({', '.join(ACCEPTED_ENCODINGS)}) there first"
            )
        cached = ", ".join(_fmt_stamp(k) for k in cache.list_keys()) or "none"
        raise LookupError(
            f"no cached frame with stamp {_fmt_stamp(key)}: it was never received, is still "
            f"being encoded, or was evicted; cached stamps: {cached} (cache_size="
            f"{cache.capacity}); use a zero stamp for the latest frame"
        )

    # ------------------------------------------------------------------ SegEvery

    def _build_strategy(self, values: dict[str, Any], *, fallback: bool) -> SegEvery:
        """The configured SegEvery strategy.

        With ``fallback``, an object-aware strategy whose detector is unset or does not load
        becomes the grid strategy, with a warning that ``/diagnostics`` repeats (WARN) until a
        strategy is built without falling back; without, that is a ValueError.
        """
        name = values[f"{SEGEVERY}.strategy"]
        kwargs = strategy_kwargs(values, name)
        if name != "object_aware":
            strategy = build_segevery(name, **kwargs)
            self._segevery_fallback = ""
            return strategy
        problem = ""
        if not kwargs["detector"]:
            problem = (
                f"parameter {SEGEVERY}.object_aware.detector is empty (expected a YOLOv8-layout "
                "detector ONNX file)"
            )
        else:
            kwargs["detector"] = str(resolve_model_path(kwargs["detector"]))
            try:
                strategy = build_segevery(name, **kwargs)
                self._segevery_fallback = ""
                return strategy
            except (FileNotFoundError, ValueError) as err:
                problem = str(err)
        if not fallback:
            raise ValueError(f"object_aware SegEvery cannot start: {problem}")
        strategy = build_segevery("grid", **strategy_kwargs(values, "grid"))
        self._segevery_fallback = f"object_aware unavailable, using grid: {problem}"
        self._last_error = self._segevery_fallback
        self.get_logger().warning(f"object_aware SegEvery unavailable: {problem}; using grid")
        return strategy

    def _start_segevery_timer(self) -> None:
        if self._segevery_timer is not None:
            self.destroy_timer(self._segevery_timer)
            self._segevery_timer = None
        rate = self._config.segevery_rate
        if rate > 0:
            self._segevery_timer = self.create_timer(
                1.0 / rate, self._on_segevery_timer, self._timer_group
            )

    def _on_segevery_timer(self) -> None:
        cache, worker = self._cache, self._segevery_worker
        if cache is None or worker is None:
            return
        latest = cache.latest()
        if latest is None or (latest.key, latest.ready) == self._last_segevery:
            return  # nothing new to segment
        if worker.busy:
            self._counts["segevery_skipped"] += 1
            return
        self._last_segevery = (latest.key, latest.ready)
        worker.submit(latest)

    def _run_segevery(self, encoded: EncodedFrame) -> None:
        backend, strategy, pubs = self._backend, self._strategy, dict(self._pubs)
        if backend is None or strategy is None or not pubs:
            return
        start = time.perf_counter()
        image = encoded.frame.image  # the latest frame's, which the cache keeps
        result = strategy(encoded.predictor(backend), image)
        elapsed = (time.perf_counter() - start) * 1e3
        header = encoded.frame.header
        pubs["instances"].publish(
            InstanceArray(
                header=header,
                strategy=result.strategy,
                instances=[instance_to_msg(inst, i) for i, inst in enumerate(result.instances)],
                decoder_prompts=int(result.decoder_prompts),
                segevery_ms=float(elapsed),
            )
        )
        # One full-frame array or message at a time: at 8K the label image is 66 MB, the
        # overlay 100 MB, and each message holds a copy of its array.
        labels = instances_to_label_image(result.instances, encoded.hw)
        del result
        pubs["label"].publish(labels_to_mono16_msg(labels, header))
        if image is not None and pubs["overlay"].get_subscription_count() > 0:
            drawn = overlay(image, labels)
            del labels
            pubs["overlay"].publish(rgb_to_image_msg(drawn, header))
        self._segevery_runs.add(elapsed)

    def _on_segevery_error(self, encoded: EncodedFrame, err: BaseException) -> None:
        if not self.context.ok():
            # A signal shut the context down while this pass ran, so its publish failed: that
            # is the shutdown under way, not an error to report.
            return
        self._counts["segevery_errors"] += 1
        self._last_error = f"SegEvery failed (stamp {_fmt_stamp(encoded.key)}): {err}"
        self._warn(self._last_error, "".join(traceback.format_exception(err)), error=True)

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self._diag_pub.publish(msg)

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health as one ``diagnostic_msgs/DiagnosticStatus``."""
        cfg, now = self._config, time.monotonic()
        encoder, cache = self._encoder, self._cache
        last_frame = self._frames_in.last_time()
        level, message = DiagnosticStatus.OK, "ok"
        if self._configure_error:
            level, message = DiagnosticStatus.ERROR, f"configure failed: {self._configure_error}"
        elif not self._active:
            level, message = DiagnosticStatus.OK, "inactive"
        elif last_frame is None or now - last_frame > STALE_INPUT_S:
            level, message = DiagnosticStatus.WARN, "no input images"
        elif self._encodes.last_time() is None or now - self._encodes.last_time() > STALE_INPUT_S:
            level, message = DiagnosticStatus.WARN, "images arrive but none is encoded"
        standing = [f"SegEvery {self._segevery_fallback}"] if self._segevery_fallback else []
        standing += [f"model: {text}" for text in self._model_warnings]
        if standing and level != DiagnosticStatus.ERROR:
            # Neither is an outage, but the node runs other than the user asked (another
            # strategy, a model that drifts on this CPU): WARN while it lasts, so a robot's
            # monitor sees it and not only the start-up log.
            level = DiagnosticStatus.WARN
            message = "; ".join(standing if message == "ok" else [message, *standing])
        info = self._backend.info if self._backend is not None else None
        values = {
            "backend": cfg.backend,
            "providers": ",".join(cfg.providers),
            "precision": cfg.precision,
            "model": info.name if info is not None else "",
            "input_rate_hz": f"{self._frames_in.rate_hz(now):.2f}",
            "encoded_rate_hz": f"{self._encodes.rate_hz(now):.2f}",
            "encoder_ms_p50": f"{self._encodes.percentile(50):.2f}",
            "encoder_ms_p95": f"{self._encodes.percentile(95):.2f}",
            "frame_to_embedding_ms_p50": f"{self._latency.percentile(50):.2f}",
            "frame_to_embedding_ms_p95": f"{self._latency.percentile(95):.2f}",
            "frames_received": str(encoder.submitted if encoder else 0),
            "frames_encoded": str(encoder.handled if encoder else 0),
            "frames_dropped": str(encoder.dropped if encoder else 0),
            "cache_size": f"{len(cache) if cache else 0}/{cfg.cache_size}",
            "segment_ms_p50": f"{self._segany.percentile(50):.2f}",
            "segment_ms_p95": f"{self._segany.percentile(95):.2f}",
            "segevery_strategy": getattr(self._strategy, "name", ""),
            "segevery_fallback": self._segevery_fallback,
            "model_warnings": " | ".join(self._model_warnings),
            "segevery_ms_p50": f"{self._segevery_runs.percentile(50):.1f}",
            **{k: str(v) for k, v in self._counts.items()},
            "last_error": self._last_error,
        }
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: segfast",
            message=message,
            hardware_id=f"{cfg.backend}:{','.join(cfg.providers)}",
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )


def _fmt_stamp(key: int) -> str:
    """A stamp key in nanoseconds as ``sec.nanosec``."""
    return f"{key // 1_000_000_000}.{key % 1_000_000_000:09d}"


def _refused(resp: Segment.Response, message: str) -> Segment.Response:
    """``resp`` as a refusal that says why."""
    resp.success, resp.message = False, message
    return resp


def _resolve(future: Future, executor: Any) -> None:
    """Complete ``future`` from a worker thread and wake ``executor`` to resume its awaiter.

    rclpy's executor resumes a waiting coroutine only when it wakes up; without the wake-up the
    answer would wait for the next unrelated event (a timer, a frame).
    """
    future.set_result(None)
    if executor is not None:
        with contextlib.suppress(Exception):  # the executor is gone (shutdown): nothing to wake
            executor.wake()


class ShutdownSignals:
    """SIGINT and SIGTERM end the node once, quietly, however many arrive and whenever.

    A terminal's Ctrl-C under ``ros2 launch`` reaches the node twice (from the process group
    and from launch), the second often while the node is cleaning up. Python's default SIGINT
    handler raises ``KeyboardInterrupt`` wherever the main thread is, which tore the clean-up
    apart (a traceback, exit code -2, threads left running). Installed before ``rclpy.init``,
    this handler is the one rclpy's own signal handler chains to: rclpy still shuts the
    context down and wakes the executor, and here a signal is only recorded, never raised.
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


def main(args: list[str] | None = None) -> int:
    """Run the node: ``segfast_node --ros-args -p model_dir:=... -r image:=/camera/image``.

    Returns 0 after a SIGINT or SIGTERM (any number of them), 2 when a parameter is refused.
    """
    signals = ShutdownSignals()
    rclpy.init(args=args)
    try:
        node = SegfastNode()
    except Exception as err:  # a bad parameter ends the start with a message, no traceback
        print(f"segfast: cannot start: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception:
        # A signal shuts the context down from another thread, and rclpy's executor can meet
        # it half-way through a wait (RCLError "context is not valid"): that is the shutdown
        # that was asked for, not a failure.
        if rclpy.ok():
            raise
    finally:
        node.on_shutdown(None)  # type: ignore[arg-type]
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        signals.ignore_from_now()
    return 0


if __name__ == "__main__":
    sys.exit(main())
