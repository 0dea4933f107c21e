"""Our simulated stores (``sb2dask simulate`` output): a Zarr v3 group of spectra and true labels.

Layout read (see ``sb2dask.dataset.factory``)::

    zarr.json         root attributes hold an ``sb2dask`` dict (``n``, ``chunk``, ...)
    flux              float32 (n, n_pix), chunked along rows
    flux_error        float32 (n, n_pix), optional
    wave              float64 (n_pix,), air wavelengths [Å] (attribute ``units``)
    labels/<name>     (n,) or (n, 2); (n, 2) labels are (cooler, hotter) components
    chunk_sha256      completion record per finished chunk (or, in older stores, one
                      ``.sb2dask-done/chunk-NNNNNN`` file); see :mod:`sb2dask.completion`

``source_id`` is the global row index and ``epoch_id`` -1, unless ``labels/source_id`` /
``labels/epoch_id`` exist. Every other label is passed through as ``true_<name>``, or as
``true_<name>_1`` (cooler) and ``true_<name>_2`` (hotter) for (n, 2) labels. Partitions follow
the Zarr row chunks. A store being written (completion records present but not for every chunk of
a partition) raises :class:`~.base.ReaderError` rather than yielding unwritten fill values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ...completion import finished_chunks
from .base import (
    DEFAULT_PARTITION_ROWS,
    TRUE_PREFIX,
    CatalogueFormat,
    RaggedColumn,
    ReaderError,
    duplicate_flags,
    read_in_ranges,
    spectra_partition,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "read_rows", "row_ranges", "passthrough"]

NAME = "zarr_store"
_ID_LABELS = ("source_id", "epoch_id")


def identify(path: str | Path) -> bool:
    """True for a directory whose ``zarr.json`` attributes contain an ``sb2dask`` entry."""
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "sb2dask" in (doc.get("attributes") or {})


def _open(path: Path):
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        flux = root["flux"]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ReaderError(path, f"not a readable sb2dask store: no 'flux' array ({exc})") from exc
    if flux.ndim != 2:
        raise ReaderError(path, f"'flux' has shape {flux.shape}; expected (n, n_pix)")
    return root, flux


def _labels(root) -> dict:
    if "labels" not in root:
        return {}
    return {name: arr for name, arr in sorted(root["labels"].arrays())}


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """The ``true_*`` columns a store yields and their dtypes, from array metadata."""
    root, _ = _open(Path(path))
    out = {}
    for name, arr in _labels(root).items():
        if name in _ID_LABELS:
            continue
        if arr.ndim == 1:
            out[f"{TRUE_PREFIX}{name}"] = np.dtype(arr.dtype)
        else:
            out.update({f"{TRUE_PREFIX}{name}_{k + 1}": np.dtype(arr.dtype)
                        for k in range(int(np.prod(arr.shape[1:])))})
    return out


def row_ranges(path: str | Path, partition_rows: int = DEFAULT_PARTITION_ROWS
               ) -> list[tuple[int, int]]:
    """Chunk-aligned row ranges: as many whole chunks as fit in ``partition_rows`` (at least 1)."""
    _, flux = _open(Path(path))
    n, chunk = flux.shape[0], flux.chunks[0]
    step = max(1, partition_rows // chunk) * chunk
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _check_written(path: Path, n: int, chunk: int, start: int, stop: int) -> None:
    chunks = range(start // chunk, -(-stop // chunk))
    done = finished_chunks(path, chunks)
    if done is None:  # not written by the simulator's resumable writer
        return
    for c in chunks:
        if c not in done:
            last = min(n, (c + 1) * chunk) - 1
            raise ReaderError(path, f"chunk {c} (rows {c * chunk}-{last}) has no "
                              "completion record: the store is still being "
                              "written or was interrupted (rerun `sb2dask simulate` to finish it)",
                              row=c * chunk)


def _wave(path: Path, root) -> np.ndarray:
    try:
        arr = root["wave"]
    except KeyError as exc:
        raise ReaderError(path, "no 'wave' array") from exc
    attrs = dict(arr.attrs)
    medium = "vacuum" if "vacuum" in str(attrs.get("description", "")).lower() else "air"
    return wave_to_air_angstrom(arr[...], attrs.get("units") or None, medium, path=path,
                                where="wave: ")


def read_rows(path: str | Path, start: int, stop: int) -> pd.DataFrame:
    """Spectra of rows ``start..stop-1`` of a simulated store."""
    path = Path(path)
    root, flux_arr = _open(path)
    n = flux_arr.shape[0]
    _check_written(path, n, flux_arr.chunks[0], start, stop)
    wave = _wave(path, root)
    flux = np.asarray(flux_arr[start:stop], dtype=np.float32)
    err = np.asarray(root["flux_error"][start:stop], dtype=np.float32) \
        if "flux_error" in root else None
    labels = _labels(root)
    ids = {k: np.asarray(labels[k][:], dtype=np.int64) for k in _ID_LABELS if k in labels}
    sid_all = ids.get("source_id", np.arange(n, dtype=np.int64))
    eid_all = ids.get("epoch_id", np.full(n, -1, np.int64))
    # the row index is unique by construction; stored ids need checking
    flags = duplicate_flags(sid_all, eid_all)[start:stop] if ids else None
    if flux.shape[1] != wave.size:
        raise ReaderError(path, f"'flux' has {flux.shape[1]} pixels but 'wave' {wave.size}")
    extra = {}
    for name, arr in labels.items():
        if name in _ID_LABELS:
            continue
        values = np.asarray(arr[start:stop])
        if values.ndim == 1:
            extra[f"{TRUE_PREFIX}{name}"] = values
        else:
            values = values.reshape(len(values), -1)
            extra.update({f"{TRUE_PREFIX}{name}_{k + 1}": values[:, k]
                          for k in range(values.shape[1])})
    return spectra_partition(source_id=sid_all[start:stop], epoch_id=eid_all[start:stop],
                             wave=wave, flux=RaggedColumn.from_matrix(flux),
                             flux_error=None if err is None else RaggedColumn.from_matrix(err),
                             file=path, row=np.arange(start, stop), read_flags=flags,
                             passthrough=extra)


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a simulated store, one partition per run of whole Zarr chunks.

    Raises
    ------
    ReaderError
        No ``flux``/``wave`` array, mismatched shapes, or chunks not yet written.
    """
    return read_in_ranges(partition_rows, lambda: path, row_ranges, read_rows)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough, row_ranges, read_rows)
