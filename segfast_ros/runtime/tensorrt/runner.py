"""Running one TensorRT engine: its execution context, CUDA stream and device buffers.

A backend may be called from several threads at once (the node's service threads, SegEvery
and the encoder thread); each :class:`EngineRunner` serves one call at a time under its lock.
Device buffers come from cuda-python (see :mod:`~segfast_ros.runtime.tensorrt.cuda`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from segfast_ros.runtime.tensorrt.cuda import cuda_call
from segfast_ros.runtime.tensorrt.plan import Shape, as_shape

if TYPE_CHECKING:  # the type checker reads NVIDIA's stubs; at run time each use imports it
    import tensorrt as trt


class EngineRunner:
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
        self.stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.capacity: dict[str, int] = {}
        for name, shape in max_input_shapes.items():
            self._set_shape(name, shape)
        for name in names:
            shape = max_input_shapes.get(name) or self._shape(name)
            nbytes = max(int(np.prod(shape)), 1) * self.dtypes[name].itemsize
            self.buffers[name] = cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self.capacity[name] = nbytes
            if self.context.set_tensor_address(name, self.buffers[name]) is False:
                raise RuntimeError(f"TensorRT refused the device buffer of tensor {name!r}")

    def _set_shape(self, name: str, shape: Shape) -> None:
        if self.context.set_input_shape(name, tuple(shape)) is False:
            raise ValueError(f"TensorRT refused shape {tuple(shape)} for input {name!r}")

    def _shape(self, name: str) -> Shape:
        return as_shape(self.context.get_tensor_shape(name))

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
            cuda_call(cudart, cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
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
                cuda_call(
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
                cuda_call(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream
                    ),
                    "cudaMemcpyAsync (device to host)",
                )
                results[name] = out
            cuda_call(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
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
