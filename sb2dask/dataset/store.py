"""Reading a simulated Zarr store into RAM for training and evaluation, split by split,
chunk by chunk.

The splits are contiguous, chunk-aligned index ranges, so reading one is a sequential scan of
whole compressed chunks (~10⁵ rows/s) rather than the random-row access that makes shuffled
reads from compressed chunks crawl (~200 rows/s). Shuffling then happens in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SplitData", "load_split", "split_indices", "store_fingerprint"]


@dataclass(frozen=True)
class SplitData:
    """Spectra and labels of one split, in RAM."""

    flux: np.ndarray  # float32 (n, n_pix)
    labels: dict  # name -> (n,) or (n, 2)
    index: np.ndarray  # global row indices
    wave: np.ndarray


def split_indices(store: str | Path, split: str, member: int = 0,
                  folds: int = 1) -> np.ndarray:
    """Global row indices of ``split`` (``train``/``validation``/``test``).

    With ``folds`` > 1, train and validation are pooled and member ``m`` validates on every
    ``folds``-th row starting at ``m % folds`` (a different validation fold per ensemble member).
    """
    from ..dataset.factory import SPLIT_NAMES, store_metadata

    meta = store_metadata(store)
    counts = [meta["split"][name] for name in SPLIT_NAMES]
    bounds = np.cumsum([0] + counts)
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    if split == "test" or folds <= 1:
        i = SPLIT_NAMES.index(split)
        return np.arange(bounds[i], bounds[i + 1])
    pooled = np.arange(0, bounds[2])
    in_val = (pooled % folds) == (member % folds)
    return pooled[in_val] if split == "validation" else pooled[~in_val]


def load_split(store: str | Path, index: np.ndarray, fields=None) -> SplitData:
    """Read rows ``index`` (sorted) of a store: flux and the requested label fields."""
    import zarr

    root = zarr.open_group(str(store), mode="r")
    index = np.asarray(index, dtype=np.int64)
    if index.size and np.all(np.diff(index) == 1):
        sl = slice(int(index[0]), int(index[-1]) + 1)
        flux = root["flux"][sl]
        labels = {k: root["labels"][k][sl] for k in (fields or root["labels"].array_keys())}
    else:
        lo, hi = int(index.min()), int(index.max()) + 1
        flux = root["flux"][lo:hi][index - lo]
        labels = {k: root["labels"][k][lo:hi][index - lo]
                  for k in (fields or root["labels"].array_keys())}
    return SplitData(flux=np.ascontiguousarray(flux, dtype=np.float32), labels=labels,
                     index=index, wave=root["wave"][...])


def store_fingerprint(store: str | Path) -> dict:
    """Identity of a training set for model manifests: path, n, config seed, and a hash of the
    per-chunk flux digests written by the factory."""
    from ..completion import records_sha256
    from ..dataset.factory import store_metadata

    meta = store_metadata(store)
    return dict(path=str(Path(store).resolve()), n=meta["n"], seed=meta["config"]["seed"],
                split=meta["split"], sha256=records_sha256(store),
                library_sha256=meta["provenance"]["library"]["sha256"])
