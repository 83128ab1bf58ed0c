"""CPU kind detection from /proc/cpuinfo texts, and which int8 files saturate on which CPU.

The texts are trimmed copies of real machines' first processor entries, so these tests say the
same on every machine (the live /proc/cpuinfo is only read by the smoke test at the end).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segfast_ros.runtime.cpu_features import (
    CpuFeatures,
    detect_cpu_features,
    parse_cpuinfo,
    saturates_on,
)

#: AMD EPYC Zen 4 (AVX-512 with VNNI).
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 fma avx avx2 bmi2 avx512f avx512dq avx512bw \
avx512vl avx512_bf16 avx512_vnni avx512_vpopcntdq
processor\t: 1
flags\t\t: fpu sse
"""
#: AMD EPYC Zen 2 (AVX2 only): the saturating kind.
ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R32
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 fma avx avx2 bmi1 bmi2 sha_ni
"""
#: Intel Skylake-SP: AVX-512 without VNNI, saturates too.
SKYLAKE_SP = """model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
#: Intel Alder Lake: AVX-VNNI without AVX-512.
ALDER_LAKE = """model name\t: 12th Gen Intel(R) Core(TM) i7-1265U
flags\t\t: fpu sse avx avx2 avx_vnni
"""
#: Jetson AGX Orin (Cortex-A78AE): dot product, no i8mm.
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU part\t: 0xd42
"""

#: Quantization settings as the targets write them, and as files from before targets existed.
U8S8_8BIT = {"target": "cpu-vnni", "activation_type": "uint8", "weight_type": "int8"}
U8S8_7BIT = {"target": "cpu", "weight_type": "int8", "reduce_range": True}
U8U8 = {"target": "cpu-avx2", "activation_type": "uint8", "weight_type": "uint8"}
S8S8 = {"target": "arm", "activation_type": "int8", "weight_type": "int8"}
LEGACY_CPU = {"target": "cpu", "calibration_images": 32}
TENSORRT = {"target": "tensorrt", "activation_type": "int8", "weight_type": "int8"}


@pytest.mark.parametrize(
    ("text", "arch", "kind", "flags"),
    [
        (ZEN4, "x86_64", "x86-vnni", {"avx2", "avx512f", "avx512bw", "avx512_vnni"}),
        (ZEN2, "x86_64", "x86-avx2", {"avx2"}),
        (SKYLAKE_SP, "x86_64", "x86-avx2", {"avx2", "avx512f", "avx512bw"}),
        (ALDER_LAKE, "x86_64", "x86-vnni", {"avx2", "avx_vnni"}),
        (ORIN, "aarch64", "arm64", {"asimd", "asimddp"}),
        ("flags\t: fpu sse sse2 sse4_2\n", "x86_64", "x86", set()),
    ],
)
def test_kind_and_flags_from_cpuinfo(text: str, arch: str, kind: str, flags: set[str]) -> None:
    cpu = parse_cpuinfo(text, arch)
    assert cpu.kind == kind
    assert cpu.flags == flags  # only the first processor, only the flags that matter
    assert kind in cpu.describe() and cpu.to_dict()["kind"] == kind


def test_model_name_and_description() -> None:
    cpu = parse_cpuinfo(ZEN2, "x86_64")
    assert cpu.model == "AMD EPYC 7R32"
    assert cpu.describe() == "x86_64 AMD EPYC 7R32 [avx2] (x86-avx2)"


@pytest.mark.parametrize(
    ("text", "arch", "saturating"),
    [
        (ZEN4, "x86_64", set()),
        (ALDER_LAKE, "x86_64", set()),
        (ORIN, "aarch64", set()),
        # Measured under qemu-user's Haswell model: cpu-vnni 0.932, arm 0.933 mean cosine.
        (ZEN2, "x86_64", {"cpu-vnni", "arm", "legacy"}),
        (SKYLAKE_SP, "x86_64", {"cpu-vnni", "arm", "legacy"}),
    ],
)
def test_which_files_saturate_where(text: str, arch: str, saturating: set[str]) -> None:
    cpu = parse_cpuinfo(text, arch)
    files = {
        "cpu-vnni": U8S8_8BIT,
        "cpu": U8S8_7BIT,
        "cpu-avx2": U8U8,
        "arm": S8S8,
        "legacy": LEGACY_CPU,  # full-range uint8 x int8, as written before targets existed
        "tensorrt": TENSORRT,  # ORT runs it in float between Q/DQ pairs
    }
    assert {name for name, settings in files.items() if saturates_on(settings, cpu)} == saturating


def test_unreadable_cpuinfo_leaves_flags_unknown(tmp_path: Path) -> None:
    cpu = detect_cpu_features(tmp_path / "missing", arch="x86_64")
    assert cpu == CpuFeatures("x86_64") and not cpu.flags_known
    assert cpu.kind == "x86" and cpu.u8s8_saturates is None
    assert "flags unknown" in cpu.describe()
    assert not saturates_on(U8S8_8BIT, cpu)  # unknown is no reason to warn
    assert detect_cpu_features(tmp_path / "missing", arch="arm64").kind == "arm64"
    assert detect_cpu_features(tmp_path / "missing", arch="ppc64le").kind == "other"


def test_detect_reads_a_cpuinfo_file(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(ORIN)
    cpu = detect_cpu_features(path, arch="aarch64")
    assert cpu.kind == "arm64" and cpu.source == str(path)


def test_this_machine() -> None:
    cpu = detect_cpu_features()
    assert cpu.arch and cpu.kind in ("x86-vnni", "x86-avx2", "x86", "arm64", "other")
