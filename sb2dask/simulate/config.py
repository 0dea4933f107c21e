"""Simulation configuration: a frozen dataclass that round-trips to YAML."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..config import ConfigMixin
from ..gaia import (
    DR4_EPOCH_N_PIX,
    RVS_N_PIX,
    RVS_RESOLVING_POWER,
    RVS_WAVE_END_NM,
    RVS_WAVE_START_NM,
)
from ..labels import TABLE1_RANGES
from ..library.base import RVS_WINDOW
from .realism import Realism

__all__ = ["SimulationConfig", "OUTPUT_GRIDS", "DEFAULT_OUTPUT_GRID", "output_wave"]

_GAIA_RANGE = (10.0 * RVS_WAVE_START_NM, 10.0 * RVS_WAVE_END_NM)  # [Å], vacuum

#: Output pixel layouts (low, high, pixels, medium): the paper's 903 pixels over 8470-8710 Å (air),
#: Gaia DR3's mean-spectrum layout, 2401 pixels at 0.01 nm over 846-870 nm in *vacuum*
#: (measured on the real DR3 spectra: the Ca II lines sit at 8500.4, 8544.5, 8664.5 Å), and
#: Gaia DR4's epoch-spectrum layout, 961 pixels at 0.025 nm over the same range.
OUTPUT_GRIDS = {
    "rvs903": (*RVS_WINDOW, 903, "air"),
    "gaia_dr3": (*_GAIA_RANGE, RVS_N_PIX, "vacuum"),
    # The paper's 903-pixel input over the range Gaia DR3 actually publishes: its 8470-8710 Å
    # window runs 10 Å past the red end of the DR3 spectra (8700 Å vacuum = 8697.6 Å air), so
    # models meant for real DR3/DR4 spectra (the shipped ones) are trained on this layout.
    "gaia_dr3_903": (*_GAIA_RANGE, 903, "vacuum"),
    # Gaia DR4's epoch-spectrum layout: 961 pixels, 846.0 + 0.025·i nm in vacuum
    # (sb2dask.gaia.DR4_EPOCH_WAVE), the output of the DR4 recipe.
    "gaia_dr4_961": (*_GAIA_RANGE, DR4_EPOCH_N_PIX, "vacuum"),
}

#: The layout of the shipped models, so that a default simulation is what they read.
DEFAULT_OUTPUT_GRID = "gaia_dr3_903"


def output_wave(name: str, medium: str = "air") -> np.ndarray:
    """Pixel wavelengths [Å] of a named layout in ``medium`` (``"air"`` or ``"vacuum"``).

    The simulator works in air; a vacuum layout such as ``gaia_dr3`` is simulated at the air
    wavelengths of its vacuum pixels, so writing the spectra with the nominal vacuum grid
    reproduces the survey's pixels exactly.
    """
    from ..library.wavelength import air_to_vac, vac_to_air

    try:
        lo, hi, n, native = OUTPUT_GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown output grid {name!r}; choose from {sorted(OUTPUT_GRIDS)}"
                         ) from None
    if medium not in ("air", "vacuum"):
        raise ValueError(f"medium must be 'air' or 'vacuum', got {medium!r}")
    wave = np.linspace(lo, hi, n)
    if native == medium:
        return wave
    return vac_to_air(wave) if native == "vacuum" else air_to_vac(wave)


@dataclass(frozen=True, slots=True)
class SimulationConfig(ConfigMixin):
    """Everything that determines a simulated data set (Binnenfeld et al. 2025, Sect. 2, Table 1).

    Ranges are (low, high); labels are drawn uniformly inside them, clipped to what the spectral
    library covers. Units: K, dex (cgs), dex, km/s, days.

    Attributes
    ----------
    library : str
        ``"embedded"``, a grid file, or a PHOENIX directory (see
        :func:`sb2dask.library.load_library`).
    k_sum_range : tuple
        K1 + K2 [km/s], drawn uniformly; the period is drawn log-uniformly in ``period_range`` and
        the inclination then follows from K1 + K2 (redrawing the period if sin i would exceed 1).
    snr_range : tuple
        Continuum S/N per output pixel, uniform; noise is Gaussian with σ = sqrt(flux)/S/N. The
        DR4 recipe draws it from G_RVS inside this range instead (``realism.grvs_range``), and
        its S/N is that of the combined CCD spectra on the output grid (:mod:`.transits`).
    binary_fraction : float
        Fraction of SB2 systems; the rest are single stars (1.0 for the paper's training set).
    output_grid : str
        Output pixel layout, a key of :data:`OUTPUT_GRIDS`. The default, ``gaia_dr3_903``, is the
        layout of the shipped models; ``rvs903`` is the paper's window (8470-8710 Å, air), which
        runs past the red end of Gaia DR3 spectra.
    working_dv : float
        Velocity step [km/s] of the internal ln(λ) grid on which broadening and shifts are applied.
    gamma : float
        A constant systemic velocity [km/s] added to every spectrum (on top of
        ``realism.systemic_velocity``).
    realism : Realism
        Survey and astrophysical nuisances drawn per spectrum (:mod:`sb2dask.simulate.realism`):
        systemic velocity, resolving power, continuum errors, line-depth and Ca II scaling,
        correlated Gaia-like noise, gaps. The default is the paper's recipe (everything fixed,
        stars at rest), which the paper-recipe ensembles (``--models paper``) were trained on;
        :meth:`realistic` randomises them as measured on real Gaia spectra (the default model
        set, ``fast``, was distilled from models trained on it).
    """

    library: str = "embedded"
    teff_range: tuple[float, float] = TABLE1_RANGES["teff"]
    logg_range: tuple[float, float] = TABLE1_RANGES["logg"]
    feh_range: tuple[float, float] = TABLE1_RANGES["feh"]
    vsini_range: tuple[float, float] = TABLE1_RANGES["vsini"]
    k_sum_range: tuple[float, float] = (10.0, 90.0)
    period_range: tuple[float, float] = (1.0, 1000.0)
    gamma: float = 0.0
    snr_range: tuple[float, float] = (30.0, 350.0)
    resolution: float = RVS_RESOLVING_POWER
    output_grid: str = DEFAULT_OUTPUT_GRID
    limb_darkening: float = 0.6
    working_dv: float = 1.0
    binary_fraction: float = 1.0
    seed: int = 20250717
    realism: Realism = Realism.paper()

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_range"):
                if len(v) != 2 or not v[0] <= v[1]:
                    raise ValueError(f"{f.name} must be (low, high) with low <= high, got {v!r}")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))
        if not 0.0 <= self.binary_fraction <= 1.0:
            raise ValueError(f"binary_fraction must lie in [0, 1], got {self.binary_fraction}")
        if self.snr_range[0] <= 0:
            raise ValueError(f"snr_range must be positive, got {self.snr_range}")
        if self.vsini_range[0] < 0 or self.k_sum_range[0] < 0:
            raise ValueError("vsini_range and k_sum_range must be non-negative")
        output_wave(self.output_grid)
        if isinstance(self.realism, dict):
            object.__setattr__(self, "realism", Realism.from_dict(self.realism))
        if not isinstance(self.realism, Realism):
            raise ValueError(f"realism must be a Realism or a dict, got {self.realism!r}")
        # The renderer shifts spectra on a circular ln-λ grid that spans the library: a shift
        # must stay inside the margin between the library's and the output's blue edges.
        v_max = (abs(self.gamma) + max(abs(v) for v in self.realism.systemic_velocity)
                 + self.k_sum_range[1])
        if v_max > 600.0:
            raise ValueError(f"|gamma| + systemic_velocity + K1+K2 reach {v_max:.0f} km/s; the "
                             "renderer supports radial velocities up to 600 km/s")

    @classmethod
    def paper(cls, **changes) -> SimulationConfig:
        """The recipe of Binnenfeld et al. (2025): every star at rest (γ = 0), one resolving
        power, white sqrt(flux) noise, the library's line strengths and continuum. The default
        recipe: the paper's reproduction (``--models paper``) was trained on it."""
        res = changes.get("resolution", cls.__dataclass_fields__["resolution"].default)
        return cls(**{"realism": Realism.paper(res), **changes})

    @classmethod
    def realistic(cls, **changes) -> SimulationConfig:
        """Stars at any systemic velocity with Gaia's nuisances drawn per spectrum
        (:class:`~.realism.Realism` defaults; docs/simulation.md)."""
        return cls(**{"realism": Realism(), **changes})

    @classmethod
    def dr4(cls, **changes) -> SimulationConfig:
        """Spectra that look like Gaia DR4 epoch spectra (transits) of the DR4 SB2 candidates:
        the realistic recipe's nuisances (systemic velocities of the barycentric frame included),
        on the 961-pixel DR4 grid, each spectrum the mean of 1-3 CCD spectra interpolated onto it
        (:mod:`~.transits`: correlated noise, DPAC's quoted errors), S/N 5-150 following G_RVS
        5.5-12.5 (dN/dG ∝ 10^(0.25 G)), a quarter of the spectra median-normalised besides the
        faint and cool ones (docs/simulation.md, "The DR4 recipe")."""
        realism = Realism(noise_correlation=(0.0, 0.0), ccd_weights=(0.05, 0.10, 0.85),
                          grvs_range=(5.5, 12.5), grvs_slope=0.25, snr_scatter=0.1,
                          median_norm_fraction=0.25)
        return cls(**{"realism": realism, "output_grid": "gaia_dr4_961",
                      "snr_range": (5.0, 150.0), **changes})

    def to_dict(self) -> dict:
        d = ConfigMixin.to_dict(self)
        d["realism"] = self.realism.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        d = dict(d)
        # stores written before the realism settings existed used the paper's recipe
        d["realism"] = (Realism.from_dict(d["realism"]) if "realism" in d
                        else Realism.paper(d.get("resolution",
                                                 cls.__dataclass_fields__["resolution"].default)))
        return ConfigMixin.from_dict.__func__(cls, d)

    @property
    def wave(self) -> np.ndarray:
        return output_wave(self.output_grid)

    @property
    def ccd_ratio(self) -> float:
        """A CCD sample's step over the output grid's (0.98 for DR4's 0.0245 and 0.025 nm)."""
        lo, hi, n, _ = OUTPUT_GRIDS[self.output_grid]
        return 10.0 * self.realism.ccd_pixel_nm / ((hi - lo) / (n - 1))

    @property
    def n_noise(self) -> int:
        """Standard-normal deviates per spectrum: one per output pixel, or one per sample of
        every CCD when spectra are combined from CCD spectra."""
        n_out = OUTPUT_GRIDS[self.output_grid][2]
        if not self.realism.ccd_weights:
            return n_out
        from .transits import MAX_CCDS, n_samples

        return MAX_CCDS * n_samples(self.ccd_ratio, n_out)
