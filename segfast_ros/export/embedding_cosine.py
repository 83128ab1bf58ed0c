"""How far an INT8 encoder's embeddings are from the fp32 one's (ONNX Runtime, CPU).

The quantizer's sanity check (:func:`~segfast_ros.export.quantize.quantize_encoder` with
``validate``) and the INT8 report (:mod:`segfast_ros.export.report`) both measure it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..spec import ENCODER_INPUTS, ENCODER_OUTPUTS


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
