"""The INT8 quantization targets: the types each one quantizes to, and ``"auto"``'s choice.

Why each target has its types (ONNX Runtime's CPU kernels and TensorRT want different files,
and x86 without VNNI saturates full-range weights) is explained with the quantizer, in
:mod:`segfast_ros.export.quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..runtime.cpu_features import CpuFeatures, detect_cpu_features

QuantTarget = Literal["cpu", "cpu-vnni", "cpu-avx2", "arm", "tensorrt", "auto"]
QuantTypeName = Literal["uint8", "int8"]


@dataclass(frozen=True)
class QuantRecipe:
    """The quantization types of one target (see :mod:`~segfast_ros.export.quantize` for why).

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
