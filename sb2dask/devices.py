"""Which torch device a computation runs on: one rule for training, inference and evaluation."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device=None):
    """``"auto"`` (or None) → CUDA when available, else CPU; anything else as torch reads it.

    Returns a :class:`torch.device`, so callers compare ``device.type``.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
