"""CNNs defined in the repo (no hub downloads here; DESIGN.md §7).

CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning", §4.2): a 3x3
stem conv, three stages of ``n`` BasicBlocks with base widths 16/32/64 (the
2nd and 3rd stage halve the resolution), global average pooling and a linear
classifier; ResNet-20 has n=3, ResNet-56 n=9. Inputs here are 1x28x28
(Fashion-MNIST) by default, so the feature maps are 28 -> 14 -> 7.

Shortcuts: option B of the paper, a 1x1 conv + BN projection only where the
shape changes (stride 2, or input width != output width), identity
elsewhere. Option A (zero-padded strided identity) has no parameters, so
Torch-Pruning's dependency graph cannot see which padded channels belong to
which input channel and would tie the stage widths to each other; with a
projection the coupling is an ordinary conv -> add, so the graph stays
simple: each stage's residual stream is one group.

Every width is configurable (:class:`ResNetCifarConfig`): the stem, each
stage's output width (the residual stream), and each block's inner width
(its first conv's output), so a pruned architecture can be rebuilt from its
channel counts alone and a pruned state dict loaded strictly onto it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "MODELS",
    "ResNetCifar",
    "ResNetCifarConfig",
    "build_model",
    "resnet20",
    "resnet56",
]

_BASE_STAGE_WIDTHS = (16, 32, 64)


@dataclass(frozen=True, slots=True)
class ResNetCifarConfig:
    """Channel widths of a CIFAR-style ResNet.

    ``stem``: output channels of the 3x3 stem conv. ``stages``: output width
    of each stage (its residual stream). ``inner``: the first conv's output
    width of every block, stage-major (``blocks_per_stage * len(stages)``
    entries). Width keys for :meth:`from_widths` / :meth:`widths`:
    ``"stem"``, ``"layer1"``..``"layer3"`` (stages), ``"layer1.0"``..
    ``"layer3.2"`` (inner width of a block), named like the modules.
    """

    stem: int = 16
    stages: tuple[int, ...] = _BASE_STAGE_WIDTHS
    inner: tuple[int, ...] = field(default=(16, 16, 16, 32, 32, 32, 64, 64, 64))
    blocks_per_stage: int = 3
    in_channels: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        expected = self.blocks_per_stage * len(self.stages)
        if len(self.inner) != expected:
            raise ValueError(
                f"inner has {len(self.inner)} widths, expected {expected} "
                f"({self.blocks_per_stage} blocks x {len(self.stages)} stages)"
            )
        for key, width in self.widths().items():
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"width {key!r} must be an int >= 1, got {width!r}")
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {self.in_channels}, {self.num_classes}")

    @classmethod
    def default(cls, blocks_per_stage: int = 3, in_channels: int = 1, num_classes: int = 10) -> ResNetCifarConfig:
        inner = tuple(w for w in _BASE_STAGE_WIDTHS for _ in range(blocks_per_stage))
        return cls(16, _BASE_STAGE_WIDTHS, inner, blocks_per_stage, in_channels, num_classes)

    def widths(self) -> dict[str, int]:
        """All widths by key (see the class docstring)."""
        out = {"stem": self.stem}
        for s, w in enumerate(self.stages):
            out[f"layer{s + 1}"] = w
        for i, w in enumerate(self.inner):
            out[f"layer{i // self.blocks_per_stage + 1}.{i % self.blocks_per_stage}"] = w
        return out

    def with_widths(self, widths: Mapping[str, int]) -> ResNetCifarConfig:
        """A copy with some widths replaced; unknown keys raise ValueError."""
        current = self.widths()
        unknown = sorted(set(widths) - set(current))
        if unknown:
            raise ValueError(f"unknown width key(s) {unknown}; valid: {list(current)}")
        merged = {**current, **{k: int(v) for k, v in widths.items()}}
        n = len(self.stages)
        return replace(
            self,
            stem=merged["stem"],
            stages=tuple(merged[f"layer{s + 1}"] for s in range(n)),
            inner=tuple(
                merged[f"layer{s + 1}.{b}"] for s in range(n) for b in range(self.blocks_per_stage)
            ),
        )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) - ReLU, with separate inner and output widths."""

    def __init__(self, in_planes: int, inner: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:  # option B: project only where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


_CONV_KEY = re.compile(r"^(layer\d+)\.(\d+)\.(conv1|conv2|shortcut\.0)$")


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet built from a :class:`ResNetCifarConfig`.

    Module names: ``conv1``/``bn1`` (stem), ``layer{s}.{b}.conv1|bn1|conv2|
    bn2|shortcut``, ``fc``.
    """

    def __init__(self, config: ResNetCifarConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, config.stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem)
        self.relu = nn.ReLU(inplace=True)
        in_planes = config.stem
        for s, planes in enumerate(config.stages):
            blocks = []
            for b in range(config.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                inner = config.inner[s * config.blocks_per_stage + b]
                blocks.append(BasicBlock(in_planes, inner, planes, stride))
                in_planes = planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        for s in range(len(self.config.stages)):
            out = getattr(self, f"layer{s + 1}")(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)

    @staticmethod
    def width_key(conv_name: str) -> str | None:
        """Which config width a conv's output channels set: ``"conv1"`` ->
        ``"stem"``, ``"layerS.B.conv1"`` -> ``"layerS.B"``, ``"layerS.B.conv2"``
        and ``"layerS.B.shortcut.0"`` -> ``"layerS"``; None for other names."""
        if conv_name == "conv1":
            return "stem"
        m = _CONV_KEY.match(conv_name)
        if m is None:
            return None
        stage, block, which = m.groups()
        return f"{stage}.{block}" if which == "conv1" else stage

    def current_config(self) -> ResNetCifarConfig:
        """The config matching the layers' actual widths (e.g. after in-place pruning)."""
        widths: dict[str, int] = {}
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                key = self.width_key(name)
                if key is not None:
                    widths[key] = module.out_channels
        return replace(
            self.config.with_widths(widths),
            in_channels=self.conv1.in_channels,
            num_classes=self.fc.out_features,
        )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)  # PyTorch's default, re-drawn under the seed
            bound = 1.0 / m.in_features**0.5
            nn.init.uniform_(m.bias, -bound, bound)


def _build_resnet(config: ResNetCifarConfig, seed: int) -> ResNetCifar:
    # fork_rng: the seed fixes the init without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetCifar(config)
        _init_weights(model)
    return model


def resnet20(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
) -> ResNetCifar:
    """ResNet-20 (3 stages x 3 BasicBlocks). ``widths`` overrides single widths
    by key (see :class:`ResNetCifarConfig`); ``config`` gives them all (then
    ``num_classes``/``in_channels`` are taken from it). Init is fixed by ``seed``."""
    if config is None:
        config = ResNetCifarConfig.default(3, in_channels, num_classes)
    elif config.blocks_per_stage != 3 or len(config.stages) != 3:
        raise ValueError(f"resnet20 needs 3 stages x 3 blocks, config has {len(config.stages)} x {config.blocks_per_stage}")
    if widths:
        config = config.with_widths(widths)
    return _build_resnet(config, seed)


def resnet56(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
) -> ResNetCifar:
    """ResNet-56 (3 stages x 9 BasicBlocks); arguments as :func:`resnet20`."""
    if config is None:
        config = ResNetCifarConfig.default(9, in_channels, num_classes)
    elif config.blocks_per_stage != 9 or len(config.stages) != 3:
        raise ValueError(f"resnet56 needs 3 stages x 9 blocks, config has {len(config.stages)} x {config.blocks_per_stage}")
    if widths:
        config = config.with_widths(widths)
    return _build_resnet(config, seed)


#: Model registry: name -> builder(**kw) -> nn.Module.
MODELS: dict[str, Callable[..., nn.Module]] = {"resnet20": resnet20, "resnet56": resnet56}


def build_model(name: str, **kw) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}") from None
    return builder(**kw)
