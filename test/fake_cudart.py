"""A fake cuda-python ``cudart`` (runtime API) for ``fake_tensorrt``: device memory in host
byte arrays, streams that remember their device, and the calling thread's current device.

``CALLS`` and ``MISUSE`` are the lists ``fake_tensorrt`` shares (it imports them from here): a
``cudaMalloc`` is recorded with the builder's calls, and a copy on a stream from a thread whose
current device is another is a misuse.
"""

from __future__ import annotations

import enum
import sys
import threading
import types
from typing import Any

CALLS: list[tuple[Any, ...]] = []
#: What a real TensorRT/CUDA would have got wrong silently: one line per misuse.
MISUSE: list[str] = []

#: Fake device memory: pointer -> bytes.
MEMORY: dict[int, bytearray] = {}
#: Stream handle -> the device that was current when it was created.
STREAM_DEVICE: dict[int, int] = {}


class _CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class _MemcpyKind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class _Props:
    name = b"Orin\x00\x00"
    major, minor = 8, 7


class Current(threading.local):
    device = 0


#: The calling thread's current device, as CUDA keeps it (per host thread, 0 until set).
CURRENT = Current()


def make_cudart(devices: int = 1, *, driver: bool = True) -> types.SimpleNamespace:
    """A fake ``cudart`` with ``devices`` Orin GPUs; copies go through :data:`MEMORY`.

    ``driver=False`` answers like cuda-python on a machine without the NVIDIA driver.
    """
    ok = _CudaError.cudaSuccess
    next_ptr = [0x1000]

    def malloc(nbytes: int) -> tuple[Any, int]:
        ptr = next_ptr[0]
        next_ptr[0] += nbytes + 256
        MEMORY[ptr] = bytearray(nbytes)
        CALLS.append(("cudaMalloc", nbytes))
        return ok, ptr

    def memcpy(dst: int, src: int, nbytes: int, kind: _MemcpyKind, stream: int) -> tuple[Any]:
        import ctypes

        if STREAM_DEVICE[stream] != CURRENT.device:
            MISUSE.append(
                f"cudaMemcpyAsync on a stream of device {STREAM_DEVICE[stream]} "
                f"with device {CURRENT.device} current"
            )
        if kind is _MemcpyKind.cudaMemcpyHostToDevice:
            MEMORY[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(MEMORY[src][:nbytes]), nbytes)
        return (ok,)

    def device_count() -> tuple[Any, int | None]:
        if not driver:
            return _CudaError.cudaErrorInsufficientDriver, None
        return (ok, devices) if devices else (_CudaError.cudaErrorNoDevice, 0)

    def set_device(index: int) -> tuple[Any]:
        CURRENT.device = index
        return (ok,)

    def stream_create() -> tuple[Any, int]:
        handle = 7 + len(STREAM_DEVICE)
        STREAM_DEVICE[handle] = CURRENT.device
        return ok, handle

    return types.SimpleNamespace(
        cudaError_t=_CudaError,
        cudaMemcpyKind=_MemcpyKind,
        cudaGetDeviceCount=device_count,
        cudaSetDevice=set_device,
        cudaGetDeviceProperties=lambda i: (ok, _Props()),
        cudaMalloc=malloc,
        cudaFree=lambda ptr: (MEMORY.pop(ptr, None), ok)[1:],
        cudaStreamCreate=stream_create,
        cudaStreamDestroy=lambda s: (ok,),
        cudaStreamSynchronize=lambda s: (ok,),
        cudaMemcpyAsync=memcpy,
    )


def reset() -> None:
    """Forget all memory, streams and calls; device 0 current."""
    CALLS.clear()
    MEMORY.clear()
    MISUSE.clear()
    STREAM_DEVICE.clear()
    CURRENT.device = 0


def install(monkeypatch: Any, *, devices: int = 1, driver: bool = True) -> types.SimpleNamespace:
    """Put a fresh fake ``cudart`` into ``sys.modules`` as ``cuda.bindings.runtime``."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = make_cudart(devices, driver=driver)  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", bindings.runtime)
    return bindings.runtime  # type: ignore[attr-defined]
