"""Policy network of the seed: an MLP 64-64 with a softmax over discrete actions.

Source: seed document ``../shared/seed/`` §4.3 (``PolicyNetwork``: Linear→64,
ReLU, Linear→64, ReLU, Linear→n_actions, softmax) and DESIGN.md §3.
Improvement over the seed: an optional boolean action mask; masked actions get
probability exactly 0 (their logits are set to −inf before the softmax), so an
impossible action (a group already at its minimum width) is never sampled.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPPolicy"]


class MLPPolicy(nn.Module):
    """Categorical policy π(a|s) for a flat observation.

    Args:
        obs_dim: length of the observation vector (float32).
        n_actions: number of discrete actions.
        hidden: hidden widths; the seed's (64, 64) by default.

    Shapes:
        forward(obs: float32 [obs_dim] or [B, obs_dim], mask: bool same leading
        shape + [n_actions] or None) -> probabilities float32 [.., n_actions].
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        if obs_dim < 1 or n_actions < 1:
            raise ValueError(f"obs_dim={obs_dim} and n_actions={n_actions} must be >= 1")
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_actions))
        self.net = nn.Sequential(*layers)
        self.n_actions = n_actions

    def logits(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised scores; masked-out actions are −inf.

        Raises:
            ValueError: a mask that allows no action at all.
        """
        out = self.net(obs)
        if mask is not None:
            if not bool(mask.any(dim=-1).all()):
                raise ValueError("action mask allows no action; the environment must always allow 'stop'")
            out = out.masked_fill(~mask, float("-inf"))
        return out

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Action probabilities (softmax of the masked logits), as in seed §4.3."""
        return torch.softmax(self.logits(obs, mask), dim=-1)

    def distribution(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.distributions.Categorical:
        """A Categorical over actions built from the masked logits (numerically stable log-probs)."""
        return torch.distributions.Categorical(logits=self.logits(obs, mask))
