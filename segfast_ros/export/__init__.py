"""ONNX export (fp32, fp16), INT8 quantization of the encoder, and their reports.

The torch-dependent names (``export_*``, ``validate_export``) load on
first use, so ``quantize_encoder`` and ``int8_report`` also work where only onnx and
onnxruntime are installed (e.g. calibrating on the robot with its own frames).

Command line: ``segfast export`` and ``segfast quant-report`` (see :mod:`segfast_ros.cli`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..runtime.images import CalibrationError, list_images, read_rgb
from .fp16 import FP16_KEEP_FP32_OPS, convert_to_fp16, export_fp16
from .metadata import OnnxMetadata, read_metadata, save_model, set_metadata
from .quantize import QuantizationError, quantize_encoder

if TYPE_CHECKING:
    from .onnx_export import export_decoder, export_encoder, export_model
    from .report import (
        format_int8_report,
        int8_report,
        int8_report_from_dir,
        write_report_json,
    )
    from .validation import (
        DecoderCase,
        ExportValidationError,
        Tolerance,
        ValidationResult,
        validate_export,
    )

_LAZY = {
    "DecoderCase": "validation",
    "ExportValidationError": "validation",
    "Tolerance": "validation",
    "ValidationResult": "validation",
    "export_decoder": "onnx_export",
    "export_encoder": "onnx_export",
    "export_model": "onnx_export",
    "validate_export": "validation",
    # Lazy too, so that `python -m segfast_ros.export.report` does not import itself twice.
    "format_int8_report": "report",
    "int8_report": "report",
    "int8_report_from_dir": "report",
    "write_report_json": "report",
}

__all__ = [
    "FP16_KEEP_FP32_OPS",
    "CalibrationError",
    "DecoderCase",
    "ExportValidationError",
    "OnnxMetadata",
    "QuantizationError",
    "Tolerance",
    "ValidationResult",
    "convert_to_fp16",
    "export_decoder",
    "export_encoder",
    "export_fp16",
    "export_model",
    "format_int8_report",
    "int8_report",
    "int8_report_from_dir",
    "list_images",
    "quantize_encoder",
    "read_metadata",
    "read_rgb",
    "save_model",
    "set_metadata",
    "validate_export",
    "write_report_json",
]


def __getattr__(name: str) -> Any:
    """Import the torch-dependent modules only when one of their names is used."""
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
