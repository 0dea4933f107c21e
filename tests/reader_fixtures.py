"""Writers of small catalogue files for testing :mod:`sb2dask.infer.readers`.

Every fixture is generated in a temporary directory: Gaia DataLink CSVs laid out like the real
files in ``shared/data/gaia_rvs`` (one line per pixel, empty fields for missing values), Gaia bulk
ECSV files (through :func:`sb2dask.dataset.gaia_ecsv.write_bulk_ecsv`, then edited as text to
make malformed ones), Parquet, FITS binary tables and a Zarr v3 group with the layout of
``sb2dask simulate`` written with zarr directly.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits

from sb2dask.infer.readers.base import RVS_WAVE, RVS_WAVE_VAC_NM, build_partition

__all__ = ["BULK_NAME", "DATALINK_HEADER", "source_ids", "spectra_frame", "write_datalink_csv",
           "rewrite_gzip_text", "gzip_text", "write_parquet", "write_fits", "write_zarr_store",
           "SMALL_WAVE"]

#: A bulk-file name covering HEALPix level-8 pixels 0-3111, like the first DR3 RVS file.
BULK_NAME = "RvsMeanSpectrum_000000-003111.csv.gz"
DATALINK_HEADER = ("source_id,solution_id,ra,dec,wavelength,flux,flux_error,combined_transits,"
                   "combined_ccds,deblended_ccds")
#: A short air grid [Å] for the formats that carry their own wavelengths.
SMALL_WAVE = np.linspace(8470.0, 8710.0, 25)


def source_ids(n: int, healpix: tuple[int, int] = (0, 3111), seed: int = 0) -> np.ndarray:
    """Distinct Gaia-like source_ids whose HEALPix level-8 index lies in ``healpix``."""
    rng = np.random.default_rng(seed)
    hp = rng.integers(healpix[0], healpix[1] + 1, n)
    return (hp << 43) + rng.choice(1 << 30, n, replace=False).astype(np.int64)


def spectra_frame(n: int, *, seed: int = 0, wave: np.ndarray = RVS_WAVE, truth: bool = False,
                  healpix: tuple[int, int] = (0, 3111)) -> pd.DataFrame:
    """``n`` random spectra in the reader schema (flux ~ 1, errors ~ 0.01, no problems), with
    source_ids in the HEALPix level-8 range ``healpix``."""
    rng = np.random.default_rng(seed)
    flux = rng.normal(1.0, 0.05, (n, wave.size)).astype(np.float32)
    err = rng.uniform(0.005, 0.02, (n, wave.size)).astype(np.float32)
    extra = {"true_teff": rng.uniform(4000, 6500, n).astype(np.float32)} if truth else None
    return build_partition(source_id=source_ids(n, healpix, seed), epoch_id=np.full(n, -1),
                           wave=wave, flux=flux, flux_error=err, file="", row=np.arange(n),
                           read_flags=np.zeros(n), passthrough=extra)


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    return "" if np.isnan(v) else repr(float(v))


def write_datalink_csv(path: Path, source_id: int, flux, flux_error=None, *,
                       wave_nm=RVS_WAVE_VAC_NM, comments: tuple[str, ...] = (),
                       transit_id: int | None = None, append: bool = False) -> Path:
    """One spectrum as a DataLink CSV (one line per pixel); text entries are written verbatim.

    ``append`` adds the pixel lines to an existing file (for files with several spectra).
    """
    flux_error = np.full(len(flux), np.nan) if flux_error is None else flux_error
    header = DATALINK_HEADER + (",transit_id" if transit_id is not None else "")
    tail = f",{transit_id}" if transit_id is not None else ""
    lines = [] if append else [*comments, header]
    for w, f, e in zip(wave_nm, flux, flux_error):
        lines.append(f"{source_id},5950420259779346465,285.29768315022295,2.4812791005101706,"
                     f"{_cell(w)},{_cell(f)},{_cell(e)},9,27,0{tail}")
    with open(path, "a" if append else "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def gzip_text(path: Path, text: str | bytes) -> Path:
    """Write ``text`` gzip-compressed."""
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data, mtime=0))
    return path


def rewrite_gzip_text(path: Path, edit: Callable[[str], str]) -> Path:
    """Decompress ``path``, apply ``edit`` to its text and compress it back."""
    return gzip_text(path, edit(gzip.decompress(path.read_bytes()).decode()))


def _list_array(rows, fixed: bool) -> pa.Array:
    if fixed:
        block = np.stack(rows).astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), block.shape[1])
    return pa.array([None if r is None else np.asarray(r, np.float32) for r in rows],
                    type=pa.list_(pa.float32()))


def write_parquet(path: Path, df: pd.DataFrame, *, fixed: bool = False, wave: str = "meta",
                  row_group_size: int | None = None, wave_unit: str | None = None,
                  wave_medium: str | None = None) -> Path:
    """Spectra as Parquet; ``wave`` is ``"row"`` (a list column), ``"meta"`` (the
    ``sb2dask.wave`` metadata entry, from the first row) or ``"none"``."""
    cols = {"source_id": pa.array(df["source_id"].to_numpy(np.int64)),
            "flux": _list_array(list(df["flux"]), fixed)}
    if df["flux_error"].notna().any():
        cols["flux_error"] = _list_array(list(df["flux_error"]), fixed)
    if (df["epoch_id"] != -1).any():
        cols["transit_id"] = pa.array(df["epoch_id"].to_numpy(np.int64))
    if wave == "row":
        cols["wave"] = _list_array(list(df["wave"]), False)
    for name in df.columns:
        if name.startswith("true_"):
            cols[name] = pa.array(df[name].to_numpy())
    meta = {}
    if wave == "meta":
        meta["sb2dask.wave"] = json.dumps(np.asarray(df["wave"].iloc[0]).tolist())
    if wave_unit:
        meta["sb2dask.wave_unit"] = wave_unit
    if wave_medium:
        meta["sb2dask.wave_medium"] = wave_medium
    table = pa.table(cols).replace_schema_metadata(meta or None)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_fits(path: Path, df: pd.DataFrame, *, wave: str = "keywords",
               upper: bool = True, extra_columns: tuple[fits.Column, ...] = ()) -> Path:
    """Spectra as a FITS binary table; ``wave`` is ``"keywords"`` (CRVAL1/CDELT1 on the first
    row's grid, which must be linear), ``"extension"`` (a WAVE image HDU), ``"column"`` (a
    per-row WAVE column) or ``"none"``. ``upper=False`` writes lower-case column names."""
    name = (lambda s: s.upper()) if upper else (lambda s: s.lower())
    flux = np.stack(list(df["flux"])).astype(np.float32)
    n_pix = flux.shape[1]
    cols = [fits.Column(name("source_id"), "K", array=df["source_id"].to_numpy(np.int64)),
            fits.Column(name("flux"), f"{n_pix}E", array=flux)]
    if df["flux_error"].notna().any():
        cols.append(fits.Column(name("flux_error"), f"{n_pix}E",
                                array=np.stack(list(df["flux_error"])).astype(np.float32)))
    if (df["epoch_id"] != -1).any():
        cols.append(fits.Column(name("epoch_id"), "K", array=df["epoch_id"].to_numpy(np.int64)))
    w0 = np.asarray(df["wave"].iloc[0], dtype=np.float64)
    if wave == "column":
        cols.append(fits.Column(name("wave"), f"{w0.size}D", unit="Angstrom",
                                array=np.stack(list(df["wave"]))))
    for col in df.columns:
        if col.startswith("true_"):
            values = df[col].to_numpy()
            cols.append(fits.Column(name(col), {"f": "E", "i": "K", "b": "L"}[values.dtype.kind]
                                    if values.dtype != np.float64 else "D", array=values))
    cols.extend(extra_columns)
    table = fits.BinTableHDU.from_columns(cols, name="SPECTRA")
    hdus = [fits.PrimaryHDU(), table]
    if wave == "keywords":
        table.header["CRVAL1"] = w0[0]
        table.header["CDELT1"] = (w0[-1] - w0[0]) / (w0.size - 1)
        table.header["CRPIX1"] = 1.0
        table.header["CUNIT1"] = "Angstrom"
        table.header["CTYPE1"] = "AWAV"
    elif wave == "extension":
        ext = fits.ImageHDU(w0 / 10.0, name="WAVE")
        ext.header["BUNIT"] = "nm"
        hdus.append(ext)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_zarr_store(path: Path, n: int = 10, chunk: int = 4, *, wave: np.ndarray = SMALL_WAVE,
                     done: tuple[int, ...] | None = None, seed: int = 0,
                     source_id_label: np.ndarray | None = None) -> Path:
    """A tiny store with the layout of ``sb2dask simulate``: flux, wave, labels/<name> of shape
    (n,) and (n, 2), root attributes ``sb2dask``; ``done`` lists the chunks that get a
    completion marker (None: no marker folder at all)."""
    import zarr

    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w",
                           attributes={"sb2dask": {"format_version": 1, "n": n, "chunk": chunk}})
    root.create_array("flux", shape=(n, wave.size), chunks=(chunk, wave.size), dtype="f4")[...] = \
        rng.normal(1.0, 0.05, (n, wave.size)).astype(np.float32)
    root.create_array("wave", shape=wave.shape, dtype="f8",
                      attributes={"units": "Angstrom", "description": "air wavelength"})[...] = wave
    labels = root.create_group("labels")
    teff = np.sort(rng.uniform(3500, 7000, (n, 2)), axis=1).astype(np.float32)
    labels.create_array("teff", shape=(n, 2), chunks=(chunk, 2), dtype="f4")[...] = teff
    labels.create_array("flux_ratio", shape=(n,), chunks=(chunk,), dtype="f4")[...] = \
        rng.uniform(0, 1, n).astype(np.float32)
    labels.create_array("is_binary", shape=(n,), chunks=(chunk,), dtype="bool")[...] = \
        np.arange(n) % 2 == 0
    if source_id_label is not None:
        labels.create_array("source_id", shape=(n,), chunks=(chunk,), dtype="i8")[...] = \
            source_id_label
    if done is not None:
        (path / ".sb2dask-done").mkdir()
        for c in done:
            (path / ".sb2dask-done" / f"chunk-{c:06d}").write_text("sha256")
    return path
