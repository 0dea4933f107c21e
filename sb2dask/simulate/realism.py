"""Survey and astrophysical realism beyond the paper's recipe (domain randomisation).

The paper's simulator renders every spectrum with one resolving power, white noise scaling as
sqrt(flux), a perfect continuum and the library's exact line strengths, every star at rest. Real
Gaia RVS spectra differ from that in ways measured on the shared real spectra (issue 14): per-CCD
resolving powers 10 983-12 587; noise correlated between neighbouring pixels (the spectra are
interpolated from ~3 CCD samples onto the survey grid; second differences 0.3-0.65 of the quoted
errors); quoted errors scaling as flux^0.05-0.38; the upper envelope 0.3-1.6 % off the library's,
smoothly; weak-line depths 0.90-1.03 of the library's and Ca II cores shallower (chromospheric
activity fills them in further); missing pixels. A network that never saw these learns the one
library it was shown and calls every difference a second star.

:class:`Realism` holds the ranges (recorded in a store's configuration); :func:`draw_realism`
draws one spectrum's nuisance values from that spectrum's own generator, and the pure functions
below apply them. Every range collapses to the paper's recipe when :meth:`Realism.paper` is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..gaia import RVS_RESOLVING_POWER

__all__ = ["Realism", "NUISANCE_FIELDS", "draw_realism", "continuum_factor", "line_depth_field",
           "scale_line_depths",
           "correlated_unit_noise", "noise_sigma", "gap_mask", "CA_II_AIR", "ca_ii_distance"]

#: Ca II infrared triplet, air wavelengths [Å].
CA_II_AIR = (8498.02, 8542.09, 8662.14)


@dataclass(frozen=True, slots=True)
class Realism:
    """Ranges of the nuisance values drawn per spectrum (uniform unless said otherwise).

    Attributes
    ----------
    systemic_velocity : (low, high) km/s
        γ, added to both components' radial velocities (and to a single star's).
    resolution : (low, high)
        Resolving power of the Gaussian LSF of each spectrum.
    continuum_offset : (low, high)
        Fractional offset of the continuum placement (the real upper envelope sits 0.3-1.6 %
        higher than the library's).
    continuum_tilt : float
        Standard deviation of the linear and quadratic Legendre coefficients of a smooth
        multiplicative continuum error over the window.
    weak_line_scale : (low, high)
        Factor on the depth of every line outside the Ca II cores (library line strengths).
    ca_ii_scale : (low, high)
        Factor on the Ca II core depths of quiet stars.
    active_fraction, active_ca_ii_scale : float, (low, high)
        Fraction of spectra with chromospheric infill, and their Ca II core factor.
    noise_exponent : (low, high)
        α of σ ∝ flux^α (0.5 is photon noise of the spectrum itself; Gaia's quoted errors
        scale with 0.05-0.38).
    noise_correlation : (low, high) pixels
        Gaussian correlation length (σ of the smoothing kernel) of the noise on the output grid;
        0 is white noise.
    gap_fraction, gap_width : float, (low, high) pixels
        Fraction of spectra with one run of missing (NaN) pixels, and its width.
    line_depth_scatter : (low, high)
        Standard deviation σ_l of a per-spectrum random field δ(λ) that multiplies the line
        depths of both components (in each star's rest frame) by 1 + δ: the library's
        line-by-line strength errors (log gf, missing physics), which differ from line to line
        rather than as one group. σ_l is drawn uniform in the range; (0, 0), the default, leaves
        the field off and every other draw unchanged.
    line_depth_length : float
        Correlation length of δ [km/s] (σ of a Gaussian kernel on the rest-frame velocity grid):
        about a weak line's intrinsic half width, so that each line gets one factor and
        neighbouring lines independent ones.
    ccd_weights : tuple of 3 floats, or ()
        Probabilities of a transit combining 1, 2 or 3 CCD spectra (DR4 ``combined_ccds``). Set,
        the spectrum is built as DPAC builds an epoch spectrum (:mod:`sb2dask.simulate.
        transits`): each CCD sampled at its own pixel phase, white noise per sample, linear
        interpolation onto the output grid and the mean over the CCDs, which correlates the
        noise (``noise_correlation`` should then be 0). Empty: noise drawn on the output pixels.
    ccd_pixel_nm : float
        Wavelength step of a CCD sample [nm] (RVS: 0.0245 nm per pixel).
    grvs_range : (bright, faint) mag, or ()
        Set, each spectrum's S/N follows a G_RVS drawn with dN/dG ∝ 10^(grvs_slope·G) in this
        range (:func:`sb2dask.simulate.transits.draw_grvs_snr`), kept inside the configuration's
        ``snr_range``; empty: S/N uniform in ``snr_range``.
    grvs_slope, snr_scatter : float
        dex per mag of the G_RVS distribution; log-normal scatter [dex] of the S/N at given G_RVS.
    median_norm_fraction : float
        Fraction of spectra median-normalised (:func:`sb2dask.gaia.median_normalise`) instead of
        pseudo-continuum normalised, besides those the DPAC rule sends there (G_RVS fainter than
        ``median_norm_grvs`` or the brighter component cooler than ``median_norm_teff`` [K]);
        stands for the raw-flux double-lined transits (DR4 ``normalisation_method`` 0) that
        inference renormalises by their median.
    """

    systemic_velocity: tuple = (-300.0, 300.0)
    resolution: tuple = (10_500.0, 13_000.0)
    continuum_offset: tuple = (-0.005, 0.02)
    continuum_tilt: float = 0.004
    weak_line_scale: tuple = (0.88, 1.05)
    ca_ii_scale: tuple = (0.85, 1.02)
    active_fraction: float = 0.1
    active_ca_ii_scale: tuple = (0.55, 0.85)
    noise_exponent: tuple = (0.0, 0.5)
    noise_correlation: tuple = (0.0, 1.2)
    gap_fraction: float = 0.05
    gap_width: tuple = (3.0, 40.0)
    # DR4 epoch spectra (issue 11); the defaults leave them off, so the realistic recipe's draws
    # and spectra are unchanged
    ccd_weights: tuple = ()
    # line-by-line depth errors (issue 14); off by default for the same reason
    line_depth_scatter: tuple = (0.0, 0.0)
    line_depth_length: float = 6.0
    ccd_pixel_nm: float = 0.0245
    grvs_range: tuple = ()
    grvs_slope: float = 0.25
    snr_scatter: float = 0.1
    median_norm_fraction: float = 0.0
    median_norm_grvs: float = 12.0
    median_norm_teff: float = 3500.0

    def __post_init__(self):
        if self.ccd_weights and (len(self.ccd_weights) != 3 or min(self.ccd_weights) < 0
                                 or sum(self.ccd_weights) <= 0):
            raise ValueError("ccd_weights must be three non-negative probabilities of 1, 2 and "
                             f"3 combined CCDs (or empty), got {self.ccd_weights!r}")
        if self.grvs_range and (len(self.grvs_range) != 2
                                or not self.grvs_range[0] <= self.grvs_range[1]):
            raise ValueError(f"grvs_range must be (bright, faint) or empty, got "
                             f"{self.grvs_range!r}")
        if self.ccd_pixel_nm <= 0:
            raise ValueError(f"ccd_pixel_nm must be positive, got {self.ccd_pixel_nm}")
        lo, hi = self.line_depth_scatter
        if not 0.0 <= lo <= hi or self.line_depth_length <= 0:
            raise ValueError("line_depth_scatter must be (low, high) with 0 <= low <= high and "
                             f"line_depth_length positive, got {self.line_depth_scatter!r}, "
                             f"{self.line_depth_length!r}")

    @classmethod
    def paper(cls, resolution: float = RVS_RESOLVING_POWER) -> Realism:
        """The paper's recipe: nothing drawn, one resolving power, white sqrt(flux) noise."""
        return cls(systemic_velocity=(0.0, 0.0), resolution=(resolution, resolution),
                   continuum_offset=(0.0, 0.0), continuum_tilt=0.0, weak_line_scale=(1.0, 1.0),
                   ca_ii_scale=(1.0, 1.0), active_fraction=0.0, active_ca_ii_scale=(1.0, 1.0),
                   noise_exponent=(0.5, 0.5), noise_correlation=(0.0, 0.0), gap_fraction=0.0,
                   gap_width=(0.0, 0.0))

    @property
    def is_paper(self) -> bool:
        # the field's length alone (the field off) does not make another recipe
        paper = Realism.paper(self.resolution[0])
        return replace(self, line_depth_length=paper.line_depth_length) == paper

    @property
    def median_path(self) -> bool:
        """Whether some spectra are median-normalised (DPAC's path for faint and cool stars)."""
        return bool(self.grvs_range) or self.median_norm_fraction > 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> Realism:
        if d is None:
            return cls()
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Realism settings: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


#: Per-spectrum nuisance labels written beside the physical labels: name -> (shape suffix,
#: dtype, unit, description), as :data:`sb2dask.simulate.systems.LABEL_FIELDS`.
NUISANCE_FIELDS = {
    "gamma": ((), "f4", "km/s", "systemic velocity added to every component"),
    "resolution": ((), "f4", "", "resolving power of the spectrum's Gaussian LSF"),
    "continuum_offset": ((), "f4", "", "fractional continuum placement error (constant term)"),
    "continuum_c1": ((), "f4", "", "linear Legendre coefficient of the continuum error"),
    "continuum_c2": ((), "f4", "", "quadratic Legendre coefficient of the continuum error"),
    "weak_line_scale": ((), "f4", "", "factor on line depths outside the Ca II cores"),
    "ca_ii_scale": ((), "f4", "", "factor on the Ca II core depths (< 1: shallower/infilled)"),
    "noise_exponent": ((), "f4", "", "alpha of sigma proportional to flux**alpha"),
    "noise_correlation": ((), "f4", "pixel", "Gaussian correlation length of the noise"),
    "gap_start": ((), "i4", "pixel", "first missing pixel (-1: none)"),
    "gap_width": ((), "i4", "pixel", "number of missing pixels"),
    "combined_ccds": ((), "i1", "", "CCD spectra averaged into the epoch spectrum (0: noise "
                      "drawn on the output pixels)"),
    "ccd_phase": ((3,), "f4", "CCD pixel", "pixel phase of each combined CCD's samples against "
                  "the output grid (NaN: CCD not combined)"),
    "grvs_mag": ((), "f4", "mag", "G_RVS the S/N was drawn from (NaN: S/N uniform in snr_range)"),
    "median_normalised": ((), "?", "", "divided by its median (DR4 normalisation_method 3) "
                          "instead of pseudo-continuum normalised"),
    "line_depth_scatter": ((), "f4", "", "sigma of the line-by-line depth factor field (0: off)"),
    "line_field_seed": ((), "i8", "", "seed of the line-depth field's draws (-1: off)"),
}


# one NaN object, so that two draws of the same generator compare equal as dicts
_NAN = float("nan")


def _uniform(rng: np.random.Generator, rng_range: tuple) -> float:
    lo, hi = rng_range
    return float(lo) if hi == lo else float(rng.uniform(lo, hi))


def draw_realism(rng: np.random.Generator, realism: Realism, n_pix: int,
                 snr_range: tuple | None = None) -> dict:
    """One spectrum's nuisance values (the keys of :data:`NUISANCE_FIELDS`), and ``snr`` when
    ``realism.grvs_range`` draws the S/N from G_RVS inside ``snr_range``.

    The median-normalisation rule's temperature part needs the stars, so the caller completes
    ``median_normalised`` (:func:`sb2dask.simulate.systems.draw_systems`).
    """
    active = realism.active_fraction > 0 and rng.random() < realism.active_fraction
    out = dict(
        gamma=_uniform(rng, realism.systemic_velocity),
        resolution=_uniform(rng, realism.resolution),
        continuum_offset=_uniform(rng, realism.continuum_offset),
        continuum_c1=float(rng.normal(0.0, realism.continuum_tilt)) if realism.continuum_tilt
        else 0.0,
        continuum_c2=float(rng.normal(0.0, realism.continuum_tilt)) if realism.continuum_tilt
        else 0.0,
        weak_line_scale=_uniform(rng, realism.weak_line_scale),
        ca_ii_scale=_uniform(rng, realism.active_ca_ii_scale if active else realism.ca_ii_scale),
        noise_exponent=_uniform(rng, realism.noise_exponent),
        noise_correlation=_uniform(rng, realism.noise_correlation),
        gap_start=-1, gap_width=0, combined_ccds=0, ccd_phase=(_NAN,) * 3,
        grvs_mag=_NAN, median_normalised=False)
    if realism.gap_fraction > 0 and rng.random() < realism.gap_fraction:
        width = int(round(_uniform(rng, realism.gap_width)))
        if width > 0:
            out["gap_width"] = width
            out["gap_start"] = int(rng.integers(0, max(1, n_pix - width)))
    # DR4 draws come last and only when enabled, so the other recipes' streams are unchanged
    if realism.ccd_weights:
        p = np.asarray(realism.ccd_weights, dtype=np.float64)
        n_ccd = 1 + int(np.searchsorted(np.cumsum(p) / p.sum(), rng.random(), side="right"))
        phase = rng.random(3)
        n_ccd = min(n_ccd, 3)
        out["combined_ccds"] = n_ccd
        out["ccd_phase"] = tuple(float(p) if i < n_ccd else _NAN for i, p in enumerate(phase))
    if realism.grvs_range:
        from .transits import MAX_CCDS, draw_grvs_snr

        if snr_range is None:
            raise ValueError("realism.grvs_range draws the S/N: pass snr_range")
        out["grvs_mag"], out["snr"] = draw_grvs_snr(
            rng, realism.grvs_range, realism.grvs_slope, realism.snr_scatter,
            out["combined_ccds"] or MAX_CCDS, snr_range)
    if realism.median_path:
        u = rng.random()
        out["median_normalised"] = bool(u < realism.median_norm_fraction
                                        or out["grvs_mag"] > realism.median_norm_grvs)
    out["line_depth_scatter"], out["line_field_seed"] = 0.0, -1
    if realism.line_depth_scatter[1] > 0:  # last, and only when enabled: see ccd_weights
        out["line_depth_scatter"] = _uniform(rng, realism.line_depth_scatter)
        out["line_field_seed"] = int(rng.integers(0, 2 ** 62))
    return out


def line_depth_field(n_work: int, dv: float, scatter, seed, length: float) -> np.ndarray:
    """(n, n_work) factors 1 + δ on a rest-frame velocity grid of step ``dv`` [km/s]: δ is
    Gaussian noise from ``np.random.default_rng(seed)`` (one seed per spectrum) smoothed by a
    Gaussian kernel of σ = ``length`` km/s and scaled to standard deviation ``scatter``; rows
    with scatter 0 (or seed < 0) are exactly 1. Factors are clipped at 0.05 (a line never turns
    into emission)."""
    scatter = np.atleast_1d(np.asarray(scatter, np.float64))
    seed = np.atleast_1d(np.asarray(seed, np.int64))
    out = np.ones((scatter.size, n_work))
    for i, (sig, sd) in enumerate(zip(scatter, seed)):
        if sig > 0 and sd >= 0:
            white = np.random.default_rng(int(sd)).standard_normal(n_work)
            out[i] = 1.0 + sig * correlated_unit_noise(white, length / dv)[0]
    return np.clip(out, 0.05, None)


def continuum_factor(wave: np.ndarray, offset, c1, c2, span: tuple | None = None) -> np.ndarray:
    """Multiplicative continuum error 1 + offset + c1·P1(x) + c2·P2(x), x ∈ [-1, 1] over ``span``
    (default: ``wave[0]``-``wave[-1]``); ``wave`` is (n_pix,) or per spectrum (n, n_pix), the
    other arguments scalars or (n,) arrays (result (n, n_pix))."""
    wave = np.asarray(wave, dtype=np.float64)
    lo, hi = span if span is not None else (wave[0], wave[-1])
    x = 2.0 * (wave - lo) / (hi - lo) - 1.0
    x = x[None, :] if x.ndim == 1 else x
    p2 = 0.5 * (3.0 * x ** 2 - 1.0)
    col = lambda v: np.atleast_1d(np.asarray(v, np.float64))[:, None]  # noqa: E731
    return 1.0 + col(offset) + col(c1) * x + col(c2) * p2


def ca_ii_distance(wave) -> np.ndarray:
    """Distance [Å] of each wavelength (air Å, any shape) from the nearest Ca II triplet line
    (:data:`CA_II_AIR`), in the frame ``wave`` is in."""
    return np.min(np.abs(np.asarray(wave, np.float64)[..., None] - np.asarray(CA_II_AIR)),
                  axis=-1)


def _ca_ii_weight(wave: np.ndarray, half_width: float = 1.2) -> np.ndarray:
    """Smooth weight, 1 at the Ca II line centres, 0 beyond ``half_width`` Å (cosine bell);
    the broad wings stay with the weak-line scaling."""
    w = np.zeros_like(wave, dtype=np.float64)
    for c in CA_II_AIR:
        d = np.abs(wave - c) / half_width
        w = np.maximum(w, np.where(d < 1.0, 0.5 * (1.0 + np.cos(np.pi * d)), 0.0))
    return w


def scale_line_depths(flux: np.ndarray, wave: np.ndarray, weak_scale, ca_ii_scale,
                      rv: np.ndarray | None = None) -> np.ndarray:
    """Spectra with their line depths (1 - flux) multiplied by ``weak_scale`` everywhere and by
    ``ca_ii_scale`` instead within ~1 Å of the Ca II cores.

    ``wave`` is (n_pix,) or per spectrum (n, n_pix). ``rv`` (n,) [km/s] moves the Ca II windows
    with each spectrum's lines (the light-weighted centre is good enough for a window of
    ±1.2 Å). Arguments are scalars or (n,) arrays.
    """
    from ..constants import C_KMS

    flux = np.atleast_2d(flux)
    n = flux.shape[0]
    weak = np.broadcast_to(np.asarray(weak_scale, np.float64), (n,))[:, None]
    ca = np.broadcast_to(np.asarray(ca_ii_scale, np.float64), (n,))[:, None]
    if rv is None:
        w = np.broadcast_to(_ca_ii_weight(np.asarray(wave, np.float64)), flux.shape)
    else:
        # elementwise the same arithmetic as one row at a time, so spectra are unchanged by it
        v = np.atleast_1d(rv)[:, None]
        w = _ca_ii_weight(np.asarray(wave, np.float64) / (1.0 + v / C_KMS))
    factor = weak * (1.0 - w) + ca * w
    return 1.0 - (1.0 - flux) * factor


def correlated_unit_noise(white: np.ndarray, length) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ``length`` pixels (σ of a Gaussian kernel),
    made from ``white`` (n, n_pix) standard normal draws; length 0 leaves a row white."""
    from scipy.ndimage import gaussian_filter1d

    white = np.atleast_2d(white)
    out = np.array(white, dtype=np.float64, copy=True)
    lengths = np.broadcast_to(np.asarray(length, np.float64), (white.shape[0],))
    for i, s in enumerate(lengths):
        if s > 0.05:
            sm = gaussian_filter1d(white[i].astype(np.float64), s, mode="wrap")
            # the kernel's L2 norm (from its impulse response) is the factor the smoothing
            # put on the noise's standard deviation
            delta = np.zeros(8 * int(np.ceil(s)) + 9)
            delta[delta.size // 2] = 1.0
            out[i] = sm / np.sqrt((gaussian_filter1d(delta, s, mode="constant") ** 2).sum())
    return out


def noise_sigma(flux: np.ndarray, snr, exponent) -> np.ndarray:
    """σ per pixel for continuum S/N ``snr``: flux^α / snr (α = 0.5 is photon noise)."""
    flux = np.atleast_2d(flux)
    n = flux.shape[0]
    snr = np.broadcast_to(np.asarray(snr, np.float64), (n,))[:, None]
    a = np.broadcast_to(np.asarray(exponent, np.float64), (n,))[:, None]
    return np.clip(flux, 0.0, None) ** a / snr


def gap_mask(n_pix: int, start, width) -> np.ndarray:
    """(n, n_pix) True where pixels are missing (``start`` < 0: none)."""
    start = np.atleast_1d(np.asarray(start, np.int64))
    width = np.atleast_1d(np.asarray(width, np.int64))
    idx = np.arange(n_pix)[None, :]
    return (start[:, None] >= 0) & (idx >= start[:, None]) & (idx < (start + width)[:, None])
