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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from ..runtime.cpu_features import CpuFeatures, detect_cpu_features, saturates_on
from ..runtime.images import CalibrationError, list_images, read_rgb
from ..runtime.transforms import prepare_image
from ..spec import ENCODER_INPUTS, ENCODER_OUTPUTS, QUANTIZATION_KEY, ModelInfo
from .fp16 import drop_unused_initializers
from .metadata import read_metadata, save_model, set_metadata

__all__ = [
    "AUTO_TARGETS",
    "QUANTIZATION_KEY",
    "QUANT_TARGETS",
    "CalibrationError",
    "ImageFolderReader",
    "QuantRecipe",
    "QuantizationError",
    "attention_matmuls",
    "embedding_cosines",
    "fuse_erf_gelu",
    "ort_kernel_summary",
    "qdq_summary",
    "quantization_settings",
    "quantize_encoder",
    "resolve_target",
]

QuantTarget = Literal["cpu", "cpu-vnni", "cpu-avx2", "arm", "tensorrt", "auto"]
CalibrationMethodName = Literal["minmax", "percentile", "entropy"]
QuantTypeName = Literal["uint8", "int8"]


@dataclass(frozen=True)
class QuantRecipe:
    """The quantization types of one target (see the module docstring for why).

    Attributes:
        activation_type: ``"uint8"`` or ``"int8"``.
        weight_type: ``"int8"`` (symmetric) or ``"uint8"`` (asymmetric), per output channel.
        activation_symmetric: zero point 0 for activations (TensorRT's requirement).
        reduce_range: 7-bit weights, so ORT's x86 U8S8 kernels cannot saturate.
        for_onnxruntime: ORT's layout (GELU fused at opset 20, ``Conv`` outputs and biases
            quantized); False: TensorRT's (opset 17, QDQ on weighted ops' inputs only).
        use: where the file is meant to run (help texts, reports).
    """

    activation_type: QuantTypeName
    weight_type: QuantTypeName
    activation_symmetric: bool
    reduce_range: bool
    for_onnxruntime: bool
    use: str

    def describe(self) -> str:
        """e.g. ``uint8 x int8 (7-bit)``."""
        bits = ", 7-bit" if self.reduce_range else ""
        sym = " symmetric" if self.activation_symmetric else ""
        return f"{self.activation_type}{sym} activations x {self.weight_type} weights{bits}"


#: The quantization targets (``"auto"`` resolves to one of them, :func:`resolve_target`).
QUANT_TARGETS: dict[str, QuantRecipe] = {
    "cpu": QuantRecipe(
        "uint8", "int8", False, True, True, "any CPU (x86 with or without VNNI, ARM)"
    ),
    "cpu-vnni": QuantRecipe(
        "uint8", "int8", False, False, True, "x86 with AVX-512 VNNI or AVX-VNNI, and ARM"
    ),
    "cpu-avx2": QuantRecipe("uint8", "uint8", False, False, True, "x86 without VNNI"),
    "arm": QuantRecipe("int8", "int8", False, False, True, "ARM64 CPUs (Jetson)"),
    "tensorrt": QuantRecipe("int8", "int8", True, False, False, "TensorRT (Jetson GPU)"),
}

#: ``"auto"``: the target for the building machine's CPU kind; any other kind (x86 without
#: VNNI included) gets ``"cpu"``, whose 7-bit weights run ORT's fast U8S8 kernels unsaturated.
AUTO_TARGETS: dict[str, str] = {"x86-vnni": "cpu-vnni", "arm64": "arm"}


def resolve_target(target: str, cpu: CpuFeatures | None = None) -> str:
    """The concrete target name: ``target`` itself, or for ``"auto"`` the one for ``cpu``
    (default: this machine's CPU; ``"cpu"`` where its kind is unknown).

    Raises:
        ValueError: unknown target.
    """
    if target == "auto":
        cpu = cpu or detect_cpu_features()
        return AUTO_TARGETS.get(cpu.kind, "cpu")
    if target not in QUANT_TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {[*QUANT_TARGETS, 'auto']}")
    return target


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
    from onnxruntime.quantization import QuantFormat, quant_pre_process, quantize_static

    cpu = detect_cpu_features()
    target_name = resolve_target(target, cpu)
    recipe = QUANT_TARGETS[target_name]
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
        if recipe.for_onnxruntime:
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
                activation_type=_quant_type(recipe.activation_type),
                weight_type=_quant_type(recipe.weight_type),
                reduce_range=recipe.reduce_range,
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
        settings: dict[str, Any] = {
            "target": target_name,
            "activation_type": recipe.activation_type,
            "weight_type": recipe.weight_type,
            "activation_symmetric": recipe.activation_symmetric,
            "reduce_range": recipe.reduce_range,
            "built_on": cpu.to_dict(),
            "calibration_method": calibration_method,
            "calibration_images": len(paths),
            "quantize_attention_matmuls": quantize_attention_matmuls,
            "gelu_fused": gelus,
            "preprocess": preprocess,
        }
        model.graph.doc_string = f"segfast {meta.info.name} encoder (int8, {target_name})"

        if validate:  # before the file takes its final name, so a bad one never lands there
            candidate = save_model(model, tmp / "candidate.onnx")
            inputs = [
                item[reader.input_name]
                for item, _ in zip(reader, range(validation_images), strict=False)
            ]
            cosines = embedding_cosines(fp32_path, candidate, inputs)
            if float(np.mean(cosines)) < min_cosine:
                hint = (
                    f"this CPU saturates {target_name!r} files: use target 'cpu' or 'cpu-avx2'"
                    if saturates_on(settings, cpu)
                    else "try more or more representative calibration images, or "
                    "calibration_method='percentile'"
                )
                raise QuantizationError(
                    f"int8 encoder for {out_path} (target {target_name}: {recipe.describe()}) "
                    f"drifts from fp32 on {cpu.describe()}: embedding cosine "
                    f"{[round(c, 4) for c in cosines]} (mean {np.mean(cosines):.4f}) < "
                    f"min_cosine {min_cosine}; {hint}"
                )
            settings["validation"] = {
                "mean_cosine": round(float(np.mean(cosines)), 5),
                "min_cosine": round(float(np.min(cosines)), 5),
                "images": len(cosines),
                "cpu": cpu.describe(),
            }
        model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(settings, sort_keys=True))
        # int8 weights are a quarter of fp32's: even SAM ViT-H's stay inline (< 2 GiB), so
        # saving again after the check is cheap and never splits off a data file.
        save_model(model, out_path)
    return out_path


def quantization_settings(path: str | Path) -> dict[str, Any] | None:
    """The :data:`QUANTIZATION_KEY` settings of an int8 file (None when it has none)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    text = props.get(QUANTIZATION_KEY)
    return json.loads(text) if text else None


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
