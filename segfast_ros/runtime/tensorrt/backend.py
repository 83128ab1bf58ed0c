"""Native TensorRT backend: engines built from the project's ONNX exports, cached on disk.

Written against the documented ``tensorrt`` Python API of TensorRT 8.6 (JetPack 6) and 10.x,
and type-checked against NVIDIA's 10.x API stubs (``make lint``), with device buffers from
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases). **Not yet run
on hardware**: the build steps, the cache and the buffer plumbing are tested with a fake
``tensorrt`` module only.

* FP16: built from ``encoder.fp32.onnx`` / ``decoder.fp32.onnx`` with the FP16 flag, LayerNorm,
  Softmax and attention MatMuls constrained to FP32 (:func:`~segfast_ros.runtime.tensorrt.plan.
  fp32_plan`, obeyed via ``OBEY_PRECISION_CONSTRAINTS``).
* INT8: explicit quantization from the QDQ encoder quantized for TensorRT
  (:data:`TRT_INT8_ENCODER`, ``quantize_encoder(..., target="tensorrt")``): the scales are
  ours and checked on CPU; the decoder stays as for ONNX Runtime (fp32).
* The decoder engine has one optimization profile over the prompt sets ``B`` (and points per
  set); a call with more than ``max_sets`` is split into several.
* Engines are cached by :class:`~segfast_ros.runtime.tensorrt.cache.EngineKey` (ONNX hash,
  TensorRT version, GPU name and compute capability, precision, profile).
* A backend may be called from several threads at once (the node's service threads, SegEvery
  and the encoder thread); each engine serves one call at a time.

The version split: both 8.6 and 10 have the name-based tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``; 8.5 added it), which is all this backend uses.
8.6's ONNX parser needs the ``EXPLICIT_BATCH`` network flag; 10 makes every network explicit
batch and deprecates the flag. TensorRT 11 removes the FP16/INT8 builder flags (strongly typed
networks only) and is refused with a message.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from segfast_ros.runtime.backend import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    METADATA_KEY,
    DecoderInputs,
    ModelInfo,
    decode_in_runs,
)
from segfast_ros.runtime.tensorrt.cache import EngineCache, EngineKey, file_sha256
from segfast_ros.runtime.tensorrt.plan import (
    DecoderProfile,
    Op,
    Shape,
    decoder_profile_shapes,
    fp32_plan,
)

if TYPE_CHECKING:  # the type checker reads NVIDIA's stubs; at run time each use imports it
    import tensorrt as trt

#: Engine precisions, and the decoder precision that goes with each (as for ONNX Runtime).
TRT_PRECISIONS = ("fp32", "fp16", "int8")
TRT_DECODER_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "fp32"}
#: The encoder quantized for TensorRT (symmetric int8 activations), next to the other exports.
TRT_INT8_ENCODER = "encoder.int8.tensorrt.onnx"
#: TensorRT versions this backend is written for: 8.6 <= version < 11.
MIN_TRT, MAX_TRT_MAJOR = (8, 6), 10
DEFAULT_WORKSPACE_MB = 2048


class TensorRTUnavailableError(RuntimeError):
    """tensorrt or cuda-python is missing, of an unsupported version, or no CUDA device."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse an ONNX file or build an engine from it."""


def check_tensorrt() -> str:
    """Import ``tensorrt`` and return its version, checked to be 8.6 to 10.x.

    Every function here imports ``tensorrt`` where it uses it (so the type checker sees the
    module); the backend and ``segfast build-engine`` call this first.

    Raises:
        TensorRTUnavailableError: not installed (a package without ``__version__``, such as
            the type stubs alone, is not TensorRT), or an unsupported version.
    """
    install = (
        "the tensorrt backend needs the `tensorrt` Python package, TensorRT's bindings "
        "(JetPack 6 ships it: `sudo apt install python3-libnvinfer`; x86: `pip install tensorrt`)"
    )
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailableError(
            f"{install}, which is not importable here ({err}); use backend onnxruntime instead"
        ) from err
    version = getattr(trt, "__version__", None)
    if version is None:
        where = list(getattr(trt, "__path__", [])) or getattr(trt, "__file__", None)
        raise TensorRTUnavailableError(
            f"{install}; `import tensorrt` found a package without a version at {where} (type "
            "stubs such as tensorrt-stubs make one), not TensorRT; use backend onnxruntime "
            "instead"
        )
    match = re.match(r"(\d+)\.(\d+)", str(version))
    if match is None or not MIN_TRT <= (int(match[1]), int(match[2])) < (MAX_TRT_MAJOR + 1, 0):
        raise TensorRTUnavailableError(
            f"TensorRT {version} is not supported: expected 8.6 to 10.x (TensorRT 11 removed "
            "the FP16/INT8 builder flags this backend uses)"
        )
    return str(version)


def import_cudart() -> Any:
    """cuda-python's runtime API module (``cuda.bindings.runtime`` or ``cuda.cudart``).

    cuda-python ships no type stubs (its modules are compiled), so it is ``Any`` here.

    Raises:
        TensorRTUnavailableError: cuda-python is not installed.
    """
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:
            return importlib.import_module("cuda.cudart")
        except ImportError as err:
            raise TensorRTUnavailableError(
                "the tensorrt backend needs cuda-python for its GPU buffers "
                "(`pip install cuda-python` matching the CUDA major version, 12 on JetPack 6)"
            ) from err


def _cuda(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result, raising on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class CudaDevice:
    """The GPU an engine is built for: index, name and compute capability ``"8.7"``."""

    index: int
    name: str
    compute_capability: str


def cuda_device(cudart: Any, device_id: int = 0) -> CudaDevice:
    """Identify CUDA device ``device_id`` and make it current.

    Raises:
        TensorRTUnavailableError: no CUDA device (or the driver is not loaded), or
            ``device_id`` out of range.
    """
    # Without a driver cuda-python answers (cudaErrorInsufficientDriver, None).
    err, count = cudart.cudaGetDeviceCount()
    failed = err != cudart.cudaError_t.cudaSuccess
    if failed or not count:
        raise TensorRTUnavailableError(
            f"no CUDA device available ({err if failed else 'none found'}); the tensorrt "
            "backend needs an NVIDIA GPU (check the driver with nvidia-smi or tegrastats)"
        )
    if not 0 <= device_id < count:
        raise TensorRTUnavailableError(
            f"CUDA device {device_id} does not exist; {count} device(s): 0..{count - 1}"
        )
    _cuda(cudart, cudart.cudaSetDevice(device_id), "cudaSetDevice")
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return CudaDevice(device_id, str(name), f"{props.major}.{props.minor}")


# --------------------------------------------------------------------------- building

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

    if precision not in TRT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {TRT_PRECISIONS}")
    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 8.6's ONNX parser needs an explicit-batch network; 10's always are (the flag deprecated).
    flags = 0 if _trt_major() >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer summary
    ops, layers = network_ops(network)
    plan: dict[str, str] = {}
    if precision != "fp32":
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

    dynamic: dict[str, Shape] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = _dims(tensor.shape)
        if any(d < 0 for d in shape):
            dynamic[tensor.name] = shape
    if dynamic:
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


def _dims(dims: trt.Dims) -> Shape:
    # Dims is a sequence by __len__/__getitem__ only, which the type checker does not iterate.
    return tuple(dims[i] for i in range(len(dims)))


def _trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


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


def trt_source_files(onnx_dir: str | Path, precision: str) -> tuple[Path, Path]:
    """The ONNX files ``(encoder, decoder)`` TensorRT engines at ``precision`` are built from.

    Raises:
        ValueError: unknown precision.
        FileNotFoundError: a file is missing; the message says how to make it.
    """
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {TRT_PRECISIONS}")
    onnx_dir = Path(onnx_dir)
    encoder = onnx_dir / (TRT_INT8_ENCODER if precision == "int8" else "encoder.fp32.onnx")
    decoder = onnx_dir / "decoder.fp32.onnx"
    for path in (encoder, decoder):
        if not path.is_file():
            how = (
                "quantize it for TensorRT: `segfast build-engine --precision int8 --calib ...` "
                "or quantize_encoder(..., target='tensorrt')"
                if path.name == TRT_INT8_ENCODER
                else "run `segfast export` first"
            )
            raise FileNotFoundError(f"{path} not found (TensorRT builds from it; {how})")
    return encoder, decoder


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


# --------------------------------------------------------------------------- running


class _EngineRunner:
    """One engine with its execution context, stream and device buffers.

    Device buffers are sized once for the largest shapes the engine accepts (its profile's
    max), so a call allocates only its host outputs. They, the context (which holds the input
    shapes of the call in progress) and the stream are one per engine, so :meth:`run` holds a
    lock from setting the shapes to synchronising the stream: the node calls from its service
    threads, SegEvery's thread and the encoder's thread at once.
    """

    def __init__(
        self,
        cudart: Any,
        device_id: int,
        engine: trt.ICudaEngine,
        max_input_shapes: Mapping[str, Shape],
    ) -> None:
        import tensorrt as trt

        self.cudart, self.device_id, self.engine = cudart, device_id, engine
        self._lock = threading.Lock()
        self.buffers: dict[str, int] = {}
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.capacity: dict[str, int] = {}
        for name, shape in max_input_shapes.items():
            self._set_shape(name, shape)
        for name in names:
            shape = max_input_shapes.get(name) or self._shape(name)
            nbytes = max(int(np.prod(shape)), 1) * self.dtypes[name].itemsize
            self.buffers[name] = _cuda(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self.capacity[name] = nbytes
            if self.context.set_tensor_address(name, self.buffers[name]) is False:
                raise RuntimeError(f"TensorRT refused the device buffer of tensor {name!r}")

    def _set_shape(self, name: str, shape: Shape) -> None:
        if self.context.set_input_shape(name, tuple(shape)) is False:
            raise ValueError(f"TensorRT refused shape {tuple(shape)} for input {name!r}")

    def _shape(self, name: str) -> Shape:
        return _dims(self.context.get_tensor_shape(name))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy ``feeds`` in, run, copy every output back (float32). Thread-safe.

        Raises:
            RuntimeError: after :meth:`close`, or a CUDA or TensorRT call failed.
        """
        cudart, h2d = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        with self._lock:
            if not self.buffers:
                raise RuntimeError("the TensorRT backend is closed (its buffers are freed)")
            # CUDA's current device is per host thread; the caller's may be another GPU.
            _cuda(cudart, cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
            hosts = []  # keep the host arrays alive until the stream is synchronised
            for name in self.inputs:
                arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                if arr.nbytes > self.capacity[name]:
                    raise ValueError(
                        f"input {name!r} of shape {arr.shape} is larger than the engine's "
                        f"optimization profile allows"
                    )
                self._set_shape(name, arr.shape)
                hosts.append(arr)
                _cuda(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        self.buffers[name], arr.ctypes.data, arr.nbytes, h2d, self.stream
                    ),
                    "cudaMemcpyAsync (host to device)",
                )
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            results = {}
            for name in self.outputs:
                out = np.empty(self._shape(name), dtype=self.dtypes[name])
                _cuda(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream
                    ),
                    "cudaMemcpyAsync (device to host)",
                )
                results[name] = out
            _cuda(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}

    def close(self) -> None:
        """Free the device buffers and the stream (idempotent; waits for a call in progress)."""
        with self._lock:
            if not self.buffers:
                return
            for ptr in self.buffers.values():
                self.cudart.cudaFree(ptr)
            self.buffers.clear()
            self.cudart.cudaStreamDestroy(self.stream)

    def __del__(self) -> None:
        # The node drops its backend on cleanup while a service call may still hold it; the
        # buffers go when the last reference does.
        with contextlib.suppress(Exception):  # at interpreter exit cudart may be gone
            self.close()


def read_model_info(onnx_path: str | Path) -> ModelInfo:
    """ModelInfo from an exported file's metadata (the runtime has onnxruntime, not onnx).

    Called with the decoder, whose CPU session is small and quick to open.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not meta:
        raise ValueError(
            f"{onnx_path} has no 'segfast' metadata; re-export it with `segfast export`"
        )
    return ModelInfo.from_json(meta)


class TensorRTBackend:
    """Encoder and decoder TensorRT engines, built from ONNX exports and cached.

    Args:
        onnx_dir: folder written by `segfast export` (see :func:`trt_source_files`).
        precision: ``"fp16"`` (default), ``"int8"`` or ``"fp32"``.
        engine_cache_dir: where engines and their keys live; default ``<onnx_dir>/engines``.
        device_id: CUDA device.
        profile: the decoder's prompt-batch profile.
        workspace_mb: builder workspace limit.
        info: the model facts; read from the encoder's ONNX metadata when None.
        log: cache and build lines (the node passes its logger).

    Raises:
        TensorRTUnavailableError: no tensorrt/cuda-python, or no CUDA device.
        FileNotFoundError: a source ONNX file is missing.
        EngineBuildError: an engine could not be built.
    """

    name = "tensorrt"

    def __init__(
        self,
        onnx_dir: str | Path,
        precision: str = "fp16",
        *,
        engine_cache_dir: str | Path | None = None,
        device_id: int = 0,
        profile: DecoderProfile | None = None,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        info: ModelInfo | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        check_tensorrt()
        import tensorrt as trt

        cudart = import_cudart()
        self.device = cuda_device(cudart, device_id)
        encoder_onnx, decoder_onnx = trt_source_files(onnx_dir, precision)
        self.info: ModelInfo = info if info is not None else read_model_info(decoder_onnx)
        self.profile = profile or DecoderProfile()
        self.precision = precision
        cache = EngineCache(engine_cache_dir or Path(onnx_dir) / "engines", log)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

        def deserialize(data: bytes) -> trt.ICudaEngine | None:
            return runtime.deserialize_cuda_engine(data)

        dec_precision = TRT_DECODER_PRECISION[precision]
        enc_key = engine_key(encoder_onnx, self.device, precision)
        dec_key = engine_key(decoder_onnx, self.device, dec_precision, self.profile)
        shapes = decoder_profile_shapes(self.info, self.profile)
        enc_engine, _ = load_or_build(
            cache, f"encoder.{precision}", enc_key, encoder_onnx,
            workspace_mb=workspace_mb, deserialize=deserialize,
        )  # fmt: skip
        dec_engine, _ = load_or_build(
            cache, f"decoder.{dec_precision}", dec_key, decoder_onnx,
            profile_shapes=shapes, workspace_mb=workspace_mb, deserialize=deserialize,
        )  # fmt: skip
        s = self.info.image_size
        max_shapes = {name: high for name, (_, _, high) in shapes.items()}
        self._encoder = _EngineRunner(
            cudart, device_id, enc_engine, {ENCODER_INPUTS[0]: (1, 3, s, s)}
        )
        self._decoder = _EngineRunner(cudart, device_id, dec_engine, max_shapes)
        self._runtime = runtime  # engines must not outlive their runtime

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``(1, 3, S, S)`` float32 preprocessed image to ``(1, C, h, w)`` float32 embedding."""
        return self._encoder.run({ENCODER_INPUTS[0]: image})[ENCODER_OUTPUTS[0]]

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``B`` prompt sets to ``(B, M, L, L)`` logits and ``(B, M)`` IoUs (see Backend).

        More than the profile's ``max_sets`` sets run as several engine calls. Each is a
        whole run under the decoder's lock, so another thread's call may run between them: a
        ``~/segment`` call waits for one chunk of a long SegEvery batch, not for all of it.

        Raises:
            ValueError: more points per set than the profile's ``max_points``.
        """
        n = point_coords.shape[1]
        if n > self.profile.max_points:
            raise ValueError(
                f"{n} points per prompt set; this TensorRT decoder engine takes at most "
                f"{self.profile.max_points} (rebuild with a larger max_points)"
            )

        def run(values: DecoderInputs, last: bool) -> tuple[np.ndarray, np.ndarray]:
            out = self._decoder.run(dict(zip(DECODER_INPUTS, values, strict=True)))
            return out[DECODER_OUTPUTS[0]], out[DECODER_OUTPUTS[1]]

        return decode_in_runs(
            run,
            (image_embeddings, point_coords, point_labels, mask_input, has_mask_input),
            self.profile.max_sets,
        )

    def close(self) -> None:
        """Free the device buffers and streams now (else when the backend is collected)."""
        self._encoder.close()
        self._decoder.close()


def describe_plan(ops: Sequence[Op], plan: Mapping[str, str]) -> list[str]:
    """Lines ``<layer>  <op type>  FP32 (<reason>)`` for the constrained layers, in graph order."""
    return [f"{op.name}  {op.op_type}  FP32 ({plan[op.name]})" for op in ops if op.name in plan]
