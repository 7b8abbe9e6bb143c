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

- An :class:`ArchSpec` is the number of channels kept per group, in that
  order; its ``signature()`` ("16-16-16-...") names an architecture.

Pruning (:func:`apply_spec`) works on a deep copy (Torch-Pruning prunes in
place), removes in every group the channels with the smallest group L1 norm
(``GroupMagnitudeImportance(p=1)``: L1 of every coupled weight slice, conv
out/in, BN and linear in, averaged over the group), and returns the copy.
:func:`rebuild` builds an untrained model of a spec's widths through
:mod:`harness.models`, onto which the pruned state dict loads strictly.

MACs: Torch-Pruning's counter returns multiply-accumulates (even where its
variables say "flops"); :func:`count_macs_params` names them ``macs``. It
also counts BN (2 per element), ReLU, pooling and adds, so its total is a
little above the conv+linear MACs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

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
    "layer_macs",
    "rebuild",
]

ARCH_SPEC_VERSION = 1
_IMPORTANCES = ("l1",)


@dataclass(frozen=True, slots=True)
class PruneGroup:
    """One prunable group of coupled output channels.

    ``index``: position in :func:`find_groups`' order. ``name``: the model's
    width key(s) of the group (``"stem+layer1"``, ``"layer2.0"``), or its
    first conv's name for models without width keys. ``channels``: current
    number of channels. ``layer_names``: the convs whose output channels form
    the group, forward order (the first is the root). ``kind``:
    ``"residual"`` (several convs coupled by adds) or ``"conv"`` (one conv).
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
        kind = "residual" if len(convs) > 1 else "conv"
        found.append((convs, channels, name, kind))
    found.sort(key=lambda f: order[f[0][0]])
    modules = dict(model.named_modules())
    return [
        (PruneGroup(i, name, channels, tuple(convs), kind), modules[convs[0]])
        for i, (convs, channels, name, kind) in enumerate(found)
    ]


def find_groups(model: nn.Module, example_input: torch.Tensor | Sequence[int]) -> list[PruneGroup]:
    """The prunable groups of ``model`` (see the module docstring), traced with
    ``example_input`` (a tensor, or a shape (C,H,W) / (N,C,H,W)). The model is unchanged."""
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


def apply_spec(
    model: nn.Module,
    spec: ArchSpec,
    example_input: torch.Tensor | Sequence[int],
    importance: str = "l1",
) -> nn.Module:
    """A pruned deep copy of ``model`` in which group i keeps exactly
    ``spec.channels[i]`` channels, those of largest group L1 norm (ties: the
    lower index is kept). ``model`` itself is not modified. Raises ValueError
    for a spec of the wrong length or an entry < 1 or > the group's channels."""
    if importance not in _IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; valid: {', '.join(_IMPORTANCES)}")
    example = _example(example_input)
    pruned = copy.deepcopy(model)
    dg = _build_graph(pruned, example)
    groups = _groups_with_roots(pruned, dg)
    _check_spec(spec, [g for g, _ in groups])
    scorer = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
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


def count_macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) of one forward pass at ``input_shape`` ((C,H,W) means batch 1),
    by Torch-Pruning's counter (eval mode, on a copy)."""
    macs, params = tp.utils.count_ops_and_params(model, _example(input_shape))
    return int(macs), int(params)


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each Conv2d and Linear layer by module name (forward order), by
    Torch-Pruning's counter: a conv counts output elements x (in/groups) x kH x kW
    (+1 per output element with a bias); a linear in x out (+ out for its bias)."""
    _, _, per_layer, _ = tp.utils.count_ops_and_params(model, _example(input_shape), layer_wise=True)
    return {
        name: int(per_layer.get(m) or 0)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def rebuild(
    model_name: str,
    spec: ArchSpec,
    num_classes: int = 10,
    in_channels: int = 1,
    input_shape: Sequence[int] = (1, 28, 28),
    seed: int = 0,
) -> nn.Module:
    """An untrained ``model_name`` whose widths are exactly ``spec`` (so the
    state dict of ``apply_spec(full_model, spec, ...)`` loads onto it strictly).

    The group -> width mapping comes from the full model's groups and its
    ``width_key(conv_name)``; models without it cannot be rebuilt."""
    full = build_model(model_name, num_classes=num_classes, in_channels=in_channels, seed=seed)
    width_key = getattr(full, "width_key", None)
    if width_key is None:
        raise ValueError(f"model {model_name!r} has no width_key(); it cannot be rebuilt from a spec")
    groups = find_groups(full, (in_channels, *tuple(input_shape)[-2:]))
    _check_spec(spec, groups)
    widths: dict[str, int] = {}
    for g, keep in zip(groups, spec.channels):
        for conv in g.layer_names:
            key = width_key(conv)
            if key is None:
                raise ValueError(f"conv {conv!r} of group {g.name!r} has no width key in {model_name!r}")
            widths[key] = keep
    return build_model(model_name, num_classes=num_classes, in_channels=in_channels, widths=widths, seed=seed)
