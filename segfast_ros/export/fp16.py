"""Mixed-precision FP16 conversion of an exported FP32 graph (for GPUs and TensorRT).

Every float32 node runs in float16 except the ops that overflow or lose too much in half
precision, which keep float32 with Casts around them:

* ``LayerNormalization``, ``Softmax``: variance and exp accumulate beyond fp16's 65504;
* ``ReduceMean``, ``Pow``, ``Sqrt``: the channel LayerNorm of the SAM neck and decoder is a
  decomposed ``mean((x - mean(x))^2)``, whose square overflows fp16 once ``|x| > 256``;
* ``Sin``, ``Cos``: the random Fourier positional encoding of the prompt points takes
  arguments of tens of radians, where fp16's 3 significant digits would shift the phase.

Inputs and outputs stay float32 (``keep_io_types``), so the runtime feeds both variants alike.

We do not use ``onnxruntime.transformers.float16.convert_float_to_float16``: with the graphs
the exporter writes it emits duplicate Cast names for a constant read by two blocked nodes and
appends the input Casts at the end of the node list, so the result fails ``onnx.checker``
(nodes not topologically sorted, which TensorRT's parser rejects as well). This converter
keeps the node order and inserts each Cast right before its first consumer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .metadata import MAX_INLINE_WEIGHT_BYTES, read_metadata, save_model, set_metadata

#: Ops kept in float32 by default (see the module docstring for why).
FP16_KEEP_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Sin",
    "Cos",
)

#: Inputs that the ONNX spec types as float32 whatever the data type (``(op, input index)``).
_FLOAT32_ONLY_INPUTS: frozenset[tuple[str, int]] = frozenset({("Resize", 2)})

#: Ops that read any tensor type unchanged: they never need a Cast in front.
_TYPE_AGNOSTIC: frozenset[str] = frozenset({"Shape", "Size"})

_FP16_MAX = float(np.finfo(np.float16).max)
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _to_half(array: np.ndarray) -> np.ndarray:
    """float32 to float16, clipping out-of-range values instead of making them inf."""
    return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, also for models whose weights exceed protobuf's 2 GiB.

    Big models go through a temporary file with external data (``infer_shapes_path``); the
    result then carries no weight data, only the types and shapes.
    """
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if weight_bytes <= MAX_INLINE_WEIGHT_BYTES:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    with tempfile.TemporaryDirectory(prefix="segfast_shapes_") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        onnx.save(model, str(src), save_as_external_data=True, location="weights.data")
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        inferred = onnx.load(str(dst), load_external_data=False)
        # onnx.save moved the caller's weights out to the file: bring them back.
        onnx.external_data_helper.load_external_data_for_model(model, tmp)
        return inferred


def _float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor of the (top-level) graph, from ONNX shape inference."""
    graph = infer_shapes(model).graph
    names = {t.name for t in graph.initializer if t.data_type == _FLOAT}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.tensor_type.elem_type == _FLOAT:
            names.add(vi.name)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == _FLOAT:
                    names.add(node.output[0])
    return names


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_fp32_ops: Collection[str] = FP16_KEEP_FP32_OPS,
    keep_fp32_nodes: Collection[str] = (),
) -> onnx.ModelProto:
    """Return a copy of ``model`` computing in float16 except ``keep_fp32_ops`` / ``_nodes``.

    Graph inputs and outputs keep their float32 type. Weights read only by float16 nodes are
    stored as float16 (values beyond fp16's range are clipped to +-65504).

    Args:
        model: an fp32 model with all weights inside the proto (no external data refs).
        keep_fp32_ops: op types that keep running in float32.
        keep_fp32_nodes: node names that keep running in float32.

    Raises:
        ValueError: the graph has subgraphs (If/Loop/Scan), which this converter does not
            descend into.
    """
    for node in model.graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise ValueError(
                f"node {node.name!r} ({node.op_type}) holds a subgraph; fp16 conversion "
                "supports flat graphs only"
            )
    floats = _float_tensor_names(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep_ops, keep_nodes = frozenset(keep_fp32_ops), frozenset(keep_fp32_nodes)
    rewrite = _Fp16Rewrite(out.graph, floats)
    for node in out.graph.node:
        # A node computes in fp16 when it makes float tensors; nodes that only read them
        # (Equal, Cast to int) read float32, which is exact for the labels and sizes they see.
        half = (
            any(n in floats for n in node.output)
            and node.op_type not in keep_ops
            and node.name not in keep_nodes
        )
        rewrite.add(node, half)
    rewrite.finish()
    return out


class _Fp16Rewrite:
    """The node list of :func:`convert_to_fp16` as it is rewritten, with the Casts it needs.

    Each Cast goes right before the first node that reads it, so the node order stays
    topological; a tensor is cast at most once per target type.
    """

    def __init__(self, graph: onnx.GraphProto, floats: set[str]) -> None:
        self.graph, self.floats = graph, floats
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        # Current element type of every float tensor after conversion (inputs stay float32).
        self.dtype: dict[str, int] = {n: _FLOAT for n in self.graph_inputs if n in floats}
        self.half_inits: dict[str, str] = {}  # fp32 initializer name -> its fp16 copy
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, to) -> name of the cast tensor
        self.nodes: list[onnx.NodeProto] = []

    def as_type(self, name: str, to: int) -> str:
        """The name under which tensor ``name`` reads as type ``to`` (a Cast or fp16 copy)."""
        if name in self.initializers and name not in self.graph_inputs:
            if to == _FLOAT:
                return name
            if name not in self.half_inits:
                half = numpy_helper.from_array(
                    _to_half(numpy_helper.to_array(self.initializers[name])), f"{name}__fp16"
                )
                self.graph.initializer.append(half)
                self.half_inits[name] = half.name
            return self.half_inits[name]
        if self.dtype.get(name, _FLOAT) == to:
            return name
        key = (name, to)
        if key not in self.casts:
            suffix = "fp16" if to == _HALF else "fp32"
            self.casts[key] = f"{name}__{suffix}"
            self.nodes.append(
                helper.make_node(
                    "Cast", [name], [self.casts[key]], name=f"{name}__cast_{suffix}", to=to
                )
            )
        return self.casts[key]

    def add(self, node: onnx.NodeProto, half: bool) -> None:
        """Append ``node``, computing in fp16 if ``half``, its inputs cast to match."""
        for i, name in enumerate(node.input):
            if name in self.floats and node.op_type not in _TYPE_AGNOSTIC:
                fp32_only = (node.op_type, i) in _FLOAT32_ONLY_INPUTS
                node.input[i] = self.as_type(name, _HALF if half and not fp32_only else _FLOAT)
        if half:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == _FLOAT:  # Cast to float now means fp16
                    attr.i = _HALF
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
                    # Constant / ConstantOfShape values
                    attr.t.CopyFrom(
                        numpy_helper.from_array(
                            _to_half(numpy_helper.to_array(attr.t)), attr.t.name
                        )
                    )
        for name in node.output:
            if name in self.floats:
                self.dtype[name] = _HALF if half else _FLOAT
        self.nodes.append(node)

    def finish(self) -> None:
        """Cast fp16 outputs back to float32 and put the new node list into the graph."""
        # Outputs computed in fp16 get a final Cast back to the float32 name the runtime
        # expects.
        renames: dict[str, str] = {}
        for output in self.graph.output:
            if output.name in self.floats and self.dtype.get(output.name) == _HALF:
                renames[output.name] = f"{output.name}__fp16"
        for node in self.nodes:
            for seq in (node.input, node.output):
                for i, name in enumerate(seq):
                    if name in renames:
                        seq[i] = renames[name]
        for name, half_name in renames.items():
            self.nodes.append(
                helper.make_node("Cast", [half_name], [name], name=f"{name}__cast_out", to=_FLOAT)
            )
        graph = self.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        drop_unused_initializers(graph)
        # Intermediate type annotations are stale now; consumers re-infer them.
        del graph.value_info[:]


def export_fp16(
    src: str | Path,
    dst: str | Path,
    *,
    keep_fp32_ops: Collection[str] = FP16_KEEP_FP32_OPS,
    max_inline_bytes: int = MAX_INLINE_WEIGHT_BYTES,
) -> Path:
    """Convert an exported fp32 file to mixed fp16 with :func:`convert_to_fp16`.

    Inputs and outputs stay float32, so the runtime feeds both variants alike. The segfast
    metadata is copied with precision ``fp16``.

    Returns:
        ``dst`` as a :class:`Path`.
    """
    model = onnx.load(str(src))
    meta = read_metadata(model)
    if meta.precision != "fp32":
        raise ValueError(f"{src} is {meta.precision}; export_fp16 converts fp32 files")
    half = convert_to_fp16(model, keep_fp32_ops=keep_fp32_ops)
    set_metadata(half, meta.info, meta.role, "fp16")  # type: ignore[arg-type]
    half.graph.doc_string = f"segfast {meta.info.name} {meta.role} (fp16)"
    return save_model(half, dst, max_inline_bytes=max_inline_bytes)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads and no output names (in place)."""
    used = {name for node in graph.node for name in node.input}
    used.update(o.name for o in graph.output)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fp16_node_summary(path: str | Path) -> dict[str, dict[str, int]]:
    """Count nodes per op type and compute type in an fp16 file: ``{op: {"fp16": n, ...}}``.

    A node counts as fp16 when any of its inputs is a float16 tensor; meant for reports and
    tests that check which ops were kept in float32.
    """
    graph = infer_shapes(onnx.load(str(path))).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    summary: dict[str, dict[str, int]] = {}
    for node in graph.node:
        in_types = {types.get(n) for n in node.input if n}
        kind = "fp16" if _HALF in in_types else "fp32" if _FLOAT in in_types else "other"
        counts = summary.setdefault(node.op_type, {})
        counts[kind] = counts.get(kind, 0) + 1
    return summary
