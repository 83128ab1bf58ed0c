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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
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
from .metadata import MAX_INLINE_WEIGHT_BYTES, Role, read_metadata, save_model, set_metadata
from .quantize import quantize_encoder

Exporter = Literal["torchscript", "dynamo"]

#: Names of the decoder's dynamic dimensions in the ONNX files.
DYNAMIC_DIMS = {"prompts": "B", "points": "N", "mask_batch": "B_mask"}


class ExportValidationError(RuntimeError):
    """An exported graph does not compute what the torch model computes."""


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria of one output: ``max|diff| <= atol + rtol * max|ref|`` and cosine.

    Attributes:
        atol: absolute part of the allowed max difference.
        rtol: part of the allowed max difference relative to the reference's max magnitude
            (logit scales differ a lot between models and checkpoints).
        min_cosine: lowest cosine similarity of the flattened outputs.
    """

    atol: float
    rtol: float
    min_cosine: float


#: ORT CPU fp32 vs torch fp32: only summation order differs (measured max |diff| ~1e-5 on the
#: full-size encoder).
FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999)
#: fp16 graph vs torch fp32 (measured on the full-size MobileSAM with the fixture weights:
#: cosine >= 0.999995, max |diff| <= 0.33% of the output range, encoder and decoder).
FP16_TOLERANCE = Tolerance(atol=1e-2, rtol=3e-2, min_cosine=0.999)
TOLERANCES: dict[str, Tolerance] = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE}


@dataclass(frozen=True)
class DecoderCase:
    """One decoder input configuration to check.

    Attributes:
        num_prompts: prompt sets ``B``.
        num_points: points per set ``N`` (a box counts as 2 points).
        mask: ``"off"`` (``has_mask_input`` 0), ``"shared"`` (one ``(1, 1, L, L)`` mask for
            every set) or ``"per_prompt"`` (``(B, 1, L, L)``).
        box: the first two points of every set are box corners (labels 2, 3).
        pad: the last point of every set is padding (label -1), as SAM adds without a box.
    """

    num_prompts: int
    num_points: int
    mask: Literal["off", "shared", "per_prompt"] = "off"
    box: bool = False
    pad: bool = False

    def __str__(self) -> str:
        extra = "".join(f" {k}" for k in ("box", "pad") if getattr(self, k))
        return f"B={self.num_prompts} N={self.num_points} mask={self.mask}{extra}"


DEFAULT_DECODER_CASES: tuple[DecoderCase, ...] = (
    DecoderCase(1, 1),
    DecoderCase(1, 2, pad=True),
    DecoderCase(1, 3, mask="shared", box=True),
    DecoderCase(3, 2, mask="per_prompt"),
    DecoderCase(16, 2),
    DecoderCase(16, 2, mask="shared", box=True),
)


@dataclass(frozen=True)
class ValidationResult:
    """ORT vs torch on one output of one input configuration."""

    graph: str
    case: str
    output: str
    max_abs_diff: float
    ref_max_abs: float
    cosine: float
    passed: bool

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{self.graph:8s} {self.case:34s} {self.output:17s} max|diff| "
            f"{self.max_abs_diff:.3g} (ref max {self.ref_max_abs:.3g}) cosine "
            f"{self.cosine:.7f} {verdict}"
        )


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
    input_names = list(ENCODER_INPUTS if role == "encoder" else DECODER_INPUTS)
    output_names = list(ENCODER_OUTPUTS if role == "encoder" else DECODER_OUTPUTS)
    b, n, mb = DYNAMIC_DIMS["prompts"], DYNAMIC_DIMS["points"], DYNAMIC_DIMS["mask_batch"]
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
                dynamic_axes = None
                if role == "decoder":
                    dynamic_axes = {
                        "point_coords": {0: b, 1: n},
                        "point_labels": {0: b, 1: n},
                        "mask_input": {0: mb},
                        "low_res_masks": {0: b},
                        "iou_predictions": {0: b},
                    }
                torch.onnx.export(
                    module,
                    args,
                    str(raw),
                    dynamo=False,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
            elif exporter == "dynamo":
                dynamic_shapes = None
                if role == "decoder":
                    prompts = torch.export.Dim(b, min=1)
                    points = torch.export.Dim(n, min=1)
                    # AUTO, not a named Dim: a named one is specialised to the traced size,
                    # and "1 or B" cannot be written as a Dim relation.
                    dynamic_shapes = {
                        "image_embeddings": None,
                        "point_coords": {0: prompts, 1: points},
                        "point_labels": {0: prompts, 1: points},
                        "mask_input": {0: torch.export.Dim.AUTO},
                        "has_mask_input": None,
                    }
                torch.onnx.export(
                    module,
                    args,
                    str(raw),
                    dynamo=True,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=dynamic_shapes,
                    external_data=True,
                    optimize=True,
                    verbose=False,
                )
            else:
                raise ValueError(
                    f"unknown exporter {exporter!r}; expected 'torchscript' or 'dynamo'"
                )
        model = onnx.load(str(raw))  # pulls external data (if any) into memory
    if role == "decoder":
        # The exporters leave the reshaped outputs' trailing dims symbolic (and the dynamo one
        # names the mask batch after an internal symbol); every consumer, TensorRT's profile
        # builder first, is better off with the real sizes and the documented names.
        m, lr = info.num_mask_tokens, info.low_res_size
        _set_dims(model.graph.input, "mask_input", [mb, 1, lr, lr])
        _set_dims(model.graph.output, "low_res_masks", [b, m, lr, lr])
        _set_dims(model.graph.output, "iou_predictions", [b, m])
    return model


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


# ----------------------------------------------------------------------------- validation


def _session(path: Path, providers: Sequence[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the fp16 graphs make ORT CPU log every upcast it inserts
    return ort.InferenceSession(str(path), options, providers=list(providers))


def _compare(
    graph: str, case: str, name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerance
) -> ValidationResult:
    if got.shape != ref.shape:
        return ValidationResult(graph, case, name, float("inf"), 0.0, 0.0, False)
    got64, ref64 = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    diff = float(np.abs(got64 - ref64).max()) if got64.size else 0.0
    ref_max = float(np.abs(ref64).max()) if ref64.size else 0.0
    denom = np.linalg.norm(got64) * np.linalg.norm(ref64)
    cosine = float(got64 @ ref64 / denom) if denom > 0 else float(diff == 0.0)
    finite = bool(np.isfinite(got64).all())
    passed = finite and diff <= tol.atol + tol.rtol * ref_max and cosine >= tol.min_cosine
    return ValidationResult(graph, case, name, diff, ref_max, cosine, passed)


def _decoder_inputs(
    case: DecoderCase, embedding: np.ndarray, info: ModelInfo, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    b, n, s, lr = case.num_prompts, case.num_points, info.image_size, info.low_res_size
    coords = rng.uniform(0, s, size=(b, n, 2)).astype(np.float32)
    labels = rng.integers(LABEL_BG, LABEL_FG + 1, size=(b, n)).astype(np.float32)
    if case.box:
        if n < 2:
            raise ValueError(f"a box needs 2 points, case {case} has {n}")
        labels[:, :2] = (LABEL_BOX_TL, LABEL_BOX_BR)
        coords[:, :2].sort(axis=1)  # top-left corner first
    if case.pad:
        labels[:, -1] = LABEL_PAD
        coords[:, -1] = 0.0
    mask_batch = b if case.mask == "per_prompt" else 1
    # Logit-scaled masks, as the decoder's own low-res output would be.
    mask = (rng.standard_normal((mask_batch, 1, lr, lr)) * 8).astype(np.float32)
    has_mask = np.array([0.0 if case.mask == "off" else 1.0], dtype=np.float32)
    return dict(zip(DECODER_INPUTS, (embedding, coords, labels, mask, has_mask), strict=True))


def validate_export(
    sam: Sam,
    encoder_path: str | Path | None = None,
    decoder_path: str | Path | None = None,
    *,
    image: np.ndarray | None = None,
    decoder_cases: Sequence[DecoderCase] = DEFAULT_DECODER_CASES,
    tolerance: Tolerance | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    seed: int = 0,
    raise_on_failure: bool = True,
) -> list[ValidationResult]:
    """Run exported graphs in ONNX Runtime and compare them with the torch model.

    The encoder sees ``image`` (or seeded noise); the decoder sees the torch embedding of that
    image and seeded random prompts for every case (several ``B``, ``N``, mask on/off, boxes,
    padding points).

    On the CPU EP an fp16 graph runs its Conv/MatMul/elementwise nodes upcast to float32 (ORT
    x86 has no fp16 kernels for them and inserts Casts); only data-movement ops run in fp16.
    A CPU check therefore covers the rounding of weights and of every activation between ops,
    not fp16 arithmetic inside kernels: pass ``providers=("CUDAExecutionProvider",)`` on a GPU
    for that.

    Args:
        sam: the torch model the graphs were exported from.
        encoder_path: encoder ``.onnx`` to check, or None.
        decoder_path: decoder ``.onnx`` to check, or None.
        image: ``(1, 3, S, S)`` float32 preprocessed image; None uses seeded noise.
        decoder_cases: decoder input configurations.
        tolerance: pass criteria; None picks :data:`TOLERANCES` by each file's precision.
        providers: ONNX Runtime execution providers.
        seed: seed of the random image and prompts.
        raise_on_failure: raise instead of only returning failing results.

    Returns:
        One :class:`ValidationResult` per output and case.

    Raises:
        ExportValidationError: a result failed (with ``raise_on_failure``); the message lists
            every result.
    """
    info = sam.info
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.standard_normal((1, 3, info.image_size, info.image_size)).astype(np.float32)
    expected = (1, 3, info.image_size, info.image_size)
    if image.shape != expected or image.dtype != np.float32:
        raise ValueError(
            f"image must be {expected} float32 (prepare_image's output), got {image.shape} "
            f"{image.dtype}"
        )
    results: list[ValidationResult] = []
    with torch.no_grad():
        embedding = sam.encode(torch.from_numpy(image)).numpy()
        if encoder_path is not None:
            tol = tolerance or TOLERANCES[read_metadata(encoder_path).precision]
            session = _session(Path(encoder_path), providers)
            (got,) = session.run(list(ENCODER_OUTPUTS), {ENCODER_INPUTS[0]: image})
            results.append(_compare("encoder", "image", ENCODER_OUTPUTS[0], got, embedding, tol))
        if decoder_path is not None:
            tol = tolerance or TOLERANCES[read_metadata(decoder_path).precision]
            session = _session(Path(decoder_path), providers)
            for case in decoder_cases:
                feeds = _decoder_inputs(case, embedding, info, rng)
                refs = sam.decode(*(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS))
                gots = session.run(list(DECODER_OUTPUTS), feeds)
                for name, got, ref in zip(DECODER_OUTPUTS, gots, refs, strict=True):
                    results.append(_compare("decoder", str(case), name, got, ref.numpy(), tol))
    if raise_on_failure and not all(r.passed for r in results):
        table = "\n  ".join(str(r) for r in results)
        where = ", ".join(str(p) for p in (encoder_path, decoder_path) if p is not None)
        raise ExportValidationError(
            f"ONNX Runtime ({', '.join(providers)}) does not reproduce torch for {where}:\n  "
            f"{table}"
        )
    return results


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
    unknown = sorted(set(precisions) - set(TOLERANCES) - {"int8"})
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; expected fp32, fp16 or int8")
    if "int8" in precisions and calibration_images is None:
        raise ValueError(
            "int8 needs calibration_images: a folder of jpg/png frames like those the robot "
            "will see (a few dozen are enough)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def target(role: str, precision: str) -> Path:
        enc_name, dec_name = onnx_file_names(precision)
        name = enc_name if role == "encoder" else dec_name
        return out_dir / name

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
