"""The node's parameters: one table of names, defaults, ranges and descriptions.

Every parameter is declared from :data:`NODE_PARAMS` (with the depth input's and the prompt
topic's own, :data:`DEPTH_INPUT_PARAMS` and :data:`PROMPT_PARAMS`), the SegEvery strategies'
typed fields (:func:`segevery_params`), the tracking settings' (:func:`tracking_params`) and
the lift settings' (:func:`depth_params`), so the ranges a user sees in ``ros2 param
describe`` are the ones the library enforces. Values are read into the typed
:class:`NodeConfig` (and :class:`TrackingSettings`, :class:`LiftSettings`) once, and runtime
changes are checked by :meth:`ParamSpec.check` (a row's declaration: :mod:`.param_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segfast_ros.ros.param_spec import (
    ParamSpec,
    field_docs,
    field_params,
    num_range,
    ros_range,
)
from segfast_ros.segevery.registry import STRATEGIES
from segfast_ros.segevery.settings import ParamRange
from segfast_ros.spatial.lift import LiftSettings
from segfast_ros.tracking.settings import TrackingSettings

__all__ = [
    "DEPTH",
    "DEPTH_INPUT_PARAMS",
    "NODE_PARAMS",
    "PROMPTS",
    "PROMPT_PARAMS",
    "SEGEVERY",
    "TRACKING",
    "NodeConfig",
    "ParamSpec",
    "all_params",
    "backend_options",
    "depth_params",
    "field_docs",
    "lift_settings",
    "ros_range",
    "segevery_params",
    "strategy_kwargs",
    "tracking_params",
    "tracking_settings",
]

#: Prefix of the SegEvery strategy parameters: ``segevery.<strategy>.<field>``.
SEGEVERY = "segevery"
#: Prefix of the tracking parameters: ``tracking.<field>`` (:class:`TrackingSettings`).
TRACKING = "tracking"
#: Prefix of the depth parameters: ``depth.<field>`` (:class:`LiftSettings`) and the input's.
DEPTH = "depth"
#: Prefix of the ``~/prompts`` topic's parameters.
PROMPTS = "prompts"
#: Detector settings of the object-aware strategy that are not strategy fields.
DETECTOR_PARAMS = ("detector", "conf", "iou", "max_det")


#: The depth input's own parameters (the lifting's are :class:`LiftSettings`' fields).
DEPTH_INPUT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        f"{DEPTH}.enabled",
        False,
        "Subscribe to `depth` (sensor_msgs/Image, 16UC1 millimetres or 32FC1 metres, aligned "
        "to the colour image), `camera_info` (the colour camera's) and `depth/camera_info`, and "
        "fill position_3d on ~/instances, ~/tracks, ~/prompted and ~/segment (return_3d). "
        "Without depth for a frame, results are 2D only (position_3d.valid false).",
        read_only=True,
    ),
    ParamSpec(
        f"{DEPTH}.sync_tolerance",
        0.03,
        "Seconds between a colour frame's stamp and the nearest depth image's for the two to "
        "be used together; farther: that frame is 2D only (and /diagnostics says why).",
        range=num_range(0.03, 0.0, 1.0),
    ),
    ParamSpec(
        f"{DEPTH}.cache_size",
        8,
        "Depth images kept by stamp for matching to colour frames (the newest are kept).",
        range=num_range(8, 1, 256),
    ),
    ParamSpec(
        f"{DEPTH}.cloud_voxel",
        0.01,
        "Voxel edge in metres of ~/points (the masked points, computed only while subscribed): "
        "each instance's points are averaged per voxel; 0 keeps every point.",
        range=num_range(0.01, 0.0, 1.0),
    ),
)

#: The ``~/prompts`` topic's parameters (vision_msgs/Detection2DArray from a detector).
PROMPT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        f"{PROMPTS}.start_tracks",
        False,
        "Each ~/prompts detection that no current prompted target already covers also starts a "
        "target (followed on ~/tracks, as ~/track ADD does).",
    ),
    ParamSpec(
        f"{PROMPTS}.max_detections",
        100,
        "Most detections of one ~/prompts message decoded (the highest-scoring ones, answered "
        "in message order); the rest are counted as skipped.",
        range=num_range(100, 1, 4096),
    ),
)


#: The node's own parameters (the SegEvery strategy parameters are added by segevery_params).
NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "backend",
        "onnxruntime",
        "Inference backend: onnxruntime (CPU, CUDA or TensorRT execution providers) or "
        "tensorrt (native engines built from model_dir's ONNX files, cached in "
        "engine_cache_dir; needs tensorrt and cuda-python).",
        read_only=True,
        choices=("onnxruntime", "tensorrt"),
    ),
    ParamSpec(
        "model_dir",
        "",
        "Folder of the exported model: encoder.<precision>.onnx and decoder.*.onnx, as "
        "written by `segfast export`. A relative path is looked up in the package's models/.",
        read_only=True,
    ),
    ParamSpec(
        "precision",
        "int8",
        "Encoder precision to load: int8 (quantized, the default), fp16 or fp32.",
        read_only=True,
        choices=("int8", "fp16", "fp32"),
    ),
    ParamSpec(
        "providers",
        ["cpu"],
        "ONNX Runtime execution providers in order of preference: cpu, cuda, tensorrt. A "
        "provider this onnxruntime build lacks is an error, never a silent CPU fallback. "
        "With tensorrt, precision fp16 or int8 enables its FP16 kernels and "
        "engine_cache_dir its engine cache.",
        read_only=True,
    ),
    ParamSpec(
        "engine_cache_dir",
        "",
        "TensorRT engine cache folder, for the tensorrt backend and for onnxruntime's "
        "tensorrt provider; empty: <model_dir>/engines. Engines are keyed by ONNX hash, "
        "TensorRT version, GPU and precision; a mismatch rebuilds (minutes on a Jetson).",
        read_only=True,
    ),
    ParamSpec(
        "tensorrt.decoder_opt_sets",
        16,
        "tensorrt backend: prompt sets per decoder call the engine is tuned for (its "
        "optimization profile's opt).",
        range=num_range(16, 1, 4096),
        read_only=True,
    ),
    ParamSpec(
        "tensorrt.decoder_max_sets",
        320,
        "tensorrt backend: most prompt sets per decoder engine call (profile max; larger "
        "batches are split). Must be >= tensorrt.decoder_opt_sets.",
        range=num_range(320, 1, 4096),
        read_only=True,
    ),
    ParamSpec(
        "max_prompt_sets",
        64,
        "Most prompt sets (boxes or point groups) one ~/segment request may carry; more is "
        "refused with a message.",
        range=num_range(64, 1, 4096),
    ),
    ParamSpec(
        "segment.queue_depth",
        32,
        "Most ~/segment and ~/track calls the node holds at once (both together), running or "
        "waiting for a worker. A call past it is answered at once with success=false and a "
        "message saying the node is busy.",
        range=num_range(32, 1, 4096),
        read_only=True,
    ),
    ParamSpec(
        "segment.workers",
        2,
        "Threads that decode ~/segment and ~/track calls concurrently (each call uses the "
        "decoder's own intra-op threads too). More than the cores the decoder can use only "
        "adds waiting.",
        range=num_range(2, 1, 64),
        read_only=True,
    ),
    ParamSpec(
        "segment.max_image_bytes",
        256 * 2**20,
        "Most bytes of mono8 mask images one ~/segment response may carry (return_images); "
        "a request for more is refused with its size before decoding. At 8K one mask is 33 MB "
        "and a response is copied about 3 times on its way out.",
        range=num_range(256 * 2**20, 2**20, 2**40),
    ),
    ParamSpec(
        "resize_interpolation",
        "linear",
        "Image resize to the encoder input: linear (the reference, cheapest) or area "
        "(antialiased, for frames more than ~2x larger than the model input).",
        read_only=True,
        choices=("linear", "area"),
    ),
    ParamSpec(
        "intra_op_threads",
        0,
        "ONNX Runtime threads per session (CPU work); 0 lets ONNX Runtime choose.",
        range=num_range(0, 0, 256),
        read_only=True,
    ),
    ParamSpec(
        "use_compressed",
        False,
        "Also subscribe to <image topic>/compressed (sensor_msgs/CompressedImage, JPEG or "
        "PNG), as image_transport names it.",
        read_only=True,
    ),
    ParamSpec(
        "cache_size",
        4,
        "Encoded frames kept by header stamp; ~/segment answers for any of them.",
        range=num_range(1, 1, 64),
    ),
    ParamSpec(
        "diagnostics_period",
        1.0,
        "Seconds between /diagnostics messages.",
        range=num_range(1.0, 0.1, 60.0),
        read_only=True,
    ),
    ParamSpec(
        "executor.threads",
        4,
        "Threads of the node's executor: image callbacks, ~/segment admission, timers and "
        "lifecycle transitions run on them (decoding runs on segment.workers). At least 2: a "
        "deactivate waits on one for the admitted ~/segment calls, which another answers.",
        range=num_range(4, 2, 64),
        read_only=True,
    ),
    ParamSpec(
        f"{SEGEVERY}.rate",
        1.0,
        "SegEvery publications per second on ~/instances (at most one per encoded frame); "
        "0 turns SegEvery off.",
        range=num_range(1.0, 0.0, 30.0),
    ),
    ParamSpec(
        f"{SEGEVERY}.strategy",
        "grid",
        "SegEvery strategy: grid (SAM), hierarchical (TinySAM) or object_aware (MobileSAMv2, "
        "needs segevery.object_aware.detector; falls back to grid with a warning without it).",
        choices=tuple(sorted(STRATEGIES)),
    ),
    ParamSpec(
        f"{SEGEVERY}.object_aware.detector",
        "",
        "Object-discovery detector ONNX file (YOLOv8 output layout) for object_aware. A "
        "relative path is looked up in the package's models/.",
    ),
    ParamSpec(
        f"{SEGEVERY}.object_aware.conf",
        0.4,
        "Detector confidence threshold (MobileSAMv2: 0.4).",
        range=ParamRange(float, 0.0, 1.0, high_open=True),
    ),
    ParamSpec(
        f"{SEGEVERY}.object_aware.iou",
        0.9,
        "Detector NMS IoU threshold (MobileSAMv2: 0.9).",
        range=ParamRange(float, 1e-6, 1.0),
    ),
    ParamSpec(
        f"{SEGEVERY}.object_aware.max_det",
        300,
        "Most detector boxes, hence prompts, per frame.",
        range=num_range(300, 1, 10000),
    ),
    *DEPTH_INPUT_PARAMS,
    *PROMPT_PARAMS,
)


def segevery_params() -> tuple[ParamSpec, ...]:
    """``segevery.<strategy>.<field>`` for every typed field of every registered strategy.

    Numeric fields carry the range the strategy itself enforces; boolean fields are plain
    switches. Defaults are the strategy's (SAM's, TinySAM's, MobileSAMv2's, except where the
    strategy says why not, as object_aware's decoder batch on CPU memory).
    """
    specs = []
    for name, cls in sorted(STRATEGIES.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        specs += field_params(
            f"{SEGEVERY}.{name}", cls, lambda f, n=name, d=doc: f"{n} SegEvery: {f.name} ({d})"
        )
    return tuple(specs)


def tracking_params() -> tuple[ParamSpec, ...]:
    """``tracking.<field>`` for every setting of :class:`TrackingSettings` (with its range),
    and ``tracking.segevery_ids``."""
    docs = field_docs(TrackingSettings)
    specs = field_params(TRACKING, TrackingSettings, lambda f: docs.get(f.name, f.name))
    specs.append(
        ParamSpec(
            f"{TRACKING}.segevery_ids",
            True,
            "SegEvery's ~/instances carry track IDs (track_id, track_state) that persist "
            "while an object stays in view; false: every instance is TRACK_NONE, track_id 0. "
            "Lost prompted targets are re-acquired from SegEvery either way.",
        )
    )
    return tuple(specs)


def tracking_settings(values: dict[str, Any]) -> TrackingSettings:
    """:class:`TrackingSettings` from parameter values (``tracking.<field>``).

    Raises:
        ValueError: a value the settings refuse (the message names it and its range).
    """
    names = {s.name.removeprefix(f"{TRACKING}.") for s in tracking_params()}
    names.discard("segevery_ids")
    return TrackingSettings.from_dict({n: values[f"{TRACKING}.{n}"] for n in sorted(names)})


def depth_params() -> tuple[ParamSpec, ...]:
    """``depth.<field>`` for every :class:`LiftSettings` field (with its range); the depth
    input's own (``depth.enabled``, ...) are in :data:`NODE_PARAMS`."""
    docs = field_docs(LiftSettings)
    return tuple(field_params(DEPTH, LiftSettings, lambda f: docs.get(f.name, f.name)))


def lift_settings(values: dict[str, Any]) -> LiftSettings:
    """:class:`LiftSettings` from parameter values (``depth.<field>``).

    Raises:
        ValueError: a value the settings refuse (the message names it and its range).
    """
    names = [s.name for s in depth_params()]
    return LiftSettings.from_dict({n.removeprefix(f"{DEPTH}."): values[n] for n in names})


def all_params() -> tuple[ParamSpec, ...]:
    """Every parameter the node declares."""
    return NODE_PARAMS + segevery_params() + tracking_params() + depth_params()


@dataclass(frozen=True)
class NodeConfig:
    """Typed values of the node's own parameters (read once, replaced on runtime changes)."""

    backend: str
    model_dir: str
    precision: str
    providers: tuple[str, ...]
    engine_cache_dir: str
    decoder_opt_sets: int
    decoder_max_sets: int
    max_prompt_sets: int
    segment_queue_depth: int
    segment_workers: int
    segment_max_image_bytes: int
    resize_interpolation: str
    intra_op_threads: int
    use_compressed: bool
    cache_size: int
    diagnostics_period: float
    executor_threads: int
    segevery_rate: float
    segevery_strategy: str
    depth_enabled: bool
    depth_sync_tolerance: float
    depth_cache_size: int
    depth_cloud_voxel: float
    prompts_start_tracks: bool
    prompts_max_detections: int

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeConfig:
        """Build from ``{parameter name: value}`` (all of :data:`NODE_PARAMS`, the depth input's
        and the prompts')."""
        return cls(
            backend=str(values["backend"]),
            model_dir=str(values["model_dir"]),
            precision=str(values["precision"]),
            providers=tuple(str(p) for p in values["providers"]),
            engine_cache_dir=str(values["engine_cache_dir"]),
            decoder_opt_sets=int(values["tensorrt.decoder_opt_sets"]),
            decoder_max_sets=int(values["tensorrt.decoder_max_sets"]),
            max_prompt_sets=int(values["max_prompt_sets"]),
            segment_queue_depth=int(values["segment.queue_depth"]),
            segment_workers=int(values["segment.workers"]),
            segment_max_image_bytes=int(values["segment.max_image_bytes"]),
            resize_interpolation=str(values["resize_interpolation"]),
            intra_op_threads=int(values["intra_op_threads"]),
            use_compressed=bool(values["use_compressed"]),
            cache_size=int(values["cache_size"]),
            diagnostics_period=float(values["diagnostics_period"]),
            executor_threads=int(values["executor.threads"]),
            segevery_rate=float(values[f"{SEGEVERY}.rate"]),
            segevery_strategy=str(values[f"{SEGEVERY}.strategy"]),
            depth_enabled=bool(values[f"{DEPTH}.enabled"]),
            depth_sync_tolerance=float(values[f"{DEPTH}.sync_tolerance"]),
            depth_cache_size=int(values[f"{DEPTH}.cache_size"]),
            depth_cloud_voxel=float(values[f"{DEPTH}.cloud_voxel"]),
            prompts_start_tracks=bool(values[f"{PROMPTS}.start_tracks"]),
            prompts_max_detections=int(values[f"{PROMPTS}.max_detections"]),
        )


def backend_options(config: NodeConfig, model_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``load_backend(config.backend, model_dir, ...)``.

    The engine cache (``engine_cache_dir``, default ``<model_dir>/engines``) serves both the
    native tensorrt backend and onnxruntime's tensorrt provider; fp16 and int8 let the
    provider build FP16 kernels (the int8 encoder's own QDQ nodes stay int8).

    Raises:
        ValueError: a decoder profile with opt above max.
    """
    cache_dir = Path(config.engine_cache_dir or Path(model_dir) / "engines")
    if config.backend == "tensorrt":
        from segfast_ros.runtime.tensorrt.plan import DecoderProfile

        profile = DecoderProfile(
            opt_sets=config.decoder_opt_sets, max_sets=config.decoder_max_sets
        )
        return {"precision": config.precision, "engine_cache_dir": cache_dir, "profile": profile}
    options: dict[str, Any] = {
        "precision": config.precision,
        "providers": list(config.providers),
        "intra_op_threads": config.intra_op_threads,
    }
    if any(
        p.lower() in ("tensorrt", "trt", "tensorrtexecutionprovider") for p in config.providers
    ):
        options["trt_fp16"] = config.precision in ("fp16", "int8")
        options["trt_engine_cache_dir"] = cache_dir
    return options


def strategy_kwargs(values: dict[str, Any], strategy: str) -> dict[str, Any]:
    """Keyword arguments for ``build_segevery(strategy, ...)`` from parameter values.

    Object-aware gets its detector path and settings; the caller resolves the path.
    """
    prefix = f"{SEGEVERY}.{strategy}."
    kwargs = {
        k[len(prefix) :]: v
        for k, v in values.items()
        if k.startswith(prefix) and k[len(prefix) :] not in DETECTOR_PARAMS
    }
    if strategy == "object_aware":
        kwargs.update({p: values[prefix + p] for p in DETECTOR_PARAMS})
    return kwargs
