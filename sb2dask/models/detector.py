"""The SB2-vs-single detector: a 1-D residual CNN giving p_binary (after Jing et al. 2024/25).

The LAMOST work describes "basic residual learning blocks (He et al. 2015), two fully connected
layers, 1-D convolutions, dropout 0.5, cross-entropy loss, learning rate 1e-4" and outputs the
probability p_b of being a binary. Concretely here::

    stem      Conv(1→32, k7, s2, p3) - BN - ReLU - MaxPool(k3, s2, p1)
    stage 1   BasicBlock(32→32)                 (two Conv k3 - BN, identity shortcut, ReLU)
    stage 2   BasicBlock(32→64, stride 2)       (1×1 Conv-BN projection shortcut)
    stage 3   BasicBlock(64→128, stride 2)
    stage 4   BasicBlock(128→256, stride 2)
    head      AdaptiveAvgPool - FC(256→128) - ReLU - Dropout(0.5) - FC(128→1) = logit of p_binary
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Ops, run_with_float32_stem

__all__ = ["BinaryDetector"]


class _BasicBlock(nn.Module):
    def __init__(self, ops: Ops, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ops.conv(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = ops.bn(cout)
        self.conv2 = ops.conv(cout, cout, 3, padding=1)
        self.bn2 = ops.bn(cout)
        self.shortcut = (nn.Sequential(ops.conv(cin, cout, 1, stride=stride), ops.bn(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class BinaryDetector(nn.Module):
    """Spectrum ``(N, n_pix)`` → logit of p_binary ``(N,)``; ``torch.sigmoid`` gives p_binary."""

    def __init__(self, layout: str = "1d", channels=(32, 64, 128, 256), dropout: float = 0.5):
        super().__init__()
        ops = Ops(layout)
        self.ops = ops
        layers = [ops.conv(1, channels[0], 7, stride=2, padding=3), ops.bn(channels[0]),
                  nn.ReLU(), ops.maxpool(3, 2, 1)]
        c = channels[0]
        for i, cout in enumerate(channels):
            layers.append(_BasicBlock(ops, c, cout, stride=1 if i == 0 else 2))
            c = cout
        layers += [ops.global_avgpool(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, 128), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(128, 1))

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.head(run_with_float32_stem(self.features,
                                               self.ops.prepare(spectra))).squeeze(1)
