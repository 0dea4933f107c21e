"""Figures 1 and 2 of Binnenfeld et al. (2025), made from the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..simulate.config import SimulationConfig

__all__ = ["figure_1", "figure_2", "rv_curves", "component_spectra"]


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


def rv_curves(config: SimulationConfig, index: int | None = None, n_epochs: int = 20,
              baseline_days: float = 1000.0) -> dict:
    """The data of Fig. 1: radial velocities of both components of system ``index`` at
    ``n_epochs`` random times over ``baseline_days``, from its recorded orbit.

    Returns
    -------
    dict
        ``t`` (n_epochs,) days after the recorded epoch; ``phase`` (n_epochs,) orbital phase
        (0 = RV maximum of component 1); ``rv`` (n_epochs, 2) km/s of (component 1, component 2),
        ordered like the labels (cooler first); ``labels`` of the system (scalars and pairs).
    """
    from ..simulate.orbits import radial_velocities

    _, labels, _, _ = _system(config, index)
    lab = {k: v[0] for k, v in labels.items()}
    rng = np.random.default_rng([config.seed, int(lab["seed"] % 2 ** 32), 1])
    t = np.sort(rng.uniform(0.0, baseline_days, n_epochs))
    phase = (float(lab["phase"]) + t / float(lab["period"])) % 1.0
    rv1, rv2 = radial_velocities(lab["k"][0], lab["k"][1], phase, float(lab["gamma"]))
    return dict(t=t, phase=phase, rv=np.stack([rv1, rv2], axis=1), labels=lab)


def figure_1(config: SimulationConfig, path: str | Path, index: int | None = None,
             n_epochs: int = 20, baseline_days: float = 1000.0) -> Path:
    """Fig. 1: a 20-epoch RV time series of one simulated SB2, against time and phase-folded
    (data from :func:`rv_curves`)."""
    path = Path(path)
    _draw_rv_curves(rv_curves(config, index, n_epochs, baseline_days)).savefig(path, dpi=120)
    return path


def _draw_rv_curves(d: dict):
    from matplotlib.figure import Figure

    lab = d["labels"]
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots(2, 1)
    for a, x, x0, xl in ((ax[0], d["t"], 0.0, "time [d]"),
                         (ax[1], d["phase"], lab["phase"], "phase")):
        for c, (marker, color) in enumerate((("^", "tab:blue"), ("o", "tab:red"))):
            a.plot(x, d["rv"][:, c], marker, color=color,
                   label=f"component {c + 1} ({lab['teff'][c]:.0f} K, "
                         f"{lab['mass'][c]:.2f} M$_\\odot$)")
        # the recorded epoch (the one Fig. 2 shows): its labels' RVs
        a.plot([x0, x0], lab["rv"], "*", color="k", mfc="none", ms=11, label="recorded epoch")
        a.set_xlabel(xl)
        a.set_ylabel("RV [km/s]")
    ax[0].legend(loc="upper right", fontsize=8)
    ax[0].set_title(f"simulated SB2: P = {lab['period']:.1f} d, K1+K2 = {lab['k_sum']:.1f} km/s, "
                    f"i = {lab['inclination']:.0f}°", fontsize=10)
    return fig


def figure_2(config: SimulationConfig, path: str | Path, index: int | None = None) -> Path:
    """Fig. 2: both component spectra at one epoch next to the combined (observed) spectrum."""
    from matplotlib.figure import Figure

    s = component_spectra(config, index)
    lab = s["labels"]
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots(3, 1, sharex=True)
    for c, color in ((0, "tab:blue"), (1, "tab:red")):
        ax[c].plot(s["wave"], s[f"component_{c + 1}"], color=color, lw=0.8)
        ax[c].set_title(f"component {c + 1}: Teff {lab['teff'][c]:.0f} K, "
                        f"logg {lab['logg'][c]:.2f}, [Fe/H] {lab['feh'][c]:+.2f}, "
                        f"v sin i {lab['vsini'][c]:.0f} km/s, RV {lab['rv'][c]:+.1f} km/s, "
                        f"light {lab['light_fraction'][c]:.2f}", fontsize=8)
    ax[2].plot(s["wave"], s["observed"], color="k", lw=0.7,
               label=f"observed, S/N {lab['snr']:.0f}")
    ax[2].plot(s["wave"], s["blend"], color="tab:orange", lw=0.8, label="noise-free blend")
    ax[2].legend(fontsize=8, loc="lower left")
    ax[2].set_xlabel("wavelength [Å, air]")
    for a in ax:
        a.set_ylabel("normalised flux")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
