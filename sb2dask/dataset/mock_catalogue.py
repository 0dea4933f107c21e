"""A realistic simulated epoch catalogue in the Gaia bulk layout, with its truth table.

Sources are single stars or SB2s (``binary_fraction``), each observed at several epochs; an SB2
keeps its stars and orbit and is seen at a new orbital phase at every epoch, so its lines move
between epochs as they would in Gaia DR4. Spectra are simulated on the Gaia RVS grid (2401 pixels,
846-870 nm in vacuum) at R = 11 500 with photon noise, flux errors σ = sqrt(flux)/(S/N), and a
few null edge pixels as the RVS pipeline leaves them. Source identifiers carry a HEALPix level-8
index (``source_id >> 43``) and files cover contiguous index ranges, named like the archive's
(``RvsEpochSpectrum_XXXXXX-YYYYYY.csv.gz``). The truth goes to ``truth.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from ..gaia import HEALPIX_LEVEL8_SHIFT, N_HEALPIX_LEVEL8, RVS_WAVE
from ..labels import PARAMETERS
from ..simulate.config import SimulationConfig
from ..simulate.orbits import radial_velocities
from ..simulate.simulator import simulator_for
from ..simulate.systems import draw_systems
from .gaia_ecsv import write_bulk_ecsv

__all__ = ["mock_catalogue"]


def mock_catalogue(out_dir: str | Path, n_sources: int = 1000, epochs: tuple[int, int] = (1, 5),
                   binary_fraction: float = 0.5, n_files: int = 4,
                   config: SimulationConfig | None = None, seed: int = 1) -> dict:
    """Write ``n_files`` bulk ECSV files and ``truth.parquet`` into ``out_dir``.

    Returns counts: sources, binaries, epoch spectra, files (paths).
    """
    cfg = (config or SimulationConfig()).replace(output_grid="gaia_dr3",
                                                 binary_fraction=binary_fraction, seed=seed)
    lib, sampler, renderer = simulator_for(cfg)
    labels, interp, _ = draw_systems(lib, cfg, np.arange(n_sources), sampler=sampler)
    rng = np.random.default_rng([seed, 7])
    n_ep = rng.integers(epochs[0], epochs[1] + 1, size=n_sources)
    hp = np.sort(rng.choice(N_HEALPIX_LEVEL8, size=n_sources, replace=False))
    source_id = (hp.astype(np.int64) << HEALPIX_LEVEL8_SHIFT) + rng.integers(
        0, 2 ** 35, size=n_sources)
    rep = np.repeat(np.arange(n_sources), n_ep)
    n_spec = len(rep)
    lab = {k: v[rep] for k, v in labels.items()}
    itp = {k: v[rep] for k, v in interp.items()}
    # a new orbital phase and a new S/N at every epoch (same stars, same orbit)
    phase = rng.random(n_spec)
    binary = lab["is_binary"]
    rv1, rv2 = radial_velocities(lab["k"][:, 0], lab["k"][:, 1], phase, cfg.gamma)
    lab["rv"] = np.where(binary[:, None], np.stack([rv1, rv2], axis=1),
                         np.stack([np.full(n_spec, cfg.gamma), np.full(n_spec, np.nan)], axis=1)
                         ).astype(np.float32)
    lab["phase"] = np.where(binary, phase, np.nan).astype(np.float32)
    lab["rv_separation"] = np.where(binary, np.abs(rv1 - rv2), np.nan).astype(np.float32)
    lab["snr"] = rng.uniform(*cfg.snr_range, size=n_spec).astype(np.float32)
    noise = rng.standard_normal((n_spec, len(cfg.wave))).astype(np.float32)
    flux = renderer.render(lab, itp, noise)
    err = (np.sqrt(np.clip(flux, 1e-3, None)) / lab["snr"][:, None]).astype(np.float32)
    # the RVS pipeline leaves NaN at the spectrum edges of some spectra
    for i in np.flatnonzero(rng.random(n_spec) < 0.1):
        k_lo, k_hi = rng.integers(0, 15, size=2)
        flux[i, :k_lo] = np.nan
        flux[i, len(cfg.wave) - k_hi:] = np.nan
    transit = np.arange(n_spec, dtype=np.int64) * 7919 + 10 ** 12
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = pd.DataFrame({"source_id": source_id[rep], "epoch_id": transit,
                          "is_binary": binary, "snr": lab["snr"], "phase": lab["phase"],
                          "rv_separation": lab["rv_separation"]})
    for k in PARAMETERS + ("mass", "radius", "rv", "light_fraction"):
        truth[f"{k}_1"], truth[f"{k}_2"] = lab[k][:, 0], lab[k][:, 1]
    with atomic_path(out / "truth.parquet") as tmp:
        truth.to_parquet(tmp, index=False)
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
    return dict(sources=int(n_sources), binaries=int(labels["is_binary"].sum()),
                epoch_spectra=int(n_spec), files=[str(p) for p in files],
                truth=str(out / "truth.parquet"))
