"""Batched forward passes of the networks on numpy arrays (shared by training and inference)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["predict_array", "sort_pairs"]


def predict_array(model: torch.nn.Module, flux: np.ndarray, extra: np.ndarray | None = None,
                  batch_size: int = 512, device: str | torch.device = "cpu") -> np.ndarray:
    """Run ``model`` over spectra ``flux`` (n, n_pix) in batches; ``extra`` (n, k) is a second
    input (the temperatures of a parameter model). Returns float32 ``(n, n_out)`` or ``(n,)``."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(flux), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(flux[s:s + batch_size], dtype=np.float32))
            args = [x.to(device)]
            if extra is not None:
                args.append(torch.from_numpy(np.ascontiguousarray(
                    extra[s:s + batch_size], dtype=np.float32)).to(device))
            outs.append(model(*args).float().cpu().numpy())
    if not outs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outs)


def sort_pairs(values: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Order (n, 2) ``values`` lowest first, applying the same swap to each of ``others``."""
    swap = values[:, 0] > values[:, 1]
    out = [np.where(swap[:, None], values[:, ::-1], values)]
    out += [np.where(swap[:, None], o[:, ::-1], o) for o in others]
    return tuple(out)
