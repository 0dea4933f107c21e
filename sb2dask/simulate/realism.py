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

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Realism", "NUISANCE_FIELDS", "draw_realism", "continuum_factor", "scale_line_depths",
           "correlated_unit_noise", "noise_sigma", "gap_mask", "CA_II_AIR"]

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

    @classmethod
    def paper(cls, resolution: float = 11_500.0) -> Realism:
        """The paper's recipe: nothing drawn, one resolving power, white sqrt(flux) noise."""
        return cls(systemic_velocity=(0.0, 0.0), resolution=(resolution, resolution),
                   continuum_offset=(0.0, 0.0), continuum_tilt=0.0, weak_line_scale=(1.0, 1.0),
                   ca_ii_scale=(1.0, 1.0), active_fraction=0.0, active_ca_ii_scale=(1.0, 1.0),
                   noise_exponent=(0.5, 0.5), noise_correlation=(0.0, 0.0), gap_fraction=0.0,
                   gap_width=(0.0, 0.0))

    @property
    def is_paper(self) -> bool:
        return self == Realism.paper(self.resolution[0])

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


#: Per-spectrum nuisance labels written beside the physical labels: name -> (dtype, unit,
#: description).
NUISANCE_FIELDS = {
    "gamma": ("f4", "km/s", "systemic velocity added to every component"),
    "resolution": ("f4", "", "resolving power of the spectrum's Gaussian LSF"),
    "continuum_offset": ("f4", "", "fractional continuum placement error (constant term)"),
    "continuum_c1": ("f4", "", "linear Legendre coefficient of the continuum error"),
    "continuum_c2": ("f4", "", "quadratic Legendre coefficient of the continuum error"),
    "weak_line_scale": ("f4", "", "factor on line depths outside the Ca II cores"),
    "ca_ii_scale": ("f4", "", "factor on the Ca II core depths (< 1: shallower/infilled)"),
    "noise_exponent": ("f4", "", "alpha of sigma proportional to flux**alpha"),
    "noise_correlation": ("f4", "pixel", "Gaussian correlation length of the noise"),
    "gap_start": ("i4", "pixel", "first missing pixel (-1: none)"),
    "gap_width": ("i4", "pixel", "number of missing pixels"),
}


def _uniform(rng: np.random.Generator, rng_range: tuple) -> float:
    lo, hi = rng_range
    return float(lo) if hi == lo else float(rng.uniform(lo, hi))


def draw_realism(rng: np.random.Generator, realism: Realism, n_pix: int) -> dict:
    """One spectrum's nuisance values (the keys of :data:`NUISANCE_FIELDS`)."""
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
        gap_start=-1, gap_width=0)
    if realism.gap_fraction > 0 and rng.random() < realism.gap_fraction:
        width = int(round(_uniform(rng, realism.gap_width)))
        if width > 0:
            out["gap_width"] = width
            out["gap_start"] = int(rng.integers(0, max(1, n_pix - width)))
    return out


def continuum_factor(wave: np.ndarray, offset, c1, c2) -> np.ndarray:
    """Multiplicative continuum error 1 + offset + c1·P1(x) + c2·P2(x), x ∈ [-1, 1] over ``wave``;
    arguments are scalars or (n,) arrays (result (n, n_pix))."""
    x = (2.0 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1.0)[None, :]
    p2 = 0.5 * (3.0 * x ** 2 - 1.0)
    col = lambda v: np.atleast_1d(np.asarray(v, np.float64))[:, None]  # noqa: E731
    return 1.0 + col(offset) + col(c1) * x + col(c2) * p2


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

    ``rv`` (n,) [km/s] moves the Ca II windows with each spectrum's lines (the light-weighted
    centre is good enough for a window of ±1.2 Å). Arguments are scalars or (n,) arrays.
    """
    from ..constants import C_KMS

    flux = np.atleast_2d(flux)
    n = flux.shape[0]
    weak = np.broadcast_to(np.asarray(weak_scale, np.float64), (n,))[:, None]
    ca = np.broadcast_to(np.asarray(ca_ii_scale, np.float64), (n,))[:, None]
    if rv is None:
        w = np.broadcast_to(_ca_ii_weight(wave), flux.shape)
    else:
        w = np.stack([_ca_ii_weight(wave / (1.0 + v / C_KMS)) for v in np.atleast_1d(rv)])
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
