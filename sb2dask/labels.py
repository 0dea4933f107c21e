"""The stellar labels every stage predicts, stores and reports: names, units, descriptions and
the ranges of Binnenfeld et al. (2025), Table 1. Import these; never re-type the tuple."""

from __future__ import annotations

__all__ = ["PARAMETERS", "UNITS", "DESCRIPTIONS", "TABLE1_RANGES", "TARGETS", "TRUE_PREFIX",
           "DETECTOR_TARGETS", "MIN_LIGHT_FRACTION", "DOUBLE_LINED_EPOCH_FRACTION",
           "min_separation", "double_lined", "near_double_lined_threshold", "companion_in_noise",
           "detector_fields",
           "detector_truth"]

#: The per-component labels of the temperature and parameter networks, in the paper's order.
PARAMETERS = ("teff", "logg", "feh", "vsini")

#: What the trained networks predict: the four labels and the SB2 detector's probability.
TARGETS = PARAMETERS + ("p_binary",)

#: Units as written in Zarr attributes, Parquet field metadata and manifests.
UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "vsini": "km/s", "p_binary": ""}

DESCRIPTIONS = {
    "teff": "effective temperature",
    "logg": "surface gravity log10(g / cm s-2)",
    "feh": "metallicity [Fe/H]",
    "vsini": "projected rotational velocity",
    "p_binary": "probability that the spectrum is an SB2",
}

#: Label ranges of Table 1, used to scale network targets to [0, 1].
TABLE1_RANGES = {"teff": (3500.0, 6500.0), "logg": (3.0, 6.0), "feh": (-4.0, 1.0),
                 "vsini": (0.0, 100.0)}

#: Prefix of catalogue columns that carry true labels (``true_teff_1``): written with simulated
#: catalogues, passed through by the readers.
TRUE_PREFIX = "true_"


#: What the SB2 detector is trained to recognise (``TrainConfig.detector_target``):
#: ``is_binary`` (the paper's: every simulated binary is a positive, whether or not its second
#: star shows in the spectrum) or ``double_lined`` (:func:`double_lined`: the positives are the
#: binaries whose two stars this spectrum can show; single-lined binaries, faint companions and
#: unresolved pairs are negatives, as single stars are).
DETECTOR_TARGETS = ("is_binary", "double_lined")

#: Light fraction of the fainter star below which its lines do not show (a single-lined binary
#: in this spectrum); the evidence fits' rule uses the same number.
MIN_LIGHT_FRACTION = 0.05

#: Fraction of a binary's epoch spectra that :func:`double_lined` accepts: the ``f`` with which
#: the per-source evidence rule (:class:`sb2dask.infer.sources.EvidenceRule`) expects a binary to
#: show two stars at an epoch under a ``double_lined`` detector. Measured on that detector's
#: training store, the realistic recipe's /work/runs/det_v2.zarr: 4107 of the 7419 binaries among
#: the 15 000 rows of its test and validation splits (0.5536), rounded to 2 decimals.
DOUBLE_LINED_EPOCH_FRACTION = 0.55


def min_separation(resolving_power: float) -> float:
    """|RV1 − RV2| [km/s] below which two stars' lines are not resolved: half the FWHM of the
    line-spread function, c / (2R)."""
    from .constants import C_KMS

    return 0.5 * C_KMS / resolving_power


def _faint_and_separation(light_fraction, rv_separation):
    """The fainter star's light fraction and |RV1 − RV2| (n,), 0 where NaN (single stars)."""
    import numpy as np

    faint = np.nan_to_num(np.min(np.asarray(light_fraction, np.float64), axis=1), nan=0.0)
    return faint, np.nan_to_num(np.abs(np.asarray(rv_separation, np.float64)), nan=0.0)


def double_lined(is_binary, light_fraction, rv_separation, resolving_power: float | None = None,
                 min_light_fraction: float = MIN_LIGHT_FRACTION):
    """Whether each simulated spectrum shows two stars: a binary (``is_binary`` (n,)) whose
    fainter star gives at least ``min_light_fraction`` of the light (``light_fraction`` (n, 2))
    and whose velocities differ by at least :func:`min_separation` (``rv_separation`` (n,),
    km/s). ``resolving_power`` defaults to Gaia RVS's nominal one
    (:data:`sb2dask.gaia.RVS_RESOLVING_POWER`), what inference assumes, not each simulated
    spectrum's drawn LSF. Returns a boolean (n,) array."""
    import numpy as np

    if resolving_power is None:
        from .gaia import RVS_RESOLVING_POWER as resolving_power

    faint, sep = _faint_and_separation(light_fraction, rv_separation)
    return (np.asarray(is_binary, bool) & (faint >= min_light_fraction)
            & (sep >= min_separation(resolving_power)))


def near_double_lined_threshold(is_binary, light_fraction, rv_separation, factor: float,
                                resolving_power: float | None = None,
                                min_light_fraction: float = MIN_LIGHT_FRACTION):
    """Binaries within a factor ``factor`` (> 1) of either threshold of :func:`double_lined`:
    the fainter star's light fraction in [min_light_fraction / factor, min_light_fraction ×
    factor) or the separation in [:func:`min_separation` / factor, × factor). At a few per cent
    of the light or half a resolution element the spectrum says little about which side of the
    line a pair falls, so a detector fitted to them hedges on every star that looks single; a
    fit may leave them out (:func:`sb2dask.train.head.refit_student_heads`). Same inputs as
    :func:`double_lined`; returns a boolean (n,) array."""
    import numpy as np

    if factor <= 1:
        raise ValueError(f"the margin factor must be > 1, got {factor}")
    if resolving_power is None:
        from .gaia import RVS_RESOLVING_POWER as resolving_power

    faint, sep = _faint_and_separation(light_fraction, rv_separation)
    s0 = min_separation(resolving_power)
    return np.asarray(is_binary, bool) & (
        ((faint >= min_light_fraction / factor) & (faint < min_light_fraction * factor))
        | ((sep >= s0 / factor) & (sep < s0 * factor)))


def companion_in_noise(is_binary, light_fraction, snr, min_signal: float):
    """Binaries whose fainter star's light fraction × the continuum S/N per pixel (``snr``
    (n,)) is below ``min_signal``: a companion whose continuum-relative light is within a few
    noise units per pixel, which no single spectrum shows whatever its other labels (at S/N 20 a
    star giving 10 % of the light is a signal of 2). A detector fitted to call such pairs
    double-lined hedges on every noisy spectrum; a fit may leave them out
    (:func:`sb2dask.train.head.refit_student_heads`). Returns a boolean (n,) array."""
    import numpy as np

    if not min_signal > 0:
        raise ValueError(f"min_signal must be positive, got {min_signal}")
    faint = np.nan_to_num(np.min(np.asarray(light_fraction, np.float64), axis=1), nan=0.0)
    return np.asarray(is_binary, bool) & (faint * np.asarray(snr, np.float64) < min_signal)


def detector_fields(target: str) -> tuple[str, ...]:
    """The stored labels :func:`detector_truth` needs for ``target``."""
    return ("is_binary",) if target == "is_binary" else (
        "is_binary", "light_fraction", "rv_separation")


def detector_truth(target: str, labels: dict):
    """The truth a detector of ``target`` (:data:`DETECTOR_TARGETS`) is trained and scored
    against, from simulated ``labels`` (the fields :func:`detector_fields` names): boolean (n,)."""
    import numpy as np

    if target == "double_lined":
        return double_lined(labels["is_binary"], labels["light_fraction"],
                            labels["rv_separation"])
    if target == "is_binary":
        return np.asarray(labels["is_binary"], bool)
    raise ValueError(f"detector target must be one of {DETECTOR_TARGETS}, got {target!r}")
