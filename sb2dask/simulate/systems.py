"""Random SB2 (and single-star) systems: labels, grid-interpolation weights, orbits.

Each spectrum ``i`` of a data set draws from its own generator seeded by
``SeedSequence([config.seed, i])``, so a spectrum depends only on the configuration and its global
index: never on chunk size, worker count or scheduling order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import DESCRIPTIONS, PARAMETERS, UNITS
from ..library.base import CONTINUUM_REFERENCE_WAVE, SpectralLibrary
from .config import SimulationConfig
from .orbits import k_sum_max, radial_velocities, semi_amplitudes
from .realism import NUISANCE_FIELDS, draw_realism

__all__ = ["LABEL_FIELDS", "GridSampler", "Orbit", "spectrum_seed", "draw_orbit", "draw_systems"]

#: Per-spectrum fields produced by :func:`draw_systems`: name -> (shape suffix, dtype, unit,
#: description). ``(2,)`` fields hold (cooler, hotter) components; for single stars the second
#: component is NaN.
LABEL_FIELDS = {
    **{name: ((2,), "f4", UNITS[name],
              DESCRIPTIONS[name] + (", lower first" if name == "teff" else ", ordered like teff"))
       for name in PARAMETERS},
    "mass": ((2,), "f4", "Msun", "main-sequence mass, ordered like teff"),
    "radius": ((2,), "f4", "Rsun", "radius from logg and mass, ordered like teff"),
    "light_fraction": ((2,), "f4", "", "fraction of the continuum light at "
                       f"{CONTINUUM_REFERENCE_WAVE:.0f} Å"),
    "k": ((2,), "f4", "km/s", "RV semi-amplitude, ordered like teff"),
    "rv": ((2,), "f4", "km/s", "radial velocity at the epoch, ordered like teff"),
    "interp_axis": ((2,), "i1", "", "grid axis interpolated (0 teff, 1 logg, 2 feh)"),
    "flux_ratio": ((), "f4", "", "continuum flux ratio cooler/hotter at 8600 Å"),
    "k_sum": ((), "f4", "km/s", "K1 + K2 (maximum RV separation)"),
    "rv_separation": ((), "f4", "km/s", "|RV1 - RV2| at the epoch"),
    "period": ((), "f4", "d", "orbital period"),
    "inclination": ((), "f4", "deg", "orbital inclination"),
    "phase": ((), "f4", "", "orbital phase of the epoch (0 = RV maximum of component 1)"),
    "snr": ((), "f4", "", "continuum signal-to-noise ratio per pixel"),
    "is_binary": ((), "?", "", "True for SB2 systems, False for single stars"),
    "seed": ((), "u8", "", "per-spectrum random seed"),
    **NUISANCE_FIELDS,
    "rv_bulk": ((), "f4", "km/s", "bulk radial velocity measured by the inference estimator "
                "(sb2dask.observe.rv_bulk) on the observed spectrum; NaN if not measured"),
}


def spectrum_seed(seed: int, index: np.ndarray) -> np.ndarray:
    """Per-spectrum 64-bit seeds derived from the data-set seed and global indices."""
    return np.array([np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0]
                     for i in np.asarray(index).ravel()], dtype=np.uint64)


@dataclass(frozen=True)
class _Star:
    teff: float
    logg: float
    feh: float
    axis: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    w: float  # weight of the ``hi`` node


class GridSampler:
    """Draws component labels inside a library's coverage, interpolated along one axis at a time.

    For each star all three labels are drawn uniformly in the configured ranges (clipped to the
    library); one axis, chosen at random, keeps its continuous value and is interpolated between
    its bracketing nodes, while the other two are snapped to the nearest node (Binnenfeld et al.
    2025, Sect. 2). Draws whose bracketing nodes are missing are redrawn.
    """

    def __init__(self, library: SpectralLibrary, config: SimulationConfig):
        ax = library.axes
        self.nodes = [np.asarray(ax.teff), np.asarray(ax.logg), np.asarray(ax.feh)]
        self.available = library.available
        cov = library.ranges()
        self.ranges = []
        for want, have, name in ((config.teff_range, cov.teff, "teff"),
                                 (config.logg_range, cov.logg, "logg"),
                                 (config.feh_range, cov.feh, "feh")):
            lo, hi = max(want[0], have[0]), min(want[1], have[1])
            if lo > hi:
                raise ValueError(f"{name} range {want} does not overlap the library's {have}")
            self.ranges.append((lo, hi))
        self.vsini_range = config.vsini_range
        # Node properties looked up once: mass [Msun], radius [Rsun], continuum at 8600 Å.
        self.props = np.full(self.available.shape + (3,), np.nan)
        for idx in zip(*np.nonzero(self.available)):
            lab = (ax.teff[idx[0]], ax.logg[idx[1]], ax.feh[idx[2]])
            self.props[idx] = (library.mass(*lab), library.radius(*lab),
                               float(library.continuum(*lab, wave=CONTINUUM_REFERENCE_WAVE)))

    def properties(self, star: _Star) -> np.ndarray:
        """(mass, radius, continuum at 8600 Å) of a star, interpolated like its spectrum."""
        return (1.0 - star.w) * self.props[star.lo] + star.w * self.props[star.hi]

    def properties_at(self, teff: float, logg: float, feh: float) -> np.ndarray:
        """(mass, radius, continuum at 8600 Å) at labels that need not lie on the grid (a real
        star's): linear in Teff between the bracketing nodes (clipped to the grid) at the
        nearest (logg, [Fe/H]) nodes where both exist, as a one-axis interpolation of the
        sampler's node table."""
        t_nodes, g_nodes, f_nodes = self.nodes
        j0, j1, w = self._bracket(0, float(np.clip(teff, t_nodes[0], t_nodes[-1])))
        g_scale = np.ptp(g_nodes) or 1.0
        f_scale = np.ptp(f_nodes) or 1.0
        dist = (np.abs(g_nodes[:, None] - logg) / g_scale) ** 2 + (
            np.abs(f_nodes[None, :] - feh) / f_scale) ** 2
        both = self.available[j0] & self.available[j1]
        if not both.any():
            raise ValueError(f"the library has no (logg, [Fe/H]) node at both Teff nodes "
                             f"around {teff:.0f} K")
        dist = np.where(both, dist, np.inf)
        g, f = np.unravel_index(int(np.argmin(dist)), dist.shape)
        return (1.0 - w) * self.props[j0, g, f] + w * self.props[j1, g, f]

    def _bracket(self, axis: int, value: float) -> tuple[int, int, float]:
        nodes = self.nodes[axis]
        j = int(np.clip(np.searchsorted(nodes, value, side="right") - 1, 0, len(nodes) - 1))
        if j == len(nodes) - 1 or nodes[j] == value:
            return j, j, 0.0
        return j, j + 1, float((value - nodes[j]) / (nodes[j + 1] - nodes[j]))

    def draw_star(self, rng: np.random.Generator) -> _Star:
        for _ in range(10000):
            values = [rng.uniform(lo, hi) for lo, hi in self.ranges]
            axis = int(rng.integers(3))
            lo_idx, hi_idx = [], []
            for a in range(3):
                nodes = self.nodes[a]
                if a == axis:
                    j0, j1, w = self._bracket(a, values[a])
                else:
                    inside = np.flatnonzero((nodes >= self.ranges[a][0] - 1e-9)
                                            & (nodes <= self.ranges[a][1] + 1e-9))
                    j0 = j1 = int(inside[np.argmin(np.abs(nodes[inside] - values[a]))])
                    values[a] = float(nodes[j0])
                lo_idx.append(j0)
                hi_idx.append(j1)
            if self.available[tuple(lo_idx)] and self.available[tuple(hi_idx)]:
                return _Star(values[0], values[1], values[2], axis, tuple(lo_idx), tuple(hi_idx),
                             w)
        raise RuntimeError("could not draw a star inside the library's coverage; check the ranges")


@dataclass(frozen=True)
class Orbit:
    """A circular orbit drawn for one SB2 at one epoch (km/s, days, degrees); ``k`` and ``rv``
    are ordered like the masses passed to :func:`draw_orbit`."""

    k_sum: float
    period: float
    inclination: float
    phase: float
    k: tuple[float, float]
    rv: tuple[float, float]

    @property
    def rv_separation(self) -> float:
        return abs(self.rv[0] - self.rv[1])


def draw_orbit(rng: np.random.Generator, config: SimulationConfig, m1: float, m2: float,
               gamma: float) -> Orbit:
    """K1+K2 uniform in ``config.k_sum_range``, the period log-uniform in ``config.period_range``
    (redrawn until sin i <= 1 for the total mass ``m1 + m2`` [M_sun]), the epoch's phase uniform;
    the components' RVs around ``gamma`` [km/s]. The draws come from ``rng`` in this order (the
    simulated data sets depend on it)."""
    k_sum = rng.uniform(*config.k_sum_range)
    m_tot = m1 + m2
    for _ in range(10000):
        period = np.exp(rng.uniform(*np.log(config.period_range)))
        sin_i = k_sum / k_sum_max(m_tot, period)
        if sin_i <= 1.0:
            break
    else:
        raise RuntimeError(f"no period in {config.period_range} d reaches K1+K2={k_sum}")
    phase = rng.random()
    k1, k2 = semi_amplitudes(k_sum, m1, m2)
    rv1, rv2 = radial_velocities(k1, k2, phase, gamma)
    return Orbit(float(k_sum), float(period), float(np.degrees(np.arcsin(sin_i))), float(phase),
                 (float(k1), float(k2)), (float(rv1), float(rv2)))


def draw_systems(library: SpectralLibrary, config: SimulationConfig, index: np.ndarray,
                 sampler: GridSampler | None = None) -> tuple[dict, dict, np.ndarray]:
    """Draw the systems with global indices ``index``.

    Returns
    -------
    labels : dict of ndarray
        :data:`LABEL_FIELDS`, each of shape ``(n,)`` or ``(n, 2)``, ordered cooler first.
    interp : dict of ndarray
        Grid nodes and weights per component, ordered like the labels: ``lo``, ``hi`` (n, 2, 3)
        int node indices, ``w`` (n, 2) weights of ``hi``.
    noise : ndarray, shape (n, config.n_noise)
        Standard-normal deviates from each spectrum's own generator: one per output pixel, or one
        per CCD sample when the spectra are combined from CCD spectra (DR4 recipe).
    """
    sampler = sampler or GridSampler(library, config)
    index = np.asarray(index, dtype=np.int64)
    n, n_out = len(index), len(config.wave)
    realism = config.realism
    seeds = spectrum_seed(config.seed, index)
    out = {k: np.full((n,) + shape, np.nan if np.dtype(dt).kind == "f" else 0, dtype=dt)
           for k, (shape, dt, _, _) in LABEL_FIELDS.items()}
    lo = np.zeros((n, 2, 3), dtype=np.int16)
    hi = np.zeros((n, 2, 3), dtype=np.int16)
    w = np.zeros((n, 2), dtype=np.float64)
    noise = np.empty((n, config.n_noise), dtype=np.float32)
    for r, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        # the nuisances come from a second stream of the same seed, so the paper's draws (and
        # its spectra) are unchanged by them
        nuisance = draw_realism(np.random.default_rng([int(seed), 1]), realism, n_out,
                                config.snr_range)
        snr_from_grvs = nuisance.pop("snr", None)
        if realism.is_paper:  # rendered with config.resolution, so recorded as such
            nuisance["resolution"] = config.resolution
        gamma = config.gamma + nuisance["gamma"]
        for key, val in nuisance.items():
            out[key][r] = gamma if key == "gamma" else val
        binary = bool(rng.random() < config.binary_fraction)
        stars = [sampler.draw_star(rng) for _ in range(2 if binary else 1)]
        vsini = [rng.uniform(*config.vsini_range) for _ in stars]
        props = [sampler.properties(s) for s in stars]
        masses = [float(p[0]) for p in props]
        radii = [float(p[1]) for p in props]
        lum = np.array([p[1] ** 2 * p[2] for p in props])
        frac = lum / lum.sum()
        if binary:
            orbit = draw_orbit(rng, config, masses[0], masses[1], gamma)
            phase = orbit.phase
            rvs, ks = list(orbit.rv), list(orbit.k)
            out["k_sum"][r], out["period"][r] = orbit.k_sum, orbit.period
            out["inclination"][r] = orbit.inclination
            out["phase"][r], out["rv_separation"][r] = phase, orbit.rv_separation
        else:
            rvs, ks = [gamma], [0.0]
        out["snr"][r] = rng.uniform(*config.snr_range)  # drawn always: the stream stays put
        if snr_from_grvs is not None:
            out["snr"][r] = snr_from_grvs
        noise[r] = rng.standard_normal(config.n_noise)
        if realism.median_path:  # DPAC median-normalises very cool stars (the template's Teff)
            brighter = stars[int(np.argmax(frac))]
            out["median_normalised"][r] |= brighter.teff < realism.median_norm_teff
        order = sorted(range(len(stars)), key=lambda c: (stars[c].teff, c))
        if binary and order[0] == 1:
            # The orbit gave +K·cos(2πφ) to the star drawn first; it is stored second, and
            # -K·cos(2πφ) = +K·cos(2π(φ + ½)), so the stored phase refers to the stored RV1.
            out["phase"][r] = (phase + 0.5) % 1.0
        for slot, c in enumerate(order):
            s = stars[c]
            for key, val in (("teff", s.teff), ("logg", s.logg), ("feh", s.feh),
                             ("vsini", vsini[c]), ("mass", masses[c]), ("radius", radii[c]),
                             ("light_fraction", frac[c]), ("k", ks[c]), ("rv", rvs[c]),
                             ("interp_axis", s.axis)):
                out[key][r, slot] = val
            lo[r, slot], hi[r, slot], w[r, slot] = s.lo, s.hi, s.w
        if binary:
            out["flux_ratio"][r] = out["light_fraction"][r, 0] / out["light_fraction"][r, 1]
        out["is_binary"][r] = binary
    out["seed"][:] = seeds
    return out, dict(lo=lo, hi=hi, w=w), noise
