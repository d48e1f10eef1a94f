"""ImageNet weights: find the file (local or torch's hub cache), adapt the first convolution to N bands, load it.

``weights`` is a local file or ``"imagenet"``. A weights file is a ``torch.save``-d state_dict with
torchvision-style keys (what ``torchvision.models.resnet50().state_dict()`` or ``vgg16().state_dict()`` produce); a
dict wrapping it under ``"state_dict"`` or ``"model"``, and a ``"module."`` prefix from DistributedDataParallel, are
accepted too. ``"imagenet"`` means torchvision's published file for the backbone (``IMAGENET_WEIGHTS``), kept in
torch's hub cache as ``$TORCH_HOME/hub/checkpoints/<torchvision's file name>``: read from there without any network
access when present, else downloaded there once (with a progress bar and torchvision's hash check).

Band adaptation of the first-layer kernels ``W`` (shape ``(out, 3, k, k)``, RGB order):

* 3 bands: unchanged.
* more than 3 (RGBIR, RGB+DSM, ...): the RGB kernels are kept and every extra band gets the mean RGB kernel.
* 1 or 2 bands (panchromatic, SAR, ...): every band gets the mean RGB kernel scaled by ``3 / bands``, so that a
  grey image fed as 1 or 2 identical bands produces the same first-layer response as the RGB network sees for
  the same grey image in three channels (for one band this is the sum of the RGB kernels).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
    ResNeXt50_32X4D_Weights,
    ResNeXt101_32X8D_Weights,
    VGG16_Weights,
    WeightsEnum,
)

from rs_deeplab.cli.console import progress_enabled
from rs_deeplab.cli.errors import CheckpointError, InputError

StateDict = dict[str, torch.Tensor]
log = logging.getLogger(__name__)

IMAGENET = "imagenet"
"""The ``weights`` value that asks for torchvision's published ImageNet weights of the backbone."""

# One torchvision weight enum per backbone rs_deeplab.models builds. Where torchvision has several, IMAGENET1K_V1:
# the ResNet/ResNeXt V1 files come from the classic ~90-epoch ImageNet training that the published DeepLab numbers
# start from; V2 comes from torchvision's later 600-epoch recipe (higher top-1), which those tables predate. VGG-16
# V1 is the whole network, classifier included, which DeepLab v1 decimates into fc6/fc7; IMAGENET1K_FEATURES has no
# classifier and expects input on a 0-255 scale.
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
    "resnet152": ResNet152_Weights.IMAGENET1K_V1,
    "resnext50_32x4d": ResNeXt50_32X4D_Weights.IMAGENET1K_V1,
    "resnext101_32x8d": ResNeXt101_32X8D_Weights.IMAGENET1K_V1,
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's convention: "<name>-<sha256 prefix>.pth"
DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds without an answer from the server after which a download gives up."""


def imagenet_source(backbone: str) -> tuple[str, Path]:
    """The URL of torchvision's ImageNet weights for ``backbone`` and the hub-cache file they are kept in.

    Raises:
        InputError: torchvision publishes no ImageNet weights for ``backbone``.
    """
    if backbone not in IMAGENET_WEIGHTS:
        raise InputError(
            f"weights: imagenet: torchvision has no ImageNet weights for backbone {backbone!r} (it has them for "
            f"{', '.join(IMAGENET_WEIGHTS)}); pass a local state_dict file or weights: null"
        )
    url = IMAGENET_WEIGHTS[backbone].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def download_weights(url: str, dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` (progress bar on a terminal); a broken download never lands at ``dest``.

    A SHA-256 prefix in the file name (``resnet18-f37072fd.pth``) is checked as torch.hub does.

    Raises:
        CheckpointError: The server cannot be reached or answers with an error, the transfer stalls for
            ``timeout`` seconds, the hash does not match, or ``dest``'s folder cannot be written. One line that
            names the file, the URL and the folder to put the file in by hand.
    """
    match = _HASH_IN_NAME.search(dest.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch.hub's urlopen takes no timeout; without one a dead link hangs
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, dest)
        torch.hub.download_url_to_file(url, str(dest), match.group(1) if match else None, progress_enabled())
    except (OSError, RuntimeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{dest.name}: not in the torch hub cache and the download failed ({reason}); download {url} and "
            f"put it in {dest.parent}/ (the hub folder follows $TORCH_HOME)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(weights: str | os.PathLike[str] | None, backbone: str) -> Path | None:
    """The weights file to load for ``backbone``, checked before anything expensive happens; None for no weights.

    ``"imagenet"`` is torchvision's file for ``backbone`` in torch's hub cache, downloaded first if missing (see
    :func:`download_weights`); anything else is a local file that must exist.

    Raises:
        InputError: ``"imagenet"`` for a backbone torchvision has no ImageNet weights for.
        CheckpointError: A local file is missing, or the ImageNet file is neither cached nor downloadable.
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights == IMAGENET:
        url, path = imagenet_source(backbone)
        if not path.is_file():
            download_weights(url, path)
        return path
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(_not_found(path))
    return path


def _not_found(path: Path) -> str:
    return f"{path}: weights file not found; pass a local ImageNet state_dict (.pth), weights: imagenet or null"


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a state_dict of tensors from ``path`` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: The file is missing, cannot be unpickled, or does not hold a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(_not_found(p))
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
