"""Figures 1 and 2 of Binnenfeld et al. (2025), made from the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..simulate.config import SimulationConfig

__all__ = ["figure_1", "figure_2", "component_spectra"]


def _system(config: SimulationConfig, index: int | None):
    """System ``index`` of the configuration; None picks the first one that shows both stars
    well (each ≥ 25 % of the light, RV separation ≥ 40 km/s)."""
    from ..simulate.simulator import simulator_for
    from ..simulate.systems import draw_systems

    cfg = config.replace(binary_fraction=1.0)
    lib, sampler, renderer = simulator_for(cfg)
    if index is None:
        lab, _, _ = draw_systems(lib, cfg, np.arange(500), sampler=sampler)
        ok = (lab["light_fraction"].min(axis=1) >= 0.25) & (lab["rv_separation"] >= 40)
        index = int(np.flatnonzero(ok)[0]) if ok.any() else 0
    labels, interp, noise = draw_systems(lib, cfg, np.array([index]), sampler=sampler)
    return renderer, labels, interp, noise


def component_spectra(config: SimulationConfig, index: int | None) -> dict:
    """Both components (shifted, broadened, at the instrument's resolution, each normalised to its
    own continuum), the noise-free blend and the observed blend of system ``index``."""
    renderer, labels, interp, noise = _system(config, index)
    out = dict(wave=config.wave, labels={k: v[0] for k, v in labels.items()})
    for c in range(2):
        solo = dict(labels)
        frac = np.zeros_like(labels["light_fraction"])
        frac[:, c] = 1.0
        solo["light_fraction"] = frac
        out[f"component_{c + 1}"] = renderer.render(solo, interp, None)[0]
    out["blend"] = renderer.render(labels, interp, None)[0]
    out["observed"] = renderer.render(labels, interp, noise)[0]
    return out


def figure_1(config: SimulationConfig, path: str | Path, index: int | None = None,
             n_epochs: int = 20, baseline_days: float = 1000.0) -> Path:
    """Fig. 1: a 20-epoch RV time series of one simulated SB2, against time and phase-folded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..simulate.orbits import radial_velocities

    _, labels, _, _ = _system(config, index)
    lab = {k: v[0] for k, v in labels.items()}
    rng = np.random.default_rng([config.seed, int(lab["seed"] % 2 ** 32), 1])
    t = np.sort(rng.uniform(0.0, baseline_days, n_epochs))
    period = float(lab["period"])
    phase = (lab["phase"] + t / period) % 1.0
    # Component 1 of the orbit is the more massive star (K1 = K_sum·M2/M_tot).
    hot = int(np.argmax(lab["mass"]))
    rv_hot, rv_cool = radial_velocities(lab["k"][hot], lab["k"][1 - hot], phase, config.gamma)
    fig, ax = plt.subplots(2, 1, figsize=(7, 6), constrained_layout=True)
    for a, x, xl in ((ax[0], t, "time [d]"), (ax[1], phase, "phase")):
        a.plot(x, rv_hot, "o", color="tab:red", label=f"primary ({lab['teff'][hot]:.0f} K)")
        a.plot(x, rv_cool, "^", color="tab:blue", label=f"secondary ({lab['teff'][1 - hot]:.0f} K)")
        a.set_xlabel(xl)
        a.set_ylabel("RV [km/s]")
    ax[0].legend(loc="upper right", fontsize=8)
    ax[0].set_title(f"simulated SB2: P = {period:.1f} d, K1+K2 = {lab['k_sum']:.1f} km/s, "
                    f"i = {lab['inclination']:.0f}°", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure_2(config: SimulationConfig, path: str | Path, index: int | None = None) -> Path:
    """Fig. 2: both component spectra at one epoch next to the combined (observed) spectrum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = component_spectra(config, index)
    lab = s["labels"]
    fig, ax = plt.subplots(3, 1, figsize=(8, 7), sharex=True, constrained_layout=True)
    for c, color in ((0, "tab:blue"), (1, "tab:red")):
        ax[c].plot(s["wave"], s[f"component_{c + 1}"], color=color, lw=0.8)
        ax[c].set_title(f"component {c + 1}: Teff {lab['teff'][c]:.0f} K, logg {lab['logg'][c]:.2f}, "
                        f"[Fe/H] {lab['feh'][c]:+.2f}, v sin i {lab['vsini'][c]:.0f} km/s, "
                        f"RV {lab['rv'][c]:+.1f} km/s, light {lab['light_fraction'][c]:.2f}",
                        fontsize=8)
    ax[2].plot(s["wave"], s["observed"], color="k", lw=0.7, label=f"observed, S/N {lab['snr']:.0f}")
    ax[2].plot(s["wave"], s["blend"], color="tab:orange", lw=0.8, label="noise-free blend")
    ax[2].legend(fontsize=8, loc="lower left")
    ax[2].set_xlabel("wavelength [Å, air]")
    for a in ax:
        a.set_ylabel("normalised flux")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
