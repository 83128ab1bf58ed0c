"""The ``segfast`` lifecycle node: encode each camera frame once, answer prompts, publish SegEvery.

Topics and services (relative names, remappable; ``~`` is the node's namespace):

* ``image`` (``sensor_msgs/Image``, sensor-data QoS) and, with ``use_compressed``,
  ``<image>/compressed`` (follows the remapped image topic, as image_transport does): the
  camera. The encoder runs on a thread of its own, latest frame wins (:mod:`.intake`).
* ``~/segment`` (``segfast_ros/srv/Segment``): SegAny from the cached embedding of a frame
  (:mod:`.segment_service`).
* ``~/track`` (``segfast_ros/srv/Track``), ``~/tracks`` (``InstanceArray``) and
  ``~/tracks/label`` (``mono16``): prompted targets, decoded on every encoded frame in one
  batched decoder call (:mod:`.tracking`). ``~/segment`` and ``~/track`` share one admission
  and worker pool (:mod:`.calls`).
* ``~/instances`` (``segfast_ros/msg/InstanceArray``, with track IDs), ``~/instances/label``
  (``mono16``) and ``~/overlay`` (``rgb8``, only while subscribed): SegEvery at
  ``segevery.rate`` (:mod:`.segevery_publisher`). Lifecycle publishers: they publish only
  while active.
* with ``depth.enabled``: ``depth``, ``camera_info`` and ``depth/camera_info`` in; every
  instance above (and ``~/segment``'s with ``return_3d``) gets its ``position_3d``
  (:mod:`.depth`; never waits for depth: 2D only without it).
* ``~/detections``, ``~/detections_3d``, ``~/tracks/detections_3d`` (vision_msgs, when
  installed) and ``~/points`` (:mod:`.vision`); ``~/prompts`` in, ``~/prompted`` and
  ``~/prompted/detections`` out (:mod:`.prompts`).
* ``/diagnostics``: input rate, encoder latency, drops, cache, backend (:mod:`.diagnostics`).

Every topic takes the standard ``qos_overrides.<topic>.*`` parameters (:mod:`.qos`).

Time: with ``use_sim_time`` (ROS's standard parameter) and a ``/clock`` publisher such as
``ros2 bag play --clock``, what is about the data follows sim time: frames are cached and
answered by header stamp, the SegEvery and diagnostics timers tick on the node's clock, and the
rates in ``/diagnostics`` are per second of it (:mod:`.diagnostics`). Waits, timeouts,
latencies and log throttling are wall time: they are about computation, and a paused
``/clock`` must hold none of them.

Lifecycle: ``configure`` loads the model and creates the outputs and the tracker,
``activate`` starts the subscriptions, the services, the worker threads and the SegEvery
timer, ``deactivate`` and ``cleanup`` release them, ``shutdown`` releases everything. The
prompted targets survive a deactivate/activate cycle and go at cleanup (:mod:`.tracking`).
A transition that raises is logged with its traceback and answered with ERROR; ``on_error``
then releases whatever configure and activate took, and the node is back in
``unconfigured``. The ``segfast_node``
executable (:func:`segfast_ros.ros.entry.main`, see :mod:`.main`) configures and activates it
at once unless the ``autostart`` parameter is false, which leaves it to a lifecycle manager.
"""

from __future__ import annotations

import functools
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from segfast_ros.ros.calls import ServiceCalls
from segfast_ros.ros.depth import DepthInput
from segfast_ros.ros.diagnostics import Health, NodeState, diagnostic_status
from segfast_ros.ros.intake import FrameIntake
from segfast_ros.ros.param_spec import descriptor
from segfast_ros.ros.params import (
    DEPTH,
    PROMPTS,
    SEGEVERY,
    TRACKING,
    NodeConfig,
    ParamSpec,
    all_params,
    backend_options,
    lift_settings,
    tracking_settings,
)
from segfast_ros.ros.prompts import PromptTopic
from segfast_ros.ros.segevery_publisher import SegEveryPublisher
from segfast_ros.ros.segment_service import SegmentService
from segfast_ros.ros.tracking import TargetTracking
from segfast_ros.ros.vision import VisionOutputs
from segfast_ros.runtime import Backend, Predictor, load_backend
from segfast_ros.runtime.paths import resolve_model_path

__all__ = ["SegfastNode"]

Transition = Callable[[Any, LifecycleState], TransitionCallbackReturn]

#: Wall seconds after the start within which, under ``use_sim_time``, a first ``/clock``
#: message is expected; without one the node says once why SegEvery and /diagnostics are silent.
SIM_CLOCK_WAIT_S = 5.0


def _logged(callback: Transition) -> Transition:
    """A transition callback whose exception is logged, with its traceback, as ERROR.

    rclpy turns an exception in a transition callback into ERROR too, but says nothing; ERROR
    leads to :meth:`SegfastNode.on_error`.
    """

    @functools.wraps(callback)
    def guarded(node: SegfastNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return callback(node, state)
        except Exception as err:
            transition = callback.__name__.removeprefix("on_")
            node.transition_failed(f"{transition} failed: {type(err).__name__}: {err}")
            return TransitionCallbackReturn.ERROR

    return guarded


class SegfastNode(LifecycleNode):
    """The segfast lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = "segfast", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._specs: dict[str, ParamSpec] = {s.name: s for s in all_params()}
        self._values = {
            name: spec.check(self.declare_parameter(name, spec.default, descriptor(spec)).value)
            for name, spec in self._specs.items()
        }  # ranges ROS cannot express (open ends, choices) are checked here too
        self._config = NodeConfig.from_values(self._values)
        self.autostart = bool(
            self.declare_parameter(
                "autostart",
                True,
                ParameterDescriptor(
                    description="main() configures and activates the node at start; false "
                    "leaves it unconfigured for a lifecycle manager.",
                    read_only=True,
                ),
            ).value
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._backend: Backend | None = None
        self._model_warnings: list[str] = []  # what loading the model warned about
        self._problem = ""  # why the node cannot run, for /diagnostics (ERROR)
        self._active = False
        self._health = Health(self.get_logger(), clock=self._now_s)
        timers = MutuallyExclusiveCallbackGroup()  # SegEvery's and the diagnostics'
        self._frames = FrameIntake(self, self._health, MutuallyExclusiveCallbackGroup())
        backend = lambda: self._backend  # noqa: E731 - read when called: set by configure
        self._calls = ServiceCalls(
            self, self._health, lambda: self._config.segment_queue_depth, ReentrantCallbackGroup()
        )
        # 3D (:mod:`.depth`) and the vision_msgs outputs (:mod:`.vision`) of every part.
        self._depth = DepthInput(self, self._health, MutuallyExclusiveCallbackGroup())
        depth, vision = self._depth, VisionOutputs(self, self._health)
        self._vision = vision
        self._tracks = TargetTracking(
            self, self._health, self._calls, self._frames, backend, depth, vision
        )
        self._frames.on_encoded = self._tracks.frame_encoded
        self._segevery = SegEveryPublisher(
            self,
            self._health,
            backend=backend,
            cache=lambda: self._frames.cache,
            timer_group=timers,
            tracking=lambda: self._tracks.tracking,
            depth=depth,
            vision=vision,
        )
        self._service = SegmentService(
            self, self._health, self._calls, self._frames, lambda: self._config, backend, depth
        )
        self._prompts = PromptTopic(
            self,
            self._health,
            self._frames,
            self._tracks,
            backend,
            vision,
            depth=lambda: depth if depth.enabled else None,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # The node's clock, as diagnostic_updater's: a period of sim seconds under sim time,
        # so a sim-time aggregator sees the rate it expects; silent while /clock is paused.
        self._diag_timer = self.create_timer(
            self._config.diagnostics_period, self._publish_diagnostics, timers
        )
        # On the steady clock: a sim-time timer would never fire without the /clock it checks.
        if self.get_parameter("use_sim_time").value:
            self._clock_check = self.create_timer(
                SIM_CLOCK_WAIT_S,
                self._check_sim_clock,
                timers,
                clock=Clock(clock_type=ClockType.STEADY_TIME),
            )

    def _check_sim_clock(self) -> None:
        """Once: under ``use_sim_time`` with no ``/clock`` yet, say what waits and why."""
        self._clock_check.cancel()
        if self.get_clock().now().nanoseconds == 0:
            self.get_logger().warn(
                f"use_sim_time is true and no /clock message came in {SIM_CLOCK_WAIT_S:g} s: "
                "SegEvery and /diagnostics tick in sim time and wait for it; play the bag with "
                "`ros2 bag play --clock`, or set use_sim_time:=false"
            )

    def _now_s(self) -> float:
        """The node's clock in seconds: sim time under ``use_sim_time``, else system time."""
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def config(self) -> NodeConfig:
        """The node's parameters, as typed values (replaced on every accepted change)."""
        return self._config

    @property
    def executor_threads(self) -> int:
        """Threads of the executor :func:`~segfast_ros.ros.main.run` spins the node on."""
        return self._config.executor_threads

    @property
    def segment_pool(self) -> Any:
        """The ``~/segment`` and ``~/track`` worker pool while active (None otherwise)."""
        return self._calls.pool

    @property
    def tracks(self) -> TargetTracking:
        """The prompted targets: ``~/track``, ``~/tracks`` and their tracker."""
        return self._tracks

    # ------------------------------------------------------------------ parameters

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        values = dict(self._values)
        changed = []
        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:
                continue  # autostart, use_sim_time, qos_overrides.*: not ours to check
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
        try:
            # Build first: a value the settings refuse (or a detector that does not load)
            # leaves the running ones untouched and is reported to the caller.
            settings, lifting = tracking_settings(values), lift_settings(values)
            if strategy_changed and self._backend is not None:
                self._segevery.strategy = self._segevery.build_strategy(values, fallback=False)
        except (ValueError, FileNotFoundError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        if any(n.startswith(f"{TRACKING}.") for n in changed):
            self._tracks.reconfigure(settings, bool(values[f"{TRACKING}.segevery_ids"]))
        config = NodeConfig.from_values(values)
        if any(n.startswith(f"{DEPTH}.") for n in changed):
            self._depth.reconfigure(
                lifting,
                config.depth_sync_tolerance,
                config.depth_cache_size,
                config.depth_cloud_voxel,
            )
        if any(n.startswith(f"{PROMPTS}.") for n in changed):
            self._prompts.reconfigure(config.prompts_max_detections, config.prompts_start_tracks)
        if self._frames.cache is not None:
            self._frames.cache.resize(config.cache_size)
        old_rate = self._config.segevery_rate
        self._values, self._config = values, config
        if self._active and config.segevery_rate != old_rate:
            self._segevery.restart_timer(config.segevery_rate)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle

    @_logged
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._config
        if not cfg.model_dir:
            return self._configure_failed(
                "parameter model_dir is empty: set it to a folder of exported ONNX files "
                "(encoder.<precision>.onnx and decoder.*.onnx, written by `segfast export`)"
            )
        model_dir = resolve_model_path(cfg.model_dir)
        try:
            self._backend = self._load_backend(cfg, model_dir)
        except Exception as err:  # any load failure is reported; the node stays up
            return self._configure_failed(f"cannot load the model from {model_dir}: {err}")
        values = self._values
        try:
            self._segevery.strategy = self._segevery.build_strategy(values, fallback=True)
            tracking, lifting = tracking_settings(values), lift_settings(values)
        except ValueError as err:  # e.g. hierarchical with fewer than 4 points per side
            return self._configure_failed(f"SegEvery, tracking or depth settings refused: {err}")
        predictor = Predictor(self._backend, interpolation=cfg.resize_interpolation)
        self._frames.configure(predictor, cfg.cache_size)
        self._segevery.create_publishers()
        self._tracks.configure(tracking, values[f"{TRACKING}.segevery_ids"])
        self._vision.create_publishers()
        self._prompts.configure(cfg.prompts_max_detections, cfg.prompts_start_tracks)
        self._depth.configure(
            cfg.depth_enabled,
            lifting,
            cfg.depth_sync_tolerance,
            cfg.depth_cache_size,
            cfg.depth_cloud_voxel,
        )
        self._problem = ""
        info = self._backend.info
        self.get_logger().info(
            f"configured: model {info.name!r} ({info.image_size}px input) from {model_dir}, "
            f"{cfg.precision} encoder on "
            f"{cfg.backend if cfg.backend != 'onnxruntime' else list(cfg.providers)}; SegEvery "
            f"{getattr(self._segevery.strategy, 'name', '?')} at {cfg.segevery_rate:g} Hz"
        )
        return super().on_configure(state)

    def _load_backend(self, cfg: NodeConfig, model_dir: Any) -> Backend:
        """Load the model; what loading warns about goes to the log and /diagnostics."""
        options = backend_options(cfg, model_dir)
        if cfg.backend == "tensorrt":
            options["log"] = self.get_logger().info  # cache hits, rebuilds and why
        # A model that loads but is wrong for this machine (an int8 file whose kernels
        # saturate on this CPU) warns; on a robot that must reach the ROS log and
        # /diagnostics, not only a terminal nobody reads.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = load_backend(cfg.backend, model_dir, **options)
        self._model_warnings = [str(w.message) for w in caught]
        for text in self._model_warnings:
            self.get_logger().warning(text)
        return backend

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self._problem = f"configure failed: {message}"
        self._health.last_error = message
        self.get_logger().error(f"configure failed: {message}")
        self._release_model()
        return TransitionCallbackReturn.FAILURE

    def transition_failed(self, message: str) -> None:
        """Report a transition that raised (``message`` says which and why), with its traceback.

        Called by the transition callbacks' guard while the exception is being handled; the
        node shows it in /diagnostics (ERROR) until a configure succeeds.
        """
        self._problem = message
        self._health.last_error = message
        self.get_logger().error(f"{message}\n{traceback.format_exc()}")

    @_logged
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._config
        self._frames.start_encoder()
        self._calls.start(cfg.segment_workers)
        self._depth.subscribe()
        self._frames.subscribe(cfg.use_compressed)
        self._prompts.activate()
        self._active = True
        self._segevery.start(cfg.segevery_rate)
        # The planner services last: once ~/segment is in the graph, everything else runs.
        self._service.start()
        self._tracks.start()
        self.get_logger().info(
            f"active: images on {self._frames.topic}, services {self._service.name} and "
            f"{self._tracks.name}, instances on "
            f"{self._segevery.publishers['instances'].topic_name}, targets on "
            f"{self._tracks.publishers['tracks'].topic_name}"
        )
        return super().on_activate(state)  # enables the lifecycle publishers

    @_logged
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io(drain=True)
        return super().on_deactivate(state)  # disables the lifecycle publishers

    @_logged
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        return super().on_cleanup(state)

    @_logged
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        # main() stops the executor before it shuts the node down, so admitted calls cannot
        # be answered: they are dropped with the service rather than waited for.
        self._stop_io(drain=False)
        self._release_model()
        return super().on_shutdown(state)

    @_logged
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release whatever configure and activate took; SUCCESS leads to ``unconfigured``.

        The transition that failed logged why (see :meth:`transition_failed`).
        """
        self._stop_io(drain=True)
        self._release_model()
        self.get_logger().error(
            f"a transition from {state.label} failed: released the model, outputs and threads; "
            "the node is unconfigured (configure it again once the cause is fixed)"
        )
        return super().on_error(state)

    def _stop_io(self, *, drain: bool) -> None:
        """Undo activate: no more input, service or timers; running work finishes first.

        Args:
            drain: answer the ~/segment and ~/track calls already admitted before the
                services go (see :meth:`ServiceCalls.stop`).
        """
        self._active = False
        self._frames.unsubscribe()
        self._depth.unsubscribe()
        self._prompts.deactivate()
        self._calls.stop(drain=drain)
        self._segevery.stop_timer()
        self._frames.stop_encoder()
        self._segevery.stop_worker()
        self._tracks.stop_worker()

    def _release_model(self) -> None:
        """Undo configure: outputs, targets, model, cache."""
        self._segevery.release()
        self._prompts.release()
        self._vision.release()
        self._tracks.release()
        self._depth.release()
        self._frames.release()
        self._backend = None
        self._model_warnings = []

    def destroy_node(self) -> None:
        """Release what a shutdown transition did not (threads included), then the node.

        A process can end without one: a lifecycle manager left the node mid-transition, or
        the context was shut down from outside.
        """
        self._stop_io(drain=False)
        self._release_model()
        super().destroy_node()

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self._diag_pub.publish(msg)

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health as one ``diagnostic_msgs/DiagnosticStatus``."""
        state = NodeState(
            problem=self._problem,
            active=self._active,
            model=self._backend.info.name if self._backend is not None else "",
            strategy=getattr(self._segevery.strategy, "name", ""),
            fallback=self._segevery.fallback,
            model_warnings=self._model_warnings,
            encoder=self._frames.encoder,
            cache=self._frames.cache,
            tracks=self._tracks.diagnostics(),
            parts={
                **self._depth.diagnostics(),
                **self._vision.diagnostics(),
                **self._prompts.diagnostics(),
            },
            warnings=[w for w in (self._depth.warning(),) if w],
        )
        return diagnostic_status(
            self.get_fully_qualified_name(), self._config, state, self._health
        )
