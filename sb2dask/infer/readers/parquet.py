"""Parquet tables of spectra: list or fixed-size-list array columns, one spectrum per row.

Columns (names matched case-insensitively):

``source_id`` (required)
    integer, or text holding an integer.
``flux`` (required), ``flux_error`` (optional)
    ``list``, ``large_list`` or ``fixed_size_list`` of numbers (or of numeric text, parsed like
    the ECSV arrays); a null list is an all-NaN spectrum.
``wave`` (optional)
    a per-row list of wavelengths. Without it the grid is the file's key-value metadata entry
    ``sb2dask.wave`` (a JSON list), and without that a Gaia RVS grid known by the array length
    (2401 pixels: DR3 mean spectra; 961: DR4 epoch spectra; others are fitted to the DR3 grid
    and flagged). A ``wavelength`` list column (the Gaia name) is vacuum nm.
``epoch_id`` or ``transit_id`` (optional)
    integer; -1 when absent.
``obs_time_rv``, ``normalisation_method``, ``combined_ccds``, ``deblended_ccds`` (optional)
    the per-transit columns of Gaia DR4 epoch spectra (:data:`.base.TRANSIT_COLUMNS`), numbers.
``true_*``
    scalar columns passed through; fixed-size-list ones become ``true_<name>_1``, ``_2``...

Wavelength unit and medium come from the metadata entries ``sb2dask.wave_unit`` (an astropy unit
string, default Å) and ``sb2dask.wave_medium`` (``air``, the default, or ``vacuum``); the Gaia
default grid is converted from vacuum nm. Partitions follow row groups: consecutive row groups are
merged up to ``partition_rows`` rows and a larger row group is split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    TRANSIT_COLUMNS,
    TRUE_PREFIX,
    CatalogueFormat,
    RaggedColumn,
    ReaderError,
    duplicate_flags,
    grids_for_lengths,
    match_grids,
    parse_float_strings,
    parse_int_strings,
    read_head,
    read_in_ranges,
    spectra_partition,
    wave_to_air_angstrom,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "read_rows", "row_ranges", "passthrough",
           "WAVE_KEY", "WAVE_UNIT_KEY", "WAVE_MEDIUM_KEY"]

NAME = "parquet"
#: File-level key-value metadata entries describing the wavelength grid.
WAVE_KEY = "sb2dask.wave"
WAVE_UNIT_KEY = "sb2dask.wave_unit"
WAVE_MEDIUM_KEY = "sb2dask.wave_medium"


def identify(path: str | Path) -> bool:
    """True for a file that starts with the Parquet magic bytes ``PAR1``."""
    path = Path(path)
    return path.is_file() and read_head(path, 4) == b"PAR1"


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ReaderError(path, f"not a readable Parquet file ({exc})") from exc


def _columns(path: Path, pf: pq.ParquetFile) -> dict[str, str]:
    """Lower-case name -> actual name, checking the required columns are there."""
    names = {n.lower(): n for n in pf.schema_arrow.names}
    missing = [c for c in ("source_id", "flux") if c not in names]
    if missing:
        raise ReaderError(path, f"missing required column(s) {missing}; found "
                          f"{pf.schema_arrow.names}")
    return names


def _passthrough_fields(pf: pq.ParquetFile) -> list[tuple[str, pa.Field]]:
    return [(f.name.lower(), f) for f in pf.schema_arrow if f.name.lower().startswith(TRUE_PREFIX)]


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """The ``true_*`` columns a Parquet file yields and their dtypes, from its schema."""
    path = Path(path)
    out = {}
    for name, f in _passthrough_fields(_open(path)):
        if pa.types.is_fixed_size_list(f.type):
            for k in range(f.type.list_size):
                out[f"{name}_{k + 1}"] = np.dtype(f.type.value_type.to_pandas_dtype())
        else:
            out[name] = np.dtype(f.type.to_pandas_dtype())
    return out


def row_ranges(path: str | Path, partition_rows: int = DEFAULT_PARTITION_ROWS
               ) -> list[tuple[int, int]]:
    """Row ranges on row-group boundaries, each at most ``partition_rows`` rows unless a single
    row group is split."""
    pf = _open(Path(path))
    ranges, start, stop = [], 0, 0
    for i in range(pf.metadata.num_row_groups):
        k = pf.metadata.row_group(i).num_rows
        if stop > start and stop - start + k > partition_rows:
            ranges.append((start, stop))
            start = stop
        stop += k
        while stop - start > partition_rows:
            ranges.append((start, start + partition_rows))
            start += partition_rows
    if stop > start:
        ranges.append((start, stop))
    return ranges


def _list_parts(path: Path, col: pa.ChunkedArray, name: str, first_row: int) -> RaggedColumn:
    """A list-of-numbers column as float32 rows (null lists and numeric text marked)."""
    arr = col.combine_chunks()
    n = len(arr)
    null_rows = arr.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(arr.type):
        # .values, not .flatten(): flatten() leaves out the slots of null lists
        values = arr.values.slice(arr.offset * arr.type.list_size, n * arr.type.list_size)
        offsets = np.arange(n + 1, dtype=np.int64) * arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    else:
        raise ReaderError(path, f"column {name!r} has type {arr.type}; expected a list of numbers",
                          row=first_row)
    vtype = values.type
    not_numeric = np.zeros(n, bool)
    if pa.types.is_string(vtype) or pa.types.is_large_string(vtype):
        vals, bad = parse_float_strings(values)
        if bad.any():
            not_numeric[np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1] = True
    elif pa.types.is_floating(vtype) or pa.types.is_integer(vtype):
        vals = pc.cast(values, pa.float32()).to_numpy(zero_copy_only=False)
    else:
        raise ReaderError(path, f"column {name!r} holds {vtype}; expected numbers", row=first_row)
    return RaggedColumn(np.asarray(vals, dtype=np.float32), offsets, null_rows, not_numeric)


def _ids(path: Path, col: pa.ChunkedArray, name: str, first_row: int) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.null_count:
        bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ReaderError(path, f"{name} is null", row=first_row + bad)
    if pa.types.is_integer(arr.type):
        return arr.to_numpy().astype(np.int64)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        values, bad = parse_int_strings(arr)
        if bad is not None:
            raise ReaderError(path, f"{name} {arr[bad].as_py()!r} is not an integer",
                              row=first_row + bad)
        return values
    raise ReaderError(path, f"column {name!r} has type {arr.type}; expected integers")


def _wave_metadata(path: Path, pf: pq.ParquetFile) -> tuple[np.ndarray | None, str | None,
                                                             str | None]:
    meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
    unit, medium = meta.get(WAVE_UNIT_KEY), meta.get(WAVE_MEDIUM_KEY)
    if WAVE_KEY not in meta:
        return None, unit, medium
    try:
        wave = np.asarray(json.loads(meta[WAVE_KEY]), dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ReaderError(path, f"metadata {WAVE_KEY!r} is not a JSON list of numbers "
                          f"({exc})") from exc
    if wave.ndim != 1 or wave.size == 0:
        raise ReaderError(path, f"metadata {WAVE_KEY!r} must be a non-empty 1-d list")
    return wave, unit, medium


def _read_ids(path: Path, pf: pq.ParquetFile, cols: dict[str, str]):
    """source_id and epoch_id of the whole file (for duplicates across partitions)."""
    epoch = next((cols[c] for c in EPOCH_COLUMNS if c in cols), None)
    table = pf.read(columns=[cols["source_id"]] + ([epoch] if epoch else []))
    sid = _ids(path, table.column(0), "source_id", 0)
    eid = _ids(path, table.column(1), epoch, 0) if epoch else np.full(len(sid), -1, np.int64)
    return sid, eid


def _read_slice(pf: pq.ParquetFile, groups: list[int], first: int, start: int, stop: int,
                wanted: list[str]) -> pa.Table:
    """Rows ``start..stop-1`` of ``groups`` (whose first row is ``first``), streamed in record
    batches so that memory follows the partition, not the row group: a writer's row groups can
    hold 10⁵ spectra (GBs decoded) while a partition is sized to the worker's memory."""
    if not groups:
        return pf.schema_arrow.empty_table().select(wanted)
    keep, row = [], first
    for batch in pf.iter_batches(batch_size=512, row_groups=groups, columns=wanted,
                                 use_threads=False):
        lo, hi = max(start, row), min(stop, row + batch.num_rows)
        if hi > lo:
            keep.append(batch.slice(lo - row, hi - lo))
        row += batch.num_rows
        if row >= stop:
            break
    return pa.Table.from_batches(keep) if keep else pf.schema_arrow.empty_table().select(wanted)


def read_rows(path: str | Path, start: int, stop: int) -> pd.DataFrame:
    """Spectra of rows ``start..stop-1`` (reading only the row groups that hold them)."""
    path = Path(path)
    pf = _open(path)
    cols = _columns(path, pf)
    sid_all, eid_all = _read_ids(path, pf, cols)
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    groups = [i for i in range(len(sizes)) if bounds[i] < stop and bounds[i + 1] > start]
    wanted = [cols[c] for c in ("flux", "flux_error", "wave", "wavelength") if c in cols]
    wanted += [cols[c] for c in TRANSIT_COLUMNS if c in cols]
    wanted += [f.name for _, f in _passthrough_fields(pf)]
    table = _read_slice(pf, groups, int(bounds[groups[0]]) if groups else 0, start, stop,
                        wanted)

    flux = _list_parts(path, table[cols["flux"]], "flux", start)
    err = _list_parts(path, table[cols["flux_error"]], "flux_error", start) \
        if "flux_error" in cols else None

    wave_file, unit, medium = _wave_metadata(path, pf)
    if "wave" in cols:
        waves = _row_waves(path, table[cols["wave"]], unit, medium, start)
    elif "wavelength" in cols:
        waves = _row_waves(path, table[cols["wavelength"]], unit or "nm", medium or "vacuum",
                           start)
    elif wave_file is not None:
        waves = wave_to_air_angstrom(wave_file, unit, medium, path=path, where="metadata: ")
    else:
        lengths = np.diff(flux.offsets)
        waves = grids_for_lengths(np.where(flux.null_rows, lengths.max(initial=0), lengths))
    transit = {c: table[cols[c]].combine_chunks().cast(pa.float64()).to_numpy(
        zero_copy_only=False) for c in TRANSIT_COLUMNS if c in cols}
    extra = {}
    for name, f in _passthrough_fields(pf):
        col = table[f.name].combine_chunks()
        if pa.types.is_fixed_size_list(f.type):
            block = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
            for k in range(block.shape[1]):
                extra[f"{name}_{k + 1}"] = block[:, k]
        else:
            extra[name] = col.to_numpy(zero_copy_only=False)
    return spectra_partition(source_id=sid_all[start:stop], epoch_id=eid_all[start:stop],
                             wave=waves, flux=flux, flux_error=err, file=path,
                             row=np.arange(start, stop),
                             read_flags=duplicate_flags(sid_all, eid_all)[start:stop],
                             passthrough=extra, transit=transit)


def _row_waves(path, col, unit, medium, first_row):
    """Per-row air wavelength grids [Å], rows with equal grids sharing one array object (the
    Gaia grids' shared objects for rows on them: :func:`.base.match_grids`)."""
    parts = _list_parts(path, col, "wave", first_row)
    if parts.null_rows.any() or parts.not_numeric.any():
        bad = int(np.flatnonzero(parts.null_rows | parts.not_numeric)[0])
        raise ReaderError(path, "wave is null or not numeric", row=first_row + bad)
    waves, _ = match_grids(path, parts.values.astype(np.float64), parts.offsets, unit, medium)
    return waves


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a Parquet file, one partition per (merged or split) row-group range.

    Raises
    ------
    ReaderError
        Not Parquet, missing ``source_id``/``flux``, null or non-integer ids, array columns of
        the wrong type, malformed wavelength metadata.
    """
    return read_in_ranges(partition_rows, lambda: path, row_ranges, read_rows)


FORMAT = CatalogueFormat(NAME, identify, read, passthrough, row_ranges, read_rows)
