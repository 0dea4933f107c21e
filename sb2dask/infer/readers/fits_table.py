"""FITS binary tables of spectra: one spectrum per table row (astropy.io.fits).

The first binary-table HDU with a ``FLUX`` column is read; column names are matched
case-insensitively:

``SOURCE_ID`` (required)
    integer, or text holding an integer.
``FLUX`` (required), ``FLUX_ERROR`` (optional)
    fixed-width vector columns (``2401E``), or variable-length (``PE()``) ones.
``EPOCH_ID`` or ``TRANSIT_ID`` (optional)
    integer; -1 when absent.
``TRUE_*``
    scalar or vector columns passed through as ``true_*`` (vectors as ``true_<name>_1``, ...).

The wavelength grid is, in this order: a ``WAVE`` column (per row); a 1-d image extension named
``WAVE``; a linear grid ``CRVAL1 + CDELT1 (i + 1 - CRPIX1)`` (``CD1_1`` for ``CDELT1``,
``CRPIX1`` defaulting to 1) from keywords of the table header or else the primary header; the
Gaia RVS grid. Units come from ``TUNITn`` / ``BUNIT`` / ``CUNIT1`` (default Å). The medium is the
``AIRORVAC`` keyword (``air``/``vac``) if present, else ``CTYPE1`` (``AWAV`` air, ``WAVE``
vacuum, FITS WCS paper III), else air; the Gaia default grid is vacuum nm.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    RVS_WAVE,
    TRUE_PREFIX,
    CatalogueFormat,
    RaggedColumn,
    ReaderError,
    consecutive_ranges,
    duplicate_flags,
    read_head,
    read_in_ranges,
    spectra_partition,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "read_rows", "row_ranges", "passthrough"]

NAME = "fits_table"


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


def _table(path: Path, hdul):
    """(table HDU, lower-case name -> column name) of the first table with a FLUX column."""
    from astropy.io import fits

    try:
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU):
                names = {c.name.lower(): c.name for c in hdu.columns}
                if "flux" in names:
                    if "source_id" not in names:
                        raise ReaderError(path, f"HDU {hdu.name!r} has FLUX but no SOURCE_ID "
                                          f"column; found {list(names.values())}")
                    return hdu, names
    except (OSError, ValueError) as exc:
        raise ReaderError(path, f"truncated or corrupt FITS file ({exc})") from exc
    raise ReaderError(path, "no binary table with a FLUX column")


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
               ) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most ``partition_rows`` rows (from ``NAXIS2``)."""
    path = Path(path)
    with _open(path) as hdul:
        n = int(_table(path, hdul)[0].header["NAXIS2"])
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
    if "wave" in names:
        unit = hdu.columns[names["wave"]].unit
        col = _vectors(np.asarray(data.field(names["wave"])))
        values, offsets = col.values, col.offsets
        values = wave_to_air_angstrom(values.astype(np.float64), unit, medium, path=path,
                                      where="WAVE column: ")
        shared: dict[bytes, np.ndarray] = {}
        return [shared.setdefault(w.tobytes(), w)
                for w in (values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))]
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
    return RVS_WAVE


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
                             passthrough=extra)


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a FITS binary table, in partitions of at most ``partition_rows`` rows.

    Raises
    ------
    ReaderError
        Not FITS or truncated, no table with FLUX and SOURCE_ID, non-integer ids, an unusable
        wavelength description.
    """
    return read_in_ranges(partition_rows, lambda: path, row_ranges, read_rows)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough, row_ranges, read_rows)
