"""INT8 post-training static quantization of the image encoder (QDQ, per-channel weights).

Only the weighted ops are quantized: ``Conv``, ``Gemm`` and ``MatMul`` with a weight input
(optionally also the activation x activation ``MatMul`` of attention). LayerNorm, Softmax and
GELU keep running in float: their inputs are dequantized first. Calibration runs the fp32
encoder in ONNX Runtime on a folder of images preprocessed exactly as at inference
(:func:`segfast_ros.runtime.transforms.prepare_image`).

Two targets, because ONNX Runtime's x86 kernels and TensorRT want different files:

``"cpu"`` (default; what ``encoder.int8.onnx`` is for, ONNX Runtime's CPU EP)
    uint8 asymmetric activations, int8 symmetric per-channel weights. ``Gemm``/``MatMul``
    outputs stay float (ORT runs them as ``QGemm`` / ``MatMulIntegerToFloat`` with a float
    output), ``Conv`` outputs are quantized (``QLinearConv`` needs it). The erf-GELU chain is
    rewritten as one ``Gelu`` node (opset 20): ORT gives every consumer of a
    ``DequantizeLinear`` its own copy, which splits the ``Div``/``Mul`` pair that its GELU
    fusion needs, and the unfused chain on the 256x256 MBConv maps costs ~100 ms.
    Measured on the full MobileSAM encoder (2 threads, AVX512-VNNI, medians of interleaved
    runs): int8 310-410 ms vs fp32 ORT 420-500 ms and fp32 PyTorch 1150-1800 ms (quiet to
    busy machine); embedding cosine vs fp32 0.993. int8 symmetric activations run slower on
    ORT x86 (~400 vs ~315 ms in one run): it has no int8 x int8 depthwise ``QLinearConv`` and
    runs those convs in float.
``"tensorrt"``
    int8 symmetric activations and weights (zero point 0, the only kind TensorRT accepts),
    QDQ only on the inputs of weighted ops (NVIDIA's placement advice), float biases (TensorRT's
    ``DequantizeLinear`` reads int8 only), opset 17 and plain ONNX ops; TensorRT fuses the Q/DQ
    into its int8 kernels. Not verified on hardware here.

ORT's quantization pre-processing (symbolic shape inference plus its basic graph
optimizations, which fuse ``MatMul`` + ``Add`` into ``Gemm``) runs first: without it the same
quantized encoder ran 1.3-1.8x slower (``MatMul`` + separate bias ``Add`` kernels).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from ..runtime.images import CalibrationError, list_images, read_rgb
from ..runtime.transforms import prepare_image
from ..spec import ENCODER_INPUTS, ENCODER_OUTPUTS, METADATA_KEY, ModelInfo
from .fp16 import drop_unused_initializers
from .metadata import read_metadata, save_model, set_metadata

__all__ = [
    "QUANTIZATION_KEY",
    "CalibrationError",
    "ImageFolderReader",
    "QuantizationError",
    "attention_matmuls",
    "embedding_cosines",
    "fuse_erf_gelu",
    "ort_kernel_summary",
    "qdq_summary",
    "quantize_encoder",
]

QuantTarget = Literal["cpu", "tensorrt"]
CalibrationMethodName = Literal["minmax", "percentile", "entropy"]

#: ``metadata_props`` key holding the quantization settings (JSON).
QUANTIZATION_KEY = f"{METADATA_KEY}.quantization"

#: Op types whose weight inputs are quantized.
QUANTIZED_OP_TYPES: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

#: Opset of the "cpu" target: the first with a ``Gelu`` op.
_GELU_OPSET = 20


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


# ----------------------------------------------------------------------------- graph rewrites


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _is_scalar(values: dict[str, np.ndarray], name: str, expected: float) -> bool:
    value = values.get(name)
    return value is not None and value.size == 1 and abs(float(value) - expected) < 1e-4


def fuse_erf_gelu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace every ``0.5 * x * (1 + erf(x / sqrt(2)))`` chain with one ``Gelu`` node.

    The model is converted to opset 20 (the first with ``Gelu``). Matches the chain the
    exporters write for ``F.gelu`` (``Div`` by sqrt(2) or ``Mul`` by 1/sqrt(2), ``Erf``,
    ``Add`` 1, ``Mul`` by ``x``, ``Mul`` by 0.5, in either operand order).

    Returns:
        The new model and the number of fused chains.
    """
    model = version_converter.convert_version(model, _GELU_OPSET)
    # The converter keeps the IR version, but opset 20 needs IR >= 9 (ORT would accept 8,
    # onnx.checker and stricter readers do not).
    model.ir_version = max(
        model.ir_version,
        helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True),
    )
    graph = model.graph
    values = _constant_values(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def other_input(node: onnx.NodeProto, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    replaced: dict[int, onnx.NodeProto] = {}  # id of the chain's last node -> Gelu
    dropped: set[int] = set()
    for scale in graph.node:
        if scale.op_type not in ("Div", "Mul") or len(scale.input) != 2:
            continue
        x = scale.input[0]
        factor = 2**0.5 if scale.op_type == "Div" else 2**-0.5
        if not _is_scalar(values, scale.input[1], factor):
            continue
        erf = only_consumer(scale, "Erf")
        add = erf and only_consumer(erf, "Add")
        mul_x = add and only_consumer(add, "Mul")
        if not (add and mul_x and _is_scalar(values, other_input(add, erf.output[0]) or "", 1)):
            continue
        if other_input(mul_x, add.output[0]) != x:
            continue
        half = only_consumer(mul_x, "Mul")
        if half is None or not _is_scalar(values, other_input(half, mul_x.output[0]) or "", 0.5):
            continue
        chain = (scale, erf, add, mul_x, half)
        dropped.update(id(n) for n in chain)
        replaced[id(half)] = helper.make_node(
            "Gelu", [x], [half.output[0]], name=f"{erf.name or half.output[0]}/Gelu"
        )
    nodes = [
        replaced.get(id(n), n) for n in graph.node if id(n) not in dropped or id(n) in replaced
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)  # the sqrt(2), 1 and 0.5 constants
    return model, len(replaced)


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """Remove opset imports no node uses (ORT's pre-processing adds a handful)."""
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the ``MatMul`` nodes whose inputs are both activations (q @ k^T, attn @ v)."""
    consts = set(_constant_values(model))
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in consts for i in n.input)
    ]


# ----------------------------------------------------------------------------- quantization


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


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embedding_cosines(
    fp32_path: str | Path,
    int8_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    threads: int = 0,
) -> list[float]:
    """Cosine similarity of the fp32 and int8 encoders' embeddings, one per input.

    Args:
        inputs: ``(1, 3, S, S)`` float32 preprocessed images.
        threads: ORT intra-op threads (0: all cores).
    """
    a, b = _session(Path(fp32_path), threads), _session(Path(int8_path), threads)
    cosines = []
    for x in inputs:
        (ref,) = a.run(list(ENCODER_OUTPUTS), {ENCODER_INPUTS[0]: x})
        (got,) = b.run(list(ENCODER_OUTPUTS), {ENCODER_INPUTS[0]: x})
        cosines.append(cosine_similarity(ref, got))
    return cosines


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two arrays of the same size, flattened, in float64 (0.0 if either is zero)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / denom) if denom > 0 else 0.0


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
        target: ``"cpu"`` (ONNX Runtime) or ``"tensorrt"`` (see the module docstring).
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
        ``out_path`` as a :class:`Path`. The ``"cpu"`` file uses opset 20 (``Gelu``): ONNX
        Runtime >= 1.17.

    Raises:
        CalibrationError: missing/empty folder or unreadable image (checked before the
            minutes-long calibration starts).
        QuantizationError: the mean embedding cosine is below ``min_cosine`` (no file is
            written).
        ValueError: unknown target or calibration method.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    if target not in ("cpu", "tensorrt"):
        raise ValueError(f"unknown target {target!r}; expected 'cpu' or 'tensorrt'")
    method = _calibration_method(calibration_method)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    meta = read_metadata(fp32_path)
    if meta.role != "encoder" or meta.precision != "fp32":
        raise ValueError(
            f"{fp32_path} is a {meta.precision} {meta.role}; quantize_encoder needs the fp32 "
            "encoder"
        )
    paths = list_images(calibration_images, max_images=max_images)
    for path in paths:  # fail now, not after minutes of calibration
        read_rgb(path)
    reader = ImageFolderReader(paths, meta.info)

    with tempfile.TemporaryDirectory(prefix="segfast_quant_") as tmp_dir:
        tmp = Path(tmp_dir)
        source = fp32_path
        if preprocess:
            source = tmp / "pre.onnx"
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
        model = onnx.load(str(source))
        gelus = 0
        if target == "cpu":
            model, gelus = fuse_erf_gelu(model)
            if gelus == 0 and any(n.op_type == "Erf" for n in model.graph.node):
                warnings.warn(
                    "no erf-GELU chain matched; GELU stays decomposed and the int8 encoder "
                    "will be slower",
                    stacklevel=2,
                )
        _drop_unused_opsets(model)
        ready = tmp / "ready.onnx"
        onnx.save(model, str(ready))

        excluded = [] if quantize_attention_matmuls else attention_matmuls(model)
        # Which op outputs get a Q/DQ pair: see the module docstring for both targets.
        no_output_q = ["Gemm", "MatMul"] + (["Conv"] if target == "tensorrt" else [])
        extra: dict[str, Any] = {
            "ActivationSymmetric": target == "tensorrt",
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": no_output_q,
            # TensorRT's DequantizeLinear takes int8 only: biases stay float for it (it folds
            # them itself); ORT's int8 kernels want the int32 bias.
            "QuantizeBias": target == "cpu",
        }
        if calibration_method != "minmax":
            # Histogram calibrators keep every activation of every image until the reader is
            # exhausted (OOM at 24 GB with 16 MobileSAM images); strides of one image bound it.
            extra["CalibStridedMinMax"] = 1
            extra["CalibPercentile"] = percentile
        quantized = tmp / "int8.onnx"
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
                activation_type=QuantType.QUInt8 if target == "cpu" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_exclude=excluded,
                calibrate_method=method,
                extra_options=extra,
            )
        finally:
            ort_logger.setLevel(level)
        model = onnx.load(str(quantized))
        _drop_unused_opsets(model)
        set_metadata(model, meta.info, "encoder", "int8")
        settings = {
            "target": target,
            "calibration_method": calibration_method,
            "calibration_images": len(paths),
            "quantize_attention_matmuls": quantize_attention_matmuls,
            "gelu_fused": gelus,
            "preprocess": preprocess,
        }
        model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(settings, sort_keys=True))
        model.graph.doc_string = f"segfast {meta.info.name} encoder (int8, {target})"
        candidate = save_model(model, tmp / "candidate.onnx")

        if validate:  # before the file takes its final name, so a bad one never lands there
            inputs = [
                item[reader.input_name]
                for item, _ in zip(reader, range(validation_images), strict=False)
            ]
            cosines = embedding_cosines(fp32_path, candidate, inputs)
            if float(np.mean(cosines)) < min_cosine:
                raise QuantizationError(
                    f"int8 encoder for {out_path} drifts from fp32: embedding cosine "
                    f"{[round(c, 4) for c in cosines]} (mean {np.mean(cosines):.4f}) < "
                    f"min_cosine {min_cosine}; try more or more representative calibration "
                    "images, or calibration_method='percentile'"
                )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(candidate), str(out_path))
    return out_path


# ----------------------------------------------------------------------------- inspection


def ort_kernel_summary(path: str | Path) -> Counter[str]:
    """Op types ONNX Runtime's CPU EP actually runs for ``path`` after its graph fusions.

    ``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``, ... are int8 kernels; ``Gelu``,
    ``LayerNormalization``, ``Softmax`` left as such run in float. Keys are
    ``"domain:op"`` for non-default domains, else ``"op"``.
    """
    with tempfile.TemporaryDirectory(prefix="segfast_ort_") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    return Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


def qdq_summary(path: str | Path) -> dict[str, dict[str, int]]:
    """Per op type, how many nodes read a dequantized tensor (``"dq_input"``) or not.

    Quantize/Dequantize nodes themselves are left out. A weighted op with ``dq_input`` is
    quantized; a float op (LayerNorm, Softmax, GELU) may read a dequantized activation but
    is never given quantized weights.
    """
    model = onnx.load(str(path))
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    summary: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind = "dq_input" if any(i in dq_outputs for i in node.input) else "float"
        counts = summary.setdefault(node.op_type, {})
        counts[kind] = counts.get(kind, 0) + 1
    return summary
