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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pv

from .base import (
    DEFAULT_PARTITION_ROWS, EPOCH_COLUMNS, RVS_N_PIX, RVS_WAVE, RVS_WAVE_VAC_NM, CatalogueFormat,
    ReaderError, ReadFlag, build_partition, duplicate_mask, first_fields, leading_comment_lines,
    parse_float_strings, parse_int_strings, read_bytes, read_head, spectrum_flags,
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
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        table = pv.read_csv(
            pa.py_buffer(buf).slice(pos),
            read_options=pv.ReadOptions(use_threads=False),
            parse_options=pv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pv.ConvertOptions(
                column_types={n: pa.string() for n in names}, null_values=[],
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise ReaderError(path, f"malformed CSV ({exc})") from exc
    if invalid:
        r = invalid[0]
        raise ReaderError(path, f"expected {r.expected_columns} fields, found {r.actual_columns}",
                          line=None if r.number is None else len(lines) + r.number)
    return table, len(lines) + 2


def _ints(path, table, name, first_line) -> np.ndarray:
    values, bad = parse_int_strings(table[name])
    if bad is not None:
        raise ReaderError(path, f"{name} {table[name][bad].as_py()!r} is not an integer",
                          line=first_line + bad)
    return values


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a DataLink CSV file (normally one), in partitions of ``partition_rows``.

    Raises
    ------
    ReaderError
        Empty file, missing columns, a line with the wrong number of fields, a non-integer id,
        or a wavelength that is not a number in nm; the message names the line.
    """
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be positive, got {partition_rows}")
    path = Path(path)
    table, first_line = _table(path)
    n = table.num_rows
    if n == 0:
        return
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
    flux, flux_text = parse_float_strings(table["flux"])
    if "flux_error" in table.column_names:
        err, err_text = parse_float_strings(table["flux_error"])
    else:
        err, err_text = None, np.zeros(n, bool)

    starts = np.flatnonzero(np.r_[True, (source_id[1:] != source_id[:-1])
                                  | (epoch_id[1:] != epoch_id[:-1])])
    bounds = np.r_[starts, n]
    waves, fluxes, errs, flags = [], [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        w = wave_nm[a:b]
        order = np.argsort(w, kind="stable")
        unsorted = bool(np.any(np.diff(w) <= 0))
        w = w[order]
        f = flux[a:b][order]
        e = None if err is None else err[a:b][order]
        flag = ReadFlag.UNSORTED_WAVE if unsorted else ReadFlag.NONE
        if flux_text[a:b].any() or err_text[a:b].any():
            flag |= ReadFlag.NOT_NUMERIC
        if w.size == RVS_N_PIX and np.allclose(w, RVS_WAVE_VAC_NM, rtol=0, atol=1e-6):
            waves.append(RVS_WAVE)
        else:
            waves.append(wave_to_air_angstrom(w, "nm", "vacuum", path=path))
            if w.size != RVS_N_PIX:
                flag |= ReadFlag.WRONG_LENGTH
        fluxes.append(f)
        errs.append(e)
        flags.append(int(flag))
    sid, eid = source_id[starts], epoch_id[starts]
    flags = np.asarray(flags, np.int32) | spectrum_flags(fluxes, None if err is None else errs)
    flags |= np.where(duplicate_mask(sid, eid), ReadFlag.DUPLICATE_ID, 0).astype(np.int32)
    for a in range(0, len(starts), partition_rows):
        b = min(len(starts), a + partition_rows)
        yield build_partition(source_id=sid[a:b], epoch_id=eid[a:b], wave=waves[a:b],
                              flux=fluxes[a:b], flux_error=None if err is None else errs[a:b],
                              file=path, row=starts[a:b], read_flags=flags[a:b])


FORMAT = CatalogueFormat(NAME, identify, read, passthrough)
