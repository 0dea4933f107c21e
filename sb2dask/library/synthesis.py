"""Pure core of the embedded-grid builder: one LTE spectrum per (Teff, logg, [Fe/H]) node.

Model atmospheres come from atmosnet 1.0.1 (neural-network emulators of C3K/ATLAS12 atmospheres),
radiative transfer from pysme-astro 1.2.0 (SME), atomic lines from the Gaia-ESO list
(:mod:`sb2dask.library.linelist`) plus the hydrogen Paschen series. Both packages live in the
``grid`` extra; importing this module does not import them.

Physics limits of this route, recorded in the grid's metadata: atomic lines only (no TiO/CN, so
M dwarfs lack their molecular forest), LTE, 1D plane-parallel; atmospheres only inside atmosnet's
training hull (logg <= 5.5 for Teff <= 4250 K, logg <= 5.0 above); at 3500 K and [Fe/H] <= -2 the
emulated atmospheres are off hydrostatic balance by tens of percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SynthesisSettings",
    "blackbody_flux",
    "check_node_physics",
    "NodeRefused",
    "check_atmosphere_hull",
    "atmosnet_atmosphere",
    "synthesize_node",
]

K_B = 1.380649e-16  # erg/K
M_H = 1.6735575e-24  # g, the constant pysme's Kurucz reader uses
_ALPHA_ELEMENTS = ("O", "Ne", "Mg", "Si", "S", "Ar", "Ca", "Ti")


class NodeRefused(ValueError):
    """The node lies outside what this synthesis route can compute honestly."""


@dataclass(frozen=True, slots=True)
class SynthesisSettings:
    """How each node is synthesised.

    Attributes
    ----------
    wmin, wmax, dwave : float
        Output air-wavelength grid [Å]: ``arange(wmin, wmax + dwave/2, dwave)``.
    accwi : float
        SME's line-contribution threshold; 1e-3 keeps strong-line core errors <= 0.005.
    paschen_min_teff : float
        Teff [K] from which the Paschen lines are synthesised (they change the flux by < 0.002 below
        5000 K but cost 3-5x the time).
    vturb_dwarf, vturb_giant : float
        Microturbulence [km/s] for logg >= 3.5 and below.
    continuum_wave : float
        Wavelength [Å] at which the absolute continuum flux is recorded.
    """

    wmin: float = 8440.0
    wmax: float = 8740.0
    dwave: float = 0.05
    accwi: float = 1e-3
    paschen_min_teff: float = 5000.0
    vturb_dwarf: float = 1.0
    vturb_giant: float = 1.5
    continuum_wave: float = 8600.0

    @property
    def wave(self) -> np.ndarray:
        n = int(round((self.wmax - self.wmin) / self.dwave)) + 1
        return self.wmin + self.dwave * np.arange(n)


def blackbody_flux(teff: float, wave: float) -> float:
    """Surface flux π B_λ(T) [erg s⁻¹ cm⁻² Å⁻¹] of a blackbody at ``wave`` [Å]."""
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    lam = wave * 1e-8
    return float(np.pi * 2 * h * c ** 2 / lam ** 5 / np.expm1(h * c / (lam * k * teff)) * 1e-8)


def check_node_physics(teff: float, flux: np.ndarray, continuum_ref: float,
                       continuum_wave: float = 8600.0) -> None:
    """Refuse a synthesised node whose output is unphysical.

    The atmosphere emulator occasionally returns structures on which the radiative transfer gives
    an absurd continuum (seen at 6500 K, logg 3.0, [Fe/H] <= -3: 1e6-1e19 times the blackbody) and
    normalised fluxes far above 1. Valid nodes lie within 0.8-1.6 of π B_λ(Teff) at 8600 Å.

    Raises
    ------
    NodeRefused
        If the continuum is outside 0.4-2.5 times the blackbody, or the normalised flux leaves
        [-0.005, 1.02].
    """
    ratio = continuum_ref / blackbody_flux(teff, continuum_wave)
    lo, hi = float(np.min(flux)), float(np.max(flux))
    if not 0.4 <= ratio <= 2.5 or lo < -0.005 or hi > 1.02:
        raise NodeRefused(
            f"unphysical synthesis output (atmosphere emulator failure): continuum at "
            f"{continuum_wave:.0f} Å is {ratio:.3g} x the blackbody, normalised flux in "
            f"[{lo:.3g}, {hi:.3g}]")


_MODELS = None


def _atmosnet_models():
    global _MODELS
    if _MODELS is None:
        import scipy.integrate as si

        if not hasattr(si, "trapz"):  # atmosnet 1.0.1 imports trapz, removed in SciPy 1.14
            si.trapz = si.trapezoid
        from atmosnet import models

        _MODELS = models.load_models()
    return _MODELS


def check_atmosphere_hull(training_labels: np.ndarray, teff: float, logg: float) -> None:
    """Refuse extrapolation in logg beyond atmosnet's training grid.

    The network's box accepts logg 5.5 at every Teff but returns broken atmospheres where it was
    not trained; logg must lie inside the trained range at both bracketing training Teffs.

    Raises
    ------
    NodeRefused
        With the training range that excludes the node.
    """
    tg = np.unique(training_labels[:, 0])
    lo = tg[tg <= teff].max() if np.any(tg <= teff) else tg.min()
    hi = tg[tg >= teff].min() if np.any(tg >= teff) else tg.max()
    for t in (lo, hi):
        sel = training_labels[:, 0] == t
        glo, ghi = training_labels[sel, 1].min(), training_labels[sel, 1].max()
        if not glo - 1e-6 <= logg <= ghi + 1e-6:
            raise NodeRefused(
                f"atmosnet was trained for logg {glo}-{ghi} at Teff {t:.0f} K; "
                f"logg {logg} at Teff {teff:.0f} K would be extrapolation")


def atmosnet_atmosphere(teff: float, logg: float, feh: float, alpha: float = 0.0) -> dict:
    """80-depth atmosphere (RHOX, T, P_gas, n_e, κ_Ross, τ_Ross) from atmosnet.

    atmosnet 1.0.1 returns ``exp(net) - 1e-16`` although its networks were trained on log10 of
    the columns; ``10 ** log(out + 1e-16)`` restores hydrostatic balance (P_gas = g·RHOX to 1-3 %).
    """
    m = _atmosnet_models()
    labels = np.array([teff, logg, feh, alpha], dtype=float)
    sub = m.get_best_model(labels)
    if sub is None:
        raise NodeRefused(f"atmosnet has no network covering {labels.tolist()}")
    check_atmosphere_hull(sub._data[0]["training_labels"], teff, logg)
    d = 10.0 ** np.log(sub(labels).data + 1e-16)
    rhox, temp, pgas, xne, abross = (d[:, k] for k in range(5))
    tau = np.empty_like(rhox)
    tau[0] = abross[0] * rhox[0]
    tau[1:] = tau[0] + np.cumsum(0.5 * (abross[1:] + abross[:-1]) * np.diff(rhox))
    hydrostatic = float(np.median(np.abs(pgas / (10.0 ** logg * rhox) - 1.0)))
    return dict(rhox=rhox, temp=temp, pgas=pgas, xne=xne, abross=abross, tauross=tau,
                hydrostatic_error=hydrostatic)


def _abundances(feh: float, alpha: float):
    from pysme.abund import Abund

    ab = Abund(monh=feh, pattern="asplund2009")
    if alpha:
        for el in _ALPHA_ELEMENTS:
            ab.set_pattern_abundance(el, ab.get_pattern_abundance(el) + alpha)
    return ab


def _sme_atmosphere(teff, logg, feh, alpha, vturb, abund, atm):
    from pysme.atmosphere.atmosphere import Atmosphere
    from pysme.atmosphere.krzfile import atmoic_mass

    # Same conversion as pysme's own Kurucz-deck reader: XNA = P/(kT), RHO = XNA·μ·m_H.
    ratios = abund(type="n/nH", raw=False)
    num = sum(v for v in ratios.values() if np.isfinite(v))
    mass = sum(v * atmoic_mass[k] for k, v in ratios.items() if np.isfinite(v))
    xna = atm["pgas"] / (K_B * atm["temp"])
    rho = xna * (mass / num) * M_H
    atmo = Atmosphere(teff=teff, logg=logg, monh=feh, vturb=vturb, method="embedded", geom="PP",
                      depth="RHOX", interp="RHOX", rhox=atm["rhox"], tau=atm["tauross"],
                      temp=atm["temp"], xne=atm["xne"], xna=xna, rho=rho, wlstd=5000.0,
                      source="atmosnet-1.0.1")
    atmo.abund = abund
    return atmo


def synthesize_node(teff: float, logg: float, feh: float, linelist, settings: SynthesisSettings,
                    alpha: float = 0.0) -> dict:
    """Synthesise one grid node at R = ∞ and v sin i = 0.

    Parameters
    ----------
    teff, logg, feh : float
        Node labels [K, dex(cgs), dex].
    linelist : pandas.DataFrame
        Atomic lines in SME conventions (:func:`sb2dask.library.linelist.load_window_linelist`);
        Paschen lines are added here when ``teff >= settings.paschen_min_teff``.
    settings : SynthesisSettings

    Returns
    -------
    dict
        ``flux`` (normalised, shape ``(n_pix,)``), ``continuum`` (absolute surface continuum flux
        at ``settings.wave`` in SME's units, erg s⁻¹ cm⁻² Å⁻¹ per steradian-integrated disk, see
        the grid docs), ``continuum_ref`` (the continuum at ``settings.continuum_wave``),
        ``hydrostatic_error``.

    Raises
    ------
    NodeRefused
        Outside atmosnet's training hull.
    """
    import pandas as pd
    from pysme.linelist.linelist import LineList
    from pysme.sme import SME_Structure
    from pysme.synthesize import synthesize_spectrum

    from .linelist import paschen_lines

    atm = atmosnet_atmosphere(teff, logg, feh, alpha)
    vturb = settings.vturb_dwarf if logg >= 3.5 else settings.vturb_giant
    lines = linelist
    if teff >= settings.paschen_min_teff:
        lines = pd.concat([linelist, paschen_lines(settings.wmin, settings.wmax)],
                          ignore_index=True).sort_values("wlcent", kind="stable")
    sme = SME_Structure()
    sme.teff, sme.logg, sme.monh, sme.vmic = teff, logg, feh, vturb
    sme.vsini, sme.vmac = 0.0, 0.0
    sme.abund = _abundances(feh, alpha)
    sme.atmo = _sme_atmosphere(teff, logg, feh, alpha, vturb, sme.abund, atm)
    sme.linelist = LineList(lines.reset_index(drop=True), lineformat="short", medium="air")
    wave = settings.wave
    sme.wave = [wave]
    sme.normalize_by_continuum = True
    sme.vrad_flag = "none"
    sme.cscale_flag = "none"
    sme.accwi = settings.accwi
    sme = synthesize_spectrum(sme)
    flux = np.asarray(sme.synth[0], dtype=np.float64)
    cont = np.asarray(sme.cont[0], dtype=np.float64)
    if flux.shape != wave.shape or not np.all(np.isfinite(flux)) or not np.all(cont > 0):
        raise RuntimeError(f"SME returned a bad spectrum for {teff}/{logg}/{feh}")
    continuum_ref = float(np.interp(settings.continuum_wave, wave, cont))
    check_node_physics(teff, flux, continuum_ref, settings.continuum_wave)
    return dict(flux=flux, continuum=cont, continuum_ref=continuum_ref,
                hydrostatic_error=atm["hydrostatic_error"])
