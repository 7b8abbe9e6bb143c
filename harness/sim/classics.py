"""The ncnn benchmark's classic networks that the zoo lacks, as small torch definitions (issue 13).

The simulator's board profiles are checked leave-one-model-out on the ncnn
table (``../shared/data/ncnn_benchmark.csv``); the zoo builds only three of
its networks (resnet18, mobilenet_v2, vgg16), and three models cannot show a
ranking. These definitions add nine more, built from their papers'
architecture tables (random weights: latency only). torchvision would build
most of them, but it is not a dependency (its release must match torch's
exactly), and several ncnn graphs are the Caffe originals, which torchvision
does not have (AlexNet with grouped convs at 227x227, ResNet-50 v1 with the
stride on the first 1x1, GoogLeNet with 5x5 branches).

Each graph is checked against the MACs that ``ncnn_model_macs.json`` counts on
the exact benchmarked graph: :func:`harness.sim.graphs.export_classics`
refuses a graph whose MACs differ by more than
:data:`harness.sim.graphs.MACS_TOLERANCE` (tests/harness/test_sim_classics.py
asserts every one). Left out: LRN (AlexNet, GoogLeNet): torch exports it as a Pad
whose shape ONNX cannot infer; it is ~1 % of those networks' time on ncnn.
ncnn fuses BN into convs, as the export does.

Sources (architecture tables):
- mobilenet: Howard et al. 2017, Table 1 (MobileNet v1 1.0-224);
- squeezenet: SqueezeNet v1.1 (Iandola et al. 2016; v1.1 from the authors'
  repository: 3x3 stem of 64, pools after fire 3 and 5), 227x227 as ncnn;
- alexnet: Krizhevsky et al. 2012 / Caffe's bvlc_alexnet (groups 2 in
  conv2, 4, 5), 227x227;
- resnet50: He et al. 2016, Table 1 "50-layer" (Caffe v1: stride 2 on the
  block's first 1x1);
- googlenet: Szegedy et al. 2015, Table 1 (Caffe bvlc_googlenet, ceil-mode pools);
- mnasnet: Tan et al. 2019 (MnasNet-B1 1.0 as in torchvision's ``mnasnet1_0``);
- shufflenet_v2: Ma et al. 2018, Table 5 (1.0x);
- efficientnet_b0: Tan & Le 2019, Table 1 (MBConv + SE 0.25 + swish);
- regnety_400m: Radosavovic et al. 2020, RegNetY-400MF (depths 1,3,6,6;
  widths 48,104,208,440; group width 8; SE 0.25).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EXTRA_CLASSICS", "build_classic"]


def _cbr(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: type[nn.Module] | None = nn.ReLU,
         bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None, act: bool = False) -> None:
        super().__init__()
        self.body, self.shortcut, self.act = body, shortcut, nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


class _Concat(nn.Module):
    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class _SE(nn.Module):
    def __init__(self, c: int, squeeze: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeeze, 1), act(), nn.Conv2d(squeeze, c, 1),
                               nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


def _head(cin: int, classes: int = 1000) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def _mobilenet() -> nn.Module:
    layers = [_cbr(3, 32, 3, 2)]
    c = 32
    for out, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]:
        layers += [_cbr(c, c, 3, s, g=c), _cbr(c, out, 1)]
        c = out
    return nn.Sequential(*layers, _head(1024))


def _fire(cin: int, sq: int, ex: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, sq, 1), nn.ReLU(),
                         _Concat(nn.Sequential(nn.Conv2d(sq, ex, 1), nn.ReLU()),
                                 nn.Sequential(nn.Conv2d(sq, ex, 3, padding=1), nn.ReLU())))


def _squeezenet() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), _fire(64, 16, 64), _fire(128, 16, 64), pool(),
        _fire(128, 32, 128), _fire(256, 32, 128), pool(), _fire(256, 48, 192), _fire(384, 48, 192),
        _fire(384, 64, 256), _fire(512, 64, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten())


def _alexnet() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), pool(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), pool(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), pool(), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))


def _resnet50() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            s = stride if i == 0 else 1
            body = nn.Sequential(_cbr(c, width, 1, s), _cbr(width, width, 3), _cbr(width, 4 * width, 1, act=None))
            short = _cbr(c, 4 * width, 1, s, act=None) if i == 0 else None
            layers.append(_Residual(body, short, act=True))
            c = 4 * width
    return nn.Sequential(*layers, _head(2048))


def _inception(cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> nn.Module:
    conv = lambda a, b, k: nn.Sequential(nn.Conv2d(a, b, k, padding=k // 2), nn.ReLU())
    return _Concat(conv(cin, c1, 1), nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3)),
                   nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5)),
                   nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, pp, 1)))


def _googlenet() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), pool(), nn.Conv2d(64, 64, 1), nn.ReLU(),
        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), pool(),
        _inception(192, 64, 96, 128, 16, 32, 32), _inception(256, 128, 128, 192, 32, 96, 64), pool(),
        _inception(480, 192, 96, 208, 16, 48, 64), _inception(512, 160, 112, 224, 24, 64, 64),
        _inception(512, 128, 128, 256, 24, 64, 64), _inception(512, 112, 144, 288, 32, 64, 64),
        _inception(528, 256, 160, 320, 32, 128, 128), pool(),
        _inception(832, 256, 160, 320, 32, 128, 128), _inception(832, 384, 192, 384, 48, 128, 128),
        _head(1024))


def _mbconv(cin: int, cout: int, k: int, s: int, e: int, act: type[nn.Module], se: float = 0.0) -> nn.Module:
    mid = cin * e
    layers: list[nn.Module] = [_cbr(cin, mid, 1, act=act)] if e != 1 else []
    layers.append(_cbr(mid, mid, k, s, g=mid, act=act))
    if se:
        layers.append(_SE(mid, max(1, int(cin * se)), act))
    layers.append(_cbr(mid, cout, 1, act=None))
    body = nn.Sequential(*layers)
    return _Residual(body, None) if (s == 1 and cin == cout) else body


def _mnasnet() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 32, 3, 2), _cbr(32, 32, 3, g=32), _cbr(32, 16, 1, act=None)]
    c = 16
    for e, k, s, out, n in [(3, 3, 2, 24, 3), (3, 5, 2, 40, 3), (6, 5, 2, 80, 3), (6, 3, 1, 96, 2),
                            (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            layers.append(_mbconv(c, out, k, s if i == 0 else 1, e, nn.ReLU))
            c = out
    return nn.Sequential(*layers, _cbr(320, 1280, 1), _head(1280))


def _efficientnet_b0() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 32, 3, 2, act=nn.SiLU)]
    c = 32
    for e, k, s, out, n in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                            (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            layers.append(_mbconv(c, out, k, s if i == 0 else 1, e, nn.SiLU, se=0.25))
            c = out
    return nn.Sequential(*layers, _cbr(320, 1280, 1, act=nn.SiLU), _head(1280))


class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        half = cout // 2
        self.s = s
        bin_ = cin if s == 2 else half
        self.branch = nn.Sequential(_cbr(bin_, half, 1), _cbr(half, half, 3, s, g=half, act=None), _cbr(half, half, 1))
        self.proj = nn.Sequential(_cbr(cin, cin, 3, s, g=cin, act=None), _cbr(cin, half, 1)) if s == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s == 1:
            half = x.shape[1] // 2
            a, b = x[:, :half], x[:, half:]
            out = torch.cat([a, self.branch(b)], 1)
        else:
            out = torch.cat([self.proj(x), self.branch(x)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def _shufflenet_v2() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    c = 24
    for out, n in [(116, 4), (232, 8), (464, 4)]:
        for i in range(n):
            layers.append(_ShuffleUnit(c, out, 2 if i == 0 else 1))
            c = out
    return nn.Sequential(*layers, _cbr(464, 1024, 1), _head(1024))


def _regnety_400m() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 32, 3, 2)]
    c = 32
    for width, depth in [(48, 1), (104, 3), (208, 6), (440, 6)]:
        for i in range(depth):
            s = 2 if i == 0 else 1
            body = nn.Sequential(_cbr(c, width, 1), _cbr(width, width, 3, s, g=width // 8),
                                 _SE(width, max(1, int(c * 0.25)), nn.ReLU), _cbr(width, width, 1, act=None))
            short = _cbr(c, width, 1, s, act=None) if (s != 1 or c != width) else None
            layers.append(_Residual(body, short, act=True))
            c = width
    return nn.Sequential(*layers, _head(440))


#: ncnn table name -> (builder, input shape NCHW).
EXTRA_CLASSICS: dict[str, tuple] = {
    "mobilenet": (_mobilenet, (1, 3, 224, 224)),
    "squeezenet": (_squeezenet, (1, 3, 227, 227)),
    "alexnet": (_alexnet, (1, 3, 227, 227)),
    "resnet50": (_resnet50, (1, 3, 224, 224)),
    "googlenet": (_googlenet, (1, 3, 224, 224)),
    "mnasnet": (_mnasnet, (1, 3, 224, 224)),
    "shufflenet_v2": (_shufflenet_v2, (1, 3, 224, 224)),
    "efficientnet_b0": (_efficientnet_b0, (1, 3, 224, 224)),
    "regnety_400m": (_regnety_400m, (1, 3, 224, 224)),
}


def build_classic(name: str) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """(torch model with seeded random weights, input shape) of one of :data:`EXTRA_CLASSICS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in EXTRA_CLASSICS:
        raise ValueError(f"no definition of ncnn's {name!r}; known: {', '.join(EXTRA_CLASSICS)}")
    builder, shape = EXTRA_CLASSICS[name]
    torch.manual_seed(0)
    return builder().eval(), shape
