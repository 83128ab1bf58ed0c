"""Reading and rewriting the encoder graph around INT8 quantization (onnx and ONNX Runtime).

* :func:`fuse_erf_gelu`: the erf-GELU chain as one ``Gelu`` node (opset 20), so ORT's int8
  encoder runs it fused (see :mod:`segfast_ros.export.quantize`, target ``"cpu"``).
* :func:`attention_matmuls`: the activation x activation ``MatMul``\\ s left in float unless
  asked otherwise.
* :func:`drop_unused_opsets`: the opset imports ORT's pre-processing adds and no node uses.
* :func:`ort_kernel_summary` and :func:`qdq_summary`: which kernels and Q/DQ placement a file
  ends up with, for the reports and tests.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from .fp16 import drop_unused_initializers

#: Opset of the "cpu" target: the first with a ``Gelu`` op.
GELU_OPSET = 20


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
    model = version_converter.convert_version(model, GELU_OPSET)
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


def drop_unused_opsets(model: onnx.ModelProto) -> None:
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
