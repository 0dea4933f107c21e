"""FITS binary tables of spectra (astropy.io.fits): one spectrum per row, or one row per pixel.

**Arrays per row** (simulated sets, the Gaia ``DATAMODEL_GAIA`` layout): the first binary-table
HDU with a ``FLUX`` column is read; column names are matched case-insensitively:

``SOURCE_ID`` (required)
    integer, or text holding an integer.
``FLUX`` (required), ``FLUX_ERROR`` (optional)
    fixed-width vector columns (``2401E``), or variable-length (``PE()``) ones.
``EPOCH_ID`` or ``TRANSIT_ID`` (optional)
    integer; -1 when absent.
``OBS_TIME_RV``, ``NORMALISATION_METHOD``, ``COMBINED_CCDS``, ``DEBLENDED_CCDS`` (optional)
    the per-transit columns of Gaia DR4 epoch spectra (:data:`.base.TRANSIT_COLUMNS`).
``TRUE_*``
    scalar or vector columns passed through as ``true_*`` (vectors as ``true_<name>_1``, ...).

The wavelength grid is, in this order: a ``WAVE`` column (per row; a ``WAVELENGTH`` column, the
Gaia name, is vacuum nm unless ``TUNITn``/``AIRORVAC`` say otherwise); a 1-d image extension
named ``WAVE``; a linear grid ``CRVAL1 + CDELT1 (i + 1 - CRPIX1)`` (``CD1_1`` for ``CDELT1``,
``CRPIX1`` defaulting to 1) from keywords of the table header or else the primary header; a Gaia
RVS grid known by the array length (2401: DR3, 961: DR4 epoch; vacuum nm). Units come from
``TUNITn`` / ``BUNIT`` / ``CUNIT1`` (default Å). The medium is the ``AIRORVAC`` keyword
(``air``/``vac``) if present, else ``CTYPE1`` (``AWAV`` air, ``WAVE`` vacuum, FITS WCS paper
III), else air.

**One row per pixel** (the Gaia DataLink ``DATAMODEL_STANDARD`` layout, as the archive writes it
for DR3 spectra: scalar ``wavelength`` [nm], ``flux``, ``flux_error`` columns; checked on DR3
DataLink FITS products in astroquery's test data): every binary table with a scalar ``FLUX`` and
a ``WAVELENGTH`` column is read and its pixels grouped into spectra
(:func:`.base.group_pixels`). ``source_id``, ``transit_id`` and the per-transit values come from
columns when there are, else from the table's (then the primary) header keywords, full names or
``HIERARCH`` (``SOURCE_ID``, ``SOURCEID`` as the archive truncates it, ``TRANSIT_ID``,
``OBS_TIME_RV``, ...), so a file with one table per transit reads as one spectrum per table. Such
files are read whole (one partition per file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    TRANSIT_COLUMNS,
    TRUE_PREFIX,
    CatalogueFormat,
    PixelSpectra,
    RaggedColumn,
    ReaderError,
    consecutive_ranges,
    duplicate_flags,
    grids_for_lengths,
    group_tables,
    match_grids,
    pixel_partition,
    pixel_table,
    read_head,
    read_in_ranges,
    spectra_partition,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "read_rows", "row_ranges", "passthrough",
           "HEADER_KEYWORDS"]

NAME = "fits_table"
#: Header keywords read for per-pixel tables without the column, in order of preference
#: (astropy matches them in any case and finds ``HIERARCH`` cards by their full name).
HEADER_KEYWORDS = {
    "source_id": ("SOURCE_ID", "SOURCEID"),
    "epoch_id": ("EPOCH_ID", "TRANSIT_ID", "TRANSITI", "TRANSIT"),
    "obs_time_rv": ("OBS_TIME_RV", "OBSTIMER"),
    "normalisation_method": ("NORMALISATION_METHOD", "NORMALIS"),
    "combined_ccds": ("COMBINED_CCDS",),
    "deblended_ccds": ("DEBLENDED_CCDS", "DEBLENDE"),
}


def identify(path: str | Path) -> bool:
    """True for a (gzipped) file whose first card is ``SIMPLE  =``."""
    path = Path(path)
    return path.is_file() and read_head(path, 1 << 12).startswith(b"SIMPLE  =")


def _open(path: Path):
    from astropy.io import fits

    try:
        return fits.open(path, memmap=None, lazy_load_hdus=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ReaderError(path, f"not a readable FITS file ({exc})") from exc


def _tables(path: Path, hdul) -> list:
    """(table HDU, lower-case name -> column name) of every binary table with a FLUX column."""
    from astropy.io import fits

    out = []
    try:
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU):
                names = {c.name.lower(): c.name for c in hdu.columns}
                if "flux" in names:
                    out.append((hdu, names))
    except (OSError, ValueError) as exc:
        raise ReaderError(path, f"truncated or corrupt FITS file ({exc})") from exc
    if not out:
        raise ReaderError(path, "no binary table with a FLUX column")
    return out


def _per_pixel(hdu, names) -> bool:
    """A table with scalar FLUX and WAVELENGTH (or WAVE) columns: one row per pixel."""
    wave = names.get("wavelength", names.get("wave"))
    if wave is None:
        return False
    fmt = hdu.columns[names["flux"]].format
    return fmt.repeat == 1 and "P" not in str(fmt) and "Q" not in str(fmt)


def _table(path: Path, hdul):
    """(table HDU, lower-case name -> column name) of the first table with a FLUX column,
    checked to have a SOURCE_ID column unless it is a per-pixel table."""
    hdu, names = _tables(path, hdul)[0]
    if "source_id" not in names and not _per_pixel(hdu, names):
        raise ReaderError(path, f"HDU {hdu.name!r} has FLUX but no SOURCE_ID "
                          f"column; found {list(names.values())}")
    return hdu, names


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder not in ("=", "|") else a


def _passthrough_columns(hdu, names) -> dict[str, str]:
    return {low: actual for low, actual in names.items() if low.startswith(TRUE_PREFIX)}


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """The ``true_*`` columns a FITS table yields and their dtypes, from its header."""
    path = Path(path)
    with _open(path) as hdul:
        hdu, names = _table(path, hdul)
        out = {}
        for low, actual in _passthrough_columns(hdu, names).items():
            empty = hdu.data.field(actual)[:0]
            dtype = empty.dtype.newbyteorder("=")
            if empty.ndim == 1:
                out[low] = dtype
            else:
                out.update({f"{low}_{k + 1}": dtype for k in range(int(np.prod(empty.shape[1:])))})
        return out


def row_ranges(path: str | Path, partition_rows: int = DEFAULT_PARTITION_ROWS
               ) -> list[tuple[int | None, int | None]]:
    """Consecutive row ranges of at most ``partition_rows`` rows (from ``NAXIS2``); a per-pixel
    file is one range ``(None, None)``, read whole by :func:`read`."""
    path = Path(path)
    with _open(path) as hdul:
        hdu, names = _table(path, hdul)
        if _per_pixel(hdu, names):
            return [(None, None)]
        n = int(hdu.header["NAXIS2"])
    return consecutive_ranges(n, partition_rows)


def _ids(path: Path, values: np.ndarray, name: str, first_row: int) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind in "SU":
        text = np.char.strip(values.astype(str))
        ok = np.char.isdigit(np.char.lstrip(text, "+-"))
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ReaderError(path, f"{name} {text[bad]!r} is not an integer", row=first_row + bad)
        return text.astype(np.int64)
    raise ReaderError(path, f"column {name!r} holds {values.dtype}; expected integers")


def _vectors(values: np.ndarray) -> RaggedColumn:
    """A fixed-width or variable-length vector column as float32 rows."""
    if values.dtype == object:
        rows = [np.asarray(v, dtype=np.float32).ravel() for v in values]
        offsets = np.concatenate([[0], np.cumsum([r.size for r in rows])]).astype(np.int64)
        return RaggedColumn(np.concatenate(rows) if rows else np.empty(0, np.float32), offsets)
    return RaggedColumn.from_matrix(values.reshape(len(values), -1).astype(np.float32))


def _medium(*headers) -> str | None:
    for h in headers:
        value = str(h.get("AIRORVAC", "")).strip().lower()
        if value:
            return value
    return None


def _wave(path: Path, hdul, hdu, names, data, n_pix: int | None, first_row: int):
    """(grid shared by every row, or one per row) in air Å."""
    primary = hdul[0].header
    medium = _medium(hdu.header, primary)
    key = "wave" if "wave" in names else "wavelength" if "wavelength" in names else None
    if key is not None:
        unit = hdu.columns[names[key]].unit
        if key == "wavelength":  # the Gaia column: vacuum nm unless the file says otherwise
            unit, medium = unit or "nm", medium or "vacuum"
        col = _vectors(np.asarray(data.field(names[key])))
        return match_grids(path, col.values.astype(np.float64), col.offsets, unit, medium)[0]
    try:
        ext = hdul["WAVE"]
    except KeyError:
        ext = None
    if ext is not None:
        # np.array copies: the data may be a memory map of a file closed after this read
        wave = np.array(ext.data, dtype=np.float64) if ext.data is not None else None
        if wave is None or wave.ndim != 1:
            raise ReaderError(path, "the WAVE extension must hold a 1-d array of wavelengths")
        unit = ext.header.get("BUNIT") or ext.header.get("CUNIT1")
        return wave_to_air_angstrom(wave, unit, _medium(ext.header) or medium, path=path,
                                    where="WAVE extension: ")
    header = next((h for h in (hdu.header, primary) if "CRVAL1" in h), None)
    if header is not None:
        step = header.get("CDELT1", header.get("CD1_1"))
        ctype = str(header.get("CTYPE1", "")).strip().upper()
        if step is None or (ctype and ctype not in ("WAVE", "AWAV")):
            raise ReaderError(path, f"CRVAL1 grid needs CDELT1 (or CD1_1) and a linear CTYPE1 "
                              f"('WAVE' or 'AWAV'), got CDELT1={step!r} CTYPE1={ctype!r}")
        if n_pix is None:
            raise ReaderError(path, "a CRVAL1/CDELT1 grid needs a fixed-width FLUX column")
        pix = np.arange(n_pix) + 1.0 - float(header.get("CRPIX1", 1.0))
        wave = float(header["CRVAL1"]) + float(step) * pix
        medium = medium or {"AWAV": "air", "WAVE": "vacuum"}.get(ctype)
        return wave_to_air_angstrom(wave, header.get("CUNIT1"), medium, path=path,
                                    where="CRVAL1 grid: ")
    return None  # no description in the file: a Gaia grid known by the row lengths


def read_rows(path: str | Path, start: int, stop: int) -> pd.DataFrame:
    """Spectra of table rows ``start..stop-1``."""
    path = Path(path)
    with _open(path) as hdul:
        hdu, names = _table(path, hdul)
        try:
            table = hdu.data
            sid_all = _ids(path, np.asarray(table.field(names["source_id"])), "source_id", 0)
            epoch = next((names[c] for c in EPOCH_COLUMNS if c in names), None)
            eid_all = _ids(path, np.asarray(table.field(epoch)), epoch, 0) if epoch else \
                np.full(len(sid_all), -1, np.int64)
            data = table[start:stop]
            flux = _vectors(np.asarray(data.field(names["flux"])))
            err = _vectors(np.asarray(data.field(names["flux_error"]))) \
                if "flux_error" in names else None
            fixed = np.asarray(data.field(names["flux"])).dtype != object
            width = int(flux.offsets[1] - flux.offsets[0]) if fixed and stop > start else None
            wave = _wave(path, hdul, hdu, names, data, width, start)
            if wave is None:
                wave = grids_for_lengths(np.diff(flux.offsets))
            transit = {k: np.asarray(data.field(names[k]), dtype=np.float64)
                       for k in TRANSIT_COLUMNS if k in names}
            extra = {}
            for low, actual in _passthrough_columns(hdu, names).items():
                values = _native(np.array(data.field(actual)))  # a copy, not a memory map
                if values.ndim == 1:
                    extra[low] = values
                else:
                    values = values.reshape(len(values), -1)
                    extra.update({f"{low}_{k + 1}": values[:, k] for k in range(values.shape[1])})
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, ReaderError):
                raise
            raise ReaderError(path, f"truncated or corrupt FITS table ({exc})") from exc

    return spectra_partition(source_id=sid_all[start:stop], epoch_id=eid_all[start:stop],
                             wave=wave, flux=flux, flux_error=err, file=path,
                             row=np.arange(start, stop),
                             read_flags=duplicate_flags(sid_all, eid_all)[start:stop],
                             passthrough=extra, transit=transit)


def _header_scalars(headers) -> dict[str, object]:
    """Per-pixel table metadata from header keywords (:data:`HEADER_KEYWORDS`), first found."""
    out: dict[str, object] = {}
    for field, keys in HEADER_KEYWORDS.items():
        for header in headers:
            key = next((k for k in keys if k in header), None)
            if key is not None:
                out[field] = header[key]
                break
    return out


def _pixel_spectra(path: str | Path) -> PixelSpectra:
    """Every per-pixel table of the file, its pixels grouped into spectra."""
    path = Path(path)
    tables, first_row = [], 0
    with _open(path) as hdul:
        try:
            for k, (hdu, names) in enumerate(_tables(path, hdul), start=1):
                where = f"HDU {k} ({hdu.name!r})"
                if not _per_pixel(hdu, names):
                    raise ReaderError(path, f"{where} has array columns but the first table "
                                      "is per-pixel; expected one layout")
                data = hdu.data
                n = 0 if data is None else len(data)
                columns = {c.name: (np.array(data.field(c.name)) if n else np.empty(0))
                           for c in hdu.columns}
                wave = names.get("wavelength", names.get("wave"))
                tables.append(pixel_table(
                    path, columns, _header_scalars((hdu.header, hdul[0].header)),
                    wave_unit=hdu.columns[wave].unit, where=where, first_row=first_row))
                first_row += n
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, ReaderError):
                raise
            raise ReaderError(path, f"truncated or corrupt FITS table ({exc})") from exc
    return group_tables(path, tables)


def _layout(path: Path) -> bool:
    """True when the file's first FLUX table is a per-pixel one."""
    with _open(path) as hdul:
        hdu, names = _table(path, hdul)
        return _per_pixel(hdu, names)


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a FITS file, in partitions of at most ``partition_rows`` rows.

    Raises
    ------
    ReaderError
        Not FITS or truncated, no table with FLUX and SOURCE_ID (column, or header keyword of a
        per-pixel table), non-integer ids, an unusable wavelength description.
    """
    path = Path(path)
    if _layout(path):
        return read_in_ranges(partition_rows, lambda: _pixel_spectra(path),
                              lambda s, k: consecutive_ranges(len(s.source_id), k),
                              pixel_partition)
    return read_in_ranges(partition_rows, lambda: path, row_ranges, read_rows)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough, row_ranges, read_rows)
