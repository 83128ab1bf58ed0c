"""A registered model's torch weights, read back from the fp32 ONNX graphs this project
exported (``encoder.fp32.onnx`` + ``decoder.fp32.onnx``).

What it is for: the shipped demo model (``models/demo``) exists only as ONNX, yet distillation
(issue 19) needs it as a torch teacher, with its decoder's tokens and logits, not only its
outputs. The export keeps enough to rebuild every weight exactly:

* initializers named ``sam.<key>`` are the state_dict's own tensors;
* the other weights are anonymous constants of nodes whose names carry the module path
  (``/image_encoder/layers.1/blocks.0/attn/qkv/MatMul``): a ``MatMul``'s is the ``Linear``'s
  weight transposed; a ``Conv``'s is the ``Conv2dBN``'s convolution with its BatchNorm folded
  in, rebuilt as that convolution and an identity BatchNorm whose bias is the folded one;
* the decoder's 2x2 upscaling convolutions are matmuls (``MaskDecoder._upscale_masks``), its
  IoU and mask tokens one expanded constant, ``no_mask_embed`` the constant that multiplies the
  "no mask" flag, and a window attention's bias table gathered once (``attention_biases``
  indexed by ``attention_bias_idxs``) when the window covers the whole grid.

Every parameter and buffer of the model must be recovered (or be a buffer the model computes
itself); otherwise :class:`OnnxWeightsError` names what is missing. INT8 or FP16 graphs are
refused: their weights are not the model's. The exporter shares one initializer between
weights of equal value, so a model with weights still at their initial values (LayerNorm's
ones, zero biases) cannot be told apart and is refused too; a trained model's weights differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modeling.registry import build_sam
from ..modeling.sam import Sam

#: Buffers the model computes at construction, never read from a graph.
COMPUTED = ("num_batches_tracked", "attention_bias_idxs")
#: The decoder's 2x2 stride-2 upscaling convolutions (``output_upscaling`` children).
UPSCALING = ("mask_decoder.output_upscaling.0", "mask_decoder.output_upscaling.3")


class OnnxWeightsError(ValueError):
    """The graphs do not give the model's weights; the message says which and why."""


def sam_from_onnx(name: str, model_dir: str | Path) -> Sam:
    """The registered model ``name`` with the weights of ``model_dir``'s fp32 graphs, in eval
    mode (its outputs equal ONNX Runtime's on those graphs to float rounding).

    Raises:
        OnnxWeightsError: a graph is missing, or a weight of the model is not in them (another
            model's graphs, an INT8/FP16 export).
        ValueError: an unknown model name.
    """
    folder = Path(model_dir)
    graphs = [folder / "encoder.fp32.onnx", folder / "decoder.fp32.onnx"]
    missing = [str(g) for g in graphs if not g.is_file()]
    if missing:
        raise OnnxWeightsError(
            f"cannot rebuild {name} from {folder}: {', '.join(missing)} missing (the fp32 "
            "graphs `segfast export` writes; INT8 and FP16 graphs do not hold the weights)"
        )
    sam = build_sam(name)
    state = recover_state(sam, graphs)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


def recover_state(sam: Sam, graphs: Sequence[Path]) -> dict[str, torch.Tensor]:
    """``sam``'s state_dict with every weight taken from ``graphs`` (see the module docstring).

    Raises:
        OnnxWeightsError: a weight none of the graphs gives, or one of another shape.
    """
    import onnx
    from onnx import numpy_helper

    state = {k: v.clone() for k, v in sam.state_dict().items()}
    found: dict[str, np.ndarray] = {}
    modules = dict(sam.named_modules())
    for graph in graphs:
        model = onnx.load(str(graph))
        consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for key, value in consts.items():
            if key.startswith("sam.") and key[4:] in state:
                found[key[4:]] = value
        for node in model.graph.node:
            _from_node(node, consts, modules, state, found)
    missing = [k for k in state if k not in found and not k.endswith(COMPUTED)]
    if missing:
        raise OnnxWeightsError(
            f"the graphs {[str(g) for g in graphs]} do not give {len(missing)} weights of "
            f"{sam.info.name}, e.g. {missing[:5]}: another model's export, or not an fp32 one"
        )
    for key, value in found.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise OnnxWeightsError(
                f"{key}: the graph's weight has shape {tuple(value.shape)}, {sam.info.name} "
                f"expects {tuple(state[key].shape)}: another model's export"
            )
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    return state


def module_path(node_name: str) -> str:
    """The module a node belongs to, from its name: ``/image_encoder/patch_embed/seq/seq.0/c/
    Conv`` -> ``image_encoder.patch_embed.seq.0.c`` (a container's own scope, ``seq``, is
    followed by its child's qualified name, ``seq.0``, which replaces it)."""
    parts: list[str] = []
    for part in [p for p in node_name.split("/") if p][:-1]:
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def _scoped_name(node) -> str:
    """The node's scoped name (``/module/path/Op``): its own, or, where a later pass renamed
    the node (``node_Conv_7``), its first output's (``/module/path/Conv_output_0``)."""
    if node.name.startswith("/") or not node.output:
        return node.name
    return node.output[0]


def _from_node(
    node, consts: dict, modules: dict[str, nn.Module], state: dict, found: dict
) -> None:
    """The weights one node's anonymous constants give (none for most nodes)."""
    anon = [i for i in node.input if i in consts and not i.startswith("sam.")]
    path = module_path(_scoped_name(node))
    if node.op_type == "Conv" and anon:
        _conv(
            path,
            consts[node.input[1]],
            consts.get(node.input[2]) if len(node.input) > 2 else None,
            modules,
            found,
        )
    elif node.op_type == "MatMul" and anon and path == "mask_decoder":
        _upscaling(consts[anon[0]], state, found)
    elif node.op_type == "Gemm" and anon and path == "mask_decoder":
        _upscaling(consts[anon[0]].T, state, found)  # Gemm's weight is (4 * C_out, C_in)
    elif anon and getattr(modules.get(path), "form", "plain") != "plain":
        _factored_attention(node.op_type, consts[anon[0]], path, modules[path], found)
    elif node.op_type == "MatMul" and anon and path in modules:
        found[f"{path}.weight"] = consts[anon[0]].T
    elif node.name == "/mask_decoder/Expand" and anon:
        tokens = consts[anon[0]][0]  # (1 + mask tokens, dim): cat(iou_token, mask_tokens)
        found["mask_decoder.iou_token.weight"] = tokens[:1]
        found["mask_decoder.mask_tokens.weight"] = tokens[1:]
    elif node.op_type == "Mul" and anon and not path:
        value = consts[anon[0]]
        if value.ndim == 4 and value.shape[2:] == (1, 1):  # (1, dim, 1, 1): no_mask_embed
            found["prompt_encoder.no_mask_embed.weight"] = value.reshape(1, -1)
    elif node.op_type == "Add" and node.name.endswith("/attn/Add"):
        _attention_biases(node, consts, modules.get(path), found)


def _conv(
    path: str, weight: np.ndarray, bias: np.ndarray | None, modules: dict, found: dict
) -> None:
    """A convolution: a ``Conv2dBN``'s (``<path>`` ends in ``.c``) with its BatchNorm folded
    in becomes that convolution and an identity BatchNorm carrying the bias."""
    found[f"{path}.weight"] = weight
    parent = path.rsplit(".", 1)[0]
    bn = modules.get(f"{parent}.bn")
    if path.endswith(".c") and isinstance(bn, nn.BatchNorm2d):
        channels = weight.shape[0]
        found[f"{parent}.bn.weight"] = np.ones(channels, np.float32)
        found[f"{parent}.bn.bias"] = bias if bias is not None else np.zeros(channels, np.float32)
        found[f"{parent}.bn.running_mean"] = np.zeros(channels, np.float32)
        # (x - 0) / sqrt(var + eps) is x exactly when var + eps == 1.
        found[f"{parent}.bn.running_var"] = np.full(channels, 1.0 - bn.eps, np.float32)
    elif bias is not None:
        found[f"{path}.bias"] = bias


def _upscaling(weight: np.ndarray, state: dict, found: dict) -> None:
    """A ``(C_in, 4 * C_out)`` upscaling matmul back to its ``ConvTranspose2d`` weight
    ``(C_in, C_out, 2, 2)`` (the inverse of ``mask_decoder._deconv2x2``)."""
    cin, cout = weight.shape[0], weight.shape[1] // 4
    for module in UPSCALING:
        if tuple(state[f"{module}.weight"].shape) == (cin, cout, 2, 2):
            found[f"{module}.weight"] = weight.reshape(cin, 2, 2, cout).transpose(0, 3, 1, 2)
            return


def _factored_attention(
    op: str, value: np.ndarray, path: str, attention: nn.Module, found: dict
) -> None:
    """A decoder cross attention computed in a factored form (``modeling.transformer.
    Attention``, ``form`` other than ``plain``): its projection weights enter the graph split
    by head, ``(heads, d, C)`` or ``(heads, C, d)``, and the output projection's transposed.

    A ``tokens_to_image`` attention's ``k_proj.bias`` is not in the graph: it adds the same
    value to a token's scores over every pixel, which the softmax removes, so any value gives
    the same outputs; it reads back as zeros."""
    heads, form = attention.num_heads, attention.form
    internal, dim = attention.q_proj.weight.shape
    d = internal // heads
    split = value.ndim == 3 and value.shape[0] == heads
    if op == "MatMul" and split and value.shape[1:] == (d, dim) and form == "tokens_to_image":
        found[f"{path}.k_proj.weight"] = value.reshape(internal, dim)
        found[f"{path}.k_proj.bias"] = np.zeros(internal, np.float32)
    elif op == "MatMul" and split and value.shape[1:] == (dim, d):
        proj = "v_proj" if form == "tokens_to_image" else "q_proj"
        found[f"{path}.{proj}.weight"] = value.transpose(0, 2, 1).reshape(internal, dim)
    elif op == "Reshape" and value.shape == (internal, dim) and form == "image_to_tokens":
        found[f"{path}.out_proj.weight"] = value.T


def _attention_biases(node, consts: dict, attention: nn.Module | None, found: dict) -> None:
    """A window attention's bias table, gathered once in the graph (``attention_biases``
    indexed by ``attention_bias_idxs``), back to the table of offsets."""
    table = next(
        (consts[i] for i in node.input if i.endswith("Gather_output_0") and i in consts), None
    )
    if table is None or attention is None or not hasattr(attention, "attention_bias_idxs"):
        return
    idxs = attention.attention_bias_idxs.numpy()
    heads, offsets = attention.attention_biases.shape
    if table.shape != (heads, *idxs.shape):
        return  # another model's table: the weight stays missing, and is named
    biases = np.zeros((heads, offsets), np.float32)
    for k in range(offsets):
        row, col = np.argwhere(idxs == k)[0]
        biases[:, k] = table[:, row, col]
    found[f"{module_path(_scoped_name(node))}.attention_biases"] = biases
