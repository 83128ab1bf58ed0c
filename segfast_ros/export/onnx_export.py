"""ONNX export of the two graphs every runtime backend runs, with parity checks against torch.

* **encoder**: ``image`` ``(1, 3, S, S)`` float32 -> ``image_embeddings`` ``(1, C, h, h)``;
  all shapes static (TensorRT builds its fastest engine for them).
* **decoder**: ``image_embeddings`` ``(1, C, h, h)``, ``point_coords`` ``(B, N, 2)``,
  ``point_labels`` ``(B, N)``, ``mask_input`` ``(B_mask, 1, L, L)`` with ``B_mask`` 1 or ``B``,
  ``has_mask_input`` ``(1,)`` -> ``low_res_masks`` ``(B, M, L, L)``, ``iou_predictions``
  ``(B, M)``; ``B``, ``N`` and ``B_mask`` are dynamic. There is no ``orig_im_size`` input: the
  resize to the image size happens outside the graph, because a data-dependent output shape
  makes TensorRT fall back to slow dynamic-shape code (or refuse the graph).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` by default. In torch
2.15 it still writes opset 17 natively (IR version 8, which TensorRT 8.6 on JetPack 6.0 reads),
exports the full-size encoder in ~4 s, and its ``Expand`` broadcasts ``mask_input`` whether its
batch is 1 or ``B``. The dynamo exporter (``exporter="dynamo"``) writes opset >= 18 only (its
down-conversion to 17 fails on ``Pad``) and needs ``Dim.AUTO`` for the 1-or-``B`` mask batch;
it is kept as the path forward for when the TorchScript exporter goes away. Both outputs are
cleaned by ``onnxscript``'s optimizer (constant folding: the dense positional encoding becomes
a weight, the shape arithmetic of static dims disappears). ``nn.LayerNorm`` exports as a real
``LayerNormalization`` op (opset 17); the channel LayerNorm of the neck is a decomposed
``ReduceMean``/``Pow``/``Sqrt`` chain in the model code.

Every file carries :class:`~segfast_ros.spec.ModelInfo` JSON under ``metadata_props``
``"segfast"``, plus ``"segfast.role"`` (encoder/decoder) and ``"segfast.precision"``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from torch import nn

from ..modeling.sam import Sam
from ..runtime.onnx_backend import onnx_file_names
from ..spec import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    LABEL_BG,
    LABEL_BOX_BR,
    LABEL_BOX_TL,
    LABEL_FG,
    LABEL_PAD,
    ModelInfo,
)
from .fp16 import export_fp16
from .metadata import MAX_INLINE_WEIGHT_BYTES, Role, save_model, set_metadata
from .quantize import quantize_encoder
from .validation import TOLERANCES, ExportValidationError, validate_export

Exporter = Literal["torchscript", "dynamo"]

#: Names of the decoder's dynamic dimensions in the ONNX files.
DYNAMIC_DIMS = {"prompts": "B", "points": "N", "mask_batch": "B_mask"}


class EncoderGraph(nn.Module):
    """The encoder graph as a module: ``(1, 3, S, S)`` -> ``(1, C, h, h)`` float32."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.sam.encode(image)


class DecoderGraph(nn.Module):
    """The decoder graph as a module (see :meth:`Sam.decode` for shapes)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam.decode(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )


# ----------------------------------------------------------------------------- export


def _example_decoder_inputs(info: ModelInfo) -> tuple[torch.Tensor, ...]:
    """Decoder inputs for tracing: B=2, N=3 and a shared mask, so no dim is traced as 1."""
    gen = torch.Generator().manual_seed(0)
    lr = info.low_res_size
    return (
        torch.randn(1, info.embed_dim, info.embed_size, info.embed_size, generator=gen),
        torch.rand(2, 3, 2, generator=gen) * info.image_size,
        torch.tensor(
            [[LABEL_FG, LABEL_BG, LABEL_PAD], [LABEL_BOX_TL, LABEL_BOX_BR, LABEL_FG]]
        ).float(),
        torch.randn(1, 1, lr, lr, generator=gen),
        torch.ones(1),
    )


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    role: Role,
    info: ModelInfo,
    *,
    opset: int,
    exporter: Exporter,
) -> onnx.ModelProto:
    """Run ``torch.onnx.export`` into a temporary folder and load the result (weights too)."""
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="segfast_export_") as tmp:
        raw = Path(tmp) / f"{role}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # The deprecation notice of the TorchScript exporter and its constant-folding
            # notes about step != 1 slices are expected; the parity check is the real test.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*Constant folding.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            if exporter == "torchscript":
                _torchscript_export(module, args, raw, role, opset)
            elif exporter == "dynamo":
                _dynamo_export(module, args, raw, role, opset)
            else:
                raise ValueError(
                    f"unknown exporter {exporter!r}; expected 'torchscript' or 'dynamo'"
                )
        model = onnx.load(str(raw))  # pulls external data (if any) into memory
    if role == "decoder":
        # The exporters leave the reshaped outputs' trailing dims symbolic (and the dynamo one
        # names the mask batch after an internal symbol); every consumer, TensorRT's profile
        # builder first, is better off with the real sizes and the documented names.
        b, mb = DYNAMIC_DIMS["prompts"], DYNAMIC_DIMS["mask_batch"]
        m, lr = info.num_mask_tokens, info.low_res_size
        _set_dims(model.graph.input, "mask_input", [mb, 1, lr, lr])
        _set_dims(model.graph.output, "low_res_masks", [b, m, lr, lr])
        _set_dims(model.graph.output, "iou_predictions", [b, m])
    return model


def _run_exporter(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    raw: Path,
    role: Role,
    opset: int,
    **options: Any,
) -> None:
    """``torch.onnx.export`` into ``raw`` with the graph's input and output names."""
    if role == "encoder":
        input_names, output_names = list(ENCODER_INPUTS), list(ENCODER_OUTPUTS)
    else:
        input_names, output_names = list(DECODER_INPUTS), list(DECODER_OUTPUTS)
    torch.onnx.export(
        module,
        args,
        str(raw),
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        **options,
    )


def _torchscript_export(
    module: nn.Module, args: tuple[torch.Tensor, ...], raw: Path, role: Role, opset: int
) -> None:
    """The TorchScript exporter, with the decoder's named dynamic axes."""
    b, n, mb = DYNAMIC_DIMS["prompts"], DYNAMIC_DIMS["points"], DYNAMIC_DIMS["mask_batch"]
    dynamic_axes = None
    if role == "decoder":
        dynamic_axes = {
            "point_coords": {0: b, 1: n},
            "point_labels": {0: b, 1: n},
            "mask_input": {0: mb},
            "low_res_masks": {0: b},
            "iou_predictions": {0: b},
        }
    _run_exporter(
        module, args, raw, role, opset,
        dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True,
    )  # fmt: skip


def _dynamo_export(
    module: nn.Module, args: tuple[torch.Tensor, ...], raw: Path, role: Role, opset: int
) -> None:
    """The dynamo exporter, with the decoder's dynamic shapes (weights as external data)."""
    dynamic_shapes = None
    if role == "decoder":
        prompts = torch.export.Dim(DYNAMIC_DIMS["prompts"], min=1)
        points = torch.export.Dim(DYNAMIC_DIMS["points"], min=1)
        # AUTO, not a named Dim: a named one is specialised to the traced size,
        # and "1 or B" cannot be written as a Dim relation.
        dynamic_shapes = {
            "image_embeddings": None,
            "point_coords": {0: prompts, 1: points},
            "point_labels": {0: prompts, 1: points},
            "mask_input": {0: torch.export.Dim.AUTO},
            "has_mask_input": None,
        }
    _run_exporter(
        module, args, raw, role, opset,
        dynamo=True, dynamic_shapes=dynamic_shapes, external_data=True, optimize=True,
        verbose=False,
    )  # fmt: skip


def _set_dims(
    values: Sequence[onnx.ValueInfoProto], tensor: str, dims: Sequence[int | str]
) -> None:
    for vi in values:
        if vi.name == tensor:
            shape = vi.type.tensor_type.shape
            if len(shape.dim) != len(dims):
                raise ExportValidationError(
                    f"exported {tensor} has rank {len(shape.dim)}, expected {len(dims)}"
                )
            for dim, value in zip(shape.dim, dims, strict=True):
                if isinstance(value, int):
                    dim.dim_value = value
                else:
                    dim.dim_param = value


def _optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-code removal, keeping opset and IR version."""
    import onnxscript.optimizer  # only the export needs it

    ir_version = model.ir_version
    opsets = {o.domain: o.version for o in model.opset_import}
    optimized = onnxscript.optimizer.optimize(model)
    if {o.domain: o.version for o in optimized.opset_import} != opsets:
        return model  # never let a cleanup change the opset TensorRT has to read
    optimized.ir_version = ir_version
    return optimized


def _finish(
    model: onnx.ModelProto,
    path: str | Path,
    info: ModelInfo,
    role: Role,
    precision: str,
    max_inline_bytes: int,
) -> Path:
    set_metadata(model, info, role, precision)
    model.graph.doc_string = f"segfast {info.name} {role} ({precision})"
    return save_model(model, path, max_inline_bytes=max_inline_bytes)


def _check_exporter(exporter: Exporter, opset: int) -> None:
    if exporter == "torchscript" and opset < 17:
        raise ValueError(
            f"opset {opset} is too old: LayerNormalization needs opset >= 17 (got {opset})"
        )
    if exporter == "dynamo" and opset < 18:
        raise ValueError(
            f"the dynamo exporter writes opset >= 18 only (asked for {opset}); use "
            "exporter='torchscript' for opset 17 (TensorRT 8.6 / JetPack 6.0)"
        )


def export_encoder(
    sam: Sam,
    path: str | Path,
    *,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    validate: bool = True,
    max_inline_bytes: int = MAX_INLINE_WEIGHT_BYTES,
) -> Path:
    """Export the image encoder to ONNX (fp32, static ``(1, 3, S, S)`` input).

    Args:
        sam: the model (eval mode, from :func:`~segfast_ros.modeling.build_sam`).
        path: output ``.onnx`` file (conventionally ``encoder.fp32.onnx``).
        opset: ONNX opset (17 reads on TensorRT 8.6; the dynamo exporter needs >= 18).
        exporter: ``"torchscript"`` or ``"dynamo"`` (see the module docstring).
        validate: run :func:`validate_export` (ORT CPU vs torch) and raise on mismatch.
        max_inline_bytes: weights above this size go to an external data file.

    Returns:
        The written path.

    Raises:
        ExportValidationError: ORT's output differs from torch's (with ``validate``).
    """
    _check_exporter(exporter, opset)
    info = sam.info
    image = torch.randn(
        1, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0)
    )
    model = _torch_export(
        EncoderGraph(sam), (image,), "encoder", info, opset=opset, exporter=exporter
    )
    path = _finish(_optimize(model), path, info, "encoder", "fp32", max_inline_bytes)
    if validate:
        validate_export(sam, encoder_path=path)
    return path


def export_decoder(
    sam: Sam,
    path: str | Path,
    *,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    validate: bool = True,
    max_inline_bytes: int = MAX_INLINE_WEIGHT_BYTES,
) -> Path:
    """Export the prompt encoder + mask decoder to ONNX (fp32, dynamic ``B``, ``N``, ``B_mask``).

    Args and Returns: as :func:`export_encoder`; ``path`` is conventionally
    ``decoder.fp32.onnx``. With ``validate`` every case of :data:`DEFAULT_DECODER_CASES` is run.

    Raises:
        ExportValidationError: ORT's output differs from torch's (with ``validate``).
    """
    _check_exporter(exporter, opset)
    args = _example_decoder_inputs(sam.info)
    model = _torch_export(
        DecoderGraph(sam), args, "decoder", sam.info, opset=opset, exporter=exporter
    )
    path = _finish(_optimize(model), path, sam.info, "decoder", "fp32", max_inline_bytes)
    if validate:
        validate_export(sam, decoder_path=path)
    return path


# ----------------------------------------------------------------------------- everything


def export_model(
    sam: Sam,
    out_dir: str | Path,
    precisions: Sequence[str] = ("fp32",),
    calibration_images: str | Path | Sequence[str | Path] | None = None,
    *,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    validate: bool = True,
    int8_options: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Export every requested precision under the names the runtime loads.

    fp32 is always written (the other precisions derive from it). ``"fp16"`` adds
    ``encoder.fp16.onnx`` and ``decoder.fp16.onnx``; ``"int8"`` adds ``encoder.int8.onnx``
    (the decoder stays fp32, see :data:`~segfast_ros.runtime.onnx_backend.DECODER_PRECISION`).

    Args:
        sam: the model (eval mode).
        out_dir: folder to write into (created).
        precisions: any of ``"fp32"``, ``"fp16"``, ``"int8"``.
        calibration_images: folder of jpg/png frames (or a list of files), required for
            ``"int8"``.
        opset: ONNX opset.
        exporter: ``"torchscript"`` or ``"dynamo"``.
        validate: check every graph against torch (and the int8 encoder's cosine vs fp32).
        int8_options: keyword arguments of :func:`~segfast_ros.export.quantize.quantize_encoder`
            (``target``, ``calibration_method``, ``quantize_attention_matmuls``,
            ``max_images``, ...).

    Returns:
        ``{"encoder.fp32": path, "decoder.fp32": path, ...}``, keyed by file stem.

    Raises:
        ValueError: unknown precision, or ``"int8"`` without ``calibration_images``.
        ExportValidationError: a graph failed validation.
        CalibrationError, QuantizationError: see
            :func:`~segfast_ros.export.quantize.quantize_encoder`.
    """
    _check_precisions(precisions, calibration_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def target(role: str, precision: str) -> Path:
        enc_name, dec_name = onnx_file_names(precision)
        return out_dir / (enc_name if role == "encoder" else dec_name)

    enc32 = export_encoder(
        sam, target("encoder", "fp32"), opset=opset, exporter=exporter, validate=False
    )
    dec32 = export_decoder(
        sam, target("decoder", "fp32"), opset=opset, exporter=exporter, validate=False
    )
    if validate:
        validate_export(sam, enc32, dec32)
    written["encoder.fp32"], written["decoder.fp32"] = enc32, dec32
    if "fp16" in precisions:
        enc16 = export_fp16(enc32, target("encoder", "fp16"))
        dec16 = export_fp16(dec32, target("decoder", "fp16"))
        if validate:
            validate_export(sam, enc16, dec16)
        written["encoder.fp16"], written["decoder.fp16"] = enc16, dec16
    if "int8" in precisions:
        assert calibration_images is not None  # checked above
        written["encoder.int8"] = quantize_encoder(
            enc32,
            target("encoder", "int8"),
            calibration_images,
            validate=validate,
            **dict(int8_options or {}),
        )
    return written


def _check_precisions(
    precisions: Sequence[str], calibration_images: str | Path | Sequence[str | Path] | None
) -> None:
    """ValueError for an unknown precision, or ``"int8"`` without calibration images."""
    unknown = sorted(set(precisions) - set(TOLERANCES) - {"int8"})
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; expected fp32, fp16 or int8")
    if "int8" in precisions and calibration_images is None:
        raise ValueError(
            "int8 needs calibration_images: a folder of jpg/png frames like those the robot "
            "will see (a few dozen are enough)"
        )
