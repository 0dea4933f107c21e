"""Our per-transit results against DPAC's double-lined epoch parameters (``sb2dask compare-dpac``).

Gaia DR4 publishes, through DataLink (``retrieval_type='EPOCH_PARAMETERS_RVS_DOUBLE'``), the table
``rvs_epoch_parameters_double``: for each of 787 312 transits in which DPAC's pipeline found two
sets of lines, the radial velocity and its error of the primary and the secondary with validity
flags, ``is_reordered``, the template Teff, log g and [Fe/H] and ``vbroad`` of each component,
and ``rad_vel_bary_corr``. It is the first real-data reference for single-epoch SB2
characterisation. This module joins it with the epoch table of ``sb2dask infer`` on
``(source_id, transit_id = epoch_id)`` and reports the agreement.

Column names are pre-release. :data:`DPAC_COLUMNS` maps each quantity (a canonical name) to the
archive names it may have, matched without regard to case; a user's mapping (``--columns FILE``,
YAML or JSON ``{canonical: column}``) takes precedence. The reader takes the DataLink formats,
each identified by its content (gzip allowed): CSV, ECSV, VOTable, FITS (through
``astropy.table``), and Parquet.

Component order. Ours: component 1 is the cooler star. DPAC's: primary and secondary, with
``is_reordered`` when its pipeline swapped them; the meaning of the swap is not needed here:
each transit's DPAC components are put in our order by their template Teff (the cooler becomes
1); where the two template Teffs are equal or missing, by the pairing with our per-transit
component radial velocities (``rv_1``, ``rv_2``, when the epoch table has them) that minimises
the squared differences; otherwise the primary is taken as the hotter star (the brighter, on
the main sequence). The report counts each path and cross-tabulates "primary is the cooler" with
``is_reordered``, so that its meaning can be checked on the real table.

Frames. DR4 epoch spectra are in the solar barycentric frame, and so are the velocities measured
on them (our ``rv_bulk`` and per-component RVs); the DPAC epoch RVs are taken as barycentric
too. ``add_bary_corr`` (``--add-bary-corr``) adds ``rad_vel_bary_corr`` to the DPAC RVs for a
table whose velocities are not yet corrected (v_bary = v + rad_vel_bary_corr).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path, atomic_write_json, atomic_write_text
from ..labels import PARAMETERS

__all__ = ["DPAC_COLUMNS", "REQUIRED", "OUTLIER_LIMITS", "COMPARED", "DPACFileError",
           "identify_table_format", "load_column_map", "read_dpac", "read_ours",
           "match_transits", "agreement", "compare_dpac", "mock_dpac_table", "write_mock_dpac"]

_COMPONENTS = ("primary", "secondary")


def _candidates() -> dict[str, tuple[str, ...]]:
    out = {"source_id": ("source_id",), "transit_id": ("transit_id", "epoch_id")}
    patterns = {
        "rv_{c}": ("radial_velocity_{c}", "rv_{c}", "{c}_radial_velocity"),
        "rv_error_{c}": ("radial_velocity_error_{c}", "radial_velocity_{c}_error",
                         "rv_error_{c}", "rv_{c}_error"),
        "rv_valid_{c}": ("radial_velocity_valid_{c}", "radial_velocity_{c}_valid",
                         "rv_valid_{c}", "rv_{c}_valid", "valid_{c}", "flag_radial_velocity_{c}"),
        "teff_{c}": ("rv_template_teff_{c}", "template_teff_{c}", "teff_{c}"),
        "logg_{c}": ("rv_template_logg_{c}", "template_logg_{c}", "logg_{c}"),
        "feh_{c}": ("rv_template_fe_h_{c}", "template_fe_h_{c}", "rv_template_feh_{c}",
                    "fe_h_{c}", "feh_{c}"),
        "vbroad_{c}": ("vbroad_{c}", "v_broad_{c}"),
    }
    for c in _COMPONENTS:
        for key, names in patterns.items():
            out[key.format(c=c)] = tuple(n.format(c=c) for n in names)
    out["is_reordered"] = ("is_reordered", "reordered")
    out["rad_vel_bary_corr"] = ("rad_vel_bary_corr", "radial_velocity_bary_corr", "bary_corr")
    out["obs_time_rv"] = ("obs_time_rv", "rv_obs_time", "obs_time")
    return out


#: Canonical name -> archive column names it may have (pre-release; first match wins, any case).
#: ``_primary``/``_secondary`` name DPAC's components before they are put in our order.
DPAC_COLUMNS: dict[str, tuple[str, ...]] = _candidates()

#: Columns without which a DPAC file cannot be joined.
REQUIRED = ("source_id", "transit_id")

#: Quantities compared: name -> (our column per component, DPAC canonical name per component).
COMPARED = {"rv": ("rv_{i}", "rv_{c}"), "teff": ("teff_{i}", "teff_{c}"),
            "logg": ("logg_{i}", "logg_{c}"), "feh": ("feh_{i}", "feh_{c}"),
            "vbroad": ("vsini_{i}", "vbroad_{c}")}

#: |ours − DPAC| beyond which a matched transit counts as an outlier, per quantity (km/s, K, dex).
OUTLIER_LIMITS = {"rv": 10.0, "rv_bulk": 10.0, "teff": 500.0, "logg": 0.5, "feh": 0.5,
                  "vbroad": 10.0}

#: Units the DPAC columns are converted to when the file declares units.
_UNITS = {"rv": "km / s", "rv_error": "km / s", "vbroad": "km / s", "teff": "K",
          "rad_vel_bary_corr": "km / s"}

#: Bins of DPAC's |RV_primary − RV_secondary| [km/s] for the detection fractions.
SEPARATION_BINS = (0.0, 20.0, 50.0, 100.0, np.inf)


class DPACFileError(ValueError):
    """A DPAC table that cannot be read or joined; the message names the file."""

    def __init__(self, path, message: str):
        super().__init__(f"{path}: {message}")


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(n)
    if head[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            head = fh.read(n)
    return head


def identify_table_format(path: str | Path) -> str:
    """``"ecsv"``, ``"fits"``, ``"votable"``, ``"parquet"`` or ``"csv"`` from the (decompressed)
    first bytes of ``path``. Raises :class:`DPACFileError` for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise DPACFileError(path, "no such file")
    head = _head(path)
    if not head.strip():
        raise DPACFileError(path, "the file is empty")
    if head.startswith(b"# %ECSV"):
        return "ecsv"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip().lower()
    if text.startswith(b"<?xml") or text.startswith(b"<votable"):
        return "votable"
    return "csv"


def load_column_map(path: str | Path | None) -> dict[str, str]:
    """A user's ``{canonical: column}`` mapping from a YAML or JSON file (``None``: empty).
    Raises ValueError naming unknown canonical names."""
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}  # JSON is YAML
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of canonical names to column names")
    unknown = sorted(set(data) - set(DPAC_COLUMNS))
    if unknown:
        raise ValueError(f"{path}: unknown canonical names {unknown}; known: "
                         f"{sorted(DPAC_COLUMNS)}")
    return {str(k): str(v) for k, v in data.items()}


def _read_table(path: Path):
    """An astropy Table of ``path`` in its identified format."""
    from astropy.table import Table

    fmt = identify_table_format(path)
    if fmt == "parquet":
        return Table.from_pandas(pd.read_parquet(path))
    astropy_format = {"ecsv": "ascii.ecsv", "fits": "fits", "votable": "votable",
                      "csv": "ascii.csv"}[fmt]
    try:
        return Table.read(path, format=astropy_format)
    except Exception as exc:  # astropy raises many types for malformed files
        raise DPACFileError(path, f"cannot be read as {fmt.upper()} ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None


def _column(table, name: str, canonical: str, path: Path) -> np.ndarray:
    """A column as float64 (masked → NaN; flags as 1/0/NaN), converted to the units of
    :data:`_UNITS` when the file declares units."""
    col = table[name]
    if canonical.startswith(("rv_valid", "is_reordered")):
        return _flags(col, path, name)
    unit = _UNITS.get(canonical.removesuffix("_primary").removesuffix("_secondary"))
    values = col
    if unit is not None and getattr(col, "unit", None) is not None:
        try:
            values = col.quantity.to_value(unit)
        except Exception:
            raise DPACFileError(path, f"column {name!r} has unit {col.unit}, expected one "
                                f"convertible to {unit}") from None
    try:
        return np.ma.filled(np.ma.asarray(values).astype(np.float64), np.nan)
    except (TypeError, ValueError):
        raise DPACFileError(path, f"column {name!r}: expected numbers") from None


_TRUE, _FALSE, _EMPTY = ("true", "t", "1", "yes"), ("false", "f", "0", "no"), ("", "nan", "null")


def _flags(col, path: Path, name: str) -> np.ndarray:
    """A flag column as float: 1 true, 0 false, NaN missing; booleans, numbers (non-zero is
    true) or text (true/false, t/f, 1/0, yes/no)."""
    data = np.ma.asarray(col)
    mask = np.ma.getmaskarray(data)
    raw = np.asarray(data.data)
    if raw.dtype.kind in "biuf":
        v = raw.astype(np.float64)
        out = np.where(np.isfinite(v), (v != 0).astype(np.float64), np.nan)
    else:
        text = np.char.lower(np.char.strip(raw.astype(str)))
        out = np.full(len(text), np.nan)
        out[np.isin(text, _TRUE)] = 1.0
        out[np.isin(text, _FALSE)] = 0.0
        bad = ~np.isin(text, _TRUE + _FALSE + _EMPTY) & ~mask
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DPACFileError(path, f"column {name!r}, row {i}: expected a flag "
                                f"(true/false or 1/0), got {raw[i]!r}")
    out[mask] = np.nan
    return out


def _resolve_names(columns: list[str], column_map: dict[str, str],
                   path: Path) -> dict[str, str]:
    """canonical -> the file's column, from the user's map first, then :data:`DPAC_COLUMNS`."""
    lower = {c.lower(): c for c in columns}
    found = {}
    for canonical, candidates in DPAC_COLUMNS.items():
        if canonical in column_map:
            name = column_map[canonical]
            if name not in columns and name.lower() not in lower:
                raise DPACFileError(path, f"the column map names {name!r} for {canonical}, "
                                    f"which the file does not have (it has {columns})")
            found[canonical] = name if name in columns else lower[name.lower()]
            continue
        for cand in candidates:
            if cand.lower() in lower:
                found[canonical] = lower[cand.lower()]
                break
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        raise DPACFileError(path, f"no column for {missing} (tried "
                            f"{[DPAC_COLUMNS[c] for c in missing]}; the file has {columns}); "
                            "give the names with --columns FILE")
    return found


def read_dpac(paths, column_map: dict[str, str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The DPAC tables of ``paths`` with canonical column names.

    Returns
    -------
    table : pandas.DataFrame
        ``source_id``, ``transit_id`` (int64), the canonical columns found (float64; flags as
        1/0/NaN) and ``dpac_file``; duplicated ``(source_id, transit_id)`` keep their first row.
    info : dict
        ``columns`` (canonical -> column, per file), ``missing`` (canonical names no file had),
        ``rows`` and ``duplicates``.
    """
    column_map = column_map or {}
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("no DPAC files given")
    frames, used = [], {}
    for path in paths:
        table = _read_table(path)
        names = _resolve_names(list(table.colnames), column_map, path)
        used[str(path)] = names
        cols = {}
        for canonical, name in names.items():
            if canonical in REQUIRED:
                col = np.ma.asarray(table[name])
                if np.ma.is_masked(col):
                    row = int(np.flatnonzero(np.ma.getmaskarray(col))[0])
                    raise DPACFileError(path, f"row {row}: {name} is empty")
                try:
                    cols[canonical] = np.asarray(col).astype(np.int64)
                except (TypeError, ValueError):
                    raise DPACFileError(path, f"column {name!r}: expected integers") from None
            else:
                cols[canonical] = _column(table, name, canonical, path)
        frame = pd.DataFrame(cols)
        frame["dpac_file"] = path.name
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    for canonical in DPAC_COLUMNS:
        if canonical not in table:
            table[canonical] = np.nan
    dup = table.duplicated(["source_id", "transit_id"])
    missing = [c for c in DPAC_COLUMNS if not any(c in u for u in used.values())]
    info = dict(columns=used, missing=missing, rows=len(table), duplicates=int(dup.sum()))
    return table[~dup].reset_index(drop=True), info


#: Columns of the epoch table the comparison reads (optional ones when present).
_OURS = (["source_id", "epoch_id", "usable", "p_binary", "rv_bulk"]
         + [f"{p}_{i}" for p in PARAMETERS for i in (1, 2)])
_OURS_OPTIONAL = ["rv_1", "rv_2", "rv_1_err", "rv_2_err"]


def read_ours(path: str | Path) -> pd.DataFrame:
    """The columns of our epoch table (``sb2dask infer --out``, a Parquet dataset or file) that
    the comparison needs."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected the epoch table "
                                "written by sb2dask infer --out)")
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no part-*.parquet files (expected the epoch table written by "
                         "sb2dask infer --out)")
    names = pq.read_schema(files[0]).names
    missing = [c for c in _OURS if c not in names]
    if missing:
        raise ValueError(f"{files[0]}: not an sb2dask epoch table (no columns {missing})")
    cols = _OURS + [c for c in _OURS_OPTIONAL if c in names]
    ours = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    # the schema always has the evidence columns; a run without `infer --fit` leaves them NaN
    empty = [c for c in _OURS_OPTIONAL if c in ours and not np.isfinite(ours[c]).any()]
    return ours.drop(columns=empty)


def _ordering(m: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Whether DPAC's primary is our component 1 (the cooler), and by which path it was
    decided (``teff``, ``rv`` or ``default``), per matched transit."""
    tp, ts = m["teff_primary"].to_numpy(float), m["teff_secondary"].to_numpy(float)
    by_teff = np.isfinite(tp) & np.isfinite(ts) & (tp != ts)
    primary_cooler = np.where(by_teff, tp < ts, False)
    method = np.where(by_teff, "teff", "default").astype(object)
    if "rv_1" in m and "rv_2" in m:
        o1, o2 = m["rv_1"].to_numpy(float), m["rv_2"].to_numpy(float)
        vp, vs = m["rv_primary"].to_numpy(float), m["rv_secondary"].to_numpy(float)
        straight = (o1 - vp) ** 2 + (o2 - vs) ** 2
        crossed = (o1 - vs) ** 2 + (o2 - vp) ** 2
        by_rv = ~by_teff & np.isfinite(straight) & np.isfinite(crossed) & (straight != crossed)
        primary_cooler = np.where(by_rv, straight < crossed, primary_cooler)
        method = np.where(by_rv, "rv", method)
    return primary_cooler, method


def match_transits(ours: pd.DataFrame, dpac: pd.DataFrame,
                   add_bary_corr: bool = False) -> tuple[pd.DataFrame, dict]:
    """Join on ``(source_id, transit_id = epoch_id)`` and put DPAC's components in our order.

    Returns the matched rows (our columns, then ``dpac_<quantity>_<1|2>`` for our component 1
    (cooler) and 2, ``dpac_rv_primary``, ``primary_is_cooler``, ``order_method``,
    ``is_reordered``, ``rv_separation_dpac``) and the counts of the join.
    """
    d = dpac.copy()
    if add_bary_corr:
        corr = np.nan_to_num(d["rad_vel_bary_corr"].to_numpy(float))
        for c in _COMPONENTS:
            d[f"rv_{c}"] = d[f"rv_{c}"] + corr
    m = ours.merge(d, left_on=["source_id", "epoch_id"], right_on=["source_id", "transit_id"],
                   how="inner", validate="1:1")
    primary_cooler, method = _ordering(m)
    out = m[[c for c in ours.columns]].copy()
    first = np.where(primary_cooler, "primary", "secondary")
    for q in ("rv", "rv_error", "rv_valid", "teff", "logg", "feh", "vbroad"):
        p, s = m[f"{q}_primary"].to_numpy(float), m[f"{q}_secondary"].to_numpy(float)
        out[f"dpac_{q}_1"] = np.where(first == "primary", p, s)
        out[f"dpac_{q}_2"] = np.where(first == "primary", s, p)
    out["dpac_rv_primary"] = m["rv_primary"].to_numpy(float)
    out["dpac_rv_valid_primary"] = m["rv_valid_primary"].to_numpy(float)
    out["rv_separation_dpac"] = np.abs(m["rv_primary"] - m["rv_secondary"]).to_numpy(float)
    out["primary_is_cooler"] = primary_cooler
    out["order_method"] = method.astype(str)
    out["is_reordered"] = m["is_reordered"].to_numpy(float)
    out["dpac_file"] = m["dpac_file"].to_numpy()
    keys_ours = pd.MultiIndex.from_frame(ours[["source_id", "epoch_id"]])
    keys_dpac = pd.MultiIndex.from_frame(dpac[["source_id", "transit_id"]])
    counts = dict(ours=len(ours), dpac=len(dpac), matched=len(out),
                  matched_usable=int(out["usable"].sum()),
                  ours_only=int((~keys_ours.isin(keys_dpac)).sum()),
                  dpac_only=int((~keys_dpac.isin(keys_ours)).sum()))
    return out, counts


def _robust(diff: np.ndarray, limit: float) -> dict:
    """n, median offset, robust scatter (1.4826 × MAD) and outlier fraction (|diff| > limit)."""
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return dict(n=0, median_offset=None, robust_scatter=None, outlier_fraction=None,
                    outlier_limit=limit)
    med = float(np.median(diff))
    return dict(n=int(diff.size), median_offset=med,
                robust_scatter=float(1.4826 * np.median(np.abs(diff - med))),
                outlier_fraction=float(np.mean(np.abs(diff) > limit)), outlier_limit=limit)


def _valid(m: pd.DataFrame, column: str) -> np.ndarray:
    """DPAC's validity flag as a mask: a missing flag (NaN) does not invalidate."""
    v = m[column].to_numpy(float)
    return ~(v == 0.0)


def agreement(matched: pd.DataFrame, limits: dict | None = None) -> dict:
    """Per quantity and component: ours − DPAC over matched usable transits (RVs only where
    DPAC flags them valid). Keys ``rv_1`` ... ``vbroad_2`` and ``rv_bulk`` (our composite
    velocity against DPAC's primary); quantities we do not have are left out."""
    limits = {**OUTLIER_LIMITS, **(limits or {})}
    m = matched[matched["usable"].to_numpy(bool)]
    out = {}
    for q, (ours_fmt, _) in COMPARED.items():
        for i in (1, 2):
            col = ours_fmt.format(i=i)
            if col not in m:
                continue
            diff = m[col].to_numpy(float) - m[f"dpac_{q}_{i}"].to_numpy(float)
            if q == "rv":
                diff = np.where(_valid(m, f"dpac_rv_valid_{i}"), diff, np.nan)
            out[f"{q}_{i}"] = _robust(diff, limits[q])
    if np.isfinite(m["rv_bulk"].to_numpy(float)).any():
        diff = m["rv_bulk"].to_numpy(float) - m["dpac_rv_primary"].to_numpy(float)
        diff = np.where(_valid(m, "dpac_rv_valid_primary"), diff, np.nan)
        out["rv_bulk"] = _robust(diff, limits["rv_bulk"])
    return out


def _detection(matched: pd.DataFrame) -> dict:
    """Fraction of DPAC's double-lined transits we call SB2 (p_binary > 0.5), in all and by
    DPAC's |RV_primary − RV_secondary|."""
    m = matched[matched["usable"].to_numpy(bool)]
    p = m["p_binary"].to_numpy(float)
    sep = m["rv_separation_dpac"].to_numpy(float)
    bins = []
    for lo, hi in zip(SEPARATION_BINS[:-1], SEPARATION_BINS[1:]):
        sel = (sep >= lo) & (sep < hi)
        bins.append(dict(lo=lo, hi=None if np.isinf(hi) else hi, n=int(sel.sum()),
                         fraction_sb2=float(np.mean(p[sel] > 0.5)) if sel.any() else None))
    return dict(n=len(m), fraction_sb2=float(np.mean(p > 0.5)) if len(m) else None,
                median_p_binary=float(np.nanmedian(p)) if len(m) else None, by_separation=bins)


def _ordering_summary(matched: pd.DataFrame) -> dict:
    methods = matched["order_method"].value_counts().to_dict()
    cross = {}
    for flag, name in ((1.0, "reordered"), (0.0, "not_reordered")):
        sel = matched["is_reordered"].to_numpy(float) == flag
        cross[name] = dict(n=int(sel.sum()), primary_is_cooler=int(
            matched.loc[sel, "primary_is_cooler"].sum()))
    missing = np.isnan(matched["is_reordered"].to_numpy(float))
    cross["flag_missing"] = dict(n=int(missing.sum()), primary_is_cooler=int(
        matched.loc[missing, "primary_is_cooler"].sum()))
    return dict(methods={k: int(v) for k, v in methods.items()}, is_reordered=cross)


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


_LABELS = {"rv": ("RV", "km/s"), "rv_bulk": ("rv_bulk − RV primary", "km/s"),
           "teff": ("Teff", "K"), "logg": ("log g", "dex"), "feh": ("[Fe/H]", "dex"),
           "vbroad": ("v sin i − vbroad", "km/s")}


def _markdown(report: dict) -> str:
    c = report["counts"]
    lines = ["# sb2dask against DPAC rvs_epoch_parameters_double", "",
             f"Ours: `{report['ours']}`; DPAC: {', '.join(f'`{p}`' for p in report['dpac'])}.",
             "",
             f"Transits: {c['ours']} ours, {c['dpac']} DPAC ({report['dpac_info']['duplicates']} "
             f"duplicated rows dropped), **{c['matched']} matched** ({c['matched_usable']} usable "
             f"on our side); {c['ours_only']} ours only, {c['dpac_only']} DPAC only.", "",
             f"Frame: {report['frame']}", "",
             "## Agreement (ours − DPAC, matched usable transits)", "",
             "| quantity | component | n | median offset | robust scatter | outliers | limit |",
             "|---|---|---|---|---|---|---|"]
    for key, s in report["agreement"].items():
        q, _, comp = key.rpartition("_") if key != "rv_bulk" else ("rv_bulk", "", "primary")
        name, unit = _LABELS[q]
        comp = {"1": "1 (cooler)", "2": "2 (hotter)"}.get(comp, comp)
        digits = 0 if q == "teff" else 2
        lines.append(f"| {name} [{unit}] | {comp} | {s['n']} | {_fmt(s['median_offset'], digits)}"
                     f" | {_fmt(s['robust_scatter'], digits)} | "
                     f"{_fmt(s['outlier_fraction'], 3)} | {s['outlier_limit']:g} |")
    if not report["agreement"]:
        lines.append("| (nothing to compare) | | | | | | |")
    absent = [k for k in ("rv_1", "rv_2") if k not in report["agreement"]]
    if absent:
        lines += ["", "Our epoch table has no per-component radial velocities (`rv_1`, `rv_2`): "
                  "component RVs are not compared."]
    d = report["detection"]
    lines += ["", "## DPAC's double-lined transits that we call SB2 (p_binary > 0.5)", "",
              f"{_fmt(d['fraction_sb2'], 3)} of {d['n']} (median p_binary "
              f"{_fmt(d['median_p_binary'], 3)}).", "",
              "| DPAC \\|RV1 − RV2\\| [km/s] | n | fraction SB2 |", "|---|---|---|"]
    for b in d["by_separation"]:
        hi = "∞" if b["hi"] is None else f"{b['hi']:g}"
        lines.append(f"| {b['lo']:g}-{hi} | {b['n']} | {_fmt(b['fraction_sb2'], 3)} |")
    o = report["ordering"]
    lines += ["", "## Component order", "",
              "DPAC's components put in our order (1 = cooler) by: "
              + ", ".join(f"{k} {v}" for k, v in sorted(o["methods"].items())) + ".", "",
              "| is_reordered | transits | primary is the cooler |", "|---|---|---|"]
    for k, v in o["is_reordered"].items():
        lines.append(f"| {k} | {v['n']} | {v['primary_is_cooler']} |")
    if report["dpac_info"]["missing"]:
        lines += ["", "DPAC quantities found in no file (compared where present only): "
                  + ", ".join(f"`{m}`" for m in report["dpac_info"]["missing"]) + "."]
    return "\n".join(lines) + "\n"


def compare_dpac(ours_path: str | Path, dpac_paths, out_dir: str | Path,
                 column_map: dict[str, str] | None = None, add_bary_corr: bool = False,
                 limits: dict | None = None) -> dict:
    """Compare our epoch table with DPAC's double-lined epoch parameters; write the report.

    Parameters
    ----------
    ours_path : path
        The epoch table of ``sb2dask infer`` (its ``--out``).
    dpac_paths : path or list of paths
        ``rvs_epoch_parameters_double`` files (CSV, ECSV, VOTable, FITS, Parquet; gzip allowed).
    out_dir : path
        Receives ``compare_dpac.md``, ``compare_dpac.json`` and ``matched.parquet`` (the matched
        transits with DPAC's values in our component order).
    column_map : dict, optional
        ``{canonical: column}`` overriding :data:`DPAC_COLUMNS`.
    add_bary_corr : bool
        Add ``rad_vel_bary_corr`` to DPAC's RVs (for velocities not yet barycentric).
    limits : dict, optional
        Outlier limits overriding :data:`OUTLIER_LIMITS`.

    Returns
    -------
    dict
        The report (also in ``compare_dpac.json``).
    """
    dpac_paths = [dpac_paths] if isinstance(dpac_paths, (str, Path)) else list(dpac_paths)
    ours = read_ours(ours_path)
    dpac, info = read_dpac(dpac_paths, column_map)
    matched, counts = match_transits(ours, dpac, add_bary_corr)
    frame = ("DPAC radial velocities + rad_vel_bary_corr (made barycentric here) against ours"
             if add_bary_corr else
             "DPAC radial velocities taken as barycentric, as are the DR4 epoch spectra and the "
             "velocities we measure on them (rad_vel_bary_corr not applied)")
    report = dict(ours=str(ours_path), dpac=[str(p) for p in dpac_paths], dpac_info=info,
                  counts=counts, frame=frame, add_bary_corr=add_bary_corr,
                  agreement=agreement(matched, limits), detection=_detection(matched),
                  ordering=_ordering_summary(matched))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare_dpac.json", report)
    atomic_write_text(out / "compare_dpac.md", _markdown(report))
    with atomic_path(out / "matched.parquet") as tmp:
        matched.to_parquet(tmp, index=False)
    return report


def mock_dpac_table(truth: pd.DataFrame, seed: int = 0, min_separation: float = 20.0,
                    reorder_fraction: float = 0.2):
    """A small ``rvs_epoch_parameters_double`` look-alike from a mock catalogue's truth table.

    Its SB2 transits with |RV1 − RV2| ≥ ``min_separation`` km/s (what DPAC can resolve at
    R = 11 500) become rows named like the first candidates of :data:`DPAC_COLUMNS`. The primary
    is the brighter star; in ``reorder_fraction`` of the rows the two are swapped and
    ``is_reordered`` is set (an assumption of this mock: the comparison does not rely on it).
    Values are the truth plus noise: RV errors 0.5-3 km/s, template Teff on a 250 K grid, log g on
    0.5 dex, [Fe/H] on 0.25 dex, vbroad ± 2 km/s; 5 % of secondary RVs flagged invalid;
    ``rad_vel_bary_corr`` uniform in ±30 km/s (the RVs are already barycentric).

    Returns an astropy Table with units.
    """
    import astropy.units as u
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    t = truth[truth["is_binary"].to_numpy(bool)
              & (truth["rv_separation"].to_numpy(float) >= min_separation)]
    n = len(t)
    brighter_is_2 = t["light_fraction_2"].to_numpy(float) >= t["light_fraction_1"].to_numpy(float)
    swap = rng.random(n) < reorder_fraction
    primary_is_2 = brighter_is_2 ^ swap

    def comp(name: str, which: str) -> np.ndarray:
        a, b = t[f"{name}_1"].to_numpy(float), t[f"{name}_2"].to_numpy(float)
        if which == "primary":
            return np.where(primary_is_2, b, a)
        return np.where(primary_is_2, a, b)

    cols: dict = {"source_id": t["source_id"].to_numpy(np.int64),
                  "transit_id": t["epoch_id"].to_numpy(np.int64)}
    for c in _COMPONENTS:
        err = rng.uniform(0.5, 3.0, n)
        cols[f"radial_velocity_{c}"] = comp("rv", c) + err * rng.standard_normal(n)
        cols[f"radial_velocity_error_{c}"] = err
        cols[f"radial_velocity_valid_{c}"] = (rng.random(n) >= 0.05 if c == "secondary"
                                              else np.ones(n, bool))
        cols[f"rv_template_teff_{c}"] = np.round(comp("teff", c) / 250.0) * 250.0
        cols[f"rv_template_logg_{c}"] = np.round(comp("logg", c) / 0.5) * 0.5
        cols[f"rv_template_fe_h_{c}"] = np.round(comp("feh", c) / 0.25) * 0.25
        cols[f"vbroad_{c}"] = np.clip(comp("vsini", c) + 2.0 * rng.standard_normal(n), 0, None)
    cols["is_reordered"] = swap
    cols["rad_vel_bary_corr"] = rng.uniform(-30.0, 30.0, n)
    table = Table(cols)
    for name in table.colnames:
        if name.startswith(("radial_velocity_primary", "radial_velocity_secondary",
                            "radial_velocity_error", "vbroad", "rad_vel")):
            table[name].unit = u.km / u.s
        elif "teff" in name:
            table[name].unit = u.K
    table.meta["ORIGIN"] = "sb2dask mock of rvs_epoch_parameters_double"
    return table


def write_mock_dpac(truth_path: str | Path, out_path: str | Path, seed: int = 0,
                    min_separation: float = 20.0) -> Path:
    """Write :func:`mock_dpac_table` of ``truth_path`` (``truth.parquet`` of ``sb2dask
    mock-catalogue``) to ``out_path``; the format follows the suffix (``.csv``, ``.ecsv``,
    ``.vot``/``.xml``, ``.fits``)."""
    out = Path(out_path)
    formats = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".vot": "votable",
               ".xml": "votable", ".fits": "fits"}
    if out.suffix not in formats:
        raise ValueError(f"{out}: suffix must be one of {sorted(formats)}")
    table = mock_dpac_table(pd.read_parquet(truth_path), seed, min_separation)
    with atomic_path(out) as tmp:
        table.write(tmp, format=formats[out.suffix], overwrite=True)
    return out

