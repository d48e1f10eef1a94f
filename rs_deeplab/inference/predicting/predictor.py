"""Run a segmentation model on window batches: softmax probabilities, multi-scale and flip TTA, normalisation.

Raw windows are normalised on the model's device (:class:`Normaliser`), so the host only ships raw pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.devices import pick_amp


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: probabilities averaged over every scale × flip.

    ``scales`` resize the window (bilinear) before the model and the logits back after it; ``flips`` adds the
    horizontal mirror and, for aerial scenes (``vflip``), the vertical one. The defaults do nothing.
    """

    scales: tuple[float, ...] = (1.0,)
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise InputError(f"TTA scales must be positive numbers, got {list(self.scales)}")

    @property
    def passes(self) -> int:
        """Model calls per batch."""
        return len(self.scales) * (1 + self.hflip + self.vflip)


def model_outputs(output: object) -> torch.Tensor:
    """The logits tensor of a model's output (a tensor, a ``(out, aux)`` pair or a dict with ``out``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}; expected a (B, classes, h, w) logits tensor")


class Predictor:
    """Wrap a model for inference: device, AMP and channels_last on GPU, TTA, softmax.

    Args:
        model: Any ``nn.Module`` mapping ``(B, bands, h, w)`` to ``(B, classes, h, w)`` logits (put in eval mode).
        device: Where the model runs; inputs are moved there.
        tta: Test-time augmentation; None runs the model once.
        amp: ``auto`` (bf16 where the GPU has it natively, else fp16), ``bf16`` or ``fp16`` autocast on CUDA
            (the CPU always runs float32); ``none`` for float32. Resolved by
            :func:`rs_deeplab.runtime.devices.pick_amp`.
        channels_last: Memory format for CUDA inputs and model.

    A model with a true ``fixed_precision`` attribute (an exported model, see
    :mod:`rs_deeplab.inference.runtimes.exported`) always gets float32 inputs in the default layout: no AMP, no
    channels_last.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        *,
        tta: TTA | None = None,
        amp: str = "auto",
        channels_last: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.tta = tta or TTA()
        fixed = bool(getattr(model, "fixed_precision", False))  # an exported model: float32, its own layout
        self.channels_last = channels_last and self.device.type == "cuda" and not fixed
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        amp_dtype = pick_amp(amp, self.device)  # checked either way
        self.amp_dtype = None if fixed else amp_dtype

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            logits = model_outputs(self.model(x))
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise InputError(f"the model returned shape {tuple(logits.shape)}; expected (B, classes, h, w)")
        return logits.float()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, bands, h, w)`` float32 → ``(B, classes, h, w)`` float32 probabilities on :attr:`device`."""
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        total: torch.Tensor | None = None
        for scale in self.tta.scales:
            xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            for dims in self._flips():
                logits = self._forward(xs.flip(dims) if dims else xs)
                logits = logits.flip(dims) if dims else logits
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.softmax(1)
                total = probs if total is None else total.add_(probs)
        assert total is not None
        return total.div_(self.tta.passes) if self.tta.passes > 1 else total

    def _flips(self) -> Sequence[tuple[int, ...]]:
        flips: list[tuple[int, ...]] = [()]
        if self.tta.hflip:
            flips.append((3,))
        if self.tta.vflip:
            flips.append((2,))
        return flips


_WIDER = {
    getattr(torch, name): wide
    for name, wide in (("uint16", torch.int32), ("uint32", torch.int64))
    if hasattr(torch, name)
}
"""Signed types that hold every value of torch's bare-bones unsigned types (their device kernels came later)."""


class Normaliser:
    """Turn raw window batches into model input on ``device``: float32, ``(x - mean) / std``, 0 on nodata/padding.

    The float32 math is the same, in the same order, as normalising on the host (subtract the mean, divide by the
    std), so the results are equal bit for bit. Host tensors in pinned memory are copied without blocking.

    Args:
        mean: Per-band values subtracted; None subtracts nothing.
        std: Per-band divisors; None divides by nothing.
        device: Where the model runs.
    """

    def __init__(
        self, mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.mean = None if mean is None else self._per_band(mean)
        self.std = None if std is None else self._per_band(std)

    def _per_band(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor([float(v) for v in values], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def _float(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """``x`` as float32; an unsigned type the device's kernels lack is widened on the host first."""
        try:
            return x.to(torch.float32)
        except (RuntimeError, TypeError):
            if x.dtype not in _WIDER:
                raise
            return pixels.to(_WIDER[x.dtype]).to(self.device, non_blocking=True).to(torch.float32)

    def __call__(
        self, pixels: torch.Tensor, valid: torch.Tensor | None = None, extent: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``(B, bands, size, size)`` raw pixels → float32 model input on :attr:`device`.

        Args:
            pixels: Raw values of any real dtype (padding 0).
            valid: ``(B, size, size)`` bool, False on nodata and padding; None when all valid.
            extent: Rows and columns of each window inside the scene; the rest is set to 0.
        """
        x = pixels.to(self.device, non_blocking=True)
        if x.dtype != torch.float32:
            x = self._float(x, pixels)
        elif x is pixels:
            x = x.clone()  # the input stays as it was
        if self.mean is not None:
            x.sub_(self.mean)
        if self.std is not None:
            x.div_(self.std)
        h, w = x.shape[-2:] if extent is None else extent
        if h < x.shape[-2]:
            x[:, :, h:] = 0
        if w < x.shape[-1]:
            x[:, :, :, w:] = 0
        if valid is not None:
            x.mul_(valid.to(self.device, non_blocking=True).unsqueeze(1))
        return x
