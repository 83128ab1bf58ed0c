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

The pieces: :mod:`.cuda` (loading ``tensorrt`` and cuda-python, the device), :mod:`.build`
(engine building, the cache lookup), :mod:`.runner` (one engine's buffers, stream and lock),
:mod:`.plan` and :mod:`.cache` (pure Python). TensorRT 8.6 and 10 have the name-based tensor
API this backend uses; TensorRT 11 is refused with a message (:func:`.cuda.check_tensorrt`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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
from segfast_ros.runtime.tensorrt.build import (
    DEFAULT_WORKSPACE_MB,
    check_precision,
    engine_key,
    load_or_build,
)
from segfast_ros.runtime.tensorrt.cache import EngineCache
from segfast_ros.runtime.tensorrt.cuda import check_tensorrt, cuda_device, import_cudart
from segfast_ros.runtime.tensorrt.plan import DecoderProfile, decoder_profile_shapes
from segfast_ros.runtime.tensorrt.runner import EngineRunner

if TYPE_CHECKING:  # the type checker reads NVIDIA's stubs; at run time each use imports it
    import tensorrt as trt

#: The decoder precision that goes with each engine precision (as for ONNX Runtime).
TRT_DECODER_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "fp32"}
#: The encoder quantized for TensorRT (symmetric int8 activations), next to the other exports.
TRT_INT8_ENCODER = "encoder.int8.tensorrt.onnx"


def trt_source_files(onnx_dir: str | Path, precision: str) -> tuple[Path, Path]:
    """The ONNX files ``(encoder, decoder)`` TensorRT engines at ``precision`` are built from.

    Raises:
        ValueError: unknown precision.
        FileNotFoundError: a file is missing; the message says how to make it.
    """
    check_precision(precision)
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
        self._encoder = EngineRunner(
            cudart, device_id, enc_engine, {ENCODER_INPUTS[0]: (1, 3, s, s)}
        )
        self._decoder = EngineRunner(cudart, device_id, dec_engine, max_shapes)
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
