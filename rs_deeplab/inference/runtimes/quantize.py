"""int8 models for ONNX Runtime: static quantization of a float32 export, calibrated on windows of a scene.

Static quantization (QDQ format: uint8 activations, int8 per-channel weights, min/max ranges, convolutions only)
runs the float32 model on :data:`CALIBRATION_WINDOWS` windows of the scene, normalised with the checkpoint's band
statistics, to fix each activation's range; the convolutions then run as int8 kernels (VNNI where the CPU has
it). On an x86 CPU without VNNI the weights are quantized to 7 bits (:func:`seven_bit_weights`): ONNX Runtime's
uint8 × int8 kernels there add pairs of products in 16 bits, which saturate with full-range weights (the demo model
agreed with float32 on 89% of pixels instead of 97% on such a CPU, an AMD EPYC with AVX2 only). Min/max, percentile
and entropy ranges, and quantizing every operator or keeping the first and last convolutions in float32, were
compared on the demo model: the same agreement within 0.3 points, min/max and convolutions only the fastest. Dynamic
quantization (weights only, activation ranges computed per call) was measured too and is far slower for these
convolutional models on this CPU (``bench/cpu_runtime_bench.py``: 0.2-0.4x float32's windows/s against 2.4-2.8x
for static), so ``--int8`` means static; :func:`quantize_dynamic_model` is kept for the benchmark.

The int8 model is checked against the float32 one on other windows of the same scene: the share of pixels whose
arg-max class is the same is recorded with the cached file (and in each output raster's inference tag) and said.
Windows are read at the scene's own pixels (not resampled to the model's GSD): the ranges only need the value
distribution, which resampling barely changes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.modelcard import ModelCard

log = logging.getLogger("rs_deeplab.inference")

WINDOW = 256
"""Side of the calibration and check windows (activation ranges do not depend on the window size)."""
CALIBRATION_WINDOWS = 9
"""Windows on a 3 × 3 lattice over the scene calibrate the ranges."""
CHECK_WINDOWS = 4
"""Windows on another (2 × 2) lattice measure the agreement with float32."""
METHOD = "static-qdq-conv-minmax"
"""How the int8 model is made (part of its cache key: a change of method builds the model again)."""


X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
"""``/proc/cpuinfo`` flags of x86 int8 dot-product instructions (which accumulate in 32 bits)."""


def seven_bit_weights(machine: str, flags: set[str] | None) -> bool:
    """Whether int8 weights should use 7 bits (``reduce_range``) on a CPU of ``machine`` with ``flags``.

    Only x86 without VNNI needs it (ONNX Runtime's AVX2/AVX-512 uint8 × int8 kernels add two products in a saturating
    16-bit sum); other architectures, and x86 with VNNI, keep all 8 bits. ``flags`` None (unknown): 7 bits on x86.
    """
    if machine.lower() not in X86:
        return False
    return not (flags and flags & VNNI_FLAGS)


@functools.cache
def this_cpu_needs_seven_bits() -> bool:
    """:func:`seven_bit_weights` for this machine (its flags from ``/proc/cpuinfo`` where there is one; read once)."""
    flags: set[str] | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    return seven_bit_weights(platform.machine(), flags)


def method() -> str:
    """:data:`METHOD`, with the weights' bits on this CPU (a cache built on another kind of CPU is built again)."""
    return f"{METHOD}-w{7 if this_cpu_needs_seven_bits() else 8}"


def calibration_key(scenes: Sequence[str]) -> str:
    """What a calibration depends on: the method on this CPU; each scene's path, size and modification time."""
    parts = []
    for scene in scenes:
        try:
            stat = Path(scene).stat()
            parts.append(f"{Path(scene).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(str(scene))
    return f"{method()}:{CALIBRATION_WINDOWS}x{WINDOW}+{CHECK_WINDOWS}:" + "|".join(parts)


def _lattice(length: int, size: int, count: int, shift: float) -> list[int]:
    """``count`` window offsets along an axis of ``length``, at fractions ``(i + shift) / count`` of the free room."""
    room = max(0, length - size)
    return sorted({round(room * (i + shift) / count) for i in range(count)})


def scene_windows(scene: str, card: ModelCard, lattice: int, shift: float) -> list[np.ndarray]:
    """Normalised float32 ``(1, bands, s, s)`` windows of ``scene`` on a ``lattice × lattice`` grid (nodata: 0).

    Raises:
        InputError: The scene cannot be read, or every window is nodata.
    """
    import rasterio

    bands = list(card.bands) if card.bands is not None else list(range(1, card.in_channels + 1))
    mean = np.asarray(card.mean if card.mean is not None else [0.0] * len(bands), np.float32).reshape(-1, 1, 1)
    std = np.asarray(card.std if card.std is not None else [1.0] * len(bands), np.float32).reshape(-1, 1, 1)
    out = []
    try:
        with rasterio.open(scene) as ds:
            size = min(WINDOW, ds.height, ds.width)
            for row in _lattice(ds.height, size, lattice, shift):
                for col in _lattice(ds.width, size, lattice, shift):
                    window = rasterio.windows.Window(col, row, size, size)
                    pixels = ds.read(bands, window=window, masked=True)
                    valid = ~np.ma.getmaskarray(pixels).any(axis=0)
                    if not valid.any():
                        continue
                    x = (pixels.filled(0).astype(np.float32) - mean) / std
                    out.append((x * valid)[None].astype(np.float32))
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"{scene}: cannot read windows to calibrate the int8 model ({exc})") from None
    if not out:
        raise InputError(f"{scene}: every calibration window is nodata; --int8 needs a scene with data")
    return out


class _Windows:
    """A :class:`onnxruntime.quantization.CalibrationDataReader` over a list of windows."""

    def __init__(self, name: str, windows: Sequence[np.ndarray]) -> None:
        self.name = name
        self.items: Iterator[np.ndarray] = iter(windows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.items, None)
        return None if item is None else {self.name: item}


def agreement(fp32: Path, int8: Path, windows: Sequence[np.ndarray]) -> float:
    """Share of the windows' pixels whose arg-max class is the same under both models."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    name = sessions[0].get_inputs()[0].name
    equal = total = 0
    for x in windows:
        labels = [s.run(None, {name: x})[0].argmax(1) for s in sessions]
        equal += int((labels[0] == labels[1]).sum())
        total += labels[0].size
    return equal / max(1, total)


def _copy_metadata(source: Path, target: Path) -> None:
    """The card (``metadata_props``) of the float32 export onto the quantized file."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "rs_deeplab"
    onnx.save(proto, str(target))


@contextlib.contextmanager
def _work_folder(near: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=near.parent, prefix=".quantize-") as tmp:
        yield Path(tmp)


def quantize_static_model(fp32: Path, out: Path, windows: Sequence[np.ndarray], *, seven_bits: bool) -> None:
    """Static QDQ quantization of ``fp32`` into ``out``, activation ranges calibrated on ``windows``.

    ``seven_bits``: weights in 7 bits (for x86 CPUs without VNNI, :func:`seven_bit_weights`).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with _work_folder(out) as work, _quiet_root_logger():
        pre = work / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        # convolutions only: quantize/dequantize pairs around Add, Concat and Resize cost more than they save
        # (3.6x float32's speed for Conv only, 2.6x for every operator, the same agreement); no
        # CalibMaxIntermediateOutputs: with it the ranges came out wrong (67% of pixels equal instead of 97%)
        quantize_static(
            str(pre),
            str(out),
            _Windows(name, windows),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Conv"],
            reduce_range=seven_bits,
        )
    _copy_metadata(fp32, out)


def quantize_dynamic_model(fp32: Path, out: Path) -> None:
    """Dynamic quantization (int8 weights, activation ranges per call) of ``fp32`` into ``out`` (benchmarks)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _work_folder(out) as work, _quiet_root_logger():
        pre = work / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    _copy_metadata(fp32, out)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one warning per integer tensor it skips to the root logger: keep them out."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_for_cache(fp32: Path, out: Path, card: ModelCard, scenes: Sequence[str]) -> Mapping[str, Any]:
    """Quantize ``fp32`` into ``out`` (the cache's temporary name), calibrated on the first scene; the facts.

    Raises:
        InputError: The scene cannot be read or holds no data.
    """
    scene = str(scenes[0])
    calibration = scene_windows(scene, card, 3, 0.5)[:CALIBRATION_WINDOWS]
    check = scene_windows(scene, card, 2, 0.25)[:CHECK_WINDOWS]
    seven_bits = this_cpu_needs_seven_bits()
    quantize_static_model(fp32, out, calibration, seven_bits=seven_bits)
    share = agreement(fp32, out, check)
    log.debug("%s: int8 agrees with float32 on %.4f of %d windows' pixels", out, share, len(check))
    return {
        "method": "static",
        "weight_bits": 7 if seven_bits else 8,
        "agreement": share,
        "check_windows": len(check),
        "calibration_windows": len(calibration),
        "calibrated_on": scene,
        "pid": os.getpid(),
    }
