"""Gaia archive DataLink CSV of RVS spectra: one row per pixel, one spectrum per source.

The archive's DataLink service returns ``rvs_mean_spectrum`` (DR3, "RAW" option) as a CSV with
columns ``source_id, solution_id, ra, dec, wavelength, flux, flux_error, combined_transits,
combined_ccds, deblended_ccds``: one line per pixel, 2401 lines from 846.00 to 870.00 nm, with
empty ``flux``/``flux_error`` where the pipeline left no value (see the real files in
``shared/data/gaia_rvs``). Optional ``#`` comment lines may precede the column-name line. A file
normally holds one spectrum; consecutive pixels sharing (``source_id``, ``transit_id`` or
``epoch_id`` when present) form one spectrum, so a file that concatenates several yields several
rows, and a source repeated in a later block is flagged ``DUPLICATE_ID``.

Wavelengths are nm in vacuum (checked on the real files, see :mod:`.base`). Pixels are sorted by
wavelength (``UNSORTED_WAVE`` records that the input was not); a spectrum on exactly the Gaia
grid gets the shared :data:`~.base.RVS_WAVE` object, any other its own air grid, and a spectrum
with other than 2401 pixels is flagged ``WRONG_LENGTH``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    RVS_N_PIX,
    RVS_WAVE,
    RVS_WAVE_VAC_NM,
    CatalogueFormat,
    RaggedColumn,
    ReaderError,
    ReadFlag,
    consecutive_ranges,
    duplicate_flags,
    first_fields,
    leading_comment_lines,
    parse_float_strings,
    parse_int_strings,
    read_bytes,
    read_head,
    read_in_ranges,
    read_text_columns,
    spectra_partition,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "passthrough", "REQUIRED_COLUMNS"]

NAME = "gaia_datalink_csv"
REQUIRED_COLUMNS = ("source_id", "wavelength", "flux")
#: Plausible wavelengths [nm]; outside this the file is not in nm (e.g. Å).
_NM_RANGE = (300.0, 2500.0)


def identify(path: str | Path) -> bool:
    """True for a text file whose first non-comment line names per-pixel ``wavelength`` and
    ``flux`` columns and a ``source_id``."""
    path = Path(path)
    if not path.is_file():
        return False
    head = read_head(path)
    _, pos = leading_comment_lines(head)
    return set(REQUIRED_COLUMNS) <= set(first_fields(head, pos))


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """DataLink files carry no ``true_*`` columns."""
    return {}


def _table(path: Path) -> tuple[pa.Table, int]:
    """(every column as text, 1-based line of data row 0)."""
    buf = read_bytes(path)
    lines, pos = leading_comment_lines(buf)
    names = first_fields(buf, pos)
    if not names:
        raise ReaderError(path, "empty file" if not buf.strip() else
                          "no column-name line after the comment lines", line=len(lines) + 1)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ReaderError(path, f"missing required column(s) {missing}; found {names}",
                          line=len(lines) + 1)
    table = read_text_columns(path, pa.py_buffer(buf).slice(pos), names,
                              lines_before=len(lines))
    return table, len(lines) + 2


def _ints(path, table, name, first_line) -> np.ndarray:
    values, bad = parse_int_strings(table[name])
    if bad is not None:
        raise ReaderError(path, f"{name} {table[name][bad].as_py()!r} is not an integer",
                          line=first_line + bad)
    return values


@dataclass(frozen=True, slots=True)
class _Spectra:
    """The spectra of one file: pixels grouped per spectrum and sorted by wavelength."""

    path: Path
    source_id: np.ndarray  # (n_spectra,)
    epoch_id: np.ndarray
    row: np.ndarray  # data row of each spectrum's first pixel
    wave: list  # air grid [Å] per spectrum; RVS_WAVE itself for spectra on the Gaia grid
    flux: RaggedColumn
    flux_error: RaggedColumn | None
    flags: np.ndarray  # int32: unsorted input, wrong length, duplicates


def _spectra(path: str | Path) -> _Spectra:
    """Parse a DataLink file and group its pixels into spectra."""
    path = Path(path)
    table, first_line = _table(path)
    n = table.num_rows
    source_id = _ints(path, table, "source_id", first_line)
    epoch_name = next((c for c in EPOCH_COLUMNS if c in table.column_names), None)
    epoch_id = _ints(path, table, epoch_name, first_line) if epoch_name else \
        np.full(n, -1, np.int64)
    # float64, so the grid test below sees the file's decimals rather than float32 rounding
    wave_nm, bad = parse_float_strings(table["wavelength"], dtype=np.float64)
    out_of_range = ~((wave_nm > _NM_RANGE[0]) & (wave_nm < _NM_RANGE[1]))
    if bad.any() or out_of_range.any():
        i = int(np.flatnonzero(bad | out_of_range)[0])
        raise ReaderError(path, f"wavelength {table['wavelength'][i].as_py()!r} is not a "
                          f"wavelength in nm (expected {_NM_RANGE[0]:g}-{_NM_RANGE[1]:g})",
                          line=first_line + i)
    flux, text = parse_float_strings(table["flux"])
    err = None
    if "flux_error" in table.column_names:
        err, err_text = parse_float_strings(table["flux_error"])
        text |= err_text

    starts = np.flatnonzero(np.r_[n > 0, (source_id[1:] != source_id[:-1])
                                  | (epoch_id[1:] != epoch_id[:-1])])
    bounds = np.r_[starts, n]
    order, waves, flags = np.arange(n), [], np.zeros(len(starts), np.int32)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = wave_nm[a:b]
        if np.any(np.diff(w) <= 0):  # sorted by wavelength; equal ones keep the file order
            order[a:b] = a + np.argsort(w, kind="stable")
            w = wave_nm[order[a:b]]
            flags[i] |= ReadFlag.UNSORTED_WAVE
        if w.size == RVS_N_PIX and np.allclose(w, RVS_WAVE_VAC_NM, rtol=0, atol=1e-6):
            waves.append(RVS_WAVE)
        else:
            waves.append(wave_to_air_angstrom(w, "nm", "vacuum", path=path))
            if w.size != RVS_N_PIX:
                flags[i] |= ReadFlag.WRONG_LENGTH
    flags |= duplicate_flags(source_id[starts], epoch_id[starts])
    not_numeric = np.logical_or.reduceat(text, starts)
    return _Spectra(path, source_id[starts], epoch_id[starts], starts, waves,
                    RaggedColumn(flux[order], bounds, not_numeric=not_numeric),
                    None if err is None else RaggedColumn(err[order], bounds), flags)


def _partition(s: _Spectra, a: int, b: int) -> pd.DataFrame:
    return spectra_partition(
        source_id=s.source_id[a:b], epoch_id=s.epoch_id[a:b], wave=s.wave[a:b],
        flux=s.flux.rows(a, b), flux_error=None if s.flux_error is None else
        s.flux_error.rows(a, b), file=s.path, row=s.row[a:b], read_flags=s.flags[a:b])


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a DataLink CSV file (normally one), in partitions of ``partition_rows``.

    Raises
    ------
    ReaderError
        Empty file, missing columns, a line with the wrong number of fields, a non-integer id,
        or a wavelength that is not a number in nm; the message names the line.
    """
    return read_in_ranges(partition_rows, lambda: _spectra(path),
                          lambda s, k: consecutive_ranges(len(s.source_id), k), _partition)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough)
