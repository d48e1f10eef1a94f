"""Which int8 weights a CPU gets: 7 bits only on x86 without VNNI, where ONNX Runtime's kernels saturate."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from rs_deeplab.inference.runtimes import quantize
from rs_deeplab.inference.runtimes.quantize import seven_bit_weights

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    "machine, flags, seven",
    [
        ("x86_64", AVX2, True),  # AVX2 only: uint8 × int8 pairs add in 16 bits
        ("x86_64", AVX2 | {"avx512f", "avx512bw"}, True),  # AVX-512 without VNNI: the same kernels
        ("x86_64", AVX2 | {"avx512f", "avx512_vnni"}, False),
        ("x86_64", AVX2 | {"avx_vnni"}, False),  # AVX-VNNI (Alder Lake and later)
        ("AMD64", AVX2 | {"amx_int8", "avx512_vnni"}, False),
        ("x86_64", None, True),  # flags unknown: the safe choice on x86
        ("aarch64", None, False),  # ARM's dot products accumulate in 32 bits
        ("arm64", {"asimd", "asimddp"}, False),
    ],
)
def test_seven_bit_weights_only_on_x86_without_vnni(machine: str, flags: set[str] | None, seven: bool) -> None:
    assert seven_bit_weights(machine, flags) is seven


def test_the_method_names_this_cpus_bits() -> None:
    bits = 7 if quantize.this_cpu_needs_seven_bits() else 8
    assert quantize.method() == f"{quantize.METHOD}-w{bits}"
    assert quantize.calibration_key(["/nowhere.tif"]).startswith(f"{quantize.METHOD}-w{bits}:")
    if platform.machine() == "x86_64":
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
        assert (bits == 7) is not bool(set(flags) & quantize.VNNI_FLAGS)
