"""Which CPU this is, as far as ONNX Runtime's int8 kernels care (standard library only).

ONNX Runtime multiplies uint8 activations by int8 weights (U8S8) with different instructions
per CPU. On x86-64 with AVX2 or AVX-512 but without VNNI it uses ``VPMADDUBSW``, which adds two
u8 x s8 products into a saturating int16: with full-range int8 weights a sum can overflow and is
clamped (ONNX Runtime's quantization guide names the remedies: 7-bit weights, ``reduce_range``,
or uint8 weights, U8U8). CPUs with AVX-512 VNNI or AVX-VNNI (``VPDPBUSD``) and ARM64 accumulate
in int32 and never saturate; plain SSE kernels widen to int16 first and do not either.

The features come from ``/proc/cpuinfo`` (Linux: the kernel lists what the CPU has *and* the OS
enabled, which is what ONNX Runtime's own cpuid/xgetbv check finds). Elsewhere the
architecture comes from :func:`platform.machine` and the x86 flags are unknown.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CpuFeatures",
    "CpuKind",
    "Int8SaturationWarning",
    "detect_cpu_features",
    "parse_cpuinfo",
    "saturates_on",
]

#: ``x86-vnni``: AVX-512 VNNI or AVX-VNNI. ``x86-avx2``: AVX2 (maybe AVX-512) without VNNI, the
#: saturating kind. ``x86``: neither (SSE kernels) or flags unknown. ``arm64``: aarch64.
CpuKind = Literal["x86-vnni", "x86-avx2", "x86", "arm64", "other"]

#: The flags worth reporting: what selects ONNX Runtime's int8 kernels.
X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve")

_X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM_MACHINES = ("aarch64", "arm64")


class Int8SaturationWarning(UserWarning):
    """An int8 file was quantized for a CPU kind whose kernels saturate on this CPU."""


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU facts that decide ONNX Runtime's int8 kernels.

    Attributes:
        arch: ``"x86_64"``, ``"aarch64"``, or :func:`platform.machine` elsewhere.
        flags: the relevant flags found (of :data:`X86_FLAGS` / :data:`ARM_FLAGS`).
        model: the CPU's model name, if listed.
        source: where the flags came from (a path), or ``"unavailable"``.
    """

    arch: str
    flags: frozenset[str] = field(default_factory=frozenset)
    model: str = ""
    source: str = "unavailable"

    @property
    def kind(self) -> CpuKind:
        arch = self.arch.lower()
        if arch in _ARM_MACHINES:
            return "arm64"
        if arch not in _X86_MACHINES:
            return "other"
        if self.flags & {"avx512_vnni", "avx_vnni"}:
            return "x86-vnni"
        return "x86-avx2" if "avx2" in self.flags else "x86"

    @property
    def flags_known(self) -> bool:
        return self.source != "unavailable"

    @property
    def u8s8_saturates(self) -> bool | None:
        """Whether ORT's U8S8 kernels saturate here with full-range int8 weights (None: the
        x86 flags could not be read)."""
        if self.kind == "x86-avx2":
            return True
        if self.kind == "x86" and not self.flags_known:
            return None
        return False

    def describe(self) -> str:
        """One line for reports, e.g. ``x86_64 AMD EPYC 9R14 [avx2 avx512_vnni] (x86-vnni)``."""
        flags = " ".join(sorted(self.flags)) if self.flags_known else "flags unknown"
        model = f" {self.model}" if self.model else ""
        return f"{self.arch}{model} [{flags}] ({self.kind})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arch, kind, flags (sorted), model, source."""
        return {
            "arch": self.arch,
            "kind": self.kind,
            "flags": sorted(self.flags),
            "model": self.model,
            "source": self.source,
        }


def parse_cpuinfo(text: str, arch: str, source: str = "/proc/cpuinfo") -> CpuFeatures:
    """Read the first processor's flags and model from ``/proc/cpuinfo`` text.

    x86 lists ``flags`` and ``model name``; aarch64 lists ``Features`` (and ``CPU part``
    numbers, no name). Only the flags of :data:`X86_FLAGS` / :data:`ARM_FLAGS` are kept.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    wanted = ARM_FLAGS if arch.lower() in _ARM_MACHINES else X86_FLAGS
    listed = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or ""
    return CpuFeatures(arch, frozenset(f for f in wanted if f in listed), model, source)


def detect_cpu_features(
    cpuinfo: str | Path = "/proc/cpuinfo", arch: str | None = None
) -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (``cpuinfo``/``arch`` only to test other machines).

    Where ``cpuinfo`` cannot be read (macOS, Windows, a sandbox) the flags are unknown.
    """
    arch = arch or platform.machine() or "unknown"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return CpuFeatures(arch)
    return parse_cpuinfo(text, arch, str(cpuinfo))


def saturates_on(settings: Mapping[str, Any], cpu: CpuFeatures) -> bool:
    """Whether an int8 file with these quantization settings saturates on ``cpu``.

    ``settings`` is the quantization metadata (``segfast.quantization`` JSON). Full-range int8
    weights saturate on x86 without VNNI whatever the activation type: ONNX Runtime turns int8
    activations into uint8 on x86 to reach the same U8S8 kernels. uint8 weights (U8U8 kernels)
    and 7-bit weights (``reduce_range``) are safe. Files written before these keys existed
    were uint8 x full-range int8, which is what the defaults say.
    """
    if cpu.u8s8_saturates is not True:
        return False
    if settings.get("target") == "tensorrt":
        # TensorRT's layout leaves Conv/Gemm outputs unquantized, so ORT does not fuse them
        # into int8 kernels: it runs them in float between Q/DQ pairs (measured: no QLinearConv
        # or QGemm, and the same cosine on AVX2 as on VNNI).
        return False
    return settings.get("weight_type", "int8") == "int8" and not settings.get(
        "reduce_range", False
    )
