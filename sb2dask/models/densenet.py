"""The temperature and parameter DenseNets of Binnenfeld et al. (2025), Tables 2 and 3.

Table 2 (temperature model)::

    Step Layer               Input      Output     Details
    1    Input               (1, 903)   (1, 903)   Raw spectrum
    2    Conv1D              (1, 903)   (32, 225)  Kernel 7, Stride 2, Padding 3
    3    MaxPool             (32, 450)  (32, 225)  Kernel 3, Stride 2, Padding 1
    4    Dense Block 1       (32, 225)  (128, 225) 2 Conv layers, Kernel 3, BatchNorm, ReLU
    4    Transition Block 1  (128, 225) (64, 112)  Conv 1x1, Pool 2x2
    5    Dense Block 2       (64, 112)  (256, 112) 4 Conv layers, Kernel 3, BatchNorm, ReLU
    6    Transition Block 2  (256, 112) (128, 56)  Conv 1x1, Pool 2x2
    7    Dense Block 3       (128, 56)  (512, 56)  6 Conv layers, Kernel 3, BatchNorm, ReLU
    8    Transition Block 3  (512, 56)  (256, 28)  Conv 1x1, Pool 2x2
    9    Dense Block 4       (256, 28)  (512, 28)  4 Conv layers, Kernel 3, BatchNorm, ReLU
    10   Adaptive Pooling    (512, 28)  (512, 1)   Adaptive avg. pooling
    11   Flatten             (512, 1)   (512)
    12   Fully Connected 1   (512)      (512)      Linear layer, ReLU
    13   Fully Connected 2   (512)      (2)        Temperatures, lower first

Table 3 (parameter model) has the same trunk (steps 3-13 there) and a temperature branch::

    2    Input (Temperatures)            (2)        (2)    Two predicted temperatures (lower first)
    14   Fully Connected (Temperatures)  (2)        (64)   Linear layer, ReLU
    15   Fully Connected (Merged)        (512 + 64) (512)  Combined spectral and temperature feat.
    16   Fully Connected 1               (512)      (512)  Linear layer, ReLU
    17   Fully Connected 2               (512)      (2)    Parameters matching sorted temperatures

Where the tables leave details open we follow DenseNet (Huang et al. 2017, which the paper
cites) as torchvision implements it: the stem is Conv-BN-ReLU-MaxPool; a dense layer is
BN-ReLU-Conv(k=3, padding 1) whose output is concatenated to its input; a transition is
BN-ReLU-Conv1x1-AvgPool(2); the trunk ends with BN-ReLU before the adaptive pooling; the merged
FC layer has a ReLU. Growth rates follow from the channel counts of the table: 48 in blocks 1-2
((128-32)/2, (256-64)/4) and 64 in blocks 3-4 ((512-128)/6, (512-256)/4).

One inconsistency in Table 2: a stride-2, kernel-7, padding-3 convolution maps 903 pixels to 452,
not 450 (450 would need padding 1). We keep the stated kernel, stride and padding, so the lengths
run 452 → 226 → 113 → 56 → 28; channel counts and the final (512, 28) match the table.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Ops, run_with_float32_stem

__all__ = ["DenseTrunk", "TemperatureNet", "ParameterNet", "TABLE_BLOCKS"]

#: (layers, input channels, output channels) of the four dense blocks in Tables 2 and 3.
TABLE_BLOCKS = ((2, 32, 128), (4, 64, 256), (6, 128, 512), (4, 256, 512))


class _DenseLayer(nn.Module):
    def __init__(self, ops: Ops, cin: int, growth: int):
        super().__init__()
        self.norm = ops.bn(cin)
        self.conv = ops.conv(cin, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv(torch.relu(self.norm(x)))], dim=1)


class _Transition(nn.Sequential):
    def __init__(self, ops: Ops, cin: int, cout: int):
        super().__init__()
        self.norm = ops.bn(cin)
        self.relu = nn.ReLU()
        self.conv = ops.conv(cin, cout, 1)
        self.pool = ops.avgpool(2)


class DenseTrunk(nn.Module):
    """Steps 2-11 of Table 2: spectrum ``(N, n_pix)`` to 512 features ``(N, 512)``."""

    def __init__(self, layout: str = "1d", blocks=TABLE_BLOCKS, stem_channels: int = 32):
        super().__init__()
        ops = Ops(layout)
        self.ops = ops
        layers = [ops.conv(1, stem_channels, 7, stride=2, padding=3), ops.bn(stem_channels),
                  nn.ReLU(), ops.maxpool(3, 2, 1)]
        c = stem_channels
        for b, (n_layers, cin, cout) in enumerate(blocks):
            if c != cin:
                raise ValueError(f"dense block {b + 1} expects {cin} channels, gets {c}")
            growth, rem = divmod(cout - cin, n_layers)
            if rem:
                raise ValueError(f"dense block {b + 1}: {cout - cin} not divisible by {n_layers}")
            for _ in range(n_layers):
                layers.append(_DenseLayer(ops, c, growth))
                c += growth
            if b + 1 < len(blocks):
                nxt = blocks[b + 1][1]
                layers.append(_Transition(ops, c, nxt))
                c = nxt
        layers += [ops.bn(c), nn.ReLU(), ops.global_avgpool(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = c

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return run_with_float32_stem(self.features, self.ops.prepare(spectra))


class TemperatureNet(nn.Module):
    """Table 2: spectrum → the two component temperatures (scaled), lower first."""

    def __init__(self, layout: str = "1d", n_outputs: int = 2):
        super().__init__()
        self.trunk = DenseTrunk(layout)
        self.head = nn.Sequential(nn.Linear(self.trunk.out_features, 512), nn.ReLU(),
                                  nn.Linear(512, n_outputs))

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(spectra))


class ParameterNet(nn.Module):
    """Table 3: spectrum + two temperatures (scaled, lower first) → one parameter of both
    components, ordered like the temperatures."""

    def __init__(self, layout: str = "1d", n_outputs: int = 2):
        super().__init__()
        self.trunk = DenseTrunk(layout)
        self.temperature_branch = nn.Sequential(nn.Linear(2, 64), nn.ReLU())
        self.merge = nn.Sequential(nn.Linear(self.trunk.out_features + 64, 512), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, n_outputs))

    def forward(self, spectra: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
        f = torch.cat([self.trunk(spectra), self.temperature_branch(temperatures)], dim=1)
        return self.head(self.merge(f))
