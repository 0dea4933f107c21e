"""The :class:`SpectralLibrary` protocol every spectral library implements, and its value types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["GridAxes", "ParameterRanges", "SpectralLibrary", "MissingNodeError",
           "CONTINUUM_REFERENCE_WAVE", "RVS_WINDOW", "describe_library"]

#: Wavelength [Å, air] at which libraries report the absolute continuum flux used for light ratios.
CONTINUUM_REFERENCE_WAVE = 8600.0
#: The Gaia RVS window [Å, air] of Binnenfeld et al. (2025).
RVS_WINDOW = (8470.0, 8710.0)


class MissingNodeError(KeyError):
    """A requested (Teff, logg, [Fe/H]) node is not in the library."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class GridAxes:
    """Node values of a rectangular grid; not every combination need be available."""

    teff: tuple[float, ...]
    logg: tuple[float, ...]
    feh: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.teff), len(self.logg), len(self.feh)

    def index(self, teff: float, logg: float, feh: float) -> tuple[int, int, int]:
        """Indices of a node; raises :class:`MissingNodeError` if a value is not a node."""
        out = []
        for name, nodes, v in (("teff", self.teff, teff), ("logg", self.logg, logg),
                               ("feh", self.feh, feh)):
            hit = np.flatnonzero(np.isclose(nodes, v, rtol=0, atol=1e-6))
            if hit.size == 0:
                raise MissingNodeError(f"{name}={v} is not a grid node (nodes: {list(nodes)})")
            out.append(int(hit[0]))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class ParameterRanges:
    """Label ranges a library covers. ``logg_max_by_teff`` gives, for Teff <= key, the highest logg
    with available nodes (e.g. ``((4200, 5.5), (6500, 5.0))``)."""

    teff: tuple[float, float]
    logg: tuple[float, float]
    feh: tuple[float, float]
    logg_max_by_teff: tuple[tuple[float, float], ...] = ()

    def logg_max(self, teff) -> np.ndarray:
        """Highest covered logg at each ``teff`` (vectorised)."""
        teff = np.asarray(teff, dtype=float)
        if not self.logg_max_by_teff:
            return np.full(teff.shape, self.logg[1])
        out = np.full(teff.shape, self.logg[0])
        for t_hi, g in sorted(self.logg_max_by_teff, reverse=True):
            out = np.where(teff <= t_hi, g, out)
        return out


@runtime_checkable
class SpectralLibrary(Protocol):
    """A grid of stellar spectra for the RVS window.

    Fluxes are continuum-normalised on the native air-wavelength grid :attr:`wave` [Å];
    absolute continuum fluxes are surface fluxes [erg s⁻¹ cm⁻² Å⁻¹]; masses in M_sun and radii in
    R_sun are main-sequence values at each node.
    """

    @property
    def name(self) -> str: ...

    @property
    def axes(self) -> GridAxes: ...

    @property
    def wave(self) -> np.ndarray:
        """Native wavelength grid, air, Å, shape ``(n_pix,)``."""

    @property
    def resolution(self) -> float:
        """Native resolving power λ/Δλ of the spectra (``inf`` for R = ∞ synthesis)."""

    @property
    def available(self) -> np.ndarray:
        """Boolean mask of shape :attr:`GridAxes.shape`: which nodes exist."""

    @property
    def provenance(self) -> dict: ...

    def ranges(self) -> ParameterRanges: ...

    def flux(self, teff: float, logg: float, feh: float) -> np.ndarray:
        """Normalised flux at a node, shape ``(n_pix,)``; :class:`MissingNodeError` if absent."""

    def continuum(self, teff: float, logg: float, feh: float,
                  wave: float | np.ndarray = CONTINUUM_REFERENCE_WAVE) -> np.ndarray:
        """Absolute surface continuum flux at ``wave`` [erg s⁻¹ cm⁻² Å⁻¹]."""

    def mass(self, teff: float, logg: float, feh: float) -> float: ...

    def radius(self, teff: float, logg: float, feh: float) -> float: ...


def describe_library(lib: SpectralLibrary) -> str:
    """Human-readable summary: nodes, ranges, availability, provenance headline."""
    ax, r = lib.axes, lib.ranges()
    avail = lib.available
    lines = [
        f"library      {lib.name}",
        f"teff nodes   {len(ax.teff)}: {ax.teff[0]:.0f}-{ax.teff[-1]:.0f} K",
        f"logg nodes   {len(ax.logg)}: {', '.join(f'{g:g}' for g in ax.logg)}",
        f"[Fe/H] nodes {len(ax.feh)}: {', '.join(f'{z:+g}' for z in ax.feh)}",
        f"available    {int(avail.sum())} of {avail.size} nodes",
        f"wavelength   {lib.wave[0]:.2f}-{lib.wave[-1]:.2f} Å (air), {lib.wave.size} pixels, "
        f"R = {lib.resolution:g}",
        f"valid range  Teff {r.teff[0]:.0f}-{r.teff[1]:.0f} K, logg {r.logg[0]:g}-{r.logg[1]:g}, "
        f"[Fe/H] {r.feh[0]:+g} to {r.feh[1]:+g}",
    ]
    for t_hi, g in r.logg_max_by_teff:
        lines.append(f"             logg <= {g:g} for Teff <= {t_hi:.0f} K")
    return "\n".join(lines)
