"""Local ImageNet weights: read a state_dict file, adapt the first convolution to N bands, load it strictly.

Nothing is ever downloaded. A weights file is a ``torch.save``-d state_dict with torchvision-style keys (what
``torchvision.models.resnet50().state_dict()`` or ``vgg16().state_dict()`` produce); a dict wrapping it under
``"state_dict"`` or ``"model"``, and a ``"module."`` prefix from DistributedDataParallel, are accepted too.

Band adaptation of the first-layer kernels ``W`` (shape ``(out, 3, k, k)``, RGB order):

* 3 bands: unchanged.
* more than 3 (RGBIR, RGB+DSM, ...): the RGB kernels are kept and every extra band gets the mean RGB kernel.
* 1 or 2 bands (panchromatic, SAR, ...): every band gets the mean RGB kernel scaled by ``3 / bands``, so that a
  grey image fed as 1 or 2 identical bands produces the same first-layer response as the RGB network sees for
  the same grey image in three channels (for one band this is the sum of the RGB kernels).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rs_deeplab.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a state_dict of tensors from ``path`` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: The file is missing, cannot be unpickled, or does not hold a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found; pass a local ImageNet state_dict (.pth) or weights: null")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{p}: cannot read weights file ({reason[:200]}); expected a torch.save-d state_dict"
        ) from exc
    if isinstance(data, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
                break
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{p}: weights file does not hold a state_dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in data.items()}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map RGB first-layer kernels ``(out, 3, k, k)`` to ``in_channels`` bands (rules in the module docstring)."""
    if weight.shape[1] != 3:
        raise ValueError(f"expected RGB kernels with 3 input channels, got shape {tuple(weight.shape)}")
    if in_channels == 3:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    if in_channels > 3:
        return torch.cat([weight, mean.expand(-1, in_channels - 3, -1, -1)], dim=1).contiguous()
    return (mean * (3.0 / in_channels)).expand(-1, in_channels, -1, -1).contiguous()


def widen_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return ``conv`` unchanged for 3 bands, else a freshly initialised copy of it taking ``in_channels`` bands."""
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


def _examples(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_encoder_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    path: str | os.PathLike[str],
    description: str,
    first_conv: str,
    prefix: str = "",
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module`` strictly, adapting the first convolution's kernels to the module's bands.

    Args:
        module: The encoder to fill; its own ``state_dict`` keys are the expected ones.
        state: The file's tensors; keys are ``prefix + <module key>``.
        path: The file, named in error messages.
        description: What the file should be, e.g. ``"torchvision resnet50"``, named in error messages.
        first_conv: The module key of the first convolution's weight, e.g. ``"conv1.weight"``.
        prefix: Prefix of the encoder's keys in the file (``"features."`` for VGG).
        ignore_prefixes: File keys starting with these belong to the classifier and are skipped.

    Raises:
        CheckpointError: Keys are missing or unexpected, or a tensor has the wrong shape.
    """
    expected = module.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    found = {k[len(prefix) :]: v for k, v in kept.items() if k.startswith(prefix)}
    extra = [k for k in kept if not k.startswith(prefix)]
    extra += [prefix + k for k in found if k not in expected]
    # Files saved before torch 0.4.1 have no BN batch counters; those buffers are not weights.
    missing = [prefix + k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    hint = f"expected a {description} ImageNet state_dict with keys like {_examples([prefix + k for k in expected])}"
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} encoder keys missing ({_examples(missing)}); {hint}")
    if extra:
        raise CheckpointError(f"{path}: {len(extra)} unexpected keys ({_examples(extra)}); {hint}")
    tensors = dict(expected)
    for key, value in found.items():
        want = expected[key].shape
        if key == first_conv and value.shape != want and value.ndim == 4 and value.shape[1] == 3:
            value = adapt_first_conv(value, want[1])
        if value.shape != want:
            raise CheckpointError(
                f"{path}: {prefix + key} has shape {tuple(value.shape)} but the model expects {tuple(want)}; {hint}"
            )
        tensors[key] = value.to(expected[key].dtype)
    module.load_state_dict(tensors, strict=True)
