"""Writing spectra as Gaia bulk ECSV files (``RvsEpochSpectrum_XXXXXX-YYYYYY.csv.gz``).

The layout is the one :mod:`sb2dask.infer.readers.gaia_bulk_ecsv` reads (and documents): gzipped
ECSV, one spectrum per row, arrays as quoted JSON text on the Gaia RVS grid. Mock catalogues and
the tests write it; nothing in the inference path does.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..fileio import atomic_path
from ..gaia import (
    DR4_EPOCH_N_PIX,
    DR4_EPOCH_WAVE,
    DR4_EPOCH_WAVE_STEP_NM,
    RVS_N_PIX,
    RVS_WAVE,
    RVS_WAVE_END_NM,
    RVS_WAVE_START_NM,
    RVS_WAVE_STEP_NM,
)
from ..labels import TRUE_PREFIX

__all__ = ["write_bulk_ecsv", "format_array_strings"]

_GRID_TEXT = (f"{RVS_WAVE_START_NM:g}-{RVS_WAVE_END_NM:g} nm, step {RVS_WAVE_STEP_NM:g} nm, "
              f"{RVS_N_PIX} pixels, vacuum")
_DR4_GRID_TEXT = (f"{RVS_WAVE_START_NM:g}-{RVS_WAVE_END_NM:g} nm, step "
                  f"{DR4_EPOCH_WAVE_STEP_NM:g} nm, {DR4_EPOCH_N_PIX} pixels, vacuum, solar "
                  "barycentric frame")
#: Per-transit columns of DR4 epoch spectra written when a frame has them (ECSV datatypes).
_TRANSIT_DATATYPES = {"obs_time_rv": "float64", "normalisation_method": "int16",
                      "combined_ccds": "int16", "deblended_ccds": "int16"}
_DESCRIPTIONS = {
    "source_id": "Unique source identifier (unique within a particular Data Release)",
    "transit_id": "Transit unique identifier",
    "flux": f"Normalised RVS flux ({_GRID_TEXT})",
    "flux_error": "Uncertainty of the normalised RVS flux",
    "obs_time_rv": "Observing time of the transit (BJD(TCB) - 2455197.5 d)",
    "normalisation_method": "Normalisation method of the epoch spectrum",
    "combined_ccds": "Number of combined CCD spectra",
    "deblended_ccds": "Number of deblended CCD spectra",
}


def format_array_strings(values: np.ndarray, offsets: np.ndarray,
                         null_rows: np.ndarray | None = None) -> pa.Array:
    """Format rows of floats as JSON array text, the inverse of
    :func:`sb2dask.infer.readers.gaia_bulk_ecsv.parse_array_strings`.

    Each value is written in the shortest form that reads back to the same float32; NaN is
    written ``null`` and ±inf ``Infinity``/``-Infinity``.

    Parameters
    ----------
    values : ndarray of float32, all rows concatenated
    offsets : ndarray of int, shape (n + 1,)
    null_rows : ndarray of bool (n,), optional
        Rows to write as a null field (an empty CSV field).

    Returns
    -------
    pyarrow.StringArray, shape (n,)
    """
    values = np.asarray(values, dtype=np.float32)
    offsets = np.asarray(offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    texts = pc.cast(pa.array(values, mask=np.isnan(values)), pa.string())
    texts = pc.fill_null(texts, "null")
    if np.isinf(values).any():
        texts = pc.if_else(pc.equal(texts, "inf"), "Infinity",
                           pc.if_else(pc.equal(texts, "-inf"), "-Infinity", texts))
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), texts)
    out = pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")
    if null_rows is not None and np.any(null_rows):
        out = pc.if_else(pa.array(~np.asarray(null_rows, bool)), out, pa.scalar(None, pa.string()))
    return out




def _ragged(cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets, null_rows) of a sequence of 1-d arrays or None."""
    null_rows = np.array([c is None for c in cells], dtype=bool)
    arrays = [np.asarray(c, dtype=np.float32).ravel() if c is not None
              else np.empty(0, np.float32) for c in cells]
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
    values = np.concatenate(arrays) if arrays else np.empty(0, np.float32)
    return values, offsets, null_rows


def _ecsv_datatype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "bool"
    if dtype.kind in "iuf":
        return dtype.name
    return "string"


def _scalar_text(values: np.ndarray) -> pa.Array:
    values = np.asarray(values)
    if values.dtype.kind == "b":
        return pa.array(np.where(values, "True", "False"))
    if values.dtype.kind == "f":
        return pc.fill_null(pc.cast(pa.array(values, mask=np.isnan(values)), pa.string()), "")
    if values.dtype.kind in "iu":
        return pc.cast(pa.array(values), pa.string())
    texts = pa.array([None if v is None else str(v) for v in values], pa.string())
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(texts, '"', '""'), '"', "")
    return pc.fill_null(quoted, "")


def _yaml_entry(name: str, datatype: str, subtype: str | None, description: str | None) -> list:
    out = ["# -", f"#   name: {name}", f"#   datatype: {datatype}"]
    if subtype:
        out.append(f"#   subtype: '{subtype}'")
    if description:
        out.append(f"#   description: {json.dumps(description)}")
    return out


def write_bulk_ecsv(path: str | Path, df: pd.DataFrame, *, array_length: int | None = None,
                    compresslevel: int = 6) -> Path:
    """Write spectra in the Gaia bulk layout: gzipped ECSV, arrays as quoted JSON text.

    Columns written: ``source_id``; ``transit_id`` when any ``epoch_id`` is not -1; the DR4
    per-transit columns (``obs_time_rv``, ``normalisation_method``, ``combined_ccds``,
    ``deblended_ccds``) that hold any value other than their absent marker (NaN, -1);
    ``flux``; ``flux_error`` unless every row's is None; then every ``true_*`` column. NaN
    pixels are written ``null``; a None ``flux_error`` is an empty field.

    Parameters
    ----------
    path : str or Path
        Output file; gzip-compressed whatever its name.
    df : pandas.DataFrame
        Spectra in the reader schema (:data:`sb2dask.infer.readers.base.SPECTRUM_SCHEMA`);
        ``wave``, when present, must be one Gaia grid for all rows: the DR3 grid
        (:data:`sb2dask.gaia.RVS_WAVE`) or the DR4 epoch grid
        (:data:`sb2dask.gaia.DR4_EPOCH_WAVE`), the grids this layout can hold (readers know
        them by the array length).
        Arrays may have any length (to make malformed fixtures).
    array_length : int, optional
        Declared array length in the header subtype (``float32[2401]``); None writes the
        variable-length ``float32[null]``.
    compresslevel : int
        gzip level.

    Returns
    -------
    Path
    """
    path = Path(path)
    for name in ("source_id", "flux"):
        if name not in df.columns:
            raise ValueError(f"write_bulk_ecsv: the DataFrame has no {name!r} column")
    grid = RVS_WAVE
    if "wave" in df.columns and len(df):
        first = df["wave"].iloc[0]
        grid = DR4_EPOCH_WAVE if np.shape(first) == DR4_EPOCH_WAVE.shape else RVS_WAVE
        for i, w in enumerate(df["wave"]):
            if w is not grid and not (np.shape(w) == grid.shape
                                      and np.allclose(w, grid, rtol=0, atol=1e-6)):
                raise ValueError(f"write_bulk_ecsv: row {i} is not on the Gaia RVS grid of row 0 "
                                 "(DR3 or DR4 epoch); the bulk layout has no wavelength column")
    n = len(df)
    subtype = f"float32[{'null' if array_length is None else int(array_length)}]"
    epoch = df["epoch_id"].to_numpy(np.int64) if "epoch_id" in df.columns else None
    columns: list[tuple[str, str, str | None, object]] = [("source_id", "int64", None,
                                                           df["source_id"].to_numpy(np.int64))]
    if epoch is not None and (epoch != -1).any():
        columns.append(("transit_id", "int64", None, epoch))
    for name, datatype in _TRANSIT_DATATYPES.items():
        if name in df.columns:
            values = df[name].to_numpy(np.float64)
            if np.any(np.isfinite(values) & (values != -1)):
                columns.append((name, datatype, None, df[name].to_numpy(datatype)))
    columns.append(("flux", "string", subtype, _ragged(list(df["flux"]))))
    if "flux_error" in df.columns and df["flux_error"].notna().any():
        columns.append(("flux_error", "string", subtype, _ragged(list(df["flux_error"]))))
    for name in df.columns:
        if name.startswith(TRUE_PREFIX):
            values = df[name].to_numpy()
            columns.append((name, _ecsv_datatype(values.dtype), None, values))

    head = ["# %ECSV 1.0", "# ---", "# delimiter: ','", "# datatype:"]
    for name, datatype, sub, _ in columns:
        head += _yaml_entry(name, datatype, sub, _DESCRIPTIONS.get(name))
    grid_text = _DR4_GRID_TEXT if grid is DR4_EPOCH_WAVE else _GRID_TEXT
    head += ["# meta:", f"#   written_by: {__name__}", f"#   wavelength_grid: {grid_text}"]
    head.append(",".join(c[0] for c in columns))
    # the gzip header names the file: its final name, not the temporary one (reproducible bytes)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(path.name, mode="wb", compresslevel=compresslevel, fileobj=raw,
                          mtime=0) as fh:
        fh.write(("\n".join(head) + "\n").encode())
        for start in range(0, n, 1024):  # batches keep Arrow's 32-bit string offsets small
            stop = min(n, start + 1024)
            texts = []
            for _, _datatype, sub, data in columns:
                if sub is None:
                    texts.append(_scalar_text(data[start:stop]))
                    continue
                values, offsets, null_rows = data
                arr = format_array_strings(values[offsets[start]:offsets[stop]],
                                           offsets[start:stop + 1], null_rows[start:stop])
                quoted = pc.binary_join_element_wise('"', arr, '"', "")
                texts.append(pc.fill_null(quoted, ""))
            lines = pc.binary_join_element_wise(*texts, ",")
            lines = pc.binary_join_element_wise(lines, "", "\n")
            offsets = np.frombuffer(lines.buffers()[1], np.int32)[
                lines.offset:lines.offset + len(lines) + 1]
            fh.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
    return path
