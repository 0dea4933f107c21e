"""VOTables of spectra (the Gaia archive's default DataLink format): both layouts.

The Gaia archive writes DataLink products as VOTable 1.4, ``votable`` (BINARY2 serialisation) or
``votable_plain`` (TABLEDATA); astropy's parser reads both, gzipped or not. Every TABLE of the
file is read:

* **one row per pixel** (``DATAMODEL_STANDARD``): scalar ``wavelength`` [nm] and ``flux``
  FIELDs, optional ``flux_error``; the archive gives ``source_id`` as a PARAM of the table
  (checked on DR3 DataLink VOTables in astroquery's test data), so identifiers and the DR4
  per-transit values (:data:`.base.TRANSIT_COLUMNS`) are taken from a FIELD when there is one,
  else from a PARAM of the table or of its RESOURCE; a file with one TABLE per transit reads as
  one spectrum per table (:func:`.base.pixel_table`, :func:`.base.group_pixels`);
* **arrays per row** (``DATAMODEL_GAIA``): ``flux`` (and ``flux_error``, optionally
  ``wavelength``) FIELDs with an ``arraysize``, one spectrum per row, ``source_id`` and
  ``transit_id`` FIELDs; without a wavelength FIELD the grid follows from the array length
  (:func:`.base.grids_for_lengths`).

Names are matched in any letter case; FIELDs the reader does not use are ignored. Files are read
whole (one partition per file): DataLink VOTables hold the spectra of a list of sources, not a
bulk release.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    TRANSIT_COLUMNS,
    CatalogueFormat,
    RaggedColumn,
    ReaderError,
    consecutive_ranges,
    duplicate_flags,
    find_column,
    grids_for_lengths,
    group_tables,
    integer_ids,
    match_grids,
    pixel_partition,
    pixel_table,
    read_head,
    read_in_ranges,
    spectra_partition,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "passthrough"]

NAME = "votable"


def identify(path: str | Path) -> bool:
    """True for a (gzipped) XML file with a ``<VOTABLE`` element near its start."""
    path = Path(path)
    if not path.is_file():
        return False
    head = read_head(path, 1 << 14).lstrip()
    return head.startswith(b"<") and b"<VOTABLE" in head


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """VOTables yield no ``true_*`` columns."""
    return {}


def _parse(path: Path):
    from astropy.io.votable import parse
    from astropy.io.votable.exceptions import VOWarning

    try:
        with warnings.catch_warnings():
            # the archive's files raise harmless W-warnings (units, UCDs); problems that matter
            # surface as missing columns or unreadable values below
            warnings.simplefilter("ignore", VOWarning)
            return parse(str(path), verify="ignore")
    except Exception as exc:  # noqa: BLE001 (the XML, binary and value parsers raise many kinds)
        raise ReaderError(path, f"not a readable VOTable ({type(exc).__name__}: {exc})") from exc


def _params(resource, table) -> dict[str, object]:
    """PARAM values of a table and its enclosing RESOURCE (the table's win)."""
    out: dict[str, object] = {}
    for p in list(getattr(resource, "params", [])) + list(table.params):
        value = p.value
        out[p.name] = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
    return out


def _tables(path: Path):
    """(table label, RESOURCE, TABLE) of every TABLE that has a flux FIELD."""
    vot = _parse(path)
    out = []
    resources, pending = [], list(vot.resources)
    while pending:  # every RESOURCE, nested ones after their parent
        resources.append(pending.pop(0))
        pending[0:0] = list(resources[-1].resources)
    for r, resource in enumerate(resources, start=1):
        for t, table in enumerate(resource.tables, start=1):
            names = [f.name for f in table.fields]
            if find_column(names, "flux") is not None:
                out.append((f"RESOURCE {r} TABLE {t}", resource, table))
    if not out:
        raise ReaderError(path, "no TABLE with a flux FIELD")
    return out


def _is_array(table, name: str) -> bool:
    field = next(f for f in table.fields if f.name == name)
    return field.arraysize not in (None, "1")


def _rows(values) -> RaggedColumn:
    """An array FIELD (2-d, or an object column of variable-length arrays) as float32 rows;
    masked elements become NaN."""
    if values.dtype == object:
        rows = [np.empty(0, np.float32) if v is None or v is np.ma.masked else
                np.ma.filled(np.ma.asarray(v, dtype=np.float32), np.nan).ravel() for v in values]
        null = np.array([v is None or v is np.ma.masked for v in values], dtype=bool)
        offsets = np.concatenate([[0], np.cumsum([r.size for r in rows])]).astype(np.int64)
        flat = np.concatenate(rows) if rows else np.empty(0, np.float32)
        return RaggedColumn(flat, offsets, null_rows=null)
    matrix = np.ma.filled(np.ma.asarray(values, dtype=np.float32), np.nan)
    return RaggedColumn.from_matrix(matrix.reshape(len(matrix), -1))


def _array_partition(path: Path, label: str, resource, table, first_row: int) -> pd.DataFrame:
    """One TABLE of the arrays-per-row layout as a partition."""
    data = table.array
    names = list(data.dtype.names)
    params = _params(resource, table)
    n = len(data)
    sid_col = find_column(names, "source_id")
    if sid_col is None:
        raise ReaderError(path, f"{label}: no source_id FIELD (arrays-per-row layout)")
    source_id = integer_ids(path, data[sid_col], sid_col, first_row)
    eid_col = find_column(names, *EPOCH_COLUMNS)
    epoch_id = integer_ids(path, data[eid_col], eid_col, first_row) if eid_col else \
        np.full(n, -1, np.int64)
    flux = _rows(data[find_column(names, "flux")])
    err_col = find_column(names, "flux_error")
    err = _rows(data[err_col]) if err_col else None
    wave_col = find_column(names, "wavelength", "wave")
    if wave_col is not None and _is_array(table, wave_col):
        waves = _rows(data[wave_col])
        unit = next(f.unit for f in table.fields if f.name == wave_col)
        wave = match_grids(path, waves.values.astype(np.float64), waves.offsets,
                           str(unit) if unit else "nm", "vacuum")[0]
    else:
        wave = grids_for_lengths(np.diff(flux.offsets))
    transit = {}
    for name in TRANSIT_COLUMNS:
        col = find_column(names, name)
        if col is not None:
            transit[name] = np.ma.filled(np.ma.asarray(data[col], dtype=np.float64), np.nan)
        elif (key := find_column(params, name)) is not None and params[key] is not None:
            transit[name] = np.full(n, float(params[key]))
    return spectra_partition(source_id=source_id, epoch_id=epoch_id, wave=wave, flux=flux,
                             flux_error=err, file=path, row=np.arange(first_row, first_row + n),
                             read_flags=None, transit=transit)


def _read_file(path: Path):
    """(layout, spectra): grouped pixels (``"pixels"``) or a list of partitions (``"arrays"``)."""
    tables = _tables(path)
    layouts = set()
    for _, _, table in tables:
        names = [f.name for f in table.fields]
        layouts.add("arrays" if _is_array(table, find_column(names, "flux")) else "pixels")
    if len(layouts) > 1:
        raise ReaderError(path, "the file mixes per-pixel and arrays-per-row tables; expected "
                          "one layout")
    first_row = 0
    if layouts == {"arrays"}:
        parts = []
        for label, resource, table in tables:
            parts.append(_array_partition(path, label, resource, table, first_row))
            first_row += len(table.array)
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        df["read_flags"] |= duplicate_flags(df["source_id"].to_numpy(),
                                            df["epoch_id"].to_numpy())
        return "arrays", df
    pixels = []
    for label, resource, table in tables:
        data = table.array
        names = [f.name for f in table.fields]
        wave_col = find_column(names, "wavelength", "wave")
        if wave_col is None:
            raise ReaderError(path, f"{label}: a per-pixel table needs a wavelength FIELD; "
                              f"found {names}")
        unit = next(f.unit for f in table.fields if f.name == wave_col)
        pixels.append(pixel_table(path, {k: data[k] for k in data.dtype.names},
                                  _params(resource, table), wave_unit=str(unit) if unit else None,
                                  where=label, first_row=first_row))
        first_row += len(data)
    return "pixels", group_tables(path, pixels)


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a VOTable, in partitions of at most ``partition_rows`` spectra.

    Raises
    ------
    ReaderError
        Not a readable VOTable, no TABLE with a flux FIELD, no source_id (FIELD or PARAM), a
        per-pixel table without wavelengths, non-integer ids, mixed layouts; names the file and
        the table (and row).
    """
    path = Path(path)

    def ranges(handle, k):
        layout, spectra = handle
        n = len(spectra) if layout == "arrays" else len(spectra.source_id)
        return consecutive_ranges(n, k)

    def rows(handle, a, b):
        layout, spectra = handle
        if layout == "arrays":
            return spectra.iloc[a:b].reset_index(drop=True)
        return pixel_partition(spectra, a, b)

    return read_in_ranges(partition_rows, lambda: _read_file(path), ranges, rows)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough)
