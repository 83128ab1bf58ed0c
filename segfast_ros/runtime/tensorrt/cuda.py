"""What the TensorRT backend loads and runs on: ``tensorrt``, cuda-python and a CUDA device.

* :func:`check_tensorrt`: the ``tensorrt`` package, its version checked to be 8.6 to 10.x.
  Both have the name-based tensor API (``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``; 8.5 added it), which is all this backend uses. TensorRT 11 removes the
  FP16/INT8 builder flags (strongly typed networks only) and is refused with a message.
* :func:`import_cudart`: cuda-python's runtime API (``cuda.bindings.runtime``, or
  ``cuda.cudart`` in older releases), for the device buffers and streams.
* :func:`cuda_device`: the GPU an engine is built for and runs on.

Each fails with :class:`TensorRTUnavailableError`, whose message says what to install. Every
function imports ``tensorrt`` or cuda-python where it uses it, so importing this module loads
neither.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

#: TensorRT versions this backend is written for: 8.6 <= version < 11.
MIN_TRT, MAX_TRT_MAJOR = (8, 6), 10


class TensorRTUnavailableError(RuntimeError):
    """tensorrt or cuda-python is missing, of an unsupported version, or no CUDA device."""


def check_tensorrt() -> str:
    """Import ``tensorrt`` and return its version, checked to be 8.6 to 10.x.

    Every function of the backend imports ``tensorrt`` where it uses it (so the type checker
    sees the module); the backend and ``segfast build-engine`` call this first.

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


def trt_major() -> int:
    """The major version of the imported ``tensorrt`` (after :func:`check_tensorrt`)."""
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


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


def cuda_call(cudart: Any, result: Any, what: str) -> Any:
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
    cuda_call(cudart, cudart.cudaSetDevice(device_id), "cudaSetDevice")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return CudaDevice(device_id, str(name), f"{props.major}.{props.minor}")
