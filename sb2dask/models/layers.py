"""Layer constructors for 1-D networks in two memory layouts that compute the same function.

``layout="1d"`` builds ordinary ``Conv1d``/``BatchNorm1d`` layers on tensors ``(N, C, L)``.
``layout="2d"`` builds the same layers as ``Conv2d`` with ``1×k`` kernels on tensors
``(N, C, 1, L)`` in channels-last memory, which oneDNN runs about twice as fast on CPUs. Parameters
are stored canonically (Conv1d shapes) by :func:`canonical_state_dict`, so weights trained in one
layout load into the other.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LAYOUTS", "Ops", "canonical_state_dict", "load_canonical_state_dict",
           "run_with_float32_stem"]

LAYOUTS = ("1d", "2d")


class Ops:
    """Factory of layers for one layout."""

    def __init__(self, layout: str):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
             bias: bool = False) -> nn.Module:
        if self.layout == "1d":
            return nn.Conv1d(cin, cout, k, stride=stride, padding=padding, bias=bias)
        return nn.Conv2d(cin, cout, (1, k), stride=(1, stride), padding=(0, padding), bias=bias)

    def bn(self, c: int) -> nn.Module:
        return nn.BatchNorm1d(c) if self.layout == "1d" else nn.BatchNorm2d(c)

    def maxpool(self, k: int, stride: int, padding: int = 0) -> nn.Module:
        if self.layout == "1d":
            return nn.MaxPool1d(k, stride=stride, padding=padding)
        return nn.MaxPool2d((1, k), stride=(1, stride), padding=(0, padding))

    def avgpool(self, k: int) -> nn.Module:
        return nn.AvgPool1d(k) if self.layout == "1d" else nn.AvgPool2d((1, k))

    def global_avgpool(self) -> nn.Module:
        return nn.AdaptiveAvgPool1d(1) if self.layout == "1d" else nn.AdaptiveAvgPool2d(1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Spectra ``(N, L)`` or ``(N, 1, L)`` to the layout's input tensor."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if self.layout == "2d":
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return x


def run_with_float32_stem(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply ``features`` with its first layer (the convolution that sees the raw spectrum)
    outside any autocast region, in float32.

    Under bfloat16 autocast (8-bit mantissa) a continuum near 1 would be quantised in steps of
    0.4 %, as coarse as the noise at S/N 250 and coarser than the line-depth differences the
    networks read: measured on the shipped temperature model, full autocast moved Teff by up to
    272 K (99th percentile 160 K) from float32, autocast after a float32 stem by up to 14 K
    (99th percentile 10 K). Later layers see normalised, ReLU'd features and tolerate bfloat16.
    """
    layers = iter(features)
    with torch.autocast(x.device.type, enabled=False):
        h = next(layers)(x.float())
    for layer in layers:
        h = layer(h)
    return h


def canonical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with ``1×k`` Conv2d kernels stored as Conv1d kernels ``(out, in, k)``."""
    out = {}
    for name, t in model.state_dict().items():
        if t.dim() == 4 and t.shape[2] == 1:
            t = t.squeeze(2)
        out[name] = t.detach().contiguous().cpu()
    return out


def load_canonical_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a canonical state dict into ``model`` of either layout (strict: names and shapes)."""
    own = model.state_dict()
    fixed = {}
    for name, t in state.items():
        if name in own and own[name].dim() == 4 and t.dim() == 3:
            t = t.unsqueeze(2)
        fixed[name] = t
    model.load_state_dict(fixed, strict=True)
