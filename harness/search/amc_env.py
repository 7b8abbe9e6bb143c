"""``LayerwiseEnv``: AMC's layer-by-layer MDP over the same candidates and reward as ``PruningEnv``.

Source: He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile
Devices", ECCV 2018, §3.1–3.3 (issue 14; DESIGN.md §3 "Later: AMC-style continuous
per-layer keep ratio").

Episode: one step per prunable group, in group order (``harness.pruning.find_groups``);
step t chooses group t's keep ratio a_t ∈ [min_keep, 1] (AMC §3.2: a continuous action, "the
sparsity ratio" bounded by AMC's lbound/rbound, here its complement). The space is
Box(min_keep, 1), not the [0, 1] that gymnasium's checker recommends (it warns): SB3 rescales any
Box to [−1, 1] itself, and a [0, 1] space clipped to min_keep puts a fifth of the random warm-up
actions on one width. Measured with TD3Method's defaults on the toy problem of
``tests/agent/toy_search.py`` (200 candidates, seeds 0–2, mean reward of the last fifth of the
episodes): Box(0.2, 1) 0.64, 0.67, 0.63; Box(0, 1) 0.00 (stuck unpruned), 0.65, 0.48. Width w_t = round(a_t · c_t), then rounded to
the ``round_to`` grid (``harness.pruning.round_spec``, "nearest") and kept ≥ ``min_channels``
and ≤ c_t. After the last group the spec is evaluated through ``source.evaluate`` (the same
source, cache and devices as ``PruningEnv``) and rewarded with the same
R = αΔP − βΔC − γΔH (``harness.search.reward.compute_reward`` on the same terms as
``PruningEnv._terms``); intermediate steps are rewarded 0 (AMC §3.3: the reward is computed
only once the whole network is compressed). So one episode = one evaluated candidate.

Observation (float32, fixed size :data:`OBS_DIM` = 10, the same for every model, so one
policy fits any model; AMC §3.1's embedding s_t = (t, n, c, h, w, stride, k, FLOPs[t],
reduced, rest, a_{t−1}), with our names; every feature in [0, 1]):

    0  t / G                        group index (AMC: t)
    1  kind_t                       1 residual, 0.5 depthwise, 0 single conv (PruningEnv's feature)
    2  c_t / max_g c_g              original width, normalised over the model (AMC: c, n)
    3  hw_t / hw_max                output feature-map size of the group's first conv (AMC: h, w)
    4  min(stride_t, 4) / 4         stride of the group's first conv (AMC: stride)
    5  min(kernel_t, 7) / 7         kernel size of the group's first conv (AMC: k)
    6  MACs_t / MACs_0              share of the unpruned model's MACs in the convs this group's width sets (AMC: FLOPs[t])
    7  reduced_t / MACs_0           MACs removed by the actions a_0..a_{t−1} (AMC: reduced)
    8  rest_t / MACs_0              MACs of the layers after group t, at full width (AMC: rest)
    9  a_{t−1}                      the previous keep ratio (1 at t = 0)

MACs here are *estimates* from a per-layer table (:class:`LayerTable`, exact for convs and
linears: a conv's MACs scale with its output group's and input group's keep ratios); the
reward uses the evaluated candidate's true MACs. Kernel, stride and feature-map size are 0
when the table does not know them (a source without a model, e.g. a test's fake).

Constrained action (AMC §3.3 "resource-constrained compression", optional,
``LayerwiseConfig.constrain_macs``, only with ``target_metric == "macs"``): at step t the width
is lowered, if needed, to the widest legal width such that the target MACs stay reachable
when every later group is pruned to ``min_keep`` (AMC: "if the FLOPs would exceed the
budget even when all following layers are pruned to the maximum, the current layer is pruned
more"). Latency targets are not constrained (latency has no per-layer table here).

``info`` carries PruningEnv's keys (``event``, ``spec``, ``candidate``, ``reward_terms``,
``target_met``, ``latency_ratio``, ``macs_ratio``, ``top1``); no ``action_mask`` (continuous).
``event``: ``None`` at reset, ``"layer"`` for an intermediate step, ``"pruned"`` or
``"failed"`` at the last step. Every episode terminates at its last group; nothing truncates
(the recorder truncates when the budget is spent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from harness.pruning import ArchSpec, PruneGroup, apply_spec, layer_macs, round_spec
from harness.search.env import CandidateSource, EnvConfig
from harness.search.reward import (
    RewardTerms,
    latency_ratio_of,
    meets_target,
    terms_against,
)

__all__ = ["OBS_DIM", "LayerRecord", "LayerTable", "LayerwiseConfig", "LayerwiseEnv", "layer_table"]

#: Features per step (module docstring).
OBS_DIM = 10

_KIND_FEATURE = {"residual": 1.0, "depthwise": 0.5, "conv": 0.0}


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """One Conv or Linear layer of the unpruned model, for MACs estimates.

    Attributes:
        name: module name.
        macs: its MACs in the unpruned model (``harness.pruning.layer_macs``).
        out_group: index of the group that sets its output channels (None: fixed, e.g. the classifier).
        in_group: index of the group that sets its input channels (None: fixed, e.g. the image).
        depthwise: a depthwise conv (its MACs scale with its channels once, not twice).
        kernel: kernel size (largest side; 0 = unknown or a linear layer).
        stride: stride (largest; 0 = unknown).
        out_hw: output feature-map elements per channel (H·W; 0 = unknown).
    """

    name: str
    macs: int
    out_group: int | None
    in_group: int | None
    depthwise: bool = False
    kernel: int = 0
    stride: int = 0
    out_hw: int = 0


@dataclass(frozen=True, slots=True)
class LayerTable:
    """The per-layer MACs model of one base model: MACs(spec) ≈ Σ_l MACs_l · r_out(l) · r_in(l).

    ``r_g`` = kept_g / channels_g (1 for a fixed side); a depthwise conv scales by r_out only.
    Exact for Conv2d and Linear layers under the MACs definition of ``harness.pruning``.
    """

    layers: tuple[LayerRecord, ...]

    def macs(self, ratios: np.ndarray) -> float:
        """Estimated MACs at keep ratios ``ratios`` (float [G])."""
        total = 0.0
        for layer in self.layers:
            r = 1.0
            if layer.out_group is not None:
                r *= float(ratios[layer.out_group])
            if layer.in_group is not None and not layer.depthwise:
                r *= float(ratios[layer.in_group])
            total += layer.macs * r
        return total

    def group_record(self, g: int) -> LayerRecord | None:
        """The first layer whose output group is ``g`` (the group's root conv), or None."""
        return next((layer for layer in self.layers if layer.out_group == g), None)


def layer_table(model: nn.Module, groups: Sequence[PruneGroup], input_shape: Sequence[int]) -> LayerTable:
    """Build the :class:`LayerTable` of ``model`` by tracing it once and pruning each group by one channel.

    Which group feeds a layer's *input* channels is found by probing: for each group g,
    ``apply_spec`` with g one channel narrower; the layers whose ``in_channels`` /
    ``in_features`` shrink are fed by g (G prunes, done once per run).

    Args:
        model: the unpruned model (not modified).
        groups: its prunable groups (``harness.pruning.find_groups``).
        input_shape: (C, H, W) or (N, C, H, W).

    Raises:
        ValueError: the model has a weight layer outside the MACs definition (``layer_macs``).
    """
    macs = layer_macs(model, input_shape)
    modules = dict(model.named_modules())
    shape = tuple(input_shape) if len(input_shape) == 4 else (1, *input_shape)
    out_hw: dict[str, int] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: out_hw.__setitem__(n, int(np.prod(o.shape[2:])) if o.dim() == 4 else 0))
             for n in macs]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    out_group = {name: g.index for g in groups for name in g.layer_names}

    def fan_in(m: nn.Module) -> int:
        return int(m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)

    base_in = {n: fan_in(modules[n]) for n in macs}
    in_group: dict[str, int] = {}
    for g in groups:
        if g.channels < 2:
            continue
        spec = ArchSpec(tuple(x.channels - (1 if x.index == g.index else 0) for x in groups))
        pruned = dict(apply_spec(model, spec, shape).named_modules())
        for n in macs:
            if n in pruned and fan_in(pruned[n]) < base_in[n] and n not in in_group:
                in_group[n] = g.index
    records = []
    for n, value in macs.items():
        m = modules[n]
        conv = isinstance(m, nn.Conv2d)
        depthwise = conv and m.groups > 1 and m.groups == m.in_channels
        records.append(LayerRecord(
            name=n, macs=int(value), out_group=out_group.get(n), in_group=in_group.get(n), depthwise=bool(depthwise),
            kernel=int(max(m.kernel_size)) if conv else 0, stride=int(max(m.stride)) if conv else 0, out_hw=out_hw.get(n, 0)))
    return LayerTable(tuple(records))


def _fallback_table(groups: Sequence[PruneGroup]) -> LayerTable:
    """A table for a source without a model: one layer per group, MACs ∝ its width, a chain
    (each group fed by the previous one), kernel/stride/size unknown (0)."""
    return LayerTable(tuple(
        LayerRecord(name=g.name, macs=int(g.channels), out_group=g.index, in_group=None) for g in groups))


@dataclass(frozen=True, slots=True)
class LayerwiseConfig:
    """Options of the layer-by-layer MDP beyond ``EnvConfig``.

    Attributes:
        min_keep: smallest keep ratio an action can ask for, in (0, 1] (AMC's largest sparsity is 0.8 → 0.2).
        constrain_macs: AMC's constrained action (module docstring); only acts with ``target_metric="macs"``.
    """

    min_keep: float = 0.2
    constrain_macs: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_keep <= 1:
            raise ValueError(f"min_keep={self.min_keep} must be in (0, 1], e.g. 0.2")


class LayerwiseEnv(gym.Env):
    """AMC's MDP: one continuous keep ratio per prunable group, one evaluated candidate per episode.

    Args:
        source: evaluates an architecture (``CandidateSource``); when it has ``base_model`` and
            ``input_shape`` (``CandidateEvaluator``) and ``layers`` is None, its layer table is built
            from the model (:func:`layer_table`).
        groups: the prunable groups, in order.
        baseline: the evaluated unpruned model (a successful result).
        config: the EnvConfig of ``PruningEnv`` (weights, min_channels, round_to, target and its metric;
            step_fraction and max_steps do not apply: an episode has G steps).
        layerwise: LayerwiseConfig.
        layers: the per-layer MACs table; None = from the source's model, else a chain stand-in.

    Raises:
        ValueError: a failed baseline or no groups.
    """

    metadata = {"render_modes": []}

    def __init__(self, source: CandidateSource, groups: list[PruneGroup], baseline: Any, config: EnvConfig = EnvConfig(),
                 layerwise: LayerwiseConfig = LayerwiseConfig(), layers: LayerTable | None = None) -> None:
        super().__init__()
        if not groups:
            raise ValueError("the model has no prunable groups")
        if not baseline.ok:
            raise ValueError(f"the unpruned model could not be evaluated: {baseline.error_kind}: {baseline.error_message}")
        self.source, self.groups, self.baseline, self.config, self.layerwise = source, list(groups), baseline, config, layerwise
        self.target_ratio = config.target_ratio
        if layers is None:
            model, shape = getattr(source, "base_model", None), getattr(source, "input_shape", None)
            layers = layer_table(model, self.groups, shape) if model is not None and shape is not None else _fallback_table(self.groups)
        self.layers = layers
        self.orig = np.array([g.channels for g in self.groups], dtype=np.int64)
        n = len(self.groups)
        self.action_space = gym.spaces.Box(low=np.float32(layerwise.min_keep), high=np.float32(1.0), shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.macs_full = self.layers.macs(np.ones(n))
        # static features per group: kind, width, feature-map size, stride, kernel, MACs share
        hw_max = max([layer.out_hw for layer in self.layers.layers] + [1])
        static = []
        for g in self.groups:
            root = self.layers.group_record(g.index)
            own = sum(layer.macs for layer in self.layers.layers if layer.out_group == g.index)
            static.append([
                _KIND_FEATURE.get(g.kind, 0.0), g.channels / float(self.orig.max()),
                (root.out_hw / hw_max) if root else 0.0, (min(root.stride, 4) / 4) if root else 0.0,
                (min(root.kernel, 7) / 7) if root else 0.0, own / self.macs_full])
        self._static = np.array(static, dtype=np.float32)
        self._width_cache: dict[int, list[int]] = {}
        self._reset_state()

    # -- gymnasium API --------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Back to the unpruned model at group 0. Returns (observation, info)."""
        super().reset(seed=seed)
        self._reset_state()
        return self._obs(), self._info(None, None)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Set group t's keep ratio; evaluate the spec after the last group.

        Args:
            action: float array [1] (or a float), the keep ratio; values outside [min_keep, 1] are clipped.

        Returns:
            (obs, reward, terminated, truncated, info); reward 0 until the last group.

        Raises:
            ValueError: a non-finite action, or a step after the episode ended (call reset).
        """
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(a):
            raise ValueError(f"action {action!r} is not a finite keep ratio")
        if self.t >= len(self.groups):
            raise ValueError("the episode has ended (every group has its width): call reset()")
        a = min(max(a, self.layerwise.min_keep), 1.0)
        t = self.t
        width = self._legal_width(t, a)
        if self.layerwise.constrain_macs and self.config.target_metric == "macs":
            width = self._constrained_width(t, width)
        self.kept[t] = width
        self.prev_action = width / float(self.orig[t])
        self.t += 1
        if self.t < len(self.groups):
            return self._obs(), 0.0, False, False, self._info(None, "layer")
        spec = ArchSpec(tuple(int(k) for k in self.kept))
        result = self.source.evaluate(spec)
        if not result.ok:
            return self._obs(), float(self.config.weights.failure_penalty), True, False, self._info(result, "failed")
        self.current, self.current_terms = result, self._terms(result)
        return self._obs(), float(self.current_terms.reward), True, False, self._info(result, "pruned")

    def restore(self, kept: tuple[int, ...], steps: int, current: Any) -> tuple[np.ndarray, dict]:
        """Put the env back into a checkpointed mid-episode state (``PruningEnv.restore``'s signature, for ``--resume``).

        Args:
            kept: widths per group (the first ``steps`` chosen, the rest unpruned).
            steps: groups already set in this episode, in [0, G).
            current: ignored beyond the baseline (nothing is evaluated before the last group).

        Returns:
            (observation, info) as the step that reached that state gave them.

        Raises:
            ValueError: ``steps`` outside [0, G) or ``kept`` of the wrong length.
        """
        if not 0 <= int(steps) < len(self.groups) or len(kept) != len(self.groups):
            raise ValueError(f"cannot restore step {steps} with {len(kept)} widths into an episode of {len(self.groups)} groups")
        self._reset_state()
        self.kept = np.array(kept, dtype=np.int64)
        self.t = int(steps)
        if self.t > 0:
            self.prev_action = self.kept[self.t - 1] / float(self.orig[self.t - 1])
        return self._obs(), self._info(None, None if self.t == 0 else "layer")

    # -- helpers --------------------------------------------------------------
    def _reset_state(self) -> None:
        self.t = 0
        self.kept = self.orig.copy()
        self.prev_action = 1.0
        self.current = self.baseline
        self.current_terms: RewardTerms | None = None

    def _widths(self, t: int) -> list[int]:
        """Legal widths of group t, widest first: the grid of ``round_spec`` (computed once), ≥ min_channels."""
        if t not in self._width_cache:
            c = int(self.orig[t])
            floor = min(c, self.config.min_channels)
            cands = {round_spec(ArchSpec((w,)), [self.groups[t]], self.config.round_to).channels[0] for w in range(1, c + 1)}
            self._width_cache[t] = sorted((w for w in cands if w >= floor), reverse=True)
        return self._width_cache[t]

    def _legal_width(self, t: int, keep: float) -> int:
        """round(keep · c_t) moved onto the grid, never below min_channels (nor above c_t)."""
        c = int(self.orig[t])
        w = min(c, max(1, round(keep * c)))
        w = round_spec(ArchSpec((w,)), [self.groups[t]], self.config.round_to).channels[0]
        return max(w, self._widths(t)[-1])

    def _ratios(self, t_next: int, rest: str) -> np.ndarray:
        """Keep ratios: chosen for groups < t_next, the rest at full (``"full"``) or at ``min_keep`` (``"min"``) width."""
        r = self.kept / self.orig.astype(np.float64)
        if rest == "min":
            for g in range(t_next, len(self.groups)):
                r[g] = self._legal_width(g, self.layerwise.min_keep) / float(self.orig[g])
        else:
            r[t_next:] = 1.0
        return r

    def _constrained_width(self, t: int, width: int) -> int:
        """The widest legal width ≤ ``width`` that keeps the MACs target reachable (AMC §3.3)."""
        target = self.target_ratio * self.macs_full
        smallest = self._legal_width(t, self.layerwise.min_keep)
        for w in [x for x in self._widths(t) if smallest <= x <= width]:
            self.kept[t] = w
            if self.layers.macs(self._ratios(t + 1, "min")) <= target:
                return w
        return smallest  # the target is out of reach: prune as far as allowed (AMC)

    def _terms(self, result: Any) -> RewardTerms:
        """R = αΔP − βΔC − γΔH of ``result``, the one way every env computes it (``terms_against``)."""
        return terms_against(result, self.baseline, self.config.weights)

    def latency_ratio(self, result: Any) -> float:
        """``result``'s latency / the unpruned model's (:func:`harness.search.reward.latency_ratio_of`)."""
        return latency_ratio_of(result, self.baseline)

    def target_met(self, result: Any) -> bool:
        """True when ``result`` reaches the target ratio of the target metric (as PruningEnv)."""
        return meets_target(result, self.baseline, metric=self.config.target_metric, target_ratio=self.target_ratio)

    def _obs(self) -> np.ndarray:
        n = len(self.groups)
        t = min(self.t, n - 1)  # after the last step: the last group's features (the episode has ended)
        reduced = self.macs_full - self.layers.macs(self._ratios(self.t, "full"))
        rest = sum(layer.macs for layer in self.layers.layers
                   if (layer.out_group is not None and layer.out_group > t)
                   or (layer.out_group is None and layer.in_group is not None and layer.in_group > t))
        obs = np.concatenate([[self.t / n], self._static[t],
                              [reduced / self.macs_full, rest / self.macs_full, self.prev_action]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def _info(self, result: Any, event: str | None) -> dict:
        cur = self.current
        return {
            "event": event,
            "spec": ArchSpec(tuple(int(k) for k in self.kept)),
            "candidate": result,
            "reward_terms": self.current_terms,
            "target_met": bool(result is not None and result.ok and self.target_met(result)),
            "latency_ratio": self.latency_ratio(cur),
            "macs_ratio": cur.macs / self.baseline.macs,
            "top1": cur.top1,
        }
