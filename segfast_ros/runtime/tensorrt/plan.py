"""What a TensorRT engine is built with, as pure functions (no tensorrt, no onnx, no GPU).

* :func:`fp32_plan`: which layers keep FP32 in an FP16/INT8 engine. LayerNorm (the
  ``LayerNormalization`` op or its ``ReduceMean``/``Sub``/``Pow``/``Sqrt``/``Div`` chain),
  ``Softmax`` and the two attention ``MatMul``\\ s around a softmax (``q @ k^T`` and
  ``attn @ v``) overflow or lose too much in FP16: NanoSAM reported a MobileSAM encoder giving
  wrong masks in plain FP16, and EfficientViT-SAM forces its LayerNorms to FP32.
* :func:`decoder_profile`: the decoder engine's optimization profile over the number of prompt
  sets ``B`` and points per set ``N``.

The plan runs on a small graph description (:class:`Op`, ONNX op-type vocabulary) made either
from an ONNX model (:func:`ops_from_onnx`, duck-typed: no ``onnx`` import) or from a parsed
TensorRT network (``segfast_ros.runtime.tensorrt.build``), so the same rules are tested on
CPU and applied at build time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segfast_ros.spec import DECODER_INPUTS, ModelInfo

#: Op types whose outputs are not a new computation: an attention MatMul may reach its softmax
#: through them (the 1/sqrt(d) scale, a bias add, head reshapes, casts).
PASS_THROUGH_OPS = frozenset(
    {"Mul", "Div", "Add", "Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze"}
)
#: Ops of a decomposed LayerNorm after ``x - mean(x)``, up to the normalising ``Div``.
LAYERNORM_CHAIN_OPS = frozenset({"Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal"})
#: Hops through :data:`PASS_THROUGH_OPS` allowed between an attention MatMul and its Softmax.
ATTENTION_HOPS = 3

REASON_LAYERNORM = "layernorm"
REASON_SOFTMAX = "softmax"
REASON_ATTENTION = "attention matmul"


@dataclass(frozen=True)
class Op:
    """One graph node: ``name``, ONNX ``op_type``, input and output tensor names."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def ops_from_onnx(model: Any) -> list[Op]:
    """The nodes of an ``onnx.ModelProto`` (main graph) as :class:`Op`\\ s.

    Unnamed nodes are named ``<op_type>_<index>`` so every op has a key.
    """
    return [
        Op(n.name or f"{n.op_type}_{i}", n.op_type, tuple(n.input), tuple(n.output))
        for i, n in enumerate(model.graph.node)
    ]


def _consumers(ops: Sequence[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        for tensor in op.inputs:
            out.setdefault(tensor, []).append(op)
    return out


def _producers(ops: Sequence[Op]) -> dict[str, Op]:
    return {tensor: op for op in ops for tensor in op.outputs}


def _reaches(
    start: Op,
    target: str,
    step: Any,
    hops: int = ATTENTION_HOPS,
    through: frozenset[str] = PASS_THROUGH_OPS,
) -> bool:
    """Whether ``target`` op type is reachable from ``start`` by ``step`` via pass-through ops."""
    frontier, seen = [start], {start.name}
    for _ in range(hops + 1):
        nxt = []
        for op in frontier:
            for other in step(op):
                if other.name in seen:
                    continue
                seen.add(other.name)
                if other.op_type == target:
                    return True
                if other.op_type in through:
                    nxt.append(other)
        frontier = nxt
    return False


def _layernorm_chains(ops: Sequence[Op], consumers: dict[str, list[Op]]) -> set[str]:
    """Names of the ops of every decomposed LayerNorm: ``(x - mean(x)) / sqrt(var + eps)``."""
    names: set[str] = set()
    for mean in ops:
        if mean.op_type != "ReduceMean" or not mean.inputs:
            continue
        x = mean.inputs[0]
        for sub in consumers.get(mean.outputs[0], []):
            # x - mean(x): the centring step that makes this a normalisation, not any mean.
            if sub.op_type != "Sub" or x not in sub.inputs:
                continue
            chain, frontier, found_div = {mean.name, sub.name}, [sub], False
            for _ in range(6):  # Pow, ReduceMean, Add, Sqrt, Div: five steps after Sub
                nxt = []
                for op in frontier:
                    for c in consumers.get(op.outputs[0], []) if op.outputs else []:
                        if c.op_type not in LAYERNORM_CHAIN_OPS or c.name in chain:
                            continue
                        chain.add(c.name)
                        if c.op_type in ("Div", "Reciprocal"):
                            found_div = True  # the end of the normalisation proper
                        else:
                            nxt.append(c)
                frontier = nxt
            if found_div:
                names |= chain
    return names


def fp32_plan(ops: Sequence[Op]) -> dict[str, str]:
    """The ops to keep in FP32 in a reduced-precision engine, with the reason for each.

    Args:
        ops: the graph (from :func:`ops_from_onnx` or a TensorRT network).

    Returns:
        ``{op name: reason}``, reason one of ``"layernorm"``, ``"softmax"``,
        ``"attention matmul"``. Ops not in it are left to the builder (FP16 or INT8).
    """
    consumers, producers = _consumers(ops), _producers(ops)

    def forward(op: Op) -> list[Op]:
        return [c for t in op.outputs for c in consumers.get(t, [])]

    def backward(op: Op) -> list[Op]:
        return [producers[t] for t in op.inputs if t in producers]

    plan: dict[str, str] = {}
    for name in _layernorm_chains(ops, consumers):
        plan[name] = REASON_LAYERNORM
    for op in ops:
        if op.op_type == "LayerNormalization":
            plan[op.name] = REASON_LAYERNORM
        elif op.op_type == "Softmax":
            plan[op.name] = REASON_SOFTMAX
        elif op.op_type == "MatMul" and (
            _reaches(op, "Softmax", forward) or _reaches(op, "Softmax", backward)
        ):
            plan[op.name] = REASON_ATTENTION
    return plan


def plan_summary(ops: Iterable[Op], plan: dict[str, str]) -> list[tuple[str, int, int]]:
    """``(op type, ops kept FP32, ops left to the builder)`` per op type, most ops first."""
    counts: dict[str, list[int]] = {}
    for op in ops:
        row = counts.setdefault(op.op_type, [0, 0])
        row[0 if op.name in plan else 1] += 1
    return sorted(((t, a, b) for t, (a, b) in counts.items()), key=lambda r: (-r[1] - r[2], r[0]))


def describe_plan(ops: Sequence[Op], plan: Mapping[str, str]) -> list[str]:
    """Lines ``<layer>  <op type>  FP32 (<reason>)`` for the constrained layers, in graph order."""
    return [f"{op.name}  {op.op_type}  FP32 ({plan[op.name]})" for op in ops if op.name in plan]


@dataclass(frozen=True)
class DecoderProfile:
    """Prompt-batch ranges of the decoder engine (its one optimization profile).

    Attributes:
        min_sets, opt_sets, max_sets: prompt sets ``B`` per decode call. TensorRT tunes its
            kernels for ``opt_sets``; a call with more than ``max_sets`` is split.
        max_points: points per set ``N`` (a box is two corner points; a point-only set has
            one padding point), tuned for 2.
    """

    min_sets: int = 1
    opt_sets: int = 16
    max_sets: int = 320
    max_points: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_sets <= self.opt_sets <= self.max_sets:
            raise ValueError(
                "decoder profile needs 1 <= min_sets <= opt_sets <= max_sets, got "
                f"{self.min_sets} / {self.opt_sets} / {self.max_sets}"
            )
        if self.max_points < 2:
            raise ValueError(f"max_points must be >= 2 (a box), got {self.max_points}")

    def as_list(self) -> list[int]:
        """For the engine cache key."""
        return [self.min_sets, self.opt_sets, self.max_sets, self.max_points]


Shape = tuple[int, ...]


def as_shape(dims: Any) -> Shape:
    """A TensorRT ``Dims`` as a tuple.

    ``Dims`` is a sequence by ``__len__``/``__getitem__`` only, which the type checker does
    not iterate.
    """
    return tuple(dims[i] for i in range(len(dims)))


def decoder_profile_shapes(
    info: ModelInfo, profile: DecoderProfile
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{decoder input: (min, opt, max)}`` shapes for ``IOptimizationProfile.set_shape``.

    Every input of :data:`~segfast_ros.spec.DECODER_INPUTS` is listed (static ones with three
    equal shapes). ``mask_input``'s batch is 1 (shared or no mask) up to ``max_sets``.
    """
    c, h, lr = info.embed_dim, info.embed_size, info.low_res_size
    b0, b1, b2 = profile.min_sets, profile.opt_sets, profile.max_sets
    n0, n1, n2 = 1, 2, profile.max_points
    embed = (1, c, h, h)
    shapes = {
        "image_embeddings": (embed, embed, embed),
        "point_coords": ((b0, n0, 2), (b1, n1, 2), (b2, n2, 2)),
        "point_labels": ((b0, n0), (b1, n1), (b2, n2)),
        "mask_input": ((1, 1, lr, lr), (1, 1, lr, lr), (b2, 1, lr, lr)),
        "has_mask_input": ((1,), (1,), (1,)),
    }
    assert tuple(shapes) == DECODER_INPUTS
    return shapes
