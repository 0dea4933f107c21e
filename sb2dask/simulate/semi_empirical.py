"""Semi-empirical SB2s: real single-star spectra paired, shifted by an orbit and combined (pure
numpy; the Dask/Zarr shell is :mod:`sb2dask.dataset.semi_empirical`).

No synthetic library fits real Gaia RVS spectra to the noise (issue 14), and networks trained on
one learn to call that mismatch a second star. The data-driven route (El-Badry et al. 2018,
Kovalev et al. 2024, Angelo et al. 2024) builds binaries from *real* single stars instead: two
observed spectra of stars with known labels, each moved by its orbital velocity and weighted by
its share of the light, summed. The pieces here reuse the simulator's: the orbit and systemic
velocity draws (:func:`~.systems.draw_orbit`, :func:`~.realism.draw_realism`), the Doppler
factor (:func:`~.broadening.doppler_factor`), the light ratio R²·F_λ(8600 Å) with the library's
continuum and the main-sequence masses, and the realistic recipe's noise model
(:func:`~.realism.noise_sigma`, :func:`~.realism.correlated_unit_noise`).

Noise accounting. Each input already carries noise σ_i (its ``flux_error``, or 1/S/N). Moved onto
the output pixels by linear interpolation with weights (1-f, f), its variance becomes
((1-f)σ_a + fσ_b)² (``input_noise="correlated"``: neighbouring pixels of Gaia spectra are
strongly correlated, issue 14) or (1-f)²σ_a² + f²σ_b² (``"white"``). The blend of light fractions
a_1 + a_2 = 1 carries V = Σ a_i² V_i. The target is the survey model σ_t = F^α / (S/N) with
correlated noise of length ℓ (α, ℓ drawn per spectrum as in the realistic recipe); the missing
variance σ_t² - V is added as correlated noise scaled per pixel, so the total variance reaches σ_t²
wherever the inputs are quieter than the target. An input whose own continuum S/N is below the
row's S/N is never drawn for that row, and one below the lowest requested S/N is never used
(``STATUS_TOO_NOISY``); pixels where the inputs already exceed the target (deep line cores of
noisy inputs) are counted per row (``noise_excess``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import ConfigMixin
from ..gaia import RVS_RESOLVING_POWER
from .broadening import doppler_factor
from .config import SimulationConfig
from .realism import (
    Realism,
    correlated_unit_noise,
    draw_realism,
    gap_mask,
    noise_sigma,
)
from .systems import LABEL_FIELDS, draw_orbit, spectrum_seed

__all__ = ["SemiEmpiricalSettings", "StarTable", "STATUS", "STATUS_USED", "STATUS_SINGLE_ONLY",
           "STATUS_TOO_NOISY", "ALL_SPLITS", "semi_empirical_realism", "shift_onto_grid",
           "continuum_snr", "star_splits", "draw_rows", "combine_rows"]

#: Status of an input star: drawn as a single star or an SB2 component; drawn only as a single
#: star (its logg is not on the main sequence, so it cannot be paired); never drawn (its
#: continuum S/N is below the lowest requested S/N).
STATUS_USED, STATUS_SINGLE_ONLY, STATUS_TOO_NOISY = 0, 1, 2
STATUS = {STATUS_USED: "used", STATUS_SINGLE_ONLY: "single only (not main sequence)",
          STATUS_TOO_NOISY: "too noisy for the requested S/N"}
#: ``StarTable.split`` of a star shared by every split (``shared_stars``).
ALL_SPLITS = 255


@dataclass(frozen=True, slots=True)
class SemiEmpiricalSettings(ConfigMixin):
    """How real single stars are turned into training rows (beside the
    :class:`~.config.SimulationConfig`, whose orbit, S/N, systemic-velocity and noise settings
    they share).

    Attributes
    ----------
    feh_sigma : float
        A pair's [Fe/H] must agree within ``feh_sigma`` times the combined error
        sqrt(e_1² + e_2²) (a binary's stars are coeval: one composition).
    ms_logg_tolerance : float
        [dex] A star may be an SB2 component only if its logg lies within this (or twice its
        logg error, whichever is larger) of the dwarf sequence's at its Teff (Pecaut & Mamajek);
        the others are used as single stars only.
    shared_stars : bool
        False (default): every input star (source_id) belongs to one split, drawn at random, so
        the validation and test rows are made of stars the training rows never used. True: every
        split draws from every star (only for tiny input sets: mechanics tests).
    input_noise : str
        ``"correlated"`` (default; Gaia DR3/DR4 spectra, whose neighbouring pixels are strongly
        correlated) or ``"white"``: how an input's quoted errors propagate through the
        interpolation onto the output pixels (module docstring).
    velocity_label : str
        ``"vsini"`` or ``"vbroad"``: which label column was stored as ``vsini`` (recorded).
    """

    feh_sigma: float = 2.0
    ms_logg_tolerance: float = 0.3
    shared_stars: bool = False
    input_noise: str = "correlated"
    velocity_label: str = "vsini"

    def __post_init__(self):
        if self.input_noise not in ("correlated", "white"):
            raise ValueError(f"input_noise must be 'correlated' or 'white', got "
                             f"{self.input_noise!r}")
        if self.feh_sigma < 0 or self.ms_logg_tolerance < 0:
            raise ValueError("feh_sigma and ms_logg_tolerance must be non-negative")
        if self.velocity_label not in ("vsini", "vbroad"):
            raise ValueError(f"velocity_label must be 'vsini' or 'vbroad', got "
                             f"{self.velocity_label!r}")


def semi_empirical_realism(systemic_velocity=(-300.0, 300.0), noise_exponent=(0.0, 0.5),
                           noise_correlation=(0.0, 1.2), gap_fraction=0.05) -> Realism:
    """The realistic recipe's nuisances that real spectra do not already carry: the systemic
    velocity, the survey's noise model (σ ∝ flux^α, correlated over ℓ pixels) and missing
    pixels. Resolving power, continuum placement, line strengths and chromospheric infill are
    the real stars' own, so they are left at the paper's (no-op) values."""
    return Realism.from_dict({**Realism.paper(RVS_RESOLVING_POWER).to_dict(),
                              "systemic_velocity": list(systemic_velocity),
                              "noise_exponent": list(noise_exponent),
                              "noise_correlation": list(noise_correlation),
                              "gap_fraction": float(gap_fraction),
                              "gap_width": list(Realism().gap_width)})


@dataclass(frozen=True)
class StarTable:
    """The input stars as the row draws need them, one entry per input spectrum (n_star,).

    Attributes
    ----------
    source_id : int64
    teff, logg, feh, vsini : float64 labels [K, dex, dex, km/s]; ``feh_err`` [dex]
    mass : [M_sun] main-sequence mass at Teff (the library's node masses, as the simulator)
    radius : [R_sun] from logg and mass
    light : R² · F_λ(8600 Å) of the library's continuum at the star's labels (relative units)
    snr : continuum S/N of the spectrum on the output pixels (:func:`continuum_snr`)
    status : one of :data:`STATUS`
    split : 0 train, 1 validation, 2 test, or :data:`ALL_SPLITS`
    """

    source_id: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    feh_err: np.ndarray
    vsini: np.ndarray
    mass: np.ndarray
    radius: np.ndarray
    light: np.ndarray
    snr: np.ndarray
    status: np.ndarray
    split: np.ndarray
    _by_split: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.source_id)

    def candidates(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, S/N) of the drawable stars of ``split``, sorted by S/N (ascending)."""
        if split not in self._by_split:
            ok = (self.status != STATUS_TOO_NOISY) & ((self.split == split)
                                                      | (self.split == ALL_SPLITS))
            idx = np.flatnonzero(ok)
            idx = idx[np.argsort(self.snr[idx], kind="stable")]
            self._by_split[split] = (idx, self.snr[idx])
        return self._by_split[split]


def shift_onto_grid(in_wave: np.ndarray, flux: np.ndarray, sigma: np.ndarray,
                    out_wave: np.ndarray, rv, correlated: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Spectra observed at radial velocity ``rv`` [km/s], sampled at ``out_wave``.

    Parameters
    ----------
    in_wave : (n_in,) rest-frame wavelengths [Å] of the inputs, increasing
    flux, sigma : (n, n_in) flux and 1-σ errors
    out_wave : (n_out,) output wavelengths [Å], the same medium as ``in_wave``
    rv : (n,) [km/s]
    correlated : how the errors propagate through the interpolation (module docstring)

    Returns
    -------
    flux, variance : float64 (n, n_out); NaN where the moved spectrum does not cover a pixel
    """
    flux = np.atleast_2d(np.asarray(flux, np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, np.float64))
    src = np.asarray(out_wave, np.float64)[None, :] / doppler_factor(np.atleast_1d(rv))[:, None]
    pos = np.interp(src, in_wave, np.arange(len(in_wave), dtype=np.float64), left=-1.0,
                    right=-1.0)
    outside = (src < in_wave[0]) | (src > in_wave[-1])
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(in_wave) - 2)
    f = np.clip(pos - i0, 0.0, 1.0)
    a, b = np.take_along_axis(flux, i0, 1), np.take_along_axis(flux, i0 + 1, 1)
    sa, sb = np.take_along_axis(sigma, i0, 1), np.take_along_axis(sigma, i0 + 1, 1)
    out = (1.0 - f) * a + f * b
    var = ((1.0 - f) * sa + f * sb) ** 2 if correlated else ((1.0 - f) * sa) ** 2 + (f * sb) ** 2
    out[outside] = np.nan
    var[outside] = np.nan
    return out, var


def continuum_snr(flux: np.ndarray, variance: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Continuum S/N of spectra on the output pixels: the median of 1/σ over the pixels with
    flux >= ``level`` (all finite pixels when fewer than 20 are that high). (n,) float64."""
    flux = np.atleast_2d(flux)
    inv = 1.0 / np.sqrt(np.atleast_2d(variance))
    out = np.full(flux.shape[0], np.nan)
    for i in range(flux.shape[0]):
        ok = np.isfinite(flux[i]) & np.isfinite(inv[i])
        cont = ok & (flux[i] >= level)
        use = cont if cont.sum() >= 20 else ok
        if use.any():
            out[i] = float(np.median(inv[i][use]))
    return out


def star_splits(source_id: np.ndarray, seed: int, counts: tuple[int, int, int]) -> np.ndarray:
    """Split (0/1/2) of each star: the distinct source_ids ranked by a hash of (seed,
    source_id) and cut in the proportions of the rows' ``counts``, so a star's rows all fall in
    one split and the assignment depends on nothing but the ids and the seed. (n,) uint8."""
    ids = np.unique(np.asarray(source_id, np.int64))
    keys = np.array([np.random.SeedSequence([int(seed), 2, int(s) & (2 ** 63 - 1)])
                     .generate_state(1, np.uint64)[0] for s in ids], dtype=np.uint64)
    order = ids[np.argsort(keys, kind="stable")]
    total = max(sum(counts), 1)
    n_train = int(round(len(ids) * counts[0] / total))
    n_val = int(round(len(ids) * counts[1] / total))
    # every non-empty split gets at least two stars (a pair) when there are enough
    least = 2 if len(ids) >= 6 else 1
    if counts[1] and len(ids) >= 3:
        n_val = max(n_val, least)
    if counts[2] and len(ids) >= 3:
        n_train = min(n_train, len(ids) - n_val - least)
    split_of = {int(s): 0 for s in order[:n_train]}
    split_of.update({int(s): 1 for s in order[n_train:n_train + n_val]})
    split_of.update({int(s): 2 for s in order[n_train + n_val:]})
    return np.array([split_of[int(s)] for s in source_id], dtype=np.uint8)


def _pick(rng: np.random.Generator, stars: StarTable, split: int, binary: bool,
          snr_range: tuple, feh_sigma: float) -> tuple[float, list[int]]:
    """The row's S/N and its input star(s): S/N uniform between the lowest requested and the
    highest any drawable star of the split reaches; stars at least that good, a binary's two
    main-sequence stars of distinct source_id and consistent [Fe/H]."""
    idx, snr = stars.candidates(split)
    hi = min(snr_range[1], float(snr[-1])) if len(snr) else snr_range[0]
    for _ in range(200):
        s = float(rng.uniform(snr_range[0], hi)) if hi > snr_range[0] else float(snr_range[0])
        first = int(np.searchsorted(snr, s, side="left"))
        pool = idx[first:]
        if binary:
            pool = pool[stars.status[pool] == STATUS_USED]
        if len(pool) == 0:
            continue
        a = int(pool[rng.integers(len(pool))])
        if not binary:
            return s, [a]
        tol = feh_sigma * np.hypot(stars.feh_err[a], stars.feh_err[pool])
        ok = (np.abs(stars.feh[pool] - stars.feh[a]) <= tol + 1e-9) & (
            stars.source_id[pool] != stars.source_id[a])
        if ok.any():
            partners = pool[ok]
            return s, [a, int(partners[rng.integers(len(partners))])]
    raise RuntimeError(f"no {'pair of stars' if binary else 'star'} of split {split} reaches "
                       f"the requested S/N {snr_range} (with [Fe/H] consistent within "
                       f"{feh_sigma} sigma); give more input stars, a lower --snr or "
                       "--shared-stars")


def draw_rows(stars: StarTable, config: SimulationConfig, settings: SemiEmpiricalSettings,
              index: np.ndarray, row_split: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Draw the rows with global indices ``index`` (their splits ``row_split``).

    Each row draws from its own generator seeded by ``SeedSequence([config.seed, i])``
    (:func:`~.systems.spectrum_seed`), its nuisances from a second stream as the simulator does,
    so a row depends only on the inputs, the configuration and its index.

    Returns
    -------
    labels : dict of ndarray
        :data:`~.systems.LABEL_FIELDS`, cooler component first (``interp_axis`` -1: no grid).
    picks : int64 (n, 2)
        Input star of each component, ordered like the labels; -1 for a single star's second.
    noise : float32 (n, n_out)
        Standard-normal deviates of the added noise.
    """
    index = np.asarray(index, dtype=np.int64)
    n, n_out = len(index), len(config.wave)
    seeds = spectrum_seed(config.seed, index)
    out = {k: np.full((n,) + shape, np.nan if np.dtype(dt).kind == "f" else 0, dtype=dt)
           for k, (shape, dt, _, _) in LABEL_FIELDS.items()}
    out["interp_axis"][:] = -1
    picks = np.full((n, 2), -1, dtype=np.int64)
    noise = np.empty((n, n_out), dtype=np.float32)
    for r, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        nuisance = draw_realism(np.random.default_rng([int(seed), 1]), config.realism, n_out,
                                config.snr_range)
        nuisance.pop("snr", None)
        nuisance["resolution"] = np.nan  # the real spectrum's own, unknown here
        gamma = config.gamma + nuisance["gamma"]
        for key, val in nuisance.items():
            out[key][r] = gamma if key == "gamma" else val
        binary = bool(rng.random() < config.binary_fraction)
        snr, comps = _pick(rng, stars, int(row_split[r]), binary, config.snr_range,
                           settings.feh_sigma)
        lum = stars.light[comps]
        frac = lum / lum.sum()
        if binary:
            orbit = draw_orbit(rng, config, float(stars.mass[comps[0]]),
                               float(stars.mass[comps[1]]), gamma)
            rvs, ks, phase = list(orbit.rv), list(orbit.k), orbit.phase
            out["k_sum"][r], out["period"][r] = orbit.k_sum, orbit.period
            out["inclination"][r] = orbit.inclination
            out["phase"][r], out["rv_separation"][r] = phase, orbit.rv_separation
        else:
            rvs, ks = [gamma], [0.0]
        out["snr"][r] = snr
        noise[r] = rng.standard_normal(n_out)
        order = sorted(range(len(comps)), key=lambda c: (stars.teff[comps[c]], c))
        if binary and order[0] == 1:  # as the simulator: the stored phase refers to stored RV1
            out["phase"][r] = (phase + 0.5) % 1.0
        for slot, c in enumerate(order):
            s = comps[c]
            picks[r, slot] = s
            for key, val in (("teff", stars.teff[s]), ("logg", stars.logg[s]),
                             ("feh", stars.feh[s]), ("vsini", stars.vsini[s]),
                             ("mass", stars.mass[s]), ("radius", stars.radius[s]),
                             ("light_fraction", frac[c]), ("k", ks[c]), ("rv", rvs[c])):
                out[key][r, slot] = val
        if binary:
            out["flux_ratio"][r] = out["light_fraction"][r, 0] / out["light_fraction"][r, 1]
        out["is_binary"][r] = binary
    out["seed"][:] = seeds
    return out, picks, noise


def combine_rows(in_wave: np.ndarray, out_wave: np.ndarray, comp_flux: np.ndarray,
                 comp_sigma: np.ndarray, labels: dict, noise: np.ndarray | None,
                 correlated: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The observed rows: each component moved by its RV onto ``out_wave``, weighted by its
    light fraction, summed, and brought to the row's S/N with the survey's noise model.

    Parameters
    ----------
    in_wave : (n_in,) [Å] the inputs' common rest-frame grid
    out_wave : (n_out,) [Å] output pixels (same medium)
    comp_flux, comp_sigma : (n, 2, n_in) each row's component spectra and errors (anything for
        a single star's second component)
    labels : the first output of :func:`draw_rows` (``rv``, ``light_fraction``, ``snr``,
        ``noise_exponent``, ``noise_correlation``, ``gap_start``, ``gap_width``)
    noise : (n, n_out) standard-normal deviates, or None: no noise added (the inputs' own only)

    Returns
    -------
    flux : float32 (n, n_out); NaN in gaps and where a moved input does not cover a pixel
    noise_excess : float32 (n,) fraction of covered pixels where the inputs' own noise already
        exceeds the target σ (nothing is added there)
    """
    n = len(labels["snr"])
    frac = np.nan_to_num(labels["light_fraction"].astype(np.float64))
    rv = np.nan_to_num(labels["rv"].astype(np.float64))
    total = np.zeros((n, len(out_wave)))
    var = np.zeros((n, len(out_wave)))
    for c in range(2):
        used = frac[:, c] > 0
        if not used.any():
            continue
        f, v = shift_onto_grid(in_wave, comp_flux[used, c], comp_sigma[used, c], out_wave,
                               rv[used, c], correlated)
        total[used] += frac[used, c, None] * f
        var[used] += frac[used, c, None] ** 2 * v
    target = noise_sigma(total, labels["snr"], labels["noise_exponent"]) ** 2
    missing = target - var
    covered = np.isfinite(missing)
    excess = np.where(covered, missing < 0, False).sum(axis=1) / np.maximum(covered.sum(1), 1)
    if noise is not None:
        unit = correlated_unit_noise(noise, labels["noise_correlation"])
        total = total + np.sqrt(np.clip(np.nan_to_num(missing), 0.0, None)) * unit
    total = np.where(gap_mask(total.shape[1], labels["gap_start"], labels["gap_width"]), np.nan,
                     total)
    return total.astype(np.float32), excess.astype(np.float32)
