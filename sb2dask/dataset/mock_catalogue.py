"""Realistic simulated epoch catalogues with their truth tables: the Gaia bulk layout, or Gaia DR4
RVS epoch spectra in the archive's DataLink layouts.

Sources are single stars or SB2s (``binary_fraction``), each observed at several epochs; an SB2
keeps its stars and orbit and is seen at a new orbital phase at every epoch, so its lines move
between epochs as they would in Gaia DR4. Spectra are simulated on the Gaia RVS grid (2401 pixels,
846-870 nm in vacuum) at R = 11 500 with photon noise, flux errors σ = sqrt(flux)/(S/N). Source
identifiers carry a HEALPix level-8 index (``source_id >> 43``). The truth goes to
``truth.parquet``.

:func:`mock_catalogue` writes the bulk layout (``RvsEpochSpectrum_XXXXXX-YYYYYY.csv.gz``, files
covering contiguous HEALPix ranges, stars at the configuration's ``gamma``, a few null edge
pixels as the RVS pipeline leaves them).

:func:`mock_catalogue_dr4` writes what DR4 delivers (pre-release data model, ``docs/dr4.md``):
each transit at its own time ``obs_time_rv`` (BJD(TCB) − 2455197.5 d, within DR4's 66 months),
every source at a systemic velocity of its own and each SB2 transit at the orbital phase of that
time, so the spectra are in the solar barycentric frame; resampled onto the 961-pixel DR4 grid the
way DPAC combines CCD spectra (flux and squared errors linearly interpolated); normalised as DPAC
does: ``normalisation_method`` 3 (divided by the median) for most transits, 0 (raw flux scale, a
positive flux level) for double-lined SB2 transits, 4 (negative median, raw scale) for a few; a
few transits with runs of NaN ``flux_error`` (all CCDs masked); in both DataLink layouts and the
archive's formats (:mod:`sb2dask.dataset.gaia_dr4`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from ..gaia import HEALPIX_LEVEL8_SHIFT, N_HEALPIX_LEVEL8, RVS_WAVE, RVS_WAVE_VAC_NM
from ..labels import PARAMETERS
from ..simulate.config import SimulationConfig
from ..simulate.orbits import radial_velocities
from ..simulate.simulator import simulator_for
from ..simulate.systems import draw_systems
from .gaia_dr4 import FORMATS, STRUCTURES, dr4_file_name, resample_to_dr4, write_dr4_epoch
from .gaia_ecsv import write_bulk_ecsv

__all__ = ["mock_catalogue", "mock_catalogue_dr4", "LAYOUTS", "DR4_TIME_SPAN",
           "DOUBLE_LINED_SEPARATION"]

#: ``sb2dask mock-catalogue --layout``: the Gaia bulk ECSV files, or DR4 DataLink files.
LAYOUTS = ("bulk", "dr4")
#: obs_time_rv range of DR4 [d since BJD(TCB) 2455197.5]: 2014-07-25 to 2020-01-20 (66 months).
DR4_TIME_SPAN = (1666.0, 3672.0)
#: RV separation [km/s] above which a mock SB2 transit counts as double-lined (DPAC's
#: normalisation_method 0: raw flux).
DOUBLE_LINED_SEPARATION = 20.0


def _draw(n_sources: int, epochs: tuple[int, int], cfg: SimulationConfig, seed: int):
    """The sources and their epochs: (renderer, labels and interpolation weights per epoch,
    source_id per source, HEALPix index per source, source index per epoch, generator)."""
    lib, sampler, renderer = simulator_for(cfg)
    labels, interp, _ = draw_systems(lib, cfg, np.arange(n_sources), sampler=sampler)
    rng = np.random.default_rng([seed, 7])
    n_ep = rng.integers(epochs[0], epochs[1] + 1, size=n_sources)
    hp = np.sort(rng.choice(N_HEALPIX_LEVEL8, size=n_sources, replace=False))
    source_id = (hp.astype(np.int64) << HEALPIX_LEVEL8_SHIFT) + rng.integers(
        0, 2 ** 35, size=n_sources)
    rep = np.repeat(np.arange(n_sources), n_ep)
    lab = {k: v[rep] for k, v in labels.items()}
    itp = {k: v[rep] for k, v in interp.items()}
    return renderer, lab, itp, source_id, hp, rep, rng


def _epoch_rvs(lab: dict, phase: np.ndarray, gamma) -> None:
    """Set ``rv``, ``phase`` and ``rv_separation`` of every epoch (in place): SB2s at their
    phase around ``gamma``, single stars at ``gamma``."""
    n = len(phase)
    gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (n,))
    binary = lab["is_binary"]
    rv1, rv2 = radial_velocities(lab["k"][:, 0], lab["k"][:, 1], phase, gamma)
    lab["rv"] = np.where(binary[:, None], np.stack([rv1, rv2], axis=1),
                         np.stack([gamma, np.full(n, np.nan)], axis=1)).astype(np.float32)
    lab["phase"] = np.where(binary, phase, np.nan).astype(np.float32)
    lab["rv_separation"] = np.where(binary, np.abs(rv1 - rv2), np.nan).astype(np.float32)


def _render(renderer, lab: dict, itp: dict, cfg: SimulationConfig, rng):
    """(flux, flux_error) on the configuration's grid, a new S/N drawn for every epoch."""
    lab["snr"] = rng.uniform(*cfg.snr_range, size=len(lab["is_binary"])).astype(np.float32)
    noise = rng.standard_normal((len(lab["snr"]), len(cfg.wave))).astype(np.float32)
    flux = renderer.render(lab, itp, noise)
    err = (np.sqrt(np.clip(flux, 1e-3, None)) / lab["snr"][:, None]).astype(np.float32)
    return flux, err


def _truth(out: Path, source_id: np.ndarray, epoch_id: np.ndarray, lab: dict,
           extra: dict | None = None) -> Path:
    """Write ``truth.parquet``: one row per epoch spectrum."""
    truth = pd.DataFrame({"source_id": source_id, "epoch_id": epoch_id,
                          "is_binary": lab["is_binary"], "snr": lab["snr"],
                          "phase": lab["phase"], "rv_separation": lab["rv_separation"],
                          **(extra or {})})
    for k in PARAMETERS + ("mass", "radius", "rv", "light_fraction"):
        truth[f"{k}_1"], truth[f"{k}_2"] = lab[k][:, 0], lab[k][:, 1]
    with atomic_path(out / "truth.parquet") as tmp:
        truth.to_parquet(tmp, index=False)
    return out / "truth.parquet"


def mock_catalogue(out_dir: str | Path, n_sources: int = 1000, epochs: tuple[int, int] = (1, 5),
                   binary_fraction: float = 0.5, n_files: int = 4,
                   config: SimulationConfig | None = None, seed: int = 1) -> dict:
    """Write ``n_files`` bulk ECSV files and ``truth.parquet`` into ``out_dir``.

    Returns counts: sources, binaries, epoch spectra, files (paths).
    """
    cfg = (config or SimulationConfig()).replace(output_grid="gaia_dr3",
                                                 binary_fraction=binary_fraction, seed=seed)
    renderer, lab, itp, source_id, hp, rep, rng = _draw(n_sources, epochs, cfg, seed)
    n_spec = len(rep)
    # a new orbital phase and a new S/N at every epoch (same stars, same orbit)
    # each source at its own systemic velocity where the recipe draws one (realistic: ±300 km/s)
    _epoch_rvs(lab, rng.random(n_spec), lab["gamma"] if "gamma" in lab else cfg.gamma)
    flux, err = _render(renderer, lab, itp, cfg, rng)
    # the RVS pipeline leaves NaN at the spectrum edges of some spectra
    for i in np.flatnonzero(rng.random(n_spec) < 0.1):
        k_lo, k_hi = rng.integers(0, 15, size=2)
        flux[i, :k_lo] = np.nan
        flux[i, len(cfg.wave) - k_hi:] = np.nan
    transit = np.arange(n_spec, dtype=np.int64) * 7919 + 10 ** 12
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = _truth(out, source_id[rep], transit, lab)
    files = []
    bounds = np.linspace(0, n_sources, n_files + 1).astype(int)
    for f in range(n_files):
        src = np.arange(bounds[f], bounds[f + 1])
        if src.size == 0:
            continue
        rows = np.flatnonzero(np.isin(rep, src))
        df = pd.DataFrame({"source_id": source_id[rep[rows]], "epoch_id": transit[rows],
                           "wave": [RVS_WAVE] * len(rows),
                           "flux": list(flux[rows]), "flux_error": list(err[rows])})
        name = f"RvsEpochSpectrum_{hp[src[0]]:06d}-{hp[src[-1]]:06d}.csv.gz"
        files.append(write_bulk_ecsv(out / name, df, array_length=len(RVS_WAVE)))
    return dict(sources=int(n_sources), binaries=int(lab["is_binary"][np.unique(
        rep, return_index=True)[1]].sum()), epoch_spectra=int(n_spec),
        files=[str(p) for p in files], truth=str(truth))


def _dpac_normalisation(flux, err, lab, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DPAC's normalisation of each transit: 0 for double-lined SB2 transits (raw flux: times a
    positive flux level), 4 for a few others (raw flux with a negative median), 3 for the rest
    (divided by the median). Returns (flux, flux_error, normalisation_method)."""
    n = len(flux)
    level = 10.0 ** rng.uniform(2.5, 4.5, n)  # raw flux scale of a transit [e⁻ per pixel]
    double = lab["is_binary"] & (np.nan_to_num(lab["rv_separation"]) >= DOUBLE_LINED_SEPARATION)
    poor = ~double & (rng.random(n) < 0.04)
    if n >= 5 and not poor.any() and (~double).sum() > 1:  # a few, even in small catalogues
        poor[rng.choice(np.flatnonzero(~double))] = True
    method = np.where(double, 0, np.where(poor, 4, 3)).astype(np.int16)
    median = np.nanmedian(flux, axis=1)
    scale = np.where(method == 3, 1.0 / median, level)
    offset = np.where(method == 4, -1.2 * level * median, 0.0)  # a negative median
    return ((flux * scale[:, None] + offset[:, None]).astype(np.float32),
            (err * np.abs(scale)[:, None]).astype(np.float32), method)


def mock_catalogue_dr4(out_dir: str | Path, n_sources: int = 100,
                       epochs: tuple[int, int] = (2, 8), binary_fraction: float = 0.5,
                       n_files: int = 2, formats: tuple[str, ...] = FORMATS,
                       structures: tuple[str, ...] = STRUCTURES,
                       config: SimulationConfig | None = None, seed: int = 1,
                       systemic_velocity_sigma: float = 40.0) -> dict:
    """Write a mock DR4 epoch-spectrum catalogue (``EPOCH_SPECTRUM_RVS`` DataLink files) and
    ``truth.parquet`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Files go to ``out_dir/<structure>/<format>/``.
    n_sources : int
    epochs : (int, int)
        Transits per source, drawn uniformly (inclusive).
    binary_fraction : float
    n_files : int
        Files per format of the ``DATAMODEL_GAIA`` structure (``DATAMODEL_STANDARD`` has one file
        per source, as the archive delivers it).
    formats : tuple of str
        Of :data:`sb2dask.dataset.gaia_dr4.FORMATS`.
    structures : tuple of str
        Of :data:`sb2dask.dataset.gaia_dr4.STRUCTURES`.
    config : SimulationConfig, optional
        Its S/N range applies per transit (DR4's SB2-relevant transits have S/N ≈ 5-130).
    seed : int
    systemic_velocity_sigma : float
        Standard deviation [km/s] of the sources' systemic velocities (normal, clipped at 3σ).

    Returns
    -------
    dict
        ``sources``, ``binaries``, ``epoch_spectra``, ``normalisation_methods`` (count per
        code), ``files`` (``{structure: {format: [paths]}}``), ``truth``.
    """
    bad = [f for f in formats if f not in FORMATS] + [s for s in structures
                                                      if s not in STRUCTURES]
    if bad:
        raise ValueError(f"unknown format(s)/structure(s) {bad}; choose from {FORMATS} and "
                         f"{STRUCTURES}")
    cfg = (config or SimulationConfig()).replace(output_grid="gaia_dr3",
                                                 binary_fraction=binary_fraction, seed=seed)
    renderer, lab, itp, source_id, _, rep, rng = _draw(n_sources, epochs, cfg, seed)
    n_spec = len(rep)
    dr4 = np.random.default_rng([seed, 11])
    gamma = np.clip(dr4.normal(0.0, systemic_velocity_sigma, n_sources),
                    -3 * systemic_velocity_sigma, 3 * systemic_velocity_sigma)
    time = dr4.uniform(*DR4_TIME_SPAN, n_spec)
    order = np.lexsort((time, rep))  # each source's transits in time order
    time = time[order]
    phase0 = dr4.random(n_sources)
    period = np.where(lab["is_binary"], lab["period"], 1.0)
    _epoch_rvs(lab, (time / period + phase0[rep]) % 1.0, gamma[rep] + cfg.gamma)
    flux, err = _render(renderer, lab, itp, cfg, rng)
    flux, err = resample_to_dr4(RVS_WAVE_VAC_NM, flux, err)  # already at their velocities
    flux, err, method = _dpac_normalisation(flux, err, lab, dr4)
    for i in np.flatnonzero(dr4.random(n_spec) < 0.1):  # all CCDs masked: NaN flux_error
        start = dr4.integers(0, flux.shape[1] - 10)
        err[i, start:start + dr4.integers(2, 10)] = np.nan
    # Gaia transit identifiers grow with time; unique here
    transit = (np.round(time * 1e4).astype(np.int64) << 20) + np.arange(n_spec) % (1 << 20)
    transits = pd.DataFrame({
        "source_id": source_id[rep], "transit_id": transit, "obs_time_rv": time,
        "flux": list(flux), "flux_error": list(err), "normalisation_method": method,
        "combined_ccds": dr4.choice([1, 2, 3], n_spec, p=[0.05, 0.15, 0.8]).astype(np.int16),
        "deblended_ccds": (dr4.random(n_spec) < 0.05).astype(np.int16)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = _truth(out, source_id[rep], transit, lab, {
        "obs_time_rv": time, "normalisation_method": method,
        "gamma": gamma[rep].astype(np.float32),
        "period": np.where(lab["is_binary"], lab["period"], np.nan).astype(np.float32)})
    files: dict[str, dict[str, list[str]]] = {}
    for structure in structures:
        files[structure] = {}
        for fmt in formats:
            folder = out / structure / fmt
            folder.mkdir(parents=True, exist_ok=True)
            if structure == "DATAMODEL_STANDARD":
                groups = [(sid, transits.index[transits["source_id"] == sid])
                          for sid in source_id]
            else:
                bounds = np.linspace(0, n_sources, n_files + 1).astype(int)
                groups = [(k, transits.index[np.isin(rep, np.arange(bounds[k], bounds[k + 1]))])
                          for k in range(n_files) if bounds[k + 1] > bounds[k]]
            files[structure][fmt] = [str(write_dr4_epoch(
                folder / dr4_file_name(structure, fmt, key), transits.loc[rows],
                structure=structure, fmt=fmt)) for key, rows in groups]
    codes, counts = np.unique(method, return_counts=True)
    return dict(sources=int(n_sources), binaries=int(lab["is_binary"][np.unique(
        rep, return_index=True)[1]].sum()), epoch_spectra=int(n_spec),
        normalisation_methods={int(c): int(k) for c, k in zip(codes, counts)},
        files=files, truth=str(truth))
