"""The small residual CNN that the export, compile and tuning tests share (not a test module)."""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE = (1, 1, 28, 28)


class SmallNet(nn.Module):
    """conv3x3(1->8)+BN+ReLU, one residual block, GAP, Linear(10); input 1x1x28x28 float32 -> 1x10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_net() -> SmallNet:
    """SmallNet with seed-0 weights and non-trivial BN statistics (so BN folding matters), in eval mode."""
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        for bn in (net.stem[1], net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()
