"""Gaia archive DataLink CSV/ECSV of RVS spectra: one row per pixel (``DATAMODEL_STANDARD``).

The archive's DataLink service returns ``rvs_mean_spectrum`` (DR3, "RAW" option) as a CSV with
columns ``source_id, solution_id, ra, dec, wavelength, flux, flux_error, combined_transits,
combined_ccds, deblended_ccds``: one line per pixel, 2401 lines from 846.00 to 870.00 nm, with
empty ``flux``/``flux_error`` where the pipeline left no value (see the real files in
``shared/data/gaia_rvs``). Optional ``#`` comment lines may precede the column-name line. A file
normally holds one spectrum; consecutive pixels sharing (``source_id``, ``transit_id`` or
``epoch_id`` when present) form one spectrum, so a file that concatenates several yields several
rows, and a source repeated in a later block is flagged ``DUPLICATE_ID``.

DR4 epoch spectra (``EPOCH_SPECTRUM_RVS``; pre-release data model) in this layout add
``transit_id`` and the per-transit columns (``obs_time_rv``, ``normalisation_method``,
``combined_ccds``, ``deblended_ccds``) and use the 961-pixel grid (:mod:`.base`). The archive's
**ECSV** of the same layout (checked on DR3 DataLink ECSV products in astroquery's test data) has
only the per-pixel columns and gives ``source_id`` and the other scalars in the header's ``meta``
block; they are read from there when there is no such column. Column and meta names are matched
in any letter case; columns the reader does not use are ignored.

Wavelengths are nm in vacuum (checked on the real files, see :mod:`.base`; an ECSV ``unit`` is
honoured). Grouping, sorting and grid matching are :func:`.base.group_pixels`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    TRANSIT_COLUMNS,
    CatalogueFormat,
    EcsvHeader,
    PixelSpectra,
    ReaderError,
    consecutive_ranges,
    find_column,
    first_fields,
    group_pixels,
    leading_comment_lines,
    parse_ecsv_header,
    parse_float_strings,
    pixel_partition,
    read_bytes,
    read_head,
    read_in_ranges,
    read_text_columns,
    text_integers,
    text_layout,
    text_numbers,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "passthrough", "REQUIRED_COLUMNS"]

NAME = "gaia_datalink_csv"
REQUIRED_COLUMNS = ("source_id", "wavelength", "flux")
#: Plausible wavelengths [nm]; outside this the file is not in nm (e.g. Å).
_NM_RANGE = (300.0, 2500.0)


def identify(path: str | Path) -> bool:
    """True for a CSV or ECSV text file with per-pixel ``wavelength`` and ``flux`` columns and a
    ``source_id`` (a column, or for ECSV possibly the header's meta)."""
    path = Path(path)
    if not path.is_file():
        return False
    layout = text_layout(read_head(path))
    return layout is not None and layout[0] == "pixels"


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """DataLink files carry no ``true_*`` columns."""
    return {}


def _table(path: Path) -> tuple[pa.Table, int, EcsvHeader | None]:
    """(every column as text, 1-based line of data row 0, the ECSV header if any)."""
    buf = read_bytes(path)
    lines, pos = leading_comment_lines(buf)
    header = parse_ecsv_header(path, lines) if lines and lines[0].lstrip("# ").startswith(
        "%ECSV") else None
    delimiter = header.delimiter if header else ","
    if delimiter == ",":
        names = first_fields(buf, pos)
    else:
        end = buf.find(b"\n", pos)
        names = buf[pos:end if end >= 0 else len(buf)].decode("utf-8", "replace").split()
    if not names:
        raise ReaderError(path, "empty file" if not buf.strip() else
                          "no column-name line after the comment lines", line=len(lines) + 1)
    meta = {} if header is None else dict(header.meta or {})
    missing = [c for c in REQUIRED_COLUMNS if find_column(names, c) is None
               and find_column(meta, c) is None]
    if missing:
        raise ReaderError(path, f"missing required column(s) {missing}; found {names}",
                          line=len(lines) + 1)
    table = read_text_columns(path, pa.py_buffer(buf).slice(pos), names,
                              lines_before=len(lines), delimiter=delimiter)
    return table, len(lines) + 2, header


def _meta_value(path, meta: dict, name: str, kind: type):
    """A scalar of the ECSV ``meta`` block, as int or float (None when absent or null)."""
    key = find_column(meta, name)
    if key is None or meta[key] is None:
        return None
    try:
        return kind(meta[key])
    except (TypeError, ValueError):
        raise ReaderError(path, f"ECSV meta {key}: {meta[key]!r} is not "
                          f"{'an integer' if kind is int else 'a number'}") from None


def _spectra(path: str | Path) -> PixelSpectra:
    """Parse a DataLink file and group its pixels into spectra."""
    path = Path(path)
    table, first_line, header = _table(path)
    names, n = table.column_names, table.num_rows
    meta = {} if header is None else dict(header.meta or {})

    def ids(wanted, default):
        col = find_column(names, *wanted)
        if col is not None:
            return text_integers(path, table, col, first_line)
        value = next((v for v in (_meta_value(path, meta, w, int) for w in wanted)
                      if v is not None), default)
        return np.full(n, value, np.int64)

    source_id = ids(("source_id",), None)
    epoch_id = ids(EPOCH_COLUMNS, -1)
    wave_col = find_column(names, "wavelength")
    # float64, so the grid test sees the file's decimals rather than float32 rounding
    wave_nm, bad = parse_float_strings(table[wave_col], dtype=np.float64)
    unit = None if header is None or header.column(wave_col) is None else \
        header.column(wave_col).unit
    if unit not in (None, "", "nm") and not bad.all():
        wave_nm = wave_to_air_angstrom(wave_nm, unit, "air", path=path,
                                       where=f"{wave_col}: ") / 10.0
    out_of_range = ~((wave_nm > _NM_RANGE[0]) & (wave_nm < _NM_RANGE[1]))
    if bad.any() or out_of_range.any():
        i = int(np.flatnonzero(bad | out_of_range)[0])
        raise ReaderError(path, f"wavelength {table[wave_col][i].as_py()!r} is not a "
                          f"wavelength in nm (expected {_NM_RANGE[0]:g}-{_NM_RANGE[1]:g})",
                          line=first_line + i)
    flux, text = parse_float_strings(table[find_column(names, "flux")])
    err = None
    err_col = find_column(names, "flux_error")
    if err_col is not None:
        err, err_text = parse_float_strings(table[err_col])
        text |= err_text
    transit = {}
    for name in TRANSIT_COLUMNS:
        col = find_column(names, name)
        if col is not None:
            transit[name] = text_numbers(path, table, col, first_line)
        elif (value := _meta_value(path, meta, name, float)) is not None:
            transit[name] = np.full(n, value)
    return group_pixels(path, source_id=source_id, epoch_id=epoch_id, wave_nm=wave_nm,
                        flux=flux, flux_error=err, not_numeric=text, transit=transit)


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a DataLink CSV/ECSV file, in partitions of ``partition_rows``.

    Raises
    ------
    ReaderError
        Empty file, missing columns, a line with the wrong number of fields, a non-integer id,
        a wavelength that is not a number in nm, or text in a per-transit column; the message
        names the line.
    """
    return read_in_ranges(partition_rows, lambda: _spectra(path),
                          lambda s, k: consecutive_ranges(len(s.source_id), k), pixel_partition)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough)
