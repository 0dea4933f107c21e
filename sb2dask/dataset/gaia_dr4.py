"""Writing spectra as Gaia DR4 RVS epoch spectra, in the archive's DataLink layouts and formats.

What the archive delivers for ``rvs_epoch_spectrum`` (DataLink ``retrieval_type=
'EPOCH_SPECTRUM_RVS'``) is pre-release; these files follow the public facts (``docs/dr4.md``)
and the layouts the archive uses for DR3 DataLink products (astroquery ``data_structure``):

``DATAMODEL_STANDARD`` (one row per pixel, one file per source)
    ``csv``: every column on every pixel row (``source_id``, ``solution_id``, ``transit_id``,
    ``obs_time_rv``, ``wavelength`` [nm], ``flux``, ``flux_error``, ``normalisation_method``,
    ``combined_ccds``, ``deblended_ccds``), empty fields for NaN, as the DR3 DataLink CSV;
    ``ecsv``: ``source_id``/``solution_id`` in the header's ``meta``, the rest as columns;
    ``votable``: ``source_id`` a PARAM of the RESOURCE, one TABLE per transit whose PARAMs give
    ``transit_id`` and the per-transit values; ``fits``: one BINTABLE HDU per transit, the
    identifiers as header keywords (``SOURCEID`` truncated as the archive writes it,
    ``HIERARCH`` for the longer names).
``DATAMODEL_GAIA`` (one row per transit, arrays, one file for all sources)
    ``csv``: arrays as ``"[...]"`` text; ``ecsv``: astropy's ECSV, arrays as JSON strings with a
    ``float32[961]`` subtype; ``votable``: BINARY2, ``arraysize="961"``; ``fits``: ``961E``
    vector columns. A ``wavelength`` array column is included.

The grid is :data:`sb2dask.gaia.DR4_EPOCH_WAVE_VAC_NM`. Mock catalogues and the tests write these
files; nothing in the inference path does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from ..gaia import DR4_EPOCH_N_PIX, DR4_EPOCH_WAVE_VAC_NM

__all__ = ["STRUCTURES", "FORMATS", "EXTENSIONS", "SCALAR_COLUMNS", "write_dr4_epoch",
           "dr4_file_name", "resample_to_dr4"]

#: astroquery's ``data_structure`` values: one row per pixel, or arrays per row.
STRUCTURES = ("DATAMODEL_STANDARD", "DATAMODEL_GAIA")
#: astroquery's ``format`` values written here.
FORMATS = ("csv", "ecsv", "votable", "fits")
EXTENSIONS = {"csv": ".csv", "ecsv": ".ecsv", "votable": ".xml", "fits": ".fits"}
#: Per-transit scalar columns, in the order written (pre-release data model).
SCALAR_COLUMNS = ("source_id", "solution_id", "transit_id", "obs_time_rv",
                  "normalisation_method", "combined_ccds", "deblended_ccds")
_INT_COLUMNS = ("source_id", "solution_id", "transit_id", "normalisation_method",
                "combined_ccds", "deblended_ccds")
_UNITS = {"wavelength": "nm", "obs_time_rv": "d"}
_DESCRIPTIONS = {
    "source_id": "Unique source identifier (unique within a particular Data Release)",
    "solution_id": "Solution Identifier",
    "transit_id": "Transit unique identifier",
    "obs_time_rv": "Observing time of the transit (BJD(TCB) - 2455197.5)",
    "wavelength": "Wavelength (vacuum, solar barycentric frame)",
    "flux": "Flux of the epoch spectrum",
    "flux_error": "Uncertainty of the flux (NaN where all CCDs were masked)",
    "normalisation_method": "Normalisation method (0: none, double-lined; 3: median; 4: "
                            "negative median, none)",
    "combined_ccds": "Number of combined CCD spectra",
    "deblended_ccds": "Number of deblended CCD spectra",
}


def resample_to_dr4(wave_vac_nm: np.ndarray, flux: np.ndarray,
                    flux_error: np.ndarray | None = None, rv_kms=0.0
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Spectra on any vacuum grid onto the DR4 epoch grid, optionally Doppler-shifted.

    Linear interpolation of the flux and of the squared errors (their root is returned), as
    DPAC combines CCD spectra onto the grid; the pixel at λ sees the input at λ / D(v), so a
    rest-frame spectrum comes out as observed at velocity ``rv_kms`` (e.g. a real DR3 mean
    spectrum placed in DR4's barycentric frame). Pixels outside the input grid, or next to a
    NaN input pixel, are NaN.

    Parameters
    ----------
    wave_vac_nm : ndarray (n_in,)
        Increasing vacuum wavelengths [nm] of the input (e.g. the DR3 grid).
    flux : ndarray (n, n_in) or (n_in,)
    flux_error : like ``flux``, optional
    rv_kms : float or ndarray (n,)
        Radial velocity [km/s] to put each spectrum at (relativistic Doppler factor).

    Returns
    -------
    flux, flux_error : float32 ndarrays (n, 961) (flux_error None when not given)
    """
    from ..observe.rv_bulk import velocity_to_factor

    wave = np.asarray(wave_vac_nm, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    n = flux.shape[0]
    factor = velocity_to_factor(np.broadcast_to(np.asarray(rv_kms, dtype=np.float64), (n,)))
    x = DR4_EPOCH_WAVE_VAC_NM[None, :] / factor[:, None]
    pos = np.interp(x.ravel(), wave, np.arange(wave.size, dtype=np.float64)).reshape(x.shape)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, wave.size - 2)
    t = pos - i0
    rows = np.arange(n)[:, None]
    outside = (x < wave[0]) | (x > wave[-1])

    def interp(values):
        out = (1.0 - t) * values[rows, i0] + t * values[rows, i0 + 1]
        return np.where(outside, np.nan, out)

    err = None
    if flux_error is not None:
        e = np.atleast_2d(np.asarray(flux_error, dtype=np.float64))
        err = np.sqrt(interp(e ** 2)).astype(np.float32)
    return interp(flux).astype(np.float32), err


def dr4_file_name(structure: str, fmt: str, key: str | int) -> str:
    """``EPOCH_SPECTRUM_RVS-Gaia_DR4_<key>.<ext>`` (the archive's product name, underscores for
    its spaces); ``key`` is the source_id (one file per source) or a file number."""
    return f"EPOCH_SPECTRUM_RVS-Gaia_DR4_{key}{EXTENSIONS[fmt]}"


def _check(transits: pd.DataFrame) -> None:
    missing = [c for c in ("source_id", "transit_id", "flux") if c not in transits.columns]
    if missing:
        raise ValueError(f"write_dr4_epoch: the transits have no {missing} column(s)")
    for i, f in enumerate(transits["flux"]):
        if np.shape(f) != (DR4_EPOCH_N_PIX,):
            raise ValueError(f"write_dr4_epoch: row {i} has {np.size(f)} pixels; the DR4 epoch "
                             f"grid has {DR4_EPOCH_N_PIX}")


def _scalars(transits: pd.DataFrame) -> dict[str, np.ndarray]:
    n = len(transits)
    out = {}
    for name in SCALAR_COLUMNS:
        if name in transits.columns:
            out[name] = transits[name].to_numpy()
        elif name == "solution_id":
            out[name] = np.full(n, 375316653866487564, np.int64)
    return out


def _pixel_table(transits: pd.DataFrame):
    """The per-pixel astropy Table of all transits (columns only, no metadata)."""
    from astropy.table import Table

    n = len(transits)
    flux = np.stack(list(transits["flux"])).astype(np.float32)
    cols = {k: np.repeat(v, DR4_EPOCH_N_PIX) for k, v in _scalars(transits).items()}
    cols["wavelength"] = np.tile(DR4_EPOCH_WAVE_VAC_NM, n)
    cols["flux"] = flux.ravel()
    if "flux_error" in transits.columns:
        cols["flux_error"] = np.stack(list(transits["flux_error"])).astype(np.float32).ravel()
    order = ["source_id", "solution_id", "transit_id", "obs_time_rv", "wavelength", "flux",
             "flux_error", "normalisation_method", "combined_ccds", "deblended_ccds"]
    t = Table({k: cols[k] for k in order if k in cols})
    _describe(t)
    return t


def _array_table(transits: pd.DataFrame):
    """The arrays-per-row astropy Table (one row per transit, a wavelength array column)."""
    from astropy.table import Table

    n = len(transits)
    cols = dict(_scalars(transits))
    cols["wavelength"] = np.tile(DR4_EPOCH_WAVE_VAC_NM, (n, 1))
    cols["flux"] = np.stack(list(transits["flux"])).astype(np.float32)
    if "flux_error" in transits.columns:
        cols["flux_error"] = np.stack(list(transits["flux_error"])).astype(np.float32)
    order = ["source_id", "solution_id", "transit_id", "obs_time_rv", "wavelength", "flux",
             "flux_error", "normalisation_method", "combined_ccds", "deblended_ccds"]
    t = Table({k: cols[k] for k in order if k in cols})
    _describe(t)
    return t


def _describe(t) -> None:
    for name in t.colnames:
        t[name].description = _DESCRIPTIONS.get(name)
        if name in _UNITS:
            t[name].unit = _UNITS[name]


def _cell_text(values: np.ndarray) -> np.ndarray:
    """Numbers as CSV text, NaN as an empty field (the DataLink CSV's missing value)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        # as many digits as the type holds: obs_time_rv needs float64's
        out = np.char.mod("%.17g" if values.dtype == np.float64 else "%.9g", values
                          ).astype(object)
        out[np.isnan(values)] = ""
        return out
    return values.astype(str).astype(object)


def _array_text(matrix: np.ndarray) -> list[str]:
    rows = []
    for r in np.asarray(matrix, dtype=np.float64):
        rows.append('"[' + ",".join("NaN" if np.isnan(x) else f"{x:.9g}" for x in r) + ']"')
    return rows


def _write_csv(tmp: Path, t, arrays: bool) -> None:
    cols = []
    for name in t.colnames:
        col = np.asarray(t[name])
        cols.append(_array_text(col) if col.ndim == 2 else _cell_text(col))
    lines = [",".join(t.colnames)] + [",".join(map(str, row)) for row in zip(*cols)]
    Path(tmp).write_text("\n".join(lines) + "\n")


def _write_fits_standard(tmp: Path, transits: pd.DataFrame) -> None:
    """One BINTABLE per transit, identifiers as header keywords."""
    from astropy.io import fits
    from astropy.table import Table

    hdus = [fits.PrimaryHDU()]
    scalars = _scalars(transits)
    for i in range(len(transits)):
        t = Table({"wavelength": DR4_EPOCH_WAVE_VAC_NM,
                   "flux": np.asarray(transits["flux"].iloc[i], np.float32)})
        if "flux_error" in transits.columns:
            t["flux_error"] = np.asarray(transits["flux_error"].iloc[i], np.float32)
        _describe(t)
        hdu = fits.table_to_hdu(t)
        hdu.header["SOURCEID"] = (str(scalars["source_id"][i]), _DESCRIPTIONS["source_id"])
        for name in SCALAR_COLUMNS[2:]:
            if name in scalars:
                value = scalars[name][i]
                value = int(value) if name in _INT_COLUMNS else float(value)
                hdu.header[f"HIERARCH {name.upper()}"] = value
        hdus.append(hdu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HIERARCH cards are announced with a warning
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def _write_votable_standard(tmp: Path, transits: pd.DataFrame) -> None:
    """One TABLE per transit in one RESOURCE; source_id a PARAM of the RESOURCE, the
    per-transit values PARAMs of each TABLE."""
    from astropy.io.votable.tree import Field, Param, Resource, TableElement, VOTableFile

    vot = VOTableFile()
    resource = Resource()
    vot.resources.append(resource)
    scalars = _scalars(transits)
    resource.params.append(Param(vot, name="source_id", datatype="long",
                                 value=int(scalars["source_id"][0])))
    has_err = "flux_error" in transits.columns
    for i in range(len(transits)):
        table = TableElement(vot)
        resource.tables.append(table)
        for name in SCALAR_COLUMNS[2:]:
            if name in scalars:
                value = scalars[name][i]
                integer = name in _INT_COLUMNS
                table.params.append(Param(vot, name=name, datatype="long" if integer
                                          else "double", unit=_UNITS.get(name),
                                          value=int(value) if integer else float(value)))
        table.fields.extend([Field(vot, name="wavelength", datatype="double", unit="nm"),
                             Field(vot, name="flux", datatype="float")]
                            + ([Field(vot, name="flux_error", datatype="float")]
                               if has_err else []))
        table.create_arrays(DR4_EPOCH_N_PIX)
        table.array["wavelength"] = DR4_EPOCH_WAVE_VAC_NM
        table.array["flux"] = np.asarray(transits["flux"].iloc[i], np.float32)
        if has_err:
            table.array["flux_error"] = np.asarray(transits["flux_error"].iloc[i], np.float32)
    vot.to_xml(str(tmp), tabledata_format="binary2")


def write_dr4_epoch(path: str | Path, transits: pd.DataFrame, *, structure: str,
                    fmt: str) -> Path:
    """Write transits as a DR4 ``EPOCH_SPECTRUM_RVS`` DataLink file.

    Parameters
    ----------
    path : str or Path
    transits : pandas.DataFrame
        One row per transit: ``source_id``, ``transit_id``, ``flux`` (961-pixel arrays on
        :data:`sb2dask.gaia.DR4_EPOCH_WAVE_VAC_NM`), optional ``flux_error``, ``obs_time_rv``,
        ``normalisation_method``, ``combined_ccds``, ``deblended_ccds``, ``solution_id``. For
        ``DATAMODEL_STANDARD`` in ECSV, VOTable and FITS every row must share one source_id
        (one file per source, as the archive delivers it).
    structure : one of :data:`STRUCTURES`
    fmt : one of :data:`FORMATS`

    Returns
    -------
    Path
    """
    path = Path(path)
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    _check(transits)
    standard = structure == "DATAMODEL_STANDARD"
    if standard and fmt != "csv" and transits["source_id"].nunique() > 1:
        raise ValueError("write_dr4_epoch: DATAMODEL_STANDARD files outside CSV hold one source "
                         "(its source_id is file metadata); write one file per source")
    with atomic_path(path) as tmp:
        tmp = Path(tmp)
        if fmt == "csv":
            _write_csv(tmp, _pixel_table(transits) if standard else _array_table(transits),
                       arrays=not standard)
        elif fmt == "fits" and standard:
            _write_fits_standard(tmp, transits)
        elif fmt == "votable" and standard:
            _write_votable_standard(tmp, transits)
        elif fmt == "ecsv" and standard:
            t = _pixel_table(transits)
            for name in ("source_id", "solution_id"):
                t.meta[name] = int(t[name][0])
                t.remove_column(name)
            t.write(tmp, format="ascii.ecsv", delimiter=",", overwrite=True)
        elif fmt == "ecsv":
            _array_table(transits).write(tmp, format="ascii.ecsv", delimiter=",",
                                          overwrite=True)
        elif fmt == "fits":
            _array_table(transits).write(tmp, format="fits", overwrite=True)
        else:
            _array_table(transits).write(tmp, format="votable", tabledata_format="binary2",
                                          overwrite=True)
    return path
