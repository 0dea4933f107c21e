"""Catalogue readers: Gaia RVS spectra (and our simulated stores) as pandas/Dask partitions.

One module per format, each with an ``identify(path)`` test and a ``read(path, *,
partition_rows)`` generator, registered in :data:`READERS` (as specutils registers its default
loaders). :func:`identify_format` picks the reader, :func:`read_catalogue` reads one file, and
:func:`to_dask` builds a lazy Dask DataFrame with one partition per (file, row range). Every
partition follows :data:`~.base.SPECTRUM_SCHEMA`; see :mod:`.base` for the flags and for the
wavelength convention (air Å; Gaia's vacuum nm grids are converted).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from . import fits_table, gaia_bulk_ecsv, gaia_datalink_csv, parquet, votable, zarr_store
from .base import (
    DEFAULT_PARTITION_ROWS,
    INFORMATIONAL_FLAGS,
    RVS_N_PIX,
    RVS_WAVE,
    RVS_WAVE_VAC_NM,
    SPECTRUM_COLUMNS,
    SPECTRUM_META,
    SPECTRUM_SCHEMA,
    CatalogueFormat,
    ReaderError,
    ReadFlag,
    meta_with,
)

__all__ = [
    "READERS", "identify_format", "get_format", "read_catalogue", "to_dask",
    "SPECTRUM_SCHEMA", "SPECTRUM_COLUMNS", "SPECTRUM_META", "ReadFlag", "INFORMATIONAL_FLAGS",
    "ReaderError", "CatalogueFormat", "DEFAULT_PARTITION_ROWS", "RVS_N_PIX", "RVS_WAVE",
    "RVS_WAVE_VAC_NM",
]

#: The registered formats, tried in this order by :func:`identify_format`. The tests are
#: disjoint (a directory, Parquet magic, FITS magic, a VOTable element, CSV/ECSV text with one
#: spectrum per row, CSV/ECSV text with one row per pixel: :func:`.base.text_layout` decides
#: between the last two), so the order only decides which test runs first.
READERS: list[CatalogueFormat] = [
    zarr_store.FORMAT,
    parquet.FORMAT,
    fits_table.FORMAT,
    votable.FORMAT,
    gaia_bulk_ecsv.FORMAT,
    gaia_datalink_csv.FORMAT,
]


def get_format(name: str) -> CatalogueFormat:
    """The registered format called ``name`` (e.g. ``"gaia_bulk_ecsv"``)."""
    for fmt in READERS:
        if fmt.name == name:
            return fmt
    raise KeyError(f"no catalogue format {name!r}; registered: {[f.name for f in READERS]}")


def identify_format(path: str | Path) -> str:
    """Name of the first registered format whose ``identify`` claims ``path``.

    Raises
    ------
    ReaderError
        The path does not exist or no reader recognises it.
    """
    path = Path(path)
    if not path.exists():
        raise ReaderError(path, "no such file or directory")
    for fmt in READERS:
        if fmt.identify(path):
            return fmt.name
    raise ReaderError(path, "no reader recognises this file (tried "
                      f"{', '.join(f.name for f in READERS)}); expected Gaia DataLink "
                      "CSV/ECSV/VOTable/FITS (one row per pixel or one spectrum per row), a "
                      "Gaia bulk ECSV (.csv.gz), Parquet, a FITS binary table or an sb2dask "
                      "Zarr store")


def read_catalogue(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS,
                   format: str | None = None) -> Iterator[pd.DataFrame]:  # noqa: A002
    """Spectra of one catalogue file, in partitions of at most ``partition_rows`` rows.

    Parameters
    ----------
    path : str or Path
    partition_rows : int
    format : str, optional
        A registered format name; identified from the file when None.

    Yields
    ------
    pandas.DataFrame
        In the :data:`~.base.SPECTRUM_SCHEMA`, plus any ``true_*`` columns.
    """
    fmt = get_format(format or identify_format(path))
    return fmt.read(Path(path), partition_rows=partition_rows)


def _read_partition(item: tuple[str, str, int | None, int | None]) -> pd.DataFrame:
    """Dask task: one (format, file, row range) partition; a whole file when the range is None."""
    name, path, start, stop = item
    fmt = get_format(name)
    if start is not None:
        return fmt.read_rows(path, start, stop)
    parts = list(fmt.read(path, partition_rows=1 << 62))
    if not parts:
        return meta_with(fmt.passthrough(path))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def to_dask(paths: str | Path | Iterable[str | Path], *,
            partition_rows: int = DEFAULT_PARTITION_ROWS):
    """A lazy Dask DataFrame of the spectra of one or more catalogue files.

    Formats whose row count is cheap to know (Parquet, FITS, Zarr stores) get one partition per
    row range of about ``partition_rows`` rows; the others (Gaia CSV/ECSV text) one partition per
    file. Each partition is read on the worker that computes it. Only file headers are read here.

    Parameters
    ----------
    paths : path or iterable of paths
        Files (or store directories), in the order their partitions should appear.
    partition_rows : int

    Returns
    -------
    dask.dataframe.DataFrame
        ``meta`` is :data:`~.base.SPECTRUM_META` plus the files' ``true_*`` columns.

    Raises
    ------
    ReaderError
        A path is unrecognised, or the files disagree on their ``true_*`` columns.

    Notes
    -----
    The collection is built with Dask's ``dataframe.convert-string`` option off: that option
    would turn the object columns holding numpy arrays (``wave``, ``flux``, ``flux_error``) into
    strings.
    """
    import dask
    import dask.dataframe as dd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("to_dask needs at least one path")
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be positive, got {partition_rows}")
    items, extra, extra_from = [], None, None
    for path in paths:
        fmt = get_format(identify_format(path))
        cols = {k: np.dtype(v) for k, v in fmt.passthrough(path).items()}
        if extra is None:
            extra, extra_from = cols, path
        elif cols != extra:
            raise ReaderError(path, f"pass-through columns {cols} differ from {extra} of "
                              f"{extra_from}; every file of one collection must carry the same")
        ranges = fmt.row_ranges(path, partition_rows) if fmt.splittable else [(None, None)]
        items += [(fmt.name, str(path), a, b) for a, b in ranges]
    meta = meta_with(extra)
    with dask.config.set({"dataframe.convert-string": False}):
        if not items:  # every file is empty
            return dd.from_pandas(meta, npartitions=1)
        return dd.from_map(_read_partition, items, meta=meta, label="read-spectra",
                           enforce_metadata=True)
