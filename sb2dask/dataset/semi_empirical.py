"""Semi-empirical training stores (``sb2dask semi-empirical``): SB2s and single stars made of a
user's real single-star spectra, written across Dask workers in the simulator's Zarr layout.

The spectra are read with the catalogue readers (any format ``sb2dask infer`` reads), joined to a
label table on ``source_id`` and checked (one grid covering the output pixels, labels present,
noise known); the pairing, orbits, combination and noise accounting are the pure core
:mod:`sb2dask.simulate.semi_empirical`. The store is the factory's (:mod:`.factory`: ``flux``,
``wave``, ``split``, ``labels/*``, ``chunk_sha256``, the ``sb2dask`` attributes with a
:class:`~sb2dask.simulate.config.SimulationConfig`), so ``sb2dask train`` and ``evaluate`` take
it unchanged, plus a ``semi_empirical`` group::

    semi_empirical/inputs/flux, flux_error   float32 (n_star, n_in)  the input spectra
    semi_empirical/inputs/wave               float64 (n_in,)         their grid [Å, air]
    semi_empirical/inputs/<field>            (n_star,)               source_id, file, row, labels,
                                                                     mass, radius, light, snr,
                                                                     status, split
    semi_empirical/rows/input_index          int64 (n, 2)            input star of each component
    semi_empirical/rows/source_id            int64 (n, 2)            its source_id (-1: none)
    semi_empirical/rows/noise_excess         float32 (n,)            pixels already too noisy

and the root attribute ``sb2dask.semi_empirical`` (settings, inputs, counts of used, single-only
and too-noisy stars, the S/N each split reaches). Rows are byte-identical whatever the worker
count and chunk schedule, and an interrupted build resumes, as the factory's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..completion import record_finished
from ..fileio import bytes_sha256
from ..library.mainsequence import MAIN_SEQUENCE_TABLE
from ..simulate.config import SimulationConfig
from ..simulate.semi_empirical import (
    ALL_SPLITS,
    STATUS,
    STATUS_SINGLE_ONLY,
    STATUS_TOO_NOISY,
    STATUS_USED,
    SemiEmpiricalSettings,
    StarTable,
    combine_rows,
    continuum_snr,
    draw_rows,
    shift_onto_grid,
    star_splits,
)
from .factory import (
    SPLIT_NAMES,
    SplitSpec,
    blosc,
    check_existing,
    create_store,
    measure_rv_bulk,
    run_chunks,
    store_metadata,
)

__all__ = ["LABEL_ALIASES", "read_label_table", "read_inputs", "InputStars", "prepare_stars",
           "prepare", "compute", "build", "DEFAULT_MAIN_SEQUENCE_TABLE"]

#: The Pecaut & Mamajek dwarf table shipped with the package.
DEFAULT_MAIN_SEQUENCE_TABLE = MAIN_SEQUENCE_TABLE

#: Accepted column names (case-insensitive) of the label table, per label: ours, GALAH DR3/DR4,
#: APOGEE DR17, Gaia GSP-Spec/Cannon-style names.
LABEL_ALIASES = {
    "source_id": ("source_id", "gaia_source_id", "dr3_source_id", "gaiaedr3_source_id",
                  "gaia_dr3_source_id"),
    "teff": ("teff", "teff_k"),
    "teff_err": ("teff_err", "e_teff", "teff_error"),
    "logg": ("logg",),
    "logg_err": ("logg_err", "e_logg", "logg_error"),
    "feh": ("feh", "fe_h", "[fe/h]", "m_h", "mh"),
    "feh_err": ("feh_err", "e_fe_h", "fe_h_err", "e_feh", "m_h_err", "feh_error"),
    "vsini": ("vsini", "v_sini", "vsin_i"),
    "vsini_err": ("vsini_err", "e_vsini", "vsini_error"),
    "vbroad": ("vbroad", "v_broad"),
    "vbroad_err": ("vbroad_err", "e_vbroad", "vbroad_error"),
    "snr": ("snr", "snr_rvs", "rvs_spec_sig_to_noise"),
}
_REQUIRED = ("source_id", "teff", "logg", "feh", "feh_err")


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if name.endswith((".fits", ".fit", ".fits.gz", ".ecsv", ".vot", ".xml")):
        from astropy.table import Table

        t = Table.read(path)
        return t.to_pandas() if hasattr(t, "to_pandas") else pd.DataFrame(np.asarray(t))
    return pd.read_csv(path, sep=None, engine="python", comment="#")


def read_label_table(path: str | Path) -> pd.DataFrame:
    """The label table, with our column names (:data:`LABEL_ALIASES`), indexed by source_id.

    CSV/TSV (any delimiter), Parquet, FITS, ECSV or VOTable. Needs ``source_id``, ``teff``,
    ``logg``, ``feh`` and ``feh_err`` and one of ``vsini`` / ``vbroad``; the other errors are
    optional. The ``row`` column keeps each entry's 0-based data row, for error messages.

    Raises
    ------
    ValueError
        A required column is missing, or a source_id appears twice (named with its rows).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such label table")
    raw = _read_table(path)
    lower = {str(c).strip().lower(): c for c in raw.columns}
    cols = {}
    for ours, names in LABEL_ALIASES.items():
        for n in names:
            if n in lower:
                cols[ours] = lower[n]
                break
    for need in _REQUIRED:
        if need not in cols:
            raise ValueError(f"{path}: no {need!r} column (accepted names: "
                             f"{', '.join(LABEL_ALIASES[need])}); found {list(raw.columns)}")
    if "vsini" not in cols and "vbroad" not in cols:
        raise ValueError(f"{path}: no 'vsini' or 'vbroad' column (accepted names: "
                         f"{', '.join(LABEL_ALIASES['vsini'] + LABEL_ALIASES['vbroad'])})")
    table = pd.DataFrame({ours: raw[col].to_numpy() for ours, col in cols.items()})
    table["row"] = np.arange(len(table))
    sid = pd.to_numeric(table["source_id"], errors="coerce")
    bad = np.flatnonzero(sid.isna().to_numpy())
    if bad.size:
        raise ValueError(f"{path} row {bad[0]}: source_id {table['source_id'].iloc[bad[0]]!r} "
                         "is not an integer")
    table["source_id"] = sid.astype(np.int64)
    dup = table["source_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:2]
        raise ValueError(f"{path} rows {rows[0]} and {rows[1]}: source_id "
                         f"{table['source_id'].iloc[rows[0]]} appears more than once")
    for c in table.columns:
        if c not in ("source_id", "row"):
            table[c] = pd.to_numeric(table[c], errors="coerce").astype(np.float64)
    return table.set_index("source_id", drop=False)


class InputStars:
    """The input spectra on their common grid, with their joined labels."""

    def __init__(self, wave, flux, sigma, table: pd.DataFrame, files: list[str]):
        self.wave = wave  # (n_in,) air Å
        self.flux = flux  # float32 (n_star, n_in)
        self.sigma = sigma  # float32 (n_star, n_in)
        self.table = table  # one row per spectrum: source_id, file, row, labels
        self.files = files

    def __len__(self) -> int:
        return len(self.table)


def read_inputs(paths, labels: pd.DataFrame, labels_path: str | Path, out_wave: np.ndarray,
                velocity_label: str = "vsini") -> InputStars:
    """Read every spectrum of ``paths`` with the catalogue readers and join it to ``labels``.

    Raises
    ------
    ValueError
        One line naming the file and row: an unreadable file, a spectrum whose source_id has no
        label row, a missing label value, no noise (neither flux_error nor an ``snr`` label), a
        grid other than the first spectrum's, or a grid that does not cover ``out_wave``.
    """
    from ..infer.readers import read_catalogue

    label_col = velocity_label
    if label_col not in labels.columns:
        raise ValueError(f"{labels_path}: no {velocity_label!r} column (--velocity-label)")
    wave0 = None
    fluxes, sigmas, rows = [], [], []
    for path in [Path(p) for p in paths]:
        for part in read_catalogue(path):
            for _, r in part.iterrows():
                where = f"{r['file']} row {int(r['row'])} (source_id {int(r['source_id'])})"
                sid = int(r["source_id"])
                if sid not in labels.index:
                    raise ValueError(f"{where}: source_id has no row in {labels_path}")
                lab = labels.loc[sid]
                for key in ("teff", "logg", "feh", "feh_err", label_col):
                    if not np.isfinite(lab[key]):
                        raise ValueError(f"{labels_path} row {int(lab['row'])} (source_id "
                                         f"{sid}): {key} is missing")
                wave = np.asarray(r["wave"], np.float64)
                if wave0 is None:
                    wave0, first = wave, where
                    lo, hi = out_wave[0], out_wave[-1]
                    if not (np.all(np.diff(wave) > 0) and wave[0] <= lo + 0.05
                            and wave[-1] >= hi - 0.05):
                        raise ValueError(
                            f"{where}: its grid ({wave[0]:.2f}-{wave[-1]:.2f} Å, {len(wave)} "
                            f"pixels) does not cover the output grid ({lo:.2f}-{hi:.2f} Å)")
                elif wave is not wave0 and (len(wave) != len(wave0)
                                            or not np.allclose(wave, wave0, atol=1e-4)):
                    raise ValueError(f"{where}: its grid ({wave[0]:.2f}-{wave[-1]:.2f} Å, "
                                     f"{len(wave)} pixels) differs from that of {first} "
                                     f"({wave0[0]:.2f}-{wave0[-1]:.2f} Å, {len(wave0)} pixels); "
                                     "every input must share one grid")
                flux = np.asarray(r["flux"], np.float32)
                if r["flux_error"] is not None:
                    sigma = np.asarray(r["flux_error"], np.float32)
                elif "snr" in lab.index and np.isfinite(lab["snr"]) and lab["snr"] > 0:
                    sigma = np.full(flux.shape, 1.0 / lab["snr"], np.float32)
                else:
                    raise ValueError(f"{where}: no flux_error and no 'snr' label; the builder "
                                     "needs each input's noise")
                fluxes.append(flux)
                sigmas.append(sigma)
                rows.append(dict(source_id=sid, file=str(r["file"]), row=int(r["row"]),
                                 teff=lab["teff"], logg=lab["logg"], feh=lab["feh"],
                                 feh_err=lab["feh_err"], vsini=lab[label_col],
                                 teff_err=lab.get("teff_err", np.nan),
                                 logg_err=lab.get("logg_err", np.nan),
                                 vsini_err=lab.get(f"{label_col}_err", np.nan)))
    if not rows:
        raise ValueError(f"no spectra in {[str(p) for p in paths]}")
    table = pd.DataFrame(rows)
    return InputStars(wave0, np.stack(fluxes), np.stack(sigmas), table,
                      [str(p) for p in paths])


def prepare_stars(inputs: InputStars, config: SimulationConfig,
                  settings: SemiEmpiricalSettings, counts: tuple[int, int, int],
                  main_sequence_table: str | Path = DEFAULT_MAIN_SEQUENCE_TABLE) -> StarTable:
    """The :class:`~sb2dask.simulate.semi_empirical.StarTable` of the inputs: masses and the
    continuum at 8600 Å from the library (as the simulator), radii from logg, main-sequence
    membership, continuum S/N on the output pixels, status and split."""
    from ..library import load_library
    from ..library.mainsequence import radius_from_logg, read_main_sequence_logg
    from ..simulate.systems import GridSampler

    t = inputs.table
    sampler = GridSampler(load_library(config.library), config)
    props = np.array([sampler.properties_at(a, b, c) for a, b, c in
                      zip(t["teff"], t["logg"], t["feh"])]).reshape(-1, 3)
    mass = props[:, 0]
    radius = radius_from_logg(t["logg"].to_numpy(), mass)
    ms_teff, ms_logg = read_main_sequence_logg(main_sequence_table)
    logg_ms = np.interp(t["teff"].to_numpy(float), ms_teff, ms_logg)
    tol = np.maximum(settings.ms_logg_tolerance, 2.0 * np.nan_to_num(t["logg_err"].to_numpy()))
    on_ms = np.abs(t["logg"].to_numpy() - logg_ms) <= tol
    snr = np.empty(len(t))
    for s in range(0, len(t), 4096):  # in blocks: (rows, pixels) float64 temporaries
        f0, v0 = shift_onto_grid(inputs.wave, inputs.flux[s:s + 4096], inputs.sigma[s:s + 4096],
                                 config.wave, np.zeros(len(t[s:s + 4096])),
                                 settings.input_noise == "correlated")
        snr[s:s + 4096] = continuum_snr(f0, v0)
    status = np.where(on_ms, STATUS_USED, STATUS_SINGLE_ONLY)
    status = np.where(~(snr >= config.snr_range[0]), STATUS_TOO_NOISY, status).astype(np.uint8)
    if settings.shared_stars:
        split = np.full(len(t), ALL_SPLITS, np.uint8)
    else:
        split = star_splits(t["source_id"].to_numpy(), config.seed, counts)
    return StarTable(source_id=t["source_id"].to_numpy(np.int64), teff=t["teff"].to_numpy(float),
                     logg=t["logg"].to_numpy(float), feh=t["feh"].to_numpy(float),
                     feh_err=t["feh_err"].to_numpy(float), vsini=t["vsini"].to_numpy(float),
                     mass=mass, radius=radius, light=radius ** 2 * props[:, 2], snr=snr,
                     status=status, split=split)


_STAR_FIELDS = ("source_id", "teff", "logg", "feh", "feh_err", "vsini", "mass", "radius",
                "light", "snr", "status", "split")


def _check_splits(stars: StarTable, counts, binary_fraction: float) -> dict:
    """Per split: drawable stars and the S/N range rows can reach; raises when a split with rows
    has no star (or no main-sequence pair) to draw from."""
    out = {}
    for k, name in enumerate(SPLIT_NAMES):
        if not counts[k]:
            continue
        idx, snr = stars.candidates(k)
        ms = idx[stars.status[idx] == STATUS_USED]
        out[name] = dict(stars=int(len(idx)), main_sequence=int(len(ms)),
                         snr_max=float(snr[-1]) if len(snr) else None)
        if len(idx) == 0 or (binary_fraction > 0 and len(np.unique(stars.source_id[ms])) < 2):
            raise ValueError(f"the {name} split ({counts[k]} rows) has {len(idx)} usable input "
                             f"stars, {len(ms)} of them on the main sequence: too few to draw "
                             "its rows; give more input stars, a lower --snr, or "
                             "--shared-stars (every split draws from every star)")
    return out


def _write_rows(out: str, c: int) -> dict:
    """Dask task: draw and combine chunk ``c`` and write it into every array, then its record."""
    import zarr

    root = zarr.open_group(out, mode="r")
    meta = dict(root.attrs["sb2dask"])
    config = SimulationConfig.from_dict(meta["config"])
    settings = SemiEmpiricalSettings.from_dict(meta["semi_empirical"]["settings"])
    chunk, n = meta["chunk"], meta["n"]
    start, stop = c * chunk, min(n, (c + 1) * chunk)
    t0 = time.perf_counter()
    grp = root["semi_empirical/inputs"]
    stars = StarTable(**{k: grp[k][...] for k in _STAR_FIELDS})
    row_split = root["split"][start:stop]
    labels, picks, noise = draw_rows(stars, config, settings, np.arange(start, stop), row_split)
    used = np.unique(picks[picks >= 0])
    pos = np.searchsorted(used, np.clip(picks, 0, None))
    flux_in = grp["flux"].get_orthogonal_selection((used, slice(None)))
    err_in = grp["flux_error"].get_orthogonal_selection((used, slice(None)))
    flux, excess = combine_rows(grp["wave"][...], config.wave, flux_in[pos], err_in[pos], labels,
                                noise, settings.input_noise == "correlated")
    if not config.realism.is_paper:
        labels["rv_bulk"] = measure_rv_bulk(config.wave, flux)
    t1 = time.perf_counter()
    root = zarr.open_group(out, mode="r+")
    root["flux"][start:stop] = flux
    for name, values in labels.items():
        root["labels"][name][start:stop] = values
    rows = root["semi_empirical/rows"]
    rows["input_index"][start:stop] = picks
    rows["source_id"][start:stop] = np.where(picks >= 0, stars.source_id[np.clip(picks, 0,
                                                                                None)], -1)
    rows["noise_excess"][start:stop] = excess
    record_finished(out, c, bytes_sha256(flux.tobytes()))
    return dict(chunk=c, n=stop - start, simulate_s=t1 - t0, write_s=time.perf_counter() - t1)


def _inputs_sha256(inputs: InputStars, stars: StarTable) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in (inputs.wave, inputs.flux, inputs.sigma, *(getattr(stars, k) for k in _STAR_FIELDS)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _write_inputs(root, inputs: InputStars, stars: StarTable, n: int, chunk: int) -> None:
    codec = blosc()
    g = root.create_group("semi_empirical")
    ing = g.create_group("inputs")
    rows_per = max(1, min(len(inputs), 256))
    for name, arr, desc in (("flux", inputs.flux, "input spectra, as read"),
                            ("flux_error", inputs.sigma, "their 1-sigma errors")):
        ing.create_array(name, shape=arr.shape, chunks=(rows_per, arr.shape[1]), dtype="f4",
                         compressors=[codec], attributes=dict(description=desc))[...] = arr
    ing.create_array("wave", shape=inputs.wave.shape, dtype="f8", compressors=None,
                     attributes=dict(units="Angstrom", description="air wavelength of the "
                                     "inputs' common grid"))[...] = inputs.wave
    for name in _STAR_FIELDS:
        a = np.asarray(getattr(stars, name))
        ing.create_array(name, shape=a.shape, dtype=a.dtype, compressors=None)[...] = a
    rg = g.create_group("rows")
    rg.create_array("input_index", shape=(n, 2), chunks=(chunk, 2), dtype="i8", fill_value=-1,
                    compressors=[codec], attributes=dict(description=(
                        "index into semi_empirical/inputs of each component, ordered like the "
                        "labels (cooler first); -1: none")))
    rg.create_array("source_id", shape=(n, 2), chunks=(chunk, 2), dtype="i8", fill_value=-1,
                    compressors=[codec], attributes=dict(description=(
                        "source_id of each component's input spectrum; -1: none")))
    rg.create_array("noise_excess", shape=(n,), chunks=(chunk,), dtype="f4", compressors=[codec],
                    attributes=dict(description=(
                        "fraction of pixels where the inputs' own noise exceeds the target")))


def prepare(out: str | Path, spectra, labels_path: str | Path, config: SimulationConfig,
            settings: SemiEmpiricalSettings | None = None, n: int = 10000, chunk: int = 5000,
            split: SplitSpec | None = None, overwrite: bool = False, command: str = "",
            main_sequence_table: str | Path = DEFAULT_MAIN_SEQUENCE_TABLE) -> dict:
    """Read and check the inputs and create the store (or check that an existing one holds this
    data set, to be resumed): everything before the rows are computed, so bad inputs fail before
    a cluster starts. Returns the input counts and per-split star summary."""
    settings = settings or SemiEmpiricalSettings()
    split = split or SplitSpec()
    out = Path(out)
    if n <= 0 or chunk <= 0:
        raise ValueError(f"n and chunk must be positive, got n={n}, chunk={chunk}")
    if config.realism.line_depth_scatter[1] > 0:
        # real spectra carry their own line strengths; the field is a synthetic library's error
        raise ValueError("realism.line_depth_scatter must be (0, 0) for semi-empirical stores: "
                         "the line-depth field perturbs library templates, not real spectra")
    counts = split.counts(n)
    labels = read_label_table(labels_path)
    inputs = read_inputs(spectra, labels, labels_path, config.wave, settings.velocity_label)
    stars = prepare_stars(inputs, config, settings, counts, main_sequence_table)
    per_split = _check_splits(stars, counts, config.binary_fraction)
    sha = _inputs_sha256(inputs, stars)
    status_counts = {STATUS[k]: int(np.sum(stars.status == k)) for k in STATUS}
    too_noisy = stars.source_id[stars.status == STATUS_TOO_NOISY]
    info = dict(settings=settings.to_dict(), spectra=inputs.files, labels=str(labels_path),
                main_sequence_table=str(main_sequence_table), inputs_sha256=sha,
                n_inputs=len(stars), status=status_counts,
                too_noisy_source_ids=[int(s) for s in too_noisy[:1000]],
                splits=per_split,
                input_files=inputs.table["file"].tolist(),
                input_rows=[int(r) for r in inputs.table["row"]])
    want = (config.to_dict(), n, chunk, dict(zip(SPLIT_NAMES, counts)))
    resume = check_existing(out, want, overwrite)
    if resume and store_metadata(out).get("semi_empirical", {}).get("inputs_sha256") != sha:
        raise ValueError(f"{out} was built from other input spectra or labels; pass "
                         "overwrite=True (--overwrite) to replace it")
    if not resume:
        from ..library import load_library

        lib = load_library(config.library)
        library = dict(name="semi-empirical", sha256=sha, provenance=dict(
            kind="semi-empirical", inputs_sha256=sha, continuum_library=lib.name,
            continuum_library_sha256=lib.provenance.get("sha256")))
        root = create_store(out, config, n, chunk, split, command, library,
                            extra=dict(semi_empirical=info))
        _write_inputs(root, inputs, stars, n, chunk)
    return dict(inputs=dict(n=len(stars), **status_counts,
                            too_noisy_source_ids=info["too_noisy_source_ids"]),
                splits=per_split)


def compute(out: str | Path, client=None, progress: bool = True) -> dict:
    """Compute the unfinished chunks of a prepared store (:func:`prepare`), one Dask task each;
    the factory's run summary."""
    meta = store_metadata(out)
    return run_chunks(Path(out), _write_rows, [str(out)], meta["n"], meta["chunk"], client,
                      progress, desc="semi-empirical")


def build(out: str | Path, spectra, labels_path: str | Path, config: SimulationConfig,
          settings: SemiEmpiricalSettings | None = None, n: int = 10000, chunk: int = 5000,
          client=None, split: SplitSpec | None = None, overwrite: bool = False,
          progress: bool = True, command: str = "",
          main_sequence_table: str | Path = DEFAULT_MAIN_SEQUENCE_TABLE) -> dict:
    """Build a semi-empirical store of ``n`` rows (``config.binary_fraction`` SB2s) from the
    real spectra in ``spectra`` (paths any catalogue reader reads) and the label table.

    An existing store of the same inputs, configuration, ``n`` and ``chunk`` is resumed.

    Returns
    -------
    dict
        The factory's run summary plus ``inputs`` (counts of input spectra by status, the
        too-noisy ones' source_ids) and ``splits`` (stars and highest S/N per split).
    """
    prepared = prepare(out, spectra, labels_path, config, settings, n, chunk, split, overwrite,
                       command, main_sequence_table)
    return {**compute(out, client, progress), **prepared}
