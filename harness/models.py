"""CNNs defined in the repo (no hub downloads here; DESIGN.md §7): the model zoo.

Registered in :data:`MODELS` (build with :func:`build_model`):

- ``resnet20`` / ``resnet32`` / ``resnet56``: CIFAR-style ResNet (below);
- ``vgg11`` / ``vgg16``: VGG with BatchNorm (:class:`VGG`);
- ``mobilenet_v2``: MobileNetV2 with a CIFAR (stride 1) or ImageNet (stride 2)
  stem (:class:`MobileNetV2`);
- ``resnet18``: ImageNet-style ResNet-18 (:class:`ResNetImageNet`) for
  224x224 latency work.

Every builder takes ``num_classes``, ``in_channels``, ``input_size`` (H, W or
one int), ``widths`` (per-layer overrides by width key) and ``seed``, so one
call shape fits all (the CLI passes the input shape's C and H, W). Random
(seeded) weights: latency work needs no training. :data:`DEFAULT_INPUT_SHAPES`
gives each model's natural batch-1 input shape. Tensors are float32 NCHW;
outputs are logits of shape (N, num_classes).

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
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "DEFAULT_INPUT_SHAPES",
    "InvertedResidual",
    "InvertedResidualSpec",
    "MODELS",
    "MobileNetV2",
    "MobileNetV2Config",
    "ResNetCifar",
    "ResNetCifarConfig",
    "ResNetConfig",
    "ResNetImageNet",
    "VGG",
    "VGGConfig",
    "build_model",
    "default_input_shape",
    "mobilenet_v2",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg11",
    "vgg16",
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


def _layer_widths(model: nn.Module) -> dict[str, int]:
    """Width key -> the actual output width of every Conv2d/Linear that has a
    key under ``model.width_key`` (what ``current_config`` reads back)."""
    widths: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            key = model.width_key(name)
            if key is not None:
                widths[key] = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    return widths


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


def _input_hw(input_size: int | Sequence[int] | None, default: int) -> tuple[int, int]:
    """(H, W) from None (-> ``default`` square), an int, or a (H, W) / (C, H, W) /
    (N, C, H, W) sequence (the last two entries); ValueError if not positive."""
    if input_size is None:
        hw = (default, default)
    elif isinstance(input_size, int):
        hw = (input_size, input_size)
    else:
        dims = tuple(int(d) for d in input_size)
        if len(dims) < 1:
            raise ValueError(f"input_size must be an int or (H, W), got {input_size!r}")
        hw = (dims[-2], dims[-1]) if len(dims) >= 2 else (dims[0], dims[0])
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    return hw


def _cifar_resnet(
    depth: int,
    num_classes: int,
    in_channels: int,
    input_size: int | Sequence[int] | None,
    widths: Mapping[str, int] | None,
    config: ResNetCifarConfig | None,
    seed: int,
) -> ResNetCifar:
    n = (depth - 2) // 6
    _input_hw(input_size, 28)  # validated only: global average pooling makes the net size-agnostic
    if config is None:
        config = ResNetCifarConfig.default(n, in_channels, num_classes)
    elif config.blocks_per_stage != n or len(config.stages) != 3:
        raise ValueError(
            f"resnet{depth} needs 3 stages x {n} blocks, config has {len(config.stages)} x {config.blocks_per_stage}"
        )
    if widths:
        config = config.with_widths(widths)
    return _build_resnet(config, seed)


def resnet20(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
) -> ResNetCifar:
    """ResNet-20 (He et al. 2016, §4.2: 3 stages x 3 BasicBlocks, 0.27M params).

    ``widths`` overrides single widths by key (see :class:`ResNetCifarConfig`);
    ``config`` gives them all (then ``num_classes``/``in_channels`` are taken
    from it). ``input_size`` is only validated: any H, W works (global average
    pooling; 28x28 -> 7x7 and 32x32 -> 8x8 at the last stage). Init is fixed
    by ``seed``. Raises ValueError on bad widths or a config of another depth."""
    return _cifar_resnet(20, num_classes, in_channels, input_size, widths, config, seed)


def resnet32(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
) -> ResNetCifar:
    """ResNet-32 (He et al. 2016, §4.2: 3 stages x 5 BasicBlocks, 0.46M params);
    arguments as :func:`resnet20`."""
    return _cifar_resnet(32, num_classes, in_channels, input_size, widths, config, seed)


def resnet56(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
) -> ResNetCifar:
    """ResNet-56 (He et al. 2016, §4.2: 3 stages x 9 BasicBlocks, 0.85M params);
    arguments as :func:`resnet20`."""
    return _cifar_resnet(56, num_classes, in_channels, input_size, widths, config, seed)


# --------------------------------------------------------------------------- ImageNet ResNet-18

#: Same record as the CIFAR config; the name says it serves both stems.
ResNetConfig = ResNetCifarConfig


class ResNetImageNet(ResNetCifar):
    """ImageNet-style ResNet (He et al. 2016, §3.4 and Table 1): a 7x7 stride-2
    stem conv + BN + ReLU, a 3x3 stride-2 max pool, then the stages of
    :class:`ResNetCifar` (the first keeps the resolution, each later one halves
    it), global average pooling and a linear classifier. A 224x224 input gives
    56 -> 28 -> 14 -> 7 feature maps. Projection shortcuts (1x1 conv + BN)
    where the shape changes, as torchvision's ``downsample``. Module names and
    width keys as :class:`ResNetCifar` (``conv1`` is the 7x7 stem)."""

    def __init__(self, config: ResNetCifarConfig) -> None:
        super().__init__(config)
        self.conv1 = nn.Conv2d(config.in_channels, config.stem, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(len(self.config.stages)):
            out = getattr(self, f"layer{s + 1}")(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


def resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    widths: Mapping[str, int] | None = None,
    config: ResNetCifarConfig | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
) -> ResNetImageNet:
    """ImageNet-style ResNet-18 (He et al. 2016, Table 1 "18-layer": stem 64,
    stages 64/128/256/512 x 2 BasicBlocks; 11.7M params at 1000 classes).

    Width keys as :class:`ResNetCifarConfig`: ``"stem"``, ``"layer1"``..
    ``"layer4"`` (stage streams), ``"layer1.0"``..``"layer4.1"`` (inner widths).
    ``input_size`` is only validated (default 224; any size >= 32 keeps every
    feature map non-empty). Raises ValueError on bad widths."""
    _input_hw(input_size, 224)
    if config is None:
        stages = (64, 128, 256, 512)
        config = ResNetCifarConfig(64, stages, tuple(w for w in stages for _ in range(2)), 2, in_channels, num_classes)
    elif config.blocks_per_stage != 2 or len(config.stages) != 4:
        raise ValueError(f"resnet18 needs 4 stages x 2 blocks, config has {len(config.stages)} x {config.blocks_per_stage}")
    if widths:
        config = config.with_widths(widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetImageNet(config)
        _init_weights(model)
    return model


# --------------------------------------------------------------------------- VGG

_VGG_LAYOUTS: dict[str, tuple[tuple[int, ...], ...]] = {
    # conv widths per stage; a 2x2 max pool ends every stage (Simonyan & Zisserman 2015, Table 1)
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # configuration A
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),  # configuration D
}


@dataclass(frozen=True, slots=True)
class VGGConfig:
    """Widths of a VGG with BatchNorm.

    ``convs``: output width of every 3x3 conv, forward order (width keys
    ``"conv1"``..``"convK"``). ``stage_sizes``: how many convs each stage has
    (a 2x2 stride-2 max pool follows every stage while the feature map is at
    least 2x2, so small inputs such as 28x28 keep a 1x1 map instead of
    vanishing). ``hidden``: widths of the hidden fully connected layers
    (keys ``"fc1"``..; empty = one linear layer, the CIFAR variant of
    Liu et al. 2017 "Network Slimming"). ``input_size``: (H, W) the
    classifier is sized for: its input is ``convs[-1] * h * w`` with (h, w)
    the final feature map.
    """

    convs: tuple[int, ...]
    stage_sizes: tuple[int, ...]
    hidden: tuple[int, ...] = ()
    in_channels: int = 3
    num_classes: int = 10
    input_size: tuple[int, int] = (32, 32)

    def __post_init__(self) -> None:
        if sum(self.stage_sizes) != len(self.convs) or any(n < 1 for n in self.stage_sizes):
            raise ValueError(f"stage_sizes {self.stage_sizes} must be >= 1 each and sum to {len(self.convs)} convs")
        for key, width in self.widths().items():
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"width {key!r} must be an int >= 1, got {width!r}")
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {self.in_channels}, {self.num_classes}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (H, W) >= 1, got {self.input_size}")

    def widths(self) -> dict[str, int]:
        """All widths by key: ``"convK"`` (1-based, forward order), ``"fcK"`` (hidden FCs)."""
        out = {f"conv{i + 1}": w for i, w in enumerate(self.convs)}
        out.update({f"fc{i + 1}": w for i, w in enumerate(self.hidden)})
        return out

    def with_widths(self, widths: Mapping[str, int]) -> VGGConfig:
        """A copy with some widths replaced; unknown keys raise ValueError."""
        current = self.widths()
        unknown = sorted(set(widths) - set(current))
        if unknown:
            raise ValueError(f"unknown width key(s) {unknown}; valid: {list(current)}")
        merged = {**current, **{k: int(v) for k, v in widths.items()}}
        return replace(
            self,
            convs=tuple(merged[f"conv{i + 1}"] for i in range(len(self.convs))),
            hidden=tuple(merged[f"fc{i + 1}"] for i in range(len(self.hidden))),
        )

    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the last feature map for ``input_size`` (a pool halves,
        flooring, only while both sides are >= 2)."""
        h, w = self.input_size
        for _ in self.stage_sizes:
            if h >= 2 and w >= 2:
                h, w = h // 2, w // 2
        return h, w


class VGG(nn.Module):
    """VGG with BatchNorm after every conv (Simonyan & Zisserman 2015, §2.1 and
    Table 1; BN as in torchvision's ``vgg*_bn``) built from a :class:`VGGConfig`.

    Module names: ``features.convK``/``bnK``/``reluK`` and ``features.poolS``;
    ``classifier.fcK`` (hidden, each + ReLU) and ``classifier.out``. Input
    (N, in_channels, H, W) float32 with (H, W) == ``config.input_size``
    (the classifier is sized for it); output (N, num_classes) logits.
    """

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[tuple[str, nn.Module]] = []
        c_in, k = config.in_channels, 0
        h, w = config.input_size
        for s, n in enumerate(config.stage_sizes):
            for _ in range(n):
                k += 1
                c_out = config.convs[k - 1]
                layers += [
                    (f"conv{k}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
                    (f"bn{k}", nn.BatchNorm2d(c_out)),
                    (f"relu{k}", nn.ReLU(inplace=True)),
                ]
                c_in = c_out
            if h >= 2 and w >= 2:
                layers.append((f"pool{s + 1}", nn.MaxPool2d(2, 2)))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(OrderedDict(layers))
        head: list[tuple[str, nn.Module]] = []
        f_in = c_in * h * w
        for i, width in enumerate(config.hidden):
            head += [(f"fc{i + 1}", nn.Linear(f_in, width)), (f"relu{i + 1}", nn.ReLU(inplace=True))]
            f_in = width
        head.append(("out", nn.Linear(f_in, config.num_classes)))
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    @staticmethod
    def width_key(conv_name: str) -> str | None:
        """``"features.convK"`` -> ``"convK"``, ``"classifier.fcK"`` -> ``"fcK"``; else None."""
        m = re.match(r"^(?:features\.(conv\d+)|classifier\.(fc\d+))$", conv_name)
        return None if m is None else (m.group(1) or m.group(2))

    def current_config(self) -> VGGConfig:
        """The config matching the layers' actual widths (e.g. after in-place pruning)."""
        return replace(
            self.config.with_widths(_layer_widths(self)),
            in_channels=self.features.conv1.in_channels,
            num_classes=self.classifier.out.out_features,
        )


def _vgg(
    name: str,
    num_classes: int,
    in_channels: int,
    input_size: int | Sequence[int] | None,
    widths: Mapping[str, int] | None,
    hidden: Sequence[int],
    seed: int,
) -> VGG:
    layout = _VGG_LAYOUTS[name]
    config = VGGConfig(
        convs=tuple(w for stage in layout for w in stage),
        stage_sizes=tuple(len(stage) for stage in layout),
        hidden=tuple(int(h) for h in hidden),
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=_input_hw(input_size, 32),
    )
    if widths:
        config = config.with_widths(widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGG(config)
        _init_weights(model)
    return model


def vgg11(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Mapping[str, int] | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-11 with BN (Simonyan & Zisserman 2015, Table 1 configuration A: 8
    convs 64-M-128-M-256-256-M-512-512-M-512-512-M). ``input_size`` (default
    32x32) sizes the classifier; ``hidden`` adds FC layers (``(4096, 4096)``
    for the ImageNet head). Width keys ``"conv1".."conv8"``, ``"fc1"``..."""
    return _vgg("vgg11", num_classes, in_channels, input_size, widths, hidden, seed)


def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Mapping[str, int] | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-16 with BN (Simonyan & Zisserman 2015, Table 1 configuration D: 13
    convs in stages of 2-2-3-3-3); arguments as :func:`vgg11`, width keys
    ``"conv1".."conv13"``."""
    return _vgg("vgg16", num_classes, in_channels, input_size, widths, hidden, seed)


# --------------------------------------------------------------------------- MobileNetV2

#: (t expansion, c output, n repeats, s first stride): Sandler et al. 2018, Table 2.
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never more than 10% below
    ``v`` (torchvision's / the MobileNet reference code's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True, slots=True)
class InvertedResidualSpec:
    """One inverted residual block: ``hidden`` (expanded width; equals the
    block's input width when ``expand`` is False, i.e. t = 1), ``out``
    (projection width), ``stride`` (1 or 2, of the depthwise conv)."""

    hidden: int
    out: int
    stride: int
    expand: bool = True


@dataclass(frozen=True, slots=True)
class MobileNetV2Config:
    """Widths of a MobileNetV2.

    ``stem``: width of the 3x3 stem conv, stride ``stem_stride`` (1: CIFAR
    style, 2: ImageNet style). ``blocks``: one :class:`InvertedResidualSpec`
    per block. ``last``: width of the final 1x1 conv. Width keys:
    ``"stem"``, ``"blockI.expand"`` (hidden width of block I, only for blocks
    with an expansion conv), ``"blockI"`` (output width), ``"last"``; I is
    0-based, forward order (17 blocks in the standard net).
    """

    stem: int
    blocks: tuple[InvertedResidualSpec, ...]
    last: int
    stem_stride: int = 1
    in_channels: int = 3
    num_classes: int = 10
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 (CIFAR) or 2 (ImageNet), got {self.stem_stride}")
        for key, width in self.widths().items():
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"width {key!r} must be an int >= 1, got {width!r}")
        c_in = self.stem
        for i, b in enumerate(self.blocks):
            if b.stride not in (1, 2):
                raise ValueError(f"block{i} stride must be 1 or 2, got {b.stride}")
            if not b.expand and b.hidden != c_in:
                raise ValueError(f"block{i} has no expansion conv, so its hidden width must equal its input {c_in}, got {b.hidden}")
            c_in = b.out
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {self.in_channels}, {self.num_classes}")

    @classmethod
    def default(
        cls, width_mult: float = 1.0, stem_stride: int = 1, in_channels: int = 3, num_classes: int = 10
    ) -> MobileNetV2Config:
        """The Table 2 network scaled by ``width_mult`` (widths rounded to multiples
        of 8; the last conv keeps 1280 below a multiplier of 1, as in the paper)."""
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        stem = _make_divisible(32 * width_mult)
        blocks, c_in = [], stem
        for t, c, n, s in _MBV2_SETTINGS:
            out = _make_divisible(c * width_mult)
            for j in range(n):
                blocks.append(InvertedResidualSpec(c_in * t, out, s if j == 0 else 1, expand=t != 1))
                c_in = out
        last = _make_divisible(1280 * max(1.0, width_mult))
        return cls(stem, tuple(blocks), last, stem_stride, in_channels, num_classes)

    def widths(self) -> dict[str, int]:
        """All widths by key (see the class docstring)."""
        out = {"stem": self.stem}
        for i, b in enumerate(self.blocks):
            if b.expand:
                out[f"block{i}.expand"] = b.hidden
            out[f"block{i}"] = b.out
        out["last"] = self.last
        return out

    def with_widths(self, widths: Mapping[str, int]) -> MobileNetV2Config:
        """A copy with some widths replaced; a t=1 block's hidden width follows
        its input. Unknown keys raise ValueError."""
        current = self.widths()
        unknown = sorted(set(widths) - set(current))
        if unknown:
            raise ValueError(f"unknown width key(s) {unknown}; valid: {list(current)}")
        merged = {**current, **{k: int(v) for k, v in widths.items()}}
        blocks, c_in = [], merged["stem"]
        for i, b in enumerate(self.blocks):
            hidden = merged[f"block{i}.expand"] if b.expand else c_in
            blocks.append(InvertedResidualSpec(hidden, merged[f"block{i}"], b.stride, b.expand))
            c_in = merged[f"block{i}"]
        return replace(self, stem=merged["stem"], blocks=tuple(blocks), last=merged["last"])


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """[1x1 expand conv-BN-ReLU6] - 3x3 depthwise conv-BN-ReLU6 - 1x1 linear
    projection conv-BN (Sandler et al. 2018, §3.3 and Table 1), with an identity
    shortcut when stride is 1 and the input width equals the output width."""

    def __init__(self, c_in: int, spec: InvertedResidualSpec) -> None:
        super().__init__()
        self.use_residual = spec.stride == 1 and c_in == spec.out
        layers: list[nn.Module] = []
        if spec.expand:
            layers.append(_conv_bn_relu6(c_in, spec.hidden, 1))
        layers += [
            _conv_bn_relu6(spec.hidden, spec.hidden, 3, spec.stride, groups=spec.hidden),
            nn.Conv2d(spec.hidden, spec.out, 1, bias=False),
            nn.BatchNorm2d(spec.out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and
    Linear Bottlenecks", Table 2) built from a :class:`MobileNetV2Config`.

    Module names: ``stem`` (conv-BN-ReLU6), ``blocks.I`` (:class:`InvertedResidual`),
    ``last`` (1x1 conv-BN-ReLU6), ``classifier`` (dropout + linear). Any input
    size works (global average pooling); 224x224 with the ImageNet stem gives
    a 7x7 last map, 32x32 with the CIFAR stem a 2x2 one.
    """

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        self.config = config
        self.stem = _conv_bn_relu6(config.in_channels, config.stem, 3, config.stem_stride)
        blocks, c_in = [], config.stem
        for spec in config.blocks:
            blocks.append(InvertedResidual(c_in, spec))
            c_in = spec.out
        self.blocks = nn.Sequential(*blocks)
        self.last = _conv_bn_relu6(c_in, config.last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.last, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.last(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(out), 1))

    def width_key(self, conv_name: str) -> str | None:
        """Which width a conv's output channels set: ``"stem.0"`` -> ``"stem"``,
        ``"blocks.I.conv.0.0"`` -> ``"blockI.expand"`` (expanding blocks),
        ``"blocks.I.conv.K"`` (the projection) -> ``"blockI"``, ``"last.0"`` ->
        ``"last"``. A depthwise conv's width follows its input, so it maps to
        the key of that input: ``"blockI.expand"``, or for a t=1 block the
        previous block's output (``"stem"`` before block 0). None for other names."""
        if conv_name == "stem.0":
            return "stem"
        if conv_name == "last.0":
            return "last"
        m = re.match(r"^blocks\.(\d+)\.conv\.(\d+)(\.0)?$", conv_name)
        if m is None:
            return None
        i, k, sub = int(m.group(1)), int(m.group(2)), m.group(3)
        if sub is None:
            return f"block{i}"
        if self.config.blocks[i].expand:
            return f"block{i}.expand"
        return "stem" if i == 0 else f"block{i - 1}"

    def current_config(self) -> MobileNetV2Config:
        """The config matching the layers' actual widths (e.g. after in-place pruning)."""
        return replace(
            self.config.with_widths(_layer_widths(self)),
            in_channels=self.stem[0].in_channels,
            num_classes=self.classifier[1].out_features,
        )


def mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Mapping[str, int] | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
    width_mult: float = 1.0,
    stem: str | None = None,
) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018, Table 2) with width multiplier
    ``width_mult`` and per-block widths (``widths``, keys of
    :class:`MobileNetV2Config`).

    ``stem``: ``"cifar"`` (3x3 stride 1) or ``"imagenet"`` (3x3 stride 2);
    None picks ImageNet for inputs of 96 pixels or more, CIFAR below.
    ``input_size`` defaults to 32. Raises ValueError on a bad stem, multiplier
    or width."""
    h, w = _input_hw(input_size, 32)
    if stem is None:
        stem = "imagenet" if min(h, w) >= 96 else "cifar"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    config = MobileNetV2Config.default(width_mult, 1 if stem == "cifar" else 2, in_channels, num_classes)
    if widths:
        config = config.with_widths(widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNetV2(config)
        _init_weights(model)
    return model


#: Model registry: name -> builder(**kw) -> nn.Module.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg11": vgg11,
    "vgg16": vgg16,
}

#: Each model's natural batch-1 input shape (N, C, H, W): what its defaults are built for.
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "mobilenet_v2": (1, 3, 32, 32),
    "resnet18": (1, 3, 224, 224),
    "resnet20": (1, 1, 28, 28),
    "resnet32": (1, 1, 28, 28),
    "resnet56": (1, 1, 28, 28),
    "vgg11": (1, 3, 32, 32),
    "vgg16": (1, 3, 32, 32),
}


def default_input_shape(name: str) -> tuple[int, int, int, int]:
    """The natural batch-1 input shape (N, C, H, W) of a registered model; ValueError if unknown."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return DEFAULT_INPUT_SHAPES[name]


def build_model(name: str, **kw) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder
    (all take ``num_classes``, ``in_channels``, ``widths``, ``seed``,
    ``input_size``). Raises ValueError naming the valid models if unknown."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}") from None
    return builder(**kw)
