"""Structured (filter) pruning: the ONLY module that imports torch_pruning.

Vocabulary (DESIGN.md §3, §8):

- A **group** is a set of output channels that must be pruned together, as
  Torch-Pruning's DependencyGraph finds them. In a CIFAR ResNet every conv
  that writes into one stage's residual stream (the stem, each block's second
  conv, the projection shortcut) is coupled through the residual adds, so the
  stream is ONE group (kind ``"residual"``); each block's first (inner) conv
  is a group of its own (kind ``"conv"``). The classifier's outputs are never
  pruned. ResNet-20 has 12 groups: 3 residual + 9 inner.
- Groups are ordered by the position (in ``model.named_modules()``) of their
  first conv, i.e. forward order; for ResNet-20::

      0 stem+layer1 (residual, 16)   1 layer1.0 (conv, 16)  2 layer1.1  3 layer1.2
      4 layer2.0 (conv, 32)          5 layer2 (residual, 32) 6 layer2.1  7 layer2.2
      8 layer3.0 (conv, 64)          9 layer3 (residual, 64) 10 layer3.1 11 layer3.2

- Group kinds (:attr:`PruneGroup.kind`; the env treats ``"residual"``
  specially and every other kind as a plain layer):

  ``"conv"``       one conv's filters (+ its BN and the next layer's inputs);
  ``"residual"``   several ordinary convs coupled by residual adds (a CIFAR
                   ResNet stage's stream, a MobileNetV2 stage's block outputs);
  ``"depthwise"``  a conv plus the depthwise conv(s) that follow it: a
                   depthwise conv has groups == in == out channels, so its
                   filters ARE its input channels, and Torch-Pruning couples
                   them to the conv producing its input (MobileNetV2's
                   expansion conv, or for the t=1 block the stem).

  Kinds are read from the layers (a depthwise conv: groups > 1 and groups ==
  in == out channels), so read them on the unpruned model: a depthwise conv
  pruned to one channel looks like an ordinary conv.

  Counts at the default widths: ResNet-20/32/56 12/18/30 (3 residual + the
  inner convs), ResNet-18 12 (4 residual + 8 conv), VGG-11/16 8/13 (all
  conv), MobileNetV2 25 (17 depthwise: stem + 16 expansions; 5 residual:
  the stages of 24, 32, 64, 96, 160; 3 conv: block0's and block16's
  projections, the last 1x1 conv).
- An :class:`ArchSpec` is the number of channels kept per group, in that
  order; its ``signature()`` ("16-16-16-...") names an architecture.
  :func:`round_spec` puts a spec on a grid of multiples of N;
  :func:`random_spec` draws a seeded random one.

Pruning (:func:`apply_spec`) works on a deep copy (Torch-Pruning prunes in
place), removes in every group the channels of smallest group magnitude and
returns the copy. Group magnitude (``GroupMagnitudeImportance(p,
group_reduction="mean", normalizer=None)``): for channel c, the mean over the
group's coupled parameter slices (conv/linear output filters, conv/linear
input slices, BN scales; biases not counted) of ``sum |w|^p``; ``"l1"`` is
p=1, ``"l2"`` p=2 (the squared L2 norm, which ranks like the L2 norm within
one slice). :func:`rebuild` builds an untrained model of a spec's widths
through :mod:`harness.models`, onto which the pruned state dict loads strictly.

MACs — the one definition used across the project (search, store, reports
and the simulator's ``hilprune predict``, :mod:`devices.sim.graph`): the
multiply-accumulates of the weight layers in one forward pass at the given
input shape, batch included:

    Conv (any groups; ONNX Conv)           output elements x (C_in/groups) x kH x kW
    Linear (ONNX Gemm, or MatMul + Add)    output elements x in_features

and nothing else: no bias adds, no BatchNorm (folded into the conv at
deployment: the exported ONNX has no BN left), no ReLU, pooling or residual
adds — they are not multiply-accumulates with weights. One MAC is one
multiply plus one add (2 FLOPs). This is fvcore's conv and linear counting
(``fvcore/nn/flop_count.py``, ``FlopCountAnalysis``: "one fused multiply-add
as one flop"; its example counts a biased 1x1 Conv2d(3, 10) on 10x10 as 3,000
and Linear(1000, 10) as 10,000: biases ignored) without the BatchNorm and
adaptive-pool handles it also enables by default (the same file notes BN
flops may be ignored "due to inference-time fusion"). AMC (He et al., ECCV
2018; ``mit-han-lab/amc``, ``measure_layer_for_pruning``) counts its conv
layers exactly so and its linear layers with one add per output for the
bias, which we leave out. For the exported graph of a model,
:func:`count_macs_params` equals ``devices.sim.graph.load_features(onnx).macs``
exactly (tested for every zoo model, pruned too). Torch-Pruning's
``count_ops_and_params``, used here before, also counted BN (2 per element),
ReLU, pooling and the classifier's bias: 31,476,682 for ResNet-20 at
1x1x28x28 instead of 31,021,952.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from harness.models import build_model

__all__ = [
    "ArchSpec",
    "PruneGroup",
    "apply_spec",
    "count_macs_params",
    "find_groups",
    "full_spec",
    "global_magnitude_widths",
    "layer_macs",
    "random_spec",
    "rebuild",
    "round_spec",
]


ARCH_SPEC_VERSION = 1
#: Importance name -> the norm degree p of Torch-Pruning's GroupMagnitudeImportance.
IMPORTANCES: dict[str, int] = {"l1": 1, "l2": 2}
#: Every value :attr:`PruneGroup.kind` takes (see the module docstring).
GROUP_KINDS: tuple[str, ...] = ("conv", "residual", "depthwise")


@dataclass(frozen=True, slots=True)
class PruneGroup:
    """One prunable group of coupled output channels.

    ``index``: position in :func:`find_groups`' order. ``name``: the model's
    width key(s) of the group (``"stem+layer1"``, ``"layer2.0"``), or its
    first conv's name for models without width keys. ``channels``: current
    number of channels. ``layer_names``: the convs whose output channels form
    the group, forward order (the first is the root), depthwise convs
    included. ``kind``: one of :data:`GROUP_KINDS` -- ``"residual"``
    (several ordinary convs coupled by adds), ``"depthwise"`` (a conv and
    the depthwise conv(s) whose channels it sets) or ``"conv"`` (one conv).
    """

    index: int
    name: str
    channels: int
    layer_names: tuple[str, ...]
    kind: str


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """Channels kept per group, in :func:`find_groups` order."""

    channels: tuple[int, ...]

    def __post_init__(self) -> None:
        chans = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", chans)

    def __len__(self) -> int:
        return len(self.channels)

    def signature(self) -> str:
        """Short stable name: the channel counts joined by "-"."""
        return "-".join(str(c) for c in self.channels)

    @classmethod
    def from_signature(cls, signature: str) -> ArchSpec:
        try:
            return cls(tuple(int(p) for p in signature.split("-")))
        except ValueError:
            raise ValueError(f"bad architecture signature {signature!r}; expected e.g. '16-16-8'") from None

    def to_dict(self) -> dict:
        return {"version": ARCH_SPEC_VERSION, "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict) -> ArchSpec:
        version = data.get("version", ARCH_SPEC_VERSION)
        if version != ARCH_SPEC_VERSION:
            raise ValueError(f"ArchSpec version {version} not supported (expected {ARCH_SPEC_VERSION})")
        return cls(tuple(data["channels"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))


def _example(example_input: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(example_input, torch.Tensor):
        return example_input
    shape = tuple(example_input)
    if len(shape) == 3:
        shape = (1, *shape)
    return torch.zeros(shape)


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The final Linear (its outputs are the classes: never pruned)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    # Trace in eval mode: a training-mode forward would update BN running stats.
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, ignored_layers=None, verbose=False
        )
    finally:
        model.train(was_training)


def _groups_with_roots(model: nn.Module, dg: tp.DependencyGraph) -> list[tuple[PruneGroup, nn.Module]]:
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    name_of = {m: n for n, m in model.named_modules()}
    width_key = getattr(model, "width_key", None)
    modules = dict(model.named_modules())
    found = []
    for group in dg.get_all_groups(ignored_layers=_classifier_layers(model), root_module_types=[nn.Conv2d]):
        convs = sorted(
            {
                name_of[dep.target.module]
                for dep, _ in group.items
                if isinstance(dep.target.module, nn.Conv2d) and dg.is_out_channel_pruning_fn(dep.handler)
            },
            key=order.__getitem__,
        )
        channels = len(group[0].idxs)
        keys: list[str] = []
        if width_key is not None:
            for c in convs:
                k = width_key(c)
                if k is not None and k not in keys:
                    keys.append(k)
        name = "+".join(keys) if keys else convs[0]
        kind = _group_kind([modules[c] for c in convs])
        found.append((convs, channels, name, kind))
    found.sort(key=lambda f: order[f[0][0]])
    return [
        (PruneGroup(i, name, channels, tuple(convs), kind), modules[convs[0]])
        for i, (convs, channels, name, kind) in enumerate(found)
    ]


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _group_kind(convs: Sequence[nn.Module]) -> str:
    """``"residual"`` if two or more ordinary convs share the channels (adds),
    else ``"depthwise"`` if a depthwise conv follows the root, else ``"conv"``."""
    ordinary = [c for c in convs if not _is_depthwise(c)]
    if len(ordinary) > 1:
        return "residual"
    if len(ordinary) < len(convs):
        return "depthwise"
    return "conv"


def find_groups(model: nn.Module, example_input: torch.Tensor | Sequence[int]) -> list[PruneGroup]:
    """The prunable groups of ``model`` (see the module docstring), traced with
    ``example_input`` (a tensor, or a shape (C,H,W) / (N,C,H,W)). The model is unchanged.

    The order is deterministic: by the position in ``model.named_modules()``
    of each group's first conv (forward order for the zoo), the same for any
    example input of a valid shape. Only Conv2d filters are grouped: the
    classifier's outputs and hidden Linear layers (VGG's ``hidden``) are never
    pruned."""
    dg = _build_graph(model, _example(example_input))
    return [g for g, _ in _groups_with_roots(model, dg)]


def full_spec(groups: Sequence[PruneGroup]) -> ArchSpec:
    """The unpruned spec: every group keeps all its channels."""
    return ArchSpec(tuple(g.channels for g in groups))


def _check_spec(spec: ArchSpec, groups: Sequence[PruneGroup]) -> None:
    if len(spec.channels) != len(groups):
        raise ValueError(
            f"spec has {len(spec.channels)} entries but the model has {len(groups)} groups "
            f"({', '.join(g.name for g in groups)}); give one kept-channel count per group"
        )
    for g, keep in zip(groups, spec.channels):
        if not 1 <= keep <= g.channels:
            raise ValueError(
                f"spec entry {g.index} for group {g.name!r} is {keep}; it must be between 1 and "
                f"{g.channels} (a group never goes to zero channels nor grows)"
            )


_ROUND_MODES = ("nearest", "down", "up")


def _grid(channels: int, round_to: int) -> list[int]:
    """The widths a group of ``channels`` may take on a grid of ``round_to``:
    the multiples of ``round_to`` up to ``channels``, plus ``channels`` itself
    (the unpruned width is always allowed, on the grid or not)."""
    points = list(range(round_to, channels + 1, round_to))
    if not points or points[-1] != channels:
        points.append(channels)
    return points


def round_spec(
    spec: ArchSpec, groups: Sequence[PruneGroup], round_to: int, mode: str = "nearest"
) -> ArchSpec:
    """``spec`` with every entry moved onto a grid of multiples of ``round_to``
    (e.g. 8: what vectorised kernels and the tuning database like).

    Each group's allowed widths are ``round_to, 2*round_to, ...`` up to its
    full width, plus the full width itself (so a group narrower than
    ``round_to``, or whose full width is off the grid, can only stay unpruned
    or take the grid points below it). A width never goes below
    ``round_to`` (nor to 0) unless the group is narrower, and never above the
    group's width. ``mode``: ``"nearest"`` (ties go up: keep more),
    ``"down"`` (the largest allowed width <= the entry, or the smallest
    allowed one; the env's own rule) or ``"up"``. ``round_to=1`` returns the
    spec unchanged (after the checks).

    Raises ValueError for ``round_to < 1``, an unknown mode, or a spec that does
    not fit ``groups`` (wrong length, entry < 1 or > the group's width)."""
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to={round_to!r} must be an int >= 1 (1 = no rounding)")
    if mode not in _ROUND_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; valid: {', '.join(_ROUND_MODES)}")
    _check_spec(spec, groups)
    if round_to == 1:
        return spec
    out = []
    for g, keep in zip(groups, spec.channels):
        grid = _grid(g.channels, round_to)
        below = [w for w in grid if w <= keep]
        above = [w for w in grid if w >= keep]
        lo = below[-1] if below else None
        hi = above[0]  # keep <= g.channels, which is on the grid: never empty
        if mode == "down":
            out.append(lo if lo is not None else hi)
        elif mode == "up" or lo is None:
            out.append(hi)
        else:
            out.append(lo if keep - lo < hi - keep else hi)
    return ArchSpec(tuple(out))


def random_spec(
    groups: Sequence[PruneGroup],
    rng: np.random.Generator,
    min_keep: float = 0.25,
    round_to: int = 1,
) -> ArchSpec:
    """A random spec: group i keeps ``max(1, round(u_i * channels_i))``
    channels with ``u_i ~ Uniform(min_keep, 1)`` drawn from ``rng`` (one
    ``rng.uniform(min_keep, 1.0, size=len(groups))`` call, so a seeded
    ``numpy.random.default_rng(seed)`` gives the same spec every time), then
    :func:`round_spec` (``"nearest"``) onto multiples of ``round_to``.

    Raises ValueError for ``min_keep`` outside (0, 1] or a bad ``round_to``."""
    if not 0.0 < min_keep <= 1.0:
        raise ValueError(f"min_keep={min_keep!r} must be in (0, 1]")
    u = rng.uniform(min_keep, 1.0, size=len(groups))
    spec = ArchSpec(tuple(min(g.channels, max(1, int(round(float(k) * g.channels)))) for k, g in zip(u, groups)))
    return round_spec(spec, groups, round_to)


def apply_spec(
    model: nn.Module,
    spec: ArchSpec,
    example_input: torch.Tensor | Sequence[int],
    importance: str = "l1",
) -> nn.Module:
    """A pruned deep copy of ``model`` in which group i keeps exactly
    ``spec.channels[i]`` channels, those of largest group magnitude (ties: the
    lower index is kept), in their original order.

    ``importance``: ``"l1"`` (p=1) or ``"l2"`` (p=2) group magnitude (module
    docstring). ``example_input``: a tensor or a shape (C,H,W) / (N,C,H,W) to
    trace with. ``model`` itself is not modified; a model with
    ``current_config()`` gets its ``config`` updated to the pruned widths.
    Raises ValueError for an unknown importance, a spec of the wrong length or
    an entry < 1 or > the group's channels."""
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
    example = _example(example_input)
    pruned = copy.deepcopy(model)
    dg = _build_graph(pruned, example)
    groups = _groups_with_roots(pruned, dg)
    _check_spec(spec, [g for g, _ in groups])
    scorer = tp.importance.GroupMagnitudeImportance(p=IMPORTANCES[importance], group_reduction="mean", normalizer=None)
    with torch.no_grad():
        for (g, root), keep in zip(groups, spec.channels):
            n_remove = g.channels - keep
            if n_remove == 0:
                continue
            full = dg.get_pruning_group(root, tp.prune_conv_out_channels, list(range(g.channels)))
            scores = scorer(full)
            if scores is None or len(scores) != g.channels:
                raise RuntimeError(f"no importance scores for group {g.name!r}")
            remove = sorted(int(i) for i in _lowest(scores, n_remove))
            dg.get_pruning_group(root, tp.prune_conv_out_channels, remove).prune()
    if hasattr(pruned, "current_config"):
        pruned.config = pruned.current_config()  # keep the model's own record of its widths true
    return pruned


def _lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k smallest scores; on equal scores the higher index goes first."""
    idx = list(range(len(scores)))
    idx.sort(key=lambda i: (float(scores[i]), -i))
    return idx[:k]


#: Modules whose multiply-accumulates :func:`count_macs_params` counts.
_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Weight layers the definition does not cover: counting would be silently wrong.
_UNCOUNTED_LAYERS = (nn.modules.conv._ConvTransposeNd, nn.Bilinear, nn.RNNBase, nn.MultiheadAttention)


def _module_macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one call of a Conv or Linear that produced ``out`` (batch included)."""
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))


def _macs_by_layer(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of every Conv1d/2d/3d and Linear by module name (forward order of
    ``named_modules``; 0 for one the forward pass does not call; a module called
    twice counts twice). Runs one no-grad forward in eval mode with forward hooks;
    the model's train/eval flags are restored and the hooks removed afterwards."""
    counts: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():  # refuse before any hook is registered: nothing to clean up
        if isinstance(m, _UNCOUNTED_LAYERS):
            raise ValueError(f"cannot count the MACs of {name or 'the model'!r} ({type(m).__name__}): "
                             "only Conv1d/2d/3d and Linear are weight layers of the MACs definition")
    for name, m in model.named_modules():
        if isinstance(m, _MAC_LAYERS):
            counts[name] = 0

            def hook(mod, _inp, out, _name=name):
                counts[_name] += _module_macs(mod, out)

            handles.append(m.register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    x = _example(input_shape)
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return counts


def count_macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) of one forward pass at ``input_shape`` ((C,H,W) means batch 1).

    MACs: multiply-accumulates of the Conv and Linear layers, batch included,
    as the module docstring defines them (no bias, BN, activation, pooling or
    residual adds); equal to the simulator's ``GraphFeatures.macs`` of the
    model's ONNX export. Params: every parameter of the model (shared ones
    once), BN scales and shifts included, buffers (BN running statistics)
    not — as Torch-Pruning's counter counts them (the exported graph, BN
    folded into the convs, stores a different number of weights).

    Raises ValueError for a weight layer outside the definition
    (ConvTranspose, Bilinear, RNN, MultiheadAttention). Functional
    ``F.conv2d``/``torch.matmul`` calls in a ``forward`` are not modules and
    are not seen (the zoo has none)."""
    macs = sum(_macs_by_layer(model, input_shape).values())
    params = sum(p.numel() for p in model.parameters())
    return int(macs), int(params)


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each Conv and Linear layer by module name (forward order), by the
    definition of the module docstring: a conv counts output elements x
    (in/groups) x kH x kW, a linear output elements x in_features; biases are
    not counted. The values sum to ``count_macs_params(...)[0]``."""
    return _macs_by_layer(model, input_shape)


def rebuild(
    model_name: str,
    spec: ArchSpec,
    num_classes: int = 10,
    in_channels: int = 1,
    input_shape: Sequence[int] = (1, 28, 28),
    seed: int = 0,
    **build_kwargs,
) -> nn.Module:
    """An untrained ``model_name`` whose widths are exactly ``spec`` (so the
    state dict of ``apply_spec(full_model, spec, ...)`` loads onto it strictly).

    ``input_shape`` ((C,H,W) or (N,C,H,W); its H, W go to the builder as
    ``input_size``: VGG sizes its classifier by it and MobileNetV2 picks its
    stem by it). ``build_kwargs`` go to the builder too (e.g. ``width_mult``
    for MobileNetV2, ``hidden`` for VGG) and must match those of the pruned
    model. The group -> width mapping comes from the full model's groups and
    its ``width_key(conv_name)``; every zoo model has one.

    Raises ValueError for a model without ``width_key``, or a spec that does
    not fit its groups."""
    hw = tuple(input_shape)[-2:]
    kw = dict(num_classes=num_classes, in_channels=in_channels, input_size=hw, seed=seed, **build_kwargs)
    full = build_model(model_name, **kw)
    width_key = getattr(full, "width_key", None)
    if width_key is None:
        raise ValueError(f"model {model_name!r} has no width_key(); it cannot be rebuilt from a spec")
    groups = find_groups(full, (in_channels, *hw))
    _check_spec(spec, groups)
    widths: dict[str, int] = {}
    for g, keep in zip(groups, spec.channels):
        for conv in g.layer_names:
            key = width_key(conv)
            if key is None:
                raise ValueError(f"conv {conv!r} of group {g.name!r} has no width key in {model_name!r}")
            widths[key] = keep
    return build_model(model_name, widths=widths, **kw)


def global_magnitude_widths(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int],
    macs_ratio: float,
    importance: str = "l1",
    iterations: int = 12,
) -> tuple[ArchSpec, float]:
    """Torch-Pruning's global magnitude pruning to a MACs target: the widths it keeps per group.

    ``tp.pruner.MetaPruner(global_pruning=True, importance=GroupMagnitudeImportance(p, normalizer="mean"))``
    (Torch-Pruning's default normalizer, which makes scores of different groups comparable) ranks every
    group's channels against all others (Torch-Pruning's own benchmark baseline, "global magnitude");
    its ``pruning_ratio`` (share of channels removed) is bisected, ``iterations`` times, for the largest
    ratio whose pruned model has at most ``macs_ratio`` × the unpruned MACs (:func:`count_macs_params`).
    Only conv filters are pruned (every Linear is ignored, as in :func:`find_groups`); ``model`` is not
    modified (each trial prunes a deep copy).

    Args:
        model: the trained, unpruned model.
        example_input: a tensor or a shape (C,H,W) / (N,C,H,W) to trace with.
        macs_ratio: the MACs target as a fraction of the unpruned model's, in (0, 1].
        importance: ``"l1"`` or ``"l2"`` group magnitude.
        iterations: bisection steps on the pruning ratio.

    Returns:
        (the kept channels per group, in :func:`find_groups` order; the MACs ratio they reach).

    Raises:
        ValueError: ``macs_ratio`` outside (0, 1] or an unknown importance.
    """
    if not 0 < macs_ratio <= 1:
        raise ValueError(f"macs_ratio={macs_ratio!r} must be in (0, 1]")
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
    example = _example(example_input)
    shape = tuple(example.shape)
    base_macs = count_macs_params(model, shape)[0]
    groups = find_groups(model, example)

    def prune(ratio: float) -> tuple[ArchSpec, float]:
        if ratio <= 0:
            return full_spec(groups), 1.0
        pruned = copy.deepcopy(model).eval()
        # Torch-Pruning's default normalizer ("mean": each group's scores over their mean) makes scores of
        # different groups comparable; without it the global ranking is not monotonic in the ratio
        scorer = tp.importance.GroupMagnitudeImportance(p=IMPORTANCES[importance], group_reduction="mean",
                                                        normalizer="mean")
        pruner = tp.pruner.MetaPruner(pruned, example, importance=scorer, global_pruning=True, pruning_ratio=ratio,
                                      ignored_layers=[m for m in pruned.modules() if isinstance(m, nn.Linear)],
                                      root_module_types=[nn.Conv2d])
        with torch.no_grad():
            pruner.step()
        widths = [g.channels for g in find_groups(pruned, example)]
        if len(widths) != len(groups):
            raise RuntimeError(f"global pruning at ratio {ratio:.3f} changed the number of groups")
        return ArchSpec(tuple(widths)), count_macs_params(pruned, shape)[0] / base_macs

    lo, hi = 0.0, 0.95
    top = prune(hi)
    if top[1] > macs_ratio:  # even the strongest ratio does not reach the target: the strongest it gets
        return top
    for _ in range(iterations):
        mid = (lo + hi) / 2
        spec, ratio = prune(mid)
        if ratio <= macs_ratio:
            hi, top = mid, (spec, ratio)
        else:
            lo = mid
    return top
