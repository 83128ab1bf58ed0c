"""Parity checks of exported graphs: ONNX Runtime against the torch model they came from.

:func:`validate_export` runs the encoder on one image and the decoder on every
:class:`DecoderCase` (several ``B``, ``N``, mask on/off, boxes, padding points) and compares
each output with :class:`Tolerance`\\ s per precision (:data:`TOLERANCES`). The export
(:mod:`segfast_ros.export.onnx_export`) runs it on every file it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch

from ..modeling.sam import Sam
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
from .metadata import read_metadata


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
