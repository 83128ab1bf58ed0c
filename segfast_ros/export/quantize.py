"""INT8 post-training static quantization of the image encoder (QDQ, per-channel weights).

Only the weighted ops are quantized: ``Conv``, ``Gemm`` and ``MatMul`` with a weight input
(optionally also the activation x activation ``MatMul`` of attention). LayerNorm, Softmax and
GELU keep running in float: their inputs are dequantized first. Calibration runs the fp32
encoder in ONNX Runtime on a folder of images preprocessed exactly as at inference
(:func:`segfast_ros.runtime.transforms.prepare_image`).

Targets, because ONNX Runtime's CPU kernels and TensorRT want different files
(:data:`QUANT_TARGETS`; ``segfast export --quant-target``):

``"cpu"`` (default; what ``encoder.int8.onnx`` is for, ONNX Runtime's CPU EP on any CPU)
    uint8 asymmetric activations, int8 symmetric per-channel weights in 7 bits
    (``reduce_range``). ``Gemm``/``MatMul`` outputs stay float (ORT runs them as ``QGemm`` /
    ``MatMulIntegerToFloat`` with a float output), ``Conv`` outputs are quantized
    (``QLinearConv`` needs it). The erf-GELU chain is rewritten as one ``Gelu`` node (opset
    20): ORT gives every consumer of a ``DequantizeLinear`` its own copy, which splits the
    ``Div``/``Mul`` pair that its GELU fusion needs, and the unfused chain on the 256x256
    MBConv maps costs ~100 ms.
    Why 7 bits: on x86 without VNNI (AVX2, or AVX-512 without VNNI: many AMD EPYC and older
    Xeons) ORT's uint8 x int8 kernels add two products in a saturating int16
    (``VPMADDUBSW``); full-range weights overflow it (see
    :mod:`segfast_ros.runtime.cpu_features`). 7-bit weights cannot, and run the same kernels,
    so the file keeps its speed on every CPU and stays right when it is built on a VNNI
    workstation and copied to an AVX2 server or a Jetson.
    Measured on the full MobileSAM encoder with 8-bit weights (2 threads, AVX512-VNNI,
    medians of interleaved runs): int8 310-410 ms vs fp32 ORT 420-500 ms and fp32 PyTorch
    1150-1800 ms (quiet to busy machine). One ``segfast quant-report --quant-targets`` run
    (random weights, loaded machine): 7-bit 1.46x over fp32 ORT vs 8-bit 1.48x, embedding
    cosine 0.9939 vs 0.9956. int8 activations run slower on ORT x86 (``arm``: 0.97x): it has
    no int8 x int8 depthwise ``QLinearConv`` and runs those convs in float.
``"cpu-vnni"``
    As ``"cpu"`` with full 8-bit weights: a little closer to fp32, for x86 with AVX-512 VNNI
    or AVX-VNNI (and ARM). It saturates on x86 without VNNI; the runtime warns if loaded there.
``"cpu-avx2"``
    For x86 without VNNI when 7 bits cost too much: uint8 activations x uint8 asymmetric
    per-channel weights (U8U8, ORT's other documented remedy; its kernels widen to int16
    before multiplying). 8-bit accuracy, but slower: 1.00x over fp32 on the VNNI machine
    above (unmeasured on AVX2 hardware).
``"arm"``
    ARM64 (Jetson's Cortex-A78AE): int8 activations x int8 weights (S8S8), ONNX Runtime's
    recommended QDQ default; ARM's kernels accumulate in int32. On x86 ORT converts the int8
    activations to uint8, so this file saturates on x86 without VNNI as ``"cpu-vnni"`` does.
``"tensorrt"``
    int8 symmetric activations and weights (zero point 0, the only kind TensorRT accepts),
    QDQ only on the inputs of weighted ops (NVIDIA's placement advice), float biases (TensorRT's
    ``DequantizeLinear`` reads int8 only), opset 17 and plain ONNX ops; TensorRT fuses the Q/DQ
    into its int8 kernels. Written as ``encoder.int8.tensorrt.onnx`` by ``segfast
    build-engine``. Not verified on hardware here.
``"auto"``
    The target of the building machine's CPU kind (``cpu-vnni`` with VNNI, ``arm`` on ARM64,
    else ``cpu``): for quantizing on the robot itself.

The quantization metadata records the target, the types, ``reduce_range``, the building
machine's CPU features and the validation cosine; :class:`~segfast_ros.runtime.onnx_backend.
OnnxRuntimeBackend` warns when it loads a file that saturates on its CPU.

ORT's quantization pre-processing (symbolic shape inference plus its basic graph
optimizations, which fuse ``MatMul`` + ``Add`` into ``Gemm``) runs first: without it the same
quantized encoder ran 1.3-1.8x slower (``MatMul`` + separate bias ``Add`` kernels).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from ..runtime.cpu_features import CpuFeatures, detect_cpu_features, saturates_on
from ..runtime.images import CalibrationError, list_images, read_rgb
from ..runtime.transforms import prepare_image
from ..spec import ENCODER_INPUTS, QUANTIZATION_KEY, ModelInfo
from .embedding_cosine import embedding_cosines
from .metadata import read_metadata, save_model, set_metadata
from .quant_graph import attention_matmuls, drop_unused_opsets, fuse_erf_gelu
from .quant_targets import (
    AUTO_TARGETS,
    QUANT_TARGETS,
    QuantRecipe,
    QuantTarget,
    QuantTypeName,
    resolve_target,
)

__all__ = [
    "AUTO_TARGETS",
    "QUANTIZATION_KEY",
    "QUANT_TARGETS",
    "CalibrationError",
    "ImageFolderReader",
    "QuantRecipe",
    "QuantizationError",
    "quantization_settings",
    "quantize_encoder",
    "resolve_target",
]

CalibrationMethodName = Literal["minmax", "percentile", "entropy"]

#: Op types whose weight inputs are quantized.
QUANTIZED_OP_TYPES: tuple[str, ...] = ("Conv", "Gemm", "MatMul")


class QuantizationError(RuntimeError):
    """The quantized encoder drifted too far from the fp32 one."""


# ----------------------------------------------------------------------------- calibration data


class ImageFolderReader:
    """Feeds preprocessed images to ONNX Runtime's calibrators, one at a time.

    Implements ``onnxruntime.quantization.CalibrationDataReader`` (``get_next``) plus the
    ``__len__`` / ``set_range`` that ORT's strided calibration uses to bound memory. Images
    are decoded and preprocessed lazily: ``(1, 3, S, S)`` float32 each.

    Args:
        paths: image files (checked readable by :func:`quantize_encoder` beforehand).
        info: the model's facts (input size, normalisation).
        input_name: the encoder graph's input name.
    """

    def __init__(
        self, paths: Sequence[Path], info: ModelInfo, input_name: str = ENCODER_INPUTS[0]
    ) -> None:
        self.paths = list(paths)
        self.info = info
        self.input_name = input_name
        self._iter: Iterator[Path] = iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.paths[start_index:end_index])

    def rewind(self) -> None:
        self._iter = iter(self.paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._iter, None)
        if path is None:
            return None
        return {self.input_name: prepare_image(read_rgb(path), self.info)[0]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


# ----------------------------------------------------------------------------- quantization


def _quant_type(name: QuantTypeName) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _calibration_method(name: CalibrationMethodName) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if name not in methods:
        raise ValueError(f"unknown calibration method {name!r}; expected one of {list(methods)}")
    return methods[name]


def quantize_encoder(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: str | Path | Sequence[str | Path],
    *,
    target: QuantTarget = "cpu",
    quantize_attention_matmuls: bool = False,
    calibration_method: CalibrationMethodName = "minmax",
    percentile: float = 99.999,
    max_images: int | None = 64,
    preprocess: bool = True,
    validate: bool = True,
    min_cosine: float = 0.95,
    validation_images: int = 4,
) -> Path:
    """Quantize an exported fp32 encoder to INT8 (QDQ) with static calibration.

    Args:
        fp32_path: ``encoder.fp32.onnx`` written by :func:`~segfast_ros.export.export_encoder`
            (its metadata gives the preprocessing).
        out_path: output file, conventionally ``encoder.int8.onnx``.
        calibration_images: a folder of jpg/png frames, or a list of image files. Use frames
            like those the robot will see; a few dozen are enough for MinMax.
        target: one of :data:`QUANT_TARGETS` or ``"auto"`` (see the module docstring):
            ``"cpu"`` is right on every CPU, ``"tensorrt"`` is for TensorRT.
        quantize_attention_matmuls: also quantize q @ k^T and attn @ v. Off by default: on
            MobileSAM with the fixture's random weights it saved ~5% (~20 ms) and moved the
            embedding cosine by < 0.001, but random weights make near-uniform attention maps;
            trained ones are peaky, and uint8 steps of 1/255 erase small probabilities.
        calibration_method: ``"minmax"`` (fast, default), ``"percentile"`` or ``"entropy"``
            (histograms: 3-5x slower; fed one image at a time to bound memory).
        percentile: the percentile kept by ``"percentile"``.
        max_images: use at most this many images (evenly spread); None uses all.
        preprocess: run ORT's ``quant_pre_process`` first (recommended, see module docstring).
        validate: check the int8 embedding against the fp32 one on the first
            ``validation_images`` calibration images (a sanity check, not a held-out score:
            see :func:`~segfast_ros.export.report.int8_report` for that).
        min_cosine: lowest acceptable mean embedding cosine with ``validate``.
        validation_images: images used by ``validate``.

    Returns:
        ``out_path`` as a :class:`Path`. ONNX Runtime targets use opset 20 (``Gelu``): ONNX
        Runtime >= 1.17. Its :data:`QUANTIZATION_KEY` metadata records the target, the types,
        ``reduce_range``, this machine's CPU features (``built_on``) and, with ``validate``,
        the cosines measured here (``validation``).

    Raises:
        CalibrationError: missing/empty folder or unreadable image (checked before the
            minutes-long calibration starts).
        QuantizationError: the mean embedding cosine is below ``min_cosine`` (no file is
            written); the message names this machine's CPU features.
        ValueError: unknown target or calibration method.
    """
    job = _Job.start(
        target, calibration_method, percentile, quantize_attention_matmuls, preprocess
    )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = _fp32_encoder_info(fp32_path)
    reader = _calibration_reader(calibration_images, info, max_images)
    with tempfile.TemporaryDirectory(prefix="segfast_quant_") as tmp_dir:
        tmp = Path(tmp_dir)
        model, settings = job.quantize(fp32_path, tmp, reader, info)
        if validate:  # before the file takes its final name, so a bad one never lands there
            candidate = save_model(model, tmp / "candidate.onnx")
            settings["validation"] = job.validate(
                fp32_path, candidate, out_path, reader, settings, min_cosine, validation_images
            )
        model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(settings, sort_keys=True))
        # int8 weights are a quarter of fp32's: even SAM ViT-H's stay inline (< 2 GiB), so
        # saving again after the check is cheap and never splits off a data file.
        save_model(model, out_path)
    return out_path


def _fp32_encoder_info(fp32_path: Path) -> ModelInfo:
    """The model facts of an fp32 encoder file; ValueError for any other file."""
    meta = read_metadata(fp32_path)
    if meta.role != "encoder" or meta.precision != "fp32":
        raise ValueError(
            f"{fp32_path} is a {meta.precision} {meta.role}; quantize_encoder needs the fp32 "
            "encoder"
        )
    return meta.info


def _calibration_reader(
    images: str | Path | Sequence[str | Path], info: ModelInfo, max_images: int | None
) -> ImageFolderReader:
    """The calibration images, every one read once now, not after minutes of calibration."""
    paths = list_images(images, max_images=max_images)
    for path in paths:
        read_rgb(path)
    return ImageFolderReader(paths, info)


@dataclass(frozen=True)
class _Job:
    """One :func:`quantize_encoder` call: its target and calibration, in stages.

    :meth:`quantize` prepares the graph and runs ORT's static quantizer; :meth:`validate`
    compares the result with the fp32 encoder.
    """

    target: str
    recipe: QuantRecipe
    cpu: CpuFeatures
    calibration_method: CalibrationMethodName
    method: Any  # ORT's CalibrationMethod
    percentile: float
    quantize_attention_matmuls: bool
    preprocess: bool

    @classmethod
    def start(
        cls,
        target: QuantTarget,
        calibration_method: CalibrationMethodName,
        percentile: float,
        quantize_attention_matmuls: bool,
        preprocess: bool,
    ) -> _Job:
        """Resolve the target on this machine's CPU and check the calibration method.

        Raises:
            ValueError: unknown target or calibration method.
        """
        cpu = detect_cpu_features()
        name = resolve_target(target, cpu)
        method = _calibration_method(calibration_method)
        return cls(
            name, QUANT_TARGETS[name], cpu, calibration_method, method, percentile,
            quantize_attention_matmuls, preprocess,
        )  # fmt: skip

    def quantize(
        self, fp32_path: Path, tmp: Path, reader: ImageFolderReader, info: ModelInfo
    ) -> tuple[onnx.ModelProto, dict[str, Any]]:
        """The int8 model (segfast metadata set) and its quantization settings so far."""
        ready, model, gelus = self._prepare(fp32_path, tmp)
        excluded = [] if self.quantize_attention_matmuls else attention_matmuls(model)
        model = self._quantize_static(ready, tmp / "int8.onnx", reader, excluded)
        set_metadata(model, info, "encoder", "int8")
        settings: dict[str, Any] = {
            "target": self.target,
            "activation_type": self.recipe.activation_type,
            "weight_type": self.recipe.weight_type,
            "activation_symmetric": self.recipe.activation_symmetric,
            "reduce_range": self.recipe.reduce_range,
            "built_on": self.cpu.to_dict(),
            "calibration_method": self.calibration_method,
            "calibration_images": len(reader),
            "quantize_attention_matmuls": self.quantize_attention_matmuls,
            "gelu_fused": gelus,
            "preprocess": self.preprocess,
        }
        model.graph.doc_string = f"segfast {info.name} encoder (int8, {self.target})"
        return model, settings

    def _prepare(self, fp32_path: Path, tmp: Path) -> tuple[Path, onnx.ModelProto, int]:
        """The graph the quantizer reads: pre-processed, GELU fused for ONNX Runtime, saved.

        Returns:
            ``(saved path, the graph, fused GELU chains)``.
        """
        from onnxruntime.quantization import quant_pre_process

        source = fp32_path
        if self.preprocess:
            source = tmp / "pre.onnx"
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
        model = onnx.load(str(source))
        gelus = 0
        if self.recipe.for_onnxruntime:
            model, gelus = fuse_erf_gelu(model)
            if gelus == 0 and any(n.op_type == "Erf" for n in model.graph.node):
                warnings.warn(
                    "no erf-GELU chain matched; GELU stays decomposed and the int8 encoder "
                    "will be slower",
                    stacklevel=4,  # quantize_encoder's caller
                )
        drop_unused_opsets(model)
        ready = tmp / "ready.onnx"
        onnx.save(model, str(ready))
        return ready, model, gelus

    def _quantize_static(
        self, ready: Path, quantized: Path, reader: ImageFolderReader, excluded: list[str]
    ) -> onnx.ModelProto:
        """Run ORT's QDQ static quantizer on ``ready`` into ``quantized`` and load the result."""
        from onnxruntime.quantization import QuantFormat, quantize_static

        recipe = self.recipe
        # Which op outputs get a Q/DQ pair: see the module docstring for the targets.
        no_output_q = ["Gemm", "MatMul"] + ([] if recipe.for_onnxruntime else ["Conv"])
        extra: dict[str, Any] = {
            "ActivationSymmetric": recipe.activation_symmetric,
            # int8 weights symmetric (zero point 0, what the fast kernels and TensorRT want);
            # uint8 weights asymmetric, using all 256 levels.
            "WeightSymmetric": recipe.weight_type == "int8",
            "OpTypesToExcludeOutputQuantization": no_output_q,
            # TensorRT's DequantizeLinear takes int8 only: biases stay float for it (it folds
            # them itself); ORT's int8 kernels want the int32 bias.
            "QuantizeBias": recipe.for_onnxruntime,
        }
        if self.calibration_method != "minmax":
            # Histogram calibrators keep every activation of every image until the reader is
            # exhausted (OOM at 24 GB with 16 MobileSAM images); strides of one image bound it.
            extra["CalibStridedMinMax"] = 1
            extra["CalibPercentile"] = self.percentile
        ort_logger = logging.getLogger()
        level = ort_logger.level
        ort_logger.setLevel(logging.ERROR)  # ORT's quantizer logs every tensor it skips
        try:
            quantize_static(
                str(ready),
                str(quantized),
                reader,  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=_quant_type(recipe.activation_type),
                weight_type=_quant_type(recipe.weight_type),
                reduce_range=recipe.reduce_range,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_exclude=excluded,
                calibrate_method=self.method,
                extra_options=extra,
            )
        finally:
            ort_logger.setLevel(level)
        model = onnx.load(str(quantized))
        drop_unused_opsets(model)
        return model

    def validate(
        self,
        fp32_path: Path,
        candidate: Path,
        out_path: Path,
        reader: ImageFolderReader,
        settings: dict[str, Any],
        min_cosine: float,
        images: int,
    ) -> dict[str, Any]:
        """The embedding cosines of ``candidate`` (with these ``settings``) vs fp32 on the first
        ``images`` images.

        Raises:
            QuantizationError: their mean is below ``min_cosine``; the message names this
                machine's CPU and what to try.
        """
        inputs = [item[reader.input_name] for item, _ in zip(reader, range(images), strict=False)]
        cosines = embedding_cosines(fp32_path, candidate, inputs)
        if float(np.mean(cosines)) < min_cosine:
            hint = (
                f"this CPU saturates {self.target!r} files: use target 'cpu' or 'cpu-avx2'"
                if saturates_on(settings, self.cpu)
                else "try more or more representative calibration images, or "
                "calibration_method='percentile'"
            )
            raise QuantizationError(
                f"int8 encoder for {out_path} (target {self.target}: "
                f"{self.recipe.describe()}) drifts from fp32 on {self.cpu.describe()}: "
                f"embedding cosine {[round(c, 4) for c in cosines]} (mean "
                f"{np.mean(cosines):.4f}) < min_cosine {min_cosine}; {hint}"
            )
        return {
            "mean_cosine": round(float(np.mean(cosines)), 5),
            "min_cosine": round(float(np.min(cosines)), 5),
            "images": len(cosines),
            "cpu": self.cpu.describe(),
        }


def quantization_settings(path: str | Path) -> dict[str, Any] | None:
    """The :data:`QUANTIZATION_KEY` settings of an int8 file (None when it has none)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    text = props.get(QUANTIZATION_KEY)
    return json.loads(text) if text else None
