"""A fake ``tensorrt`` module and a fake cuda-python ``cudart``, recording every call.

They isolate the TensorRT backend's own logic (the order of builder calls, the precision
constraints it sets, the cache, the buffer plumbing and the decoder chunking) on a machine
without a GPU. They prove nothing about TensorRT itself: the parser maps ONNX nodes to layers
one to one, and an "engine" runs the original ONNX file with ONNX Runtime.

Use :func:`install` (returns the module) with ``monkeypatch``; ``CALLS`` lists
``(call, args...)`` tuples in order. Like TensorRT's, an execution context must not be used by
two threads at a time: the fake context records every overlapping or interleaved use in
``MISUSE`` (set ``DWELL`` to stay a while inside each call, so that overlaps show), and the
fake ``cudart`` (``fake_cudart.py``) records work on a stream from a thread whose current
device is another.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_cudart
import numpy as np
from fake_cudart import CALLS, CURRENT, MEMORY, MISUSE, STREAM_DEVICE

MAGIC = b"FAKEENGINE:"
#: Seconds every execution-context call sleeps inside, to widen the window for overlaps.
DWELL = 0.0

_LAYER_TYPES = {
    "LayerNormalization": ("NORMALIZATION", None),
    "Softmax": ("SOFTMAX", None),
    "MatMul": ("MATRIX_MULTIPLY", None),
    "ReduceMean": ("REDUCE", "AVG"),
    "ReduceSum": ("REDUCE", "SUM"),
    "Add": ("ELEMENTWISE", "SUM"),
    "Mul": ("ELEMENTWISE", "PROD"),
    "Sub": ("ELEMENTWISE", "SUB"),
    "Div": ("ELEMENTWISE", "DIV"),
    "Pow": ("ELEMENTWISE", "POW"),
    "Sqrt": ("UNARY", "SQRT"),
    "Reshape": ("SHUFFLE", None),
    "Transpose": ("SHUFFLE", None),
    "Conv": ("CONVOLUTION", None),
}


class LayerType(enum.Enum):
    NORMALIZATION = 1
    SOFTMAX = 2
    MATRIX_MULTIPLY = 3
    REDUCE = 4
    ELEMENTWISE = 5
    UNARY = 6
    SHUFFLE = 7
    CONVOLUTION = 8
    OTHER = 9


class _Op(enum.Enum):
    AVG = 1
    SUM = 2
    PROD = 3
    SUB = 4
    DIV = 5
    POW = 6
    SQRT = 7


class DataType(enum.Enum):
    FLOAT = 1
    HALF = 2


class BuilderFlag(enum.Enum):
    FP16 = 1
    INT8 = 2
    OBEY_PRECISION_CONSTRAINTS = 3


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class ProfilingVerbosity(enum.Enum):
    DETAILED = 2


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


float32 = DataType.FLOAT


class Dims(tuple):
    """``trt.Dims(list)``: a shape."""


def nptype(dtype: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dtype]


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...] = ()) -> None:
        self.name, self.shape = name, shape


class ILayer:
    def __init__(self, name: str, kind: str, op: str | None, inputs: list, outputs: list) -> None:
        self.name, self.type = name, LayerType[kind]
        self._op = _Op[op] if op else None
        self._inputs = [_Tensor(t) if t else None for t in inputs]
        self._outputs = [_Tensor(t) for t in outputs]
        self._precision = None

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i: int) -> _Tensor | None:
        return self._inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self._outputs[i]

    @property
    def precision(self) -> Any:
        return self._precision

    @precision.setter
    def precision(self, value: Any) -> None:
        CALLS.append(("layer.precision", self.name, value))
        self._precision = value

    def set_output_type(self, i: int, dtype: Any) -> None:
        CALLS.append(("layer.set_output_type", self.name, i, dtype))


class IElementWiseLayer(ILayer):
    op = property(lambda self: self._op)


class IUnaryLayer(IElementWiseLayer):
    pass


class IReduceLayer(IElementWiseLayer):
    pass


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[ILayer] = []
        self.inputs: list[_Tensor] = []
        self.onnx_path: str | None = None

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))

    def get_layer(self, i: int) -> ILayer:
        return self.layers[i]

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class OnnxParser:
    """Parses with the onnx package: one layer per node; a file named ``*bad*`` fails."""

    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.errors = network, []
        CALLS.append(("OnnxParser",))

    def parse_from_file(self, path: str) -> bool:
        CALLS.append(("parse_from_file", Path(path).name))
        if "bad" in Path(path).name:
            self.errors = ["In node 0 (parseGraph): INVALID_NODE: fake parse failure"]
            return False
        import onnx

        model = onnx.load(path, load_external_data=False)
        for i, node in enumerate(model.graph.node):
            kind, op = _LAYER_TYPES.get(node.op_type, ("OTHER", None))
            name = node.name or f"{node.op_type}_{i}"
            self.network.layers.append(ILayer(name, kind, op, list(node.input), list(node.output)))
        inits = {t.name for t in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1
                for d in vi.type.tensor_type.shape.dim
            )
            self.network.inputs.append(_Tensor(vi.name, dims))
        self.network.onnx_path = path
        return True

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        CALLS.append(("profile.set_shape", name, tuple(low), tuple(opt), tuple(high)))
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class _Config:
    def __init__(self) -> None:
        self.flags: list[BuilderFlag] = []
        self.profiles: list[_Profile] = []
        self._verbosity = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        CALLS.append(("config.set_memory_pool_limit", pool, size))

    def set_flag(self, flag: BuilderFlag) -> None:
        CALLS.append(("config.set_flag", flag))
        self.flags.append(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        CALLS.append(("config.add_optimization_profile",))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def profiling_verbosity(self) -> Any:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Any) -> None:
        CALLS.append(("config.profiling_verbosity", value))
        self._verbosity = value


class Builder:
    #: Set to make build_serialized_network return None (a failed build).
    fail_build = False

    def __init__(self, logger: Logger) -> None:
        CALLS.append(("Builder",))

    def create_network(self, flags: int) -> _Network:
        CALLS.append(("create_network", flags))
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        CALLS.append(("create_builder_config",))
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        CALLS.append(("create_optimization_profile",))
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        CALLS.append(("build_serialized_network",))
        if Builder.fail_build:
            return None
        profile = config.profiles[0].shapes if config.profiles else {}
        meta = {"onnx": network.onnx_path, "profile": {k: v[2] for k, v in profile.items()}}
        return MAGIC + json.dumps(meta).encode()


class Runtime:
    def __init__(self, logger: Logger) -> None:
        CALLS.append(("Runtime",))

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        CALLS.append(("deserialize_cuda_engine", len(data)))
        if not data.startswith(MAGIC):
            return None  # what TensorRT does with a corrupt plan (after logging an error)
        return _Engine(json.loads(data[len(MAGIC) :]))


class _Engine:
    """Runs the ONNX file it was "built" from with ONNX Runtime."""

    def __init__(self, meta: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(meta["onnx"], providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.names = self.inputs + self.outputs
        self.max_shapes = {k: tuple(v) for k, v in meta["profile"].items()}

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    """Runs its engine on the bytes at the tensor addresses, with the shapes last set.

    Records in :data:`MISUSE` a call that overlaps another thread's call, and a run or an output
    shape that uses shapes or results another thread left (what TensorRT would compute
    silently from the other caller's state).
    """

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.results: dict[str, np.ndarray] = {}
        self.shape_setter: dict[str, int] = {}  # input name -> thread that set its shape
        self.results_by = 0  # thread whose run produced self.results
        self._inside: tuple[int, str] | None = None
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def _use(self, call: str) -> Iterator[int]:
        me = threading.get_ident()
        with self._guard:
            if self._inside is not None:
                other, other_call = self._inside
                MISUSE.append(f"{call} in thread {me} while thread {other} is in {other_call}")
            self._inside = (me, call)
        try:
            time.sleep(DWELL)
            yield me
        finally:
            with self._guard:
                if self._inside is not None and self._inside[0] == me:
                    self._inside = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        with self._use("set_input_shape") as me:
            high = self.engine.max_shapes.get(name)
            if high is not None and any(s > h for s, h in zip(shape, high, strict=True)):
                return False
            self.shapes[name] = tuple(shape)
            self.shape_setter[name] = me
            self.results = {}
            return True

    def set_tensor_address(self, name: str, ptr: int) -> None:
        with self._use("set_tensor_address"):
            self.addresses[name] = ptr

    def _run(self, me: int, zeros: bool = False) -> None:
        feeds = {
            n: np.zeros(self.shapes[n], np.float32)
            if zeros
            else np.frombuffer(
                bytes(MEMORY[self.addresses[n]][: int(np.prod(self.shapes[n])) * 4]), np.float32
            ).reshape(self.shapes[n])
            for n in self.engine.inputs
        }
        outs = self.engine.session.run(self.engine.outputs, feeds)
        self.results = dict(zip(self.engine.outputs, outs, strict=True))
        self.results_by = me

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        with self._use("get_tensor_shape") as me:
            if name in self.engine.inputs:
                return self.shapes[name]
            if not self.results:  # output shapes follow from the input shapes: run on zeros
                self._run(me, zeros=True)
            elif self.results_by != me:
                MISUSE.append(
                    f"output shape of {name!r} read in thread {me} after a run of "
                    f"thread {self.results_by}"
                )
            return tuple(self.results[name].shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        with self._use("execute_async_v3") as me:
            CALLS.append(("execute_async_v3", {n: self.shapes[n] for n in self.engine.inputs}))
            foreign = sorted(n for n in self.engine.inputs if self.shape_setter.get(n) != me)
            if foreign:
                MISUSE.append(
                    f"execute_async_v3 in thread {me} with shapes of {foreign} set "
                    "by another thread"
                )
            device = CURRENT.device
            if STREAM_DEVICE.get(stream_handle, device) != device:
                MISUSE.append(
                    f"execute_async_v3 on a stream of device "
                    f"{STREAM_DEVICE[stream_handle]} with device {device} current"
                )
            self._run(me)
            for name, value in self.results.items():
                data = np.ascontiguousarray(value, np.float32).tobytes()
                MEMORY[self.addresses[name]][: len(data)] = data
            return True


def install(
    monkeypatch: Any, version: str = "10.3.0", *, devices: int = 1, driver: bool = True
) -> types.ModuleType:
    """Put the fake ``tensorrt`` and ``cuda.bindings.runtime`` into ``sys.modules``."""
    fake_cudart.reset()
    Builder.fail_build = False
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "__version__", version, raising=False)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    fake_cudart.install(monkeypatch, devices=devices, driver=driver)
    return module
