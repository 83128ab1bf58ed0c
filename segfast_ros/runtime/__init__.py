"""Inference without torch: backends, pre/post-processing and the :class:`Predictor`.

``OnnxRuntimeBackend`` (onnxruntime), ``TensorRTBackend`` (tensorrt + cuda-python) and
``TorchBackend`` (torch, development only) are imported on first use, so
``import segfast_ros.runtime`` costs only numpy and cv2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from segfast_ros.runtime.backend import Backend, ModelInfo
from segfast_ros.runtime.predictor import Prediction, Predictor

if TYPE_CHECKING:
    from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
    from segfast_ros.runtime.torch_backend import TorchBackend as TorchBackend

__all__ = [
    "Backend",
    "ModelInfo",
    "OnnxRuntimeBackend",
    "Prediction",
    "Predictor",
    "load_backend",
]

#: Backend kinds accepted by :func:`load_backend`.
BACKEND_KINDS = ("onnxruntime", "tensorrt", "torch")


def __getattr__(name: str) -> Any:
    # Heavy optional dependencies load only when their backend is asked for. TorchBackend is
    # reachable here but left out of __all__, so `import *` never pulls in torch.
    if name == "OnnxRuntimeBackend":
        from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "TorchBackend":
        from segfast_ros.runtime.torch_backend import TorchBackend as TorchBackend

        return TorchBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_backend(kind: str, source: str | Path, **options: Any) -> Backend:
    """Create a backend by kind, e.g. from a node parameter or a CLI flag.

    Args:
        kind: ``"onnxruntime"`` (alias ``"onnx"``), ``"tensorrt"`` (alias ``"trt"``) or
            ``"torch"``.
        source: for onnxruntime and tensorrt the folder of exported ONNX files; for torch a
            registry name.
        **options: onnxruntime: ``precision`` and the :class:`OnnxRuntimeBackend` keywords
            (``providers``, ``intra_op_threads``, TensorRT EP options); tensorrt: the
            :class:`~segfast_ros.runtime.tensorrt.backend.TensorRTBackend` keywords
            (``precision``, ``engine_cache_dir``, ``device_id``, ``profile``, ``log``); torch:
            ``checkpoint``, ``device``.

    Raises:
        ValueError: unknown kind.
    """
    if kind in ("onnxruntime", "onnx"):
        from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_dir(source, **options)
    if kind in ("tensorrt", "trt"):
        from segfast_ros.runtime.tensorrt.backend import TensorRTBackend

        return TensorRTBackend(source, **options)
    if kind == "torch":
        from segfast_ros.runtime.torch_backend import TorchBackend as TorchBackend

        return TorchBackend.from_registry(str(source), **options)
    raise ValueError(f"unknown backend kind {kind!r}; expected one of {list(BACKEND_KINDS)}")
