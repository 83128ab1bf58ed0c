"""Building TensorRT engines from the project's ONNX exports, and finding them in the cache.

:func:`build_engine` runs in stages: parse the ONNX file into a network, configure the builder
(workspace, per-layer profiling), pin the :func:`~segfast_ros.runtime.tensorrt.plan.fp32_plan`
layers to FP32 in an FP16/INT8 build (obeyed via ``OBEY_PRECISION_CONSTRAINTS``), add the
optimization profile of the dynamic inputs, serialize. :func:`load_or_build` puts it behind
the :class:`~segfast_ros.runtime.tensorrt.cache.EngineCache`, keyed by :func:`engine_key`.

* FP16: the FP16 flag, LayerNorm, Softmax and attention MatMuls constrained to FP32.
* INT8: explicit quantization from a QDQ encoder (the scales are ours, checked on CPU), with
  FP16 and the FP32 plan for the unquantized layers.

8.6's ONNX parser needs the ``EXPLICIT_BATCH`` network flag; 10 makes every network explicit
batch and deprecates the flag. Every function imports ``tensorrt`` where it uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from segfast_ros.runtime.tensorrt.cache import EngineCache, EngineKey, file_sha256
from segfast_ros.runtime.tensorrt.cuda import CudaDevice, trt_major
from segfast_ros.runtime.tensorrt.plan import DecoderProfile, Op, Shape, as_shape, fp32_plan

if TYPE_CHECKING:  # the type checker reads NVIDIA's stubs; at run time each use imports it
    import tensorrt as trt

#: Engine precisions.
TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 2048


class EngineBuildError(RuntimeError):
    """TensorRT could not parse an ONNX file or build an engine from it."""


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`TRT_PRECISIONS`."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {TRT_PRECISIONS}")


# --------------------------------------------------------------------------- the network as ops

_ELEMENTWISE_ONNX = {"SUM": "Add", "PROD": "Mul", "SUB": "Sub", "DIV": "Div", "POW": "Pow"}
_UNARY_ONNX = {"SQRT": "Sqrt", "RECIP": "Reciprocal", "EXP": "Exp"}
_LAYER_ONNX = {
    "NORMALIZATION": "LayerNormalization",
    "SOFTMAX": "Softmax",
    "MATRIX_MULTIPLY": "MatMul",
    "SHUFFLE": "Reshape",
    "IDENTITY": "Cast",
    "CAST": "Cast",
    "CONVOLUTION": "Conv",
}


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1]


def _layer_op_type(layer: trt.ILayer) -> str:
    """The ONNX op type a TensorRT layer plays, for :func:`fp32_plan`."""
    import tensorrt as trt

    kind = _enum_name(layer.type)
    # The Python API returns ILayer; its subclass (and its .op) is reached by re-classing it,
    # the documented way to downcast in the TensorRT Python bindings.
    if kind in ("ELEMENTWISE", "UNARY", "REDUCE"):
        subclass = {
            "ELEMENTWISE": trt.IElementWiseLayer,
            "UNARY": trt.IUnaryLayer,
            "REDUCE": trt.IReduceLayer,
        }[kind]
        layer.__class__ = subclass
        op = _enum_name(
            cast("trt.IElementWiseLayer | trt.IUnaryLayer | trt.IReduceLayer", layer).op
        )
        if kind == "ELEMENTWISE":
            return _ELEMENTWISE_ONNX.get(op, f"ElementWise{op}")
        if kind == "UNARY":
            return _UNARY_ONNX.get(op, f"Unary{op}")
        return "ReduceMean" if op == "AVG" else f"Reduce{op}"
    return _LAYER_ONNX.get(kind, kind)


def network_ops(network: trt.INetworkDefinition) -> tuple[list[Op], dict[str, trt.ILayer]]:
    """A parsed TensorRT network as :class:`Op`\\ s, and each op's layer by name."""
    ops: list[Op] = []
    layers: dict[str, trt.ILayer] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        name = layer.name if layer.name not in layers else f"{layer.name}#{i}"
        tensors_in = [layer.get_input(j) for j in range(layer.num_inputs)]
        tensors_out = [layer.get_output(j) for j in range(layer.num_outputs)]
        ops.append(
            Op(
                name,
                _layer_op_type(layer),
                tuple(t.name for t in tensors_in if t is not None),
                tuple(t.name for t in tensors_out if t is not None),
            )
        )
        layers[name] = layer
    return ops, layers


# --------------------------------------------------------------------------- building


@dataclass
class BuiltEngine:
    """A serialized engine and how it was built."""

    engine: bytes
    precision: str
    plan: dict[str, str]
    ops: list[Op]
    seconds: float


def build_engine(
    onnx_path: str | Path,
    precision: str,
    *,
    profile_shapes: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    log: Callable[[str], None] = print,
) -> BuiltEngine:
    """Parse ``onnx_path`` and build a serialized engine at ``precision``.

    Args:
        onnx_path: an exported ONNX file (fp32, or the TensorRT QDQ encoder for int8).
        precision: ``"fp32"``, ``"fp16"`` (FP16 with the FP32 plan) or ``"int8"`` (QDQ, with
            FP16 and the FP32 plan for the unquantized layers).
        profile_shapes: ``{input: (min, opt, max)}`` for the dynamic inputs; required when the
            graph has any.
        workspace_mb: the builder's workspace memory pool limit.
        log: progress lines.

    Raises:
        ValueError: unknown precision.
        EngineBuildError: the ONNX file does not parse, a dynamic input has no profile shape,
            or the build fails (TensorRT's log says why).
    """
    import tensorrt as trt

    check_precision(precision)
    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # The parser owns the weights the network refers to: it lives until the build is done.
    network, _parser = _parse_onnx(builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer summary
    ops, plan = _constrain_precision(network, config, precision)
    _add_profile(builder, network, config, onnx_path, profile_shapes)
    log(
        f"building {precision} TensorRT engine from {onnx_path.name}: {len(ops)} layers, "
        f"{len(plan)} kept in FP32"
    )
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build a {precision} engine from {onnx_path} after "
            f"{seconds:.0f} s (its log above says why; a larger --workspace-mb may help)"
        )
    return BuiltEngine(bytes(serialized), precision, plan, ops, seconds)


def _parse_onnx(
    builder: trt.Builder, logger: trt.ILogger, onnx_path: Path
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The network parsed from ``onnx_path``, and its parser (which must outlive the build)."""
    import tensorrt as trt

    # 8.6's ONNX parser needs an explicit-batch network; 10's always are (the flag deprecated).
    flags = 0 if trt_major() >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")
    return network, parser


def _constrain_precision(
    network: trt.INetworkDefinition, config: trt.IBuilderConfig, precision: str
) -> tuple[list[Op], dict[str, str]]:
    """Set the precision flags and pin the FP32 plan's layers; return the ops and the plan."""
    import tensorrt as trt

    ops, layers = network_ops(network)
    plan: dict[str, str] = {}
    if precision == "fp32":
        return ops, plan
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales from QDQ
    plan = fp32_plan(ops)
    if plan:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for name in plan:
            layer = layers[name]
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
    return ops, plan


def _add_profile(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    onnx_path: Path,
    profile_shapes: Mapping[str, tuple[Shape, Shape, Shape]] | None,
) -> None:
    """One optimization profile over the network's dynamic inputs (none when all are static).

    Raises:
        EngineBuildError: a dynamic input has no entry in ``profile_shapes``.
    """
    import tensorrt as trt

    dynamic: dict[str, Shape] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = as_shape(tensor.shape)
        if any(d < 0 for d in shape):
            dynamic[tensor.name] = shape
    if not dynamic:
        return
    missing = sorted(set(dynamic) - set(profile_shapes or {}))
    if missing:
        raise EngineBuildError(
            f"{onnx_path} has dynamic inputs {missing} without profile shapes "
            f"(dynamic inputs: {dynamic})"
        )
    profile = builder.create_optimization_profile()
    for name in dynamic:
        low, opt, high = (trt.Dims(list(shape)) for shape in (profile_shapes or {})[name])
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)


# --------------------------------------------------------------------------- through the cache


def engine_key(
    onnx_path: str | Path,
    device: CudaDevice,
    precision: str,
    profile: DecoderProfile | None = None,
) -> EngineKey:
    """The cache key of an engine built from ``onnx_path`` on ``device``."""
    import tensorrt as trt

    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=str(trt.__version__),
        gpu_name=device.name,
        compute_capability=device.compute_capability,
        precision=precision,
        profile=profile.as_list() if profile is not None else [],
    )


def load_or_build(
    cache: EngineCache,
    name: str,
    key: EngineKey,
    onnx_path: Path,
    *,
    profile_shapes: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    deserialize: Callable[[bytes], trt.ICudaEngine | None],
) -> tuple[trt.ICudaEngine, BuiltEngine | None]:
    """A deserialized engine from the cache, or built, cached and deserialized.

    A cached file that fails to deserialize (truncated, corrupt) is dropped with a log line
    and rebuilt.

    Returns:
        ``(engine, BuiltEngine or None when it came from the cache)``.
    """
    hit = cache.load(name, key)
    if hit.engine is not None:
        engine = _try_deserialize(deserialize, hit.engine)
        if engine is not None:
            return engine, None
        cache.invalidate(name, f"cached engine for {name} could not be deserialized; rebuilding")
    built = build_engine(
        onnx_path,
        key.precision,
        profile_shapes=profile_shapes,
        workspace_mb=workspace_mb,
        log=cache.log,
    )
    path = cache.store(name, key, built.engine)
    cache.log(f"built {name} in {built.seconds:.1f} s, cached at {path}")
    engine = _try_deserialize(deserialize, built.engine)
    if engine is None:
        raise EngineBuildError(
            f"TensorRT could not deserialize the engine it just built for {name}"
        )
    return engine, built


def _try_deserialize(
    deserialize: Callable[[bytes], trt.ICudaEngine | None], data: bytes
) -> trt.ICudaEngine | None:
    try:
        return deserialize(data)
    except Exception:  # TensorRT raises or returns None on a corrupt plan, by version
        return None
