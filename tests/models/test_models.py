"""Contract tests over every entry of MODELS, parameter counts derived from the architectures, builder errors."""

from __future__ import annotations

import copy
import functools
import math
import typing
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.modelcard import card_from_training
from rs_deeplab.config.schema import ExperimentConfig, ModelConfig, config_to_dict
from rs_deeplab.inference.runtimes.trained import build_from_card
from rs_deeplab.models import MODELS, DeepLabBase, SegOutput, build_model, param_groups, set_output_stride
from rs_deeplab.models.deeplab_v3 import MULTI_GRID
from rs_deeplab.models.stride import dilate_resnet
from rs_deeplab.training.distributed import DistEnv
from rs_deeplab.training.experiment import _build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


NUM_CLASSES = 5
H, W = 97, 131  # odd and non-square on purpose
SH, SW = 49, 67  # a smaller odd size for the many tests where the size itself is not the point

# One case per model and head; resnet18 wherever the architecture allows it (v1 is VGG-16 by definition).
CASES: dict[str, dict[str, Any]] = {
    "v1": {"name": "deeplabv1"},
    "v2-r18": {"name": "deeplabv2", "backbone": "resnet18"},
    "v3-r18": {"name": "deeplabv3", "backbone": "resnet18"},
    "v3plus-r18": {"name": "deeplabv3plus", "backbone": "resnet18"},
    "v3-r18-mmseg": {"name": "deeplabv3", "backbone": "resnet18", "head": "mmseg"},
    "v3plus-r18-mmseg": {"name": "deeplabv3plus", "backbone": "resnet18", "head": "mmseg"},
}


@functools.cache
def cached_model(case: str, in_channels: int = 3) -> DeepLabBase:
    """A model shared by the read-only tests (eval mode, no gradients kept)."""
    torch.manual_seed(0)
    return build_model(**CASES[case], num_classes=NUM_CLASSES, in_channels=in_channels).eval()


def fresh_model(case: str, in_channels: int = 3, **overrides: Any) -> DeepLabBase:
    torch.manual_seed(0)
    return build_model(**{**CASES[case], **overrides}, num_classes=NUM_CLASSES, in_channels=in_channels)


def last_stage(model: DeepLabBase) -> nn.Module:
    """The module whose output is the backbone's last feature map."""
    encoder = model.encoder
    return encoder.layer4 if hasattr(encoder, "layer4") else encoder


def feature_size(model: DeepLabBase, x: torch.Tensor) -> tuple[int, int]:
    sizes: list[tuple[int, int]] = []
    handle = last_stage(model).register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return sizes[-1]


# ---- parameter counts, derived from the layer shapes ------------------------------------------------------------


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers


def separable(cin: int, cout: int) -> int:
    """smp's SeparableConv2d without bias: depthwise 3x3 + pointwise 1x1."""
    return 9 * cin + cin * cout


def separable_bn(cin: int, cout: int) -> int:
    """mmseg's depthwise-separable module: depthwise 3x3 + BN, pointwise 1x1 + BN."""
    return 9 * cin + bn(cin) + cin * cout + bn(cout)


def resnet18_trunk(in_channels: int) -> int:
    """torchvision ResNet-18 without fc: 11,176,512 for RGB (11,689,512 minus fc 512*1000+1000)."""
    total = conv(in_channels, 64, 7) + bn(64)
    cin = 64
    for cout in (64, 128, 256, 512):
        for block in range(2):  # two BasicBlocks per stage: two 3x3 conv-BN, plus a 1x1 projection when widening
            first_in = cin if block == 0 else cout
            total += conv(first_in, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if block == 0 and cin != cout:
                total += conv(cin, cout, 1) + bn(cout)
        cin = cout
    return total


def vgg16_convs(in_channels: int) -> int:
    """The 13 biased 3x3 convolutions of VGG-16 (configuration D): 14,714,688 for RGB."""
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    return sum(conv(cin, cout, 3, bias=True) for cin, cout in zip([in_channels, *widths], widths, strict=False))


def expected_parameters(case: str, in_channels: int, k: int = NUM_CLASSES) -> int:
    e, low, aux_in = 512, 64, 256  # ResNet-18 layer4, layer1 (stride 4) and layer3 channels
    if case == "v1":  # VGG convs + fc6 (3x3, 1024, biased) + fc7 (1x1, 1024) + fc8 (1x1 to classes)
        return vgg16_convs(in_channels) + conv(512, 1024, 3, True) + conv(1024, 1024, 1, True) + conv(1024, k, 1, True)
    trunk = resnet18_trunk(in_channels)
    if case == "v2-r18":  # four biased 3x3 ASPP convolutions straight to the classes
        return trunk + 4 * conv(e, k, 3, bias=True)
    if case in ("v3-r18", "v3plus-r18"):  # smp, 256 channels: 1x1, three 3x3, pooling branch, 1x1 projection
        c = 256
        three_by_three = separable(e, c) if case == "v3plus-r18" else conv(e, c, 3)
        aspp = 2 * (conv(e, c, 1) + bn(c)) + 3 * (three_by_three + bn(c)) + conv(5 * c, c, 1) + bn(c)
        if case == "v3-r18":  # smp's v3 decoder adds a 3x3 conv-BN after the ASPP
            decoder = aspp + conv(c, c, 3) + bn(c)
        else:  # v3+: separable 3x3 after the ASPP, 48-channel low-level projection, separable 3x3 fuse
            decoder = aspp + separable(c, c) + bn(c) + conv(low, 48, 1) + bn(48)
            decoder += separable(c + 48, c) + bn(c) + separable(c, c) + bn(c)  # two 3x3 after the concatenation
        return trunk + decoder + conv(c, k, 1, bias=True)
    # mmseg heads on ResNet-18 (its R-18 configs): 128-channel branches, 12-channel skip, 64-channel FCN aux head;
    # pooling + 1x1 + three 3x3 branches, 3x3 bottleneck, classifier
    c, skip, aux_c = 128, 12, 64
    plus = case == "v3plus-r18-mmseg"
    branch3 = separable_bn(e, c) if plus else conv(e, c, 3) + bn(c)
    head = 2 * (conv(e, c, 1) + bn(c)) + 3 * branch3 + conv(5 * c, c, 3) + bn(c) + conv(c, k, 1, bias=True)
    if plus:
        head += conv(low, skip, 1) + bn(skip) + separable_bn(c + skip, c) + separable_bn(c, c)
    aux = conv(aux_in, aux_c, 3) + bn(aux_c) + conv(aux_c, k, 1, bias=True)
    return trunk + head + aux


def test_parameter_formulas_match_known_totals() -> None:
    # Published totals: torchvision resnet18 11,689,512 (fc: 513,000), vgg16 features 14,714,688.
    assert resnet18_trunk(3) == 11_689_512 - 513_000
    assert vgg16_convs(3) == 14_714_688


# ---- the contract, for every model ---------------------------------------------------------------------------


def test_cases_cover_every_model() -> None:
    assert {case["name"] for case in CASES.values()} == set(MODELS)


@pytest.mark.parametrize("case", list(CASES))
class TestContract:
    @pytest.mark.parametrize(("in_channels", "size"), [(3, (H, W)), (1, (SH, SW)), (4, (SH, SW)), (5, (SH, SW))])
    def test_eval_output_is_logits_at_input_size(self, case: str, in_channels: int, size: tuple[int, int]) -> None:
        model = cached_model(case, in_channels)
        with torch.no_grad():
            out = model(torch.randn(2, in_channels, *size))
        assert isinstance(out, torch.Tensor) and not isinstance(out, SegOutput)
        assert out.shape == (2, NUM_CLASSES, *size)
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize("in_channels", [1, 4])
    def test_parameter_count(self, case: str, in_channels: int) -> None:
        model = cached_model(case, in_channels)
        assert sum(p.numel() for p in model.parameters()) == expected_parameters(case, in_channels)

    def test_backward_reaches_every_parameter(self, case: str) -> None:
        model = fresh_model(case, in_channels=4).train()
        x, target = torch.randn(2, 4, SH, SW), torch.randint(0, NUM_CLASSES, (2, SH, SW))
        out = model(x)
        if model.has_aux:  # training-mode contract: SegOutput(out, aux), both at input size
            assert isinstance(out, SegOutput) and out.aux.shape == out.out.shape == (2, NUM_CLASSES, SH, SW)
            loss = cross_entropy(out.out, target) + model.aux_weight * cross_entropy(out.aux, target)
        else:
            assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES, SH, SW)
            loss = cross_entropy(out, target)
        loss.backward()
        without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert without == []

    def test_eval_is_deterministic(self, case: str) -> None:
        model = cached_model(case)
        x = torch.randn(1, 3, SH, SW)
        with torch.no_grad():
            assert torch.equal(model(x), model(x))

    def test_allowed_output_strides(self, case: str) -> None:
        spec = MODELS[CASES[case]["name"]]
        x = torch.randn(1, 3, SH, SW)
        for stride in (8, 16):
            if stride not in spec.output_strides:
                with pytest.raises(InputError, match="choose one of"):
                    fresh_model(case, output_stride=stride)
                continue
            model = fresh_model(case, output_stride=stride).eval()
            assert model.output_stride == stride
            assert feature_size(model, x) == (math.ceil(SH / stride), math.ceil(SW / stride))
            with torch.no_grad():
                assert model(x).shape == (1, NUM_CLASSES, SH, SW)

    def test_output_stride_switch_keeps_weights(self, case: str) -> None:
        model = fresh_model(case).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.randn(1, 3, SH, SW)
        with torch.no_grad():
            reference = model(x)
        start = model.output_stride
        other = [s for s in (8, 16) if s != start and s in model.allowed_output_strides]
        if not other:
            with pytest.raises(InputError, match="supports output_stride 8"):
                set_output_stride(model, 16)
            return
        set_output_stride(model, other[0])
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(after[k], before[k]) for k in before)
        assert feature_size(model, x) == (math.ceil(SH / other[0]), math.ceil(SW / other[0]))
        assert model.aspp_rates == tuple(r * 16 // other[0] for r in (6, 12, 18))
        with torch.no_grad():
            switched = model(x)
        assert switched.shape == reference.shape and not torch.equal(switched, reference)
        # A model built at the other stride, given the same weights, computes the same thing.
        built = fresh_model(case, output_stride=other[0]).eval()
        built.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(built(x), switched)
        set_output_stride(model, start)
        with torch.no_grad():
            assert torch.equal(model(x), reference)

    def test_param_groups_split_backbone_and_head(self, case: str) -> None:
        model = cached_model(case)
        backbone, head = param_groups(model)
        assert head and backbone
        ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
        assert not ids_b & ids_h
        assert ids_b | ids_h == {id(p) for p in model.parameters()}
        assert {id(p) for p in model.encoder.parameters()} <= ids_b


# ---- builder: names, defaults, bad combinations ---------------------------------------------------------------


ARCHITECTURE_AWAY_FROM_DEFAULTS = {
    "name": "deeplabv3",
    "backbone": "resnet18",
    "output_stride": 16,
    "head": "mmseg",
    "aux_weight": 0.25,
    "msc": [1.0, 0.5],
}
"""Every key of the config's ``model`` section that shapes the network, each set away from its default."""


def test_training_and_a_model_card_build_the_same_network_from_every_architecture_key() -> None:
    # training builds from the config; inference, export and Dask workers build from the checkpoint's card
    not_architecture = {"dropout", "weights", "msc_weight"}  # set after building, initial weights, a loss weight
    assert set(ModelConfig.model_fields) - not_architecture == set(ARCHITECTURE_AWAY_FROM_DEFAULTS)
    default = ModelConfig()
    assert all(getattr(default, k) != v for k, v in ARCHITECTURE_AWAY_FROM_DEFAULTS.items())
    cfg = ExperimentConfig(model=ModelConfig(**ARCHITECTURE_AWAY_FROM_DEFAULTS))
    torch.manual_seed(0)
    trained, _ = _build_model(cfg, 5, 4, torch.device("cpu"), DistEnv())
    card = card_from_training(config_to_dict(cfg), [f"c{i}" for i in range(5)], {"mean": [0.0] * 4, "std": [1.0] * 4})
    rebuilt = build_from_card(card)
    assert isinstance(trained, DeepLabBase) and isinstance(rebuilt, DeepLabBase)
    assert (rebuilt.output_stride, rebuilt.has_aux, rebuilt.aux_weight) == (16, True, 0.25)
    assert tuple(rebuilt.msc_scales or ()) == tuple(trained.msc_scales or ()) == (1.0, 0.5)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)  # the same parameters and buffers, shape by shape
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained.eval()(x))


def test_config_choices_match_models() -> None:
    names = typing.get_args(ModelConfig.model_fields["name"].annotation)
    heads = typing.get_args(ModelConfig.model_fields["head"].annotation)
    assert set(names) == set(MODELS)
    assert {h for spec in MODELS.values() for h in spec.heads} == set(heads)
    cfg = ModelConfig(name="deeplabv3plus", backbone="resnet18", head="mmseg", aux_weight=0.25)
    model = build_model(
        cfg.name,
        num_classes=3,
        backbone=cfg.backbone,
        output_stride=cfg.output_stride,
        head=cfg.head,
        weights=cfg.weights,
        aux_weight=cfg.aux_weight,
    )
    assert model.has_aux and model.aux_weight == 0.25 and model.output_stride == 8


@pytest.mark.parametrize(
    ("name", "head", "stride", "rates"),
    [
        ("deeplabv3", "paper", 16, (6, 12, 18)),
        ("deeplabv3plus", "paper", 16, (6, 12, 18)),
        ("deeplabv3", "mmseg", 8, (12, 24, 36)),
        ("deeplabv3plus", "mmseg", 8, (12, 24, 36)),
    ],
)
def test_defaults_follow_the_papers(name: str, head: str, stride: int, rates: tuple[int, ...]) -> None:
    model = build_model(name, num_classes=2, backbone="resnet18", head=head)
    assert model.output_stride == stride and model.aspp_rates == rates
    assert MODELS[name].backbones[0] == "resnet101"


def test_mmseg_head_without_aux_weight_has_no_aux_head() -> None:
    model = build_model("deeplabv3", num_classes=2, backbone="resnet18", head="mmseg", aux_weight=0).train()
    assert not model.has_aux
    assert isinstance(model(torch.randn(2, 3, 33, 33)), torch.Tensor)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "deeplabv4"}, "unknown model 'deeplabv4'; choose one of deeplabv1, deeplabv2, deeplabv3"),
        ({"name": "deeplabv1", "backbone": "resnet50"}, "backbone 'resnet50' is not supported; choose one of vgg16"),
        ({"name": "deeplabv1", "head": "mmseg"}, "head 'mmseg' is not supported; choose one of paper"),
        ({"name": "deeplabv2", "head": "mmseg"}, "head 'mmseg' is not supported; choose one of paper"),
        ({"name": "deeplabv2", "output_stride": 16}, "output_stride 16 is not supported; choose one of 8"),
        ({"name": "deeplabv3", "output_stride": 32}, "output_stride 32 is not supported; choose one of 8, 16"),
        ({"name": "deeplabv3plus", "backbone": "vgg16"}, "choose one of resnet101, resnet18, resnet34"),
        ({"name": "deeplabv3", "num_classes": 0}, "num_classes must be a positive integer"),
        ({"name": "deeplabv2", "in_channels": 0}, "in_channels must be a positive integer"),
        ({"name": "deeplabv3", "head": "mmseg", "aux_weight": -1.0}, "aux_weight must be >= 0"),
    ],
)
def test_unsupported_combinations_list_the_choices(kwargs: dict[str, Any], message: str) -> None:
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(InputError, match=message) as info:
        build_model(args.pop("name"), **args)
    assert "\n" not in str(info.value)


def test_set_output_stride_rejects_foreign_modules() -> None:
    with pytest.raises(InputError, match="not an rs_deeplab DeepLab model"):
        set_output_stride(nn.Conv2d(3, 3, 1), 8)


# ---- smp equivalence and multi-grid ------------------------------------------------------------------------------


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("stride", [8, 16])
def test_paper_head_matches_smp_forward(plus: bool, stride: int) -> None:
    ours = build_model("deeplabv3plus" if plus else "deeplabv3", num_classes=4, backbone="resnet18").eval()
    set_output_stride(ours, stride)
    smp_class = smp.DeepLabV3Plus if plus else smp.DeepLabV3
    rates = tuple(r * 16 // stride for r in (6, 12, 18))
    theirs = smp_class(
        "resnet18", encoder_weights=None, encoder_output_stride=stride, decoder_atrous_rates=rates, classes=4
    )
    if plus:  # the paper's second 3x3 convolution after the concatenation, which smp's decoder lacks
        theirs.decoder.block2.extend(copy.deepcopy(list(ours.decoder.block2[3:])))
    else:  # smp has no multi-grid; give its encoder the same dilations
        dilate_resnet(theirs.encoder, stride, MULTI_GRID)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 96)  # divisible by the stride, as smp requires
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs.eval()(x))


def test_v3_multi_grid_rates() -> None:
    # ResNet-50: Bottleneck blocks, three in layer4; rates = stage rate x (1, 2, 4) on the 3x3 conv2
    model = build_model("deeplabv3", num_classes=2, backbone="resnet50", output_stride=16)
    for stride, rates in ((16, (2, 4, 8)), (8, (4, 8, 16))):
        set_output_stride(model, stride)
        assert tuple(block.conv2.dilation[0] for block in model.encoder.layer4) == rates
        assert tuple(block.conv2.stride[0] for block in model.encoder.layer4) == (1, 1, 1)
        layer3 = [(block.conv2.dilation[0], block.conv2.stride[0]) for block in model.encoder.layer3]
        assert layer3 == ([(2, 1)] * 6 if stride == 8 else [(1, 2)] + [(1, 1)] * 5)
    plus = build_model("deeplabv3plus", num_classes=2, backbone="resnet18", output_stride=8)
    assert {conv.dilation[0] for block in plus.encoder.layer4 for conv in (block.conv1, block.conv2)} == {4}
