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

__all__ = ["SplitData", "FRAMES", "load_split", "network_inputs", "split_indices", "store_frame",
           "store_fingerprint"]

#: How spectra are framed for the networks: ``rest`` as stored (the paper's stars sit at rest),
#: ``rv_bulk`` resampled into the frame of the bulk velocity that inference measures.
FRAMES = ("rest", "rv_bulk")


@dataclass(frozen=True)
class SplitData:
    """Spectra and labels of one split, in RAM."""

    flux: np.ndarray  # float32 (n, n_pix)
    labels: dict  # name -> (n,) or (n, 2)
    index: np.ndarray  # global row indices
    wave: np.ndarray
    frame: str = "rest"  # one of FRAMES: how ``flux`` was prepared


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


def store_frame(store: str | Path) -> str:
    """The frame a store's spectra are meant to be seen in: ``rv_bulk`` for stores simulated with
    survey realism (stars at any systemic velocity; the factory recorded ``rv_bulk``), ``rest``
    for the paper's recipe."""
    from ..simulate.config import SimulationConfig
    from .factory import store_metadata

    cfg = SimulationConfig.from_dict(store_metadata(store)["config"])
    return "rest" if cfg.realism.is_paper else "rv_bulk"


def network_inputs(flux: np.ndarray, wave: np.ndarray, rv_bulk: np.ndarray | None = None,
                   batch: int = 4096, model_wave: np.ndarray | None = None) -> np.ndarray:
    """Stored spectra as the networks see them at inference: missing pixels filled, resampled
    onto ``model_wave`` (default: the stored grid ``wave``) and, with ``rv_bulk`` (n,) [km/s],
    into that frame (:func:`sb2dask.observe.preprocess`). float32 (n, n_model)."""
    from ..observe.preprocess import preprocess

    model_wave = wave if model_wave is None else model_wave
    out = np.empty((len(flux), len(model_wave)), dtype=np.float32)
    for s in range(0, len(flux), batch):
        rows = flux[s:s + batch]
        rv = None if rv_bulk is None else np.nan_to_num(rv_bulk[s:s + batch])
        out[s:s + len(rows)] = preprocess([wave] * len(rows), list(rows), None, model_wave,
                                          rv_kms=rv).flux
    return out


def load_split(store: str | Path, index: np.ndarray, fields=None,
               frame: str | None = None, wave: np.ndarray | None = None) -> SplitData:
    """Read rows ``index`` (sorted) of a store: the networks' inputs in ``frame`` (one of
    :data:`FRAMES`; default: :func:`store_frame`) and the requested label fields.

    ``wave`` [Å, air] resamples the spectra onto another pixel grid, as inference does for
    models trained on another layout (a DR4 961-pixel store read by models of the 903-pixel
    grid); the stored grid must cover it.
    """
    import zarr

    frame = frame or store_frame(store)
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    root = zarr.open_group(str(store), mode="r")
    stored = root["wave"][...]
    regrid = wave is not None and (len(wave) != len(stored) or not np.allclose(wave, stored))
    if regrid and (stored[0] > wave[0] + 1e-6 or stored[-1] < wave[-1] - 1e-6):
        raise ValueError(f"{store}: its pixel grid differs from the requested one and does not "
                         f"cover it ({stored[0]:.2f}-{stored[-1]:.2f} Å, {len(stored)} pixels; "
                         f"requested {wave[0]:.2f}-{wave[-1]:.2f} Å, {len(wave)} pixels)")
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
    flux = np.ascontiguousarray(flux, dtype=np.float32)
    out_wave = wave if regrid else stored
    if frame == "rv_bulk":
        if "rv_bulk" in labels:
            rv = labels["rv_bulk"]
        elif "rv_bulk" in root["labels"]:
            rv = _rows_of(root["labels"]["rv_bulk"], index)
        else:  # a store of the paper's recipe: measure as inference would
            from .factory import measure_rv_bulk

            rv = measure_rv_bulk(stored, flux)
        flux = network_inputs(flux, stored, rv, model_wave=out_wave)
    elif regrid or not np.isfinite(flux).all():
        flux = network_inputs(flux, stored, model_wave=out_wave)
    return SplitData(flux=flux, labels=labels, index=index, wave=out_wave, frame=frame)


def _rows_of(array, index: np.ndarray) -> np.ndarray:
    lo, hi = int(index.min()), int(index.max()) + 1
    return array[lo:hi][index - lo]


def store_fingerprint(store: str | Path) -> dict:
    """Identity of a training set for model manifests: path, n, config seed, and a hash of the
    per-chunk flux digests written by the factory."""
    from ..completion import records_sha256
    from ..dataset.factory import store_metadata

    meta = store_metadata(store)
    return dict(path=str(Path(store).resolve()), n=meta["n"], seed=meta["config"]["seed"],
                split=meta["split"], sha256=records_sha256(store),
                library_sha256=meta["provenance"]["library"]["sha256"])
