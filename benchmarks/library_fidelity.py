"""How well the embedded grid fits real single stars, and where it does not (issue 14 item 5).

    python benchmarks/library_fidelity.py [--gaia-dir ../shared/data/gaia_rvs]
        [--phoenix-dir ../shared/data/phoenix] [--tag TAG]

0. **The PHOENIX files' own resolving power**: each file (no LSF added) against the embedded
   grid at its labels convolved to R = 7 000-20 000, both normalised by the suite's upper
   envelope, line depths of the grid scaled by one free factor; the R of the smallest RMS
   (parabola in 1/R through the three best) is the files' (the value
   ``sb2dask.library.phoenix.LOGLAM_RESOLUTION`` rests on).

For every real Gaia DR3 RVS spectrum of the real-sky suite (the shared ones and the held-out ones
shipped in ``sb2dask/data/real_sky``, at rest) and every PHOENIX single star rendered by the
suite's own path (``sb2dask.evaluate.real_sky``: not the training renderer; S/N 100 white noise),
on the spectra's own 2401-pixel grid:

1. **Best single fit** of the embedded grid (``sb2dask.evidence``: Teff, log g, [Fe/H], v sin i,
   RV, and a degree-2 Legendre continuum), weighted by the quoted errors alone (no error floor,
   Ca II cores not masked): the reduced χ² is then the library's misfit in units of the noise.
2. **Where the misfit sits**: χ² per pixel in the Ca II cores (±1 Å of the three lines), the Ca II
   wings (1-15 Å), the other line pixels (model depth > 2 %) and the continuum, and the share of
   the total χ² each holds; the equivalent width of the Ca II lines, data / model.
3. **Is it systematic?** A correction learned from *other* stars, never from the star it is
   applied to: the median relative residual ``flux / model − 1`` per pixel (rest frame) of the
   calibration stars multiplies the model of the star under test, whose continuum is refitted;
   χ² before and after. Calibration set: the other spectra of the same family (the other five
   real spectra; the other seven PHOENIX stars), leave one out. A correction that lowers χ² on a
   star it never saw measures an error the stars share (the library's); one that raises it says
   the misfit is star-specific at what these few stars can measure. The correction carries the
   calibration stars' noise: the same median made of pure noise (their quoted errors, five
   draws) measures that penalty, and the share of the excess χ² removed is given net of it.

Prints a table and writes ``benchmarks/results/library_fidelity.json``. CPU only, about 10 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

#: Half widths [Å] of the Ca II core and wing windows around each line.
CORE_HALF_WIDTH = 1.0
WING_HALF_WIDTH = 15.0
#: Model depth above which a pixel outside the Ca II windows counts as a line pixel.
LINE_DEPTH = 0.02
#: Width [Å] of the two end windows whose mean relative residual is reported (the RVS filter's
#: edges, where the real spectra's normalisation departs from the fit's degree-2 continuum).
EDGE_WIDTH = 20.0
#: Draws of the noise-only correction (step 3's null).
NULL_DRAWS = 5


def _continuum_fit(model: np.ndarray, flux: np.ndarray, w: np.ndarray, basis: np.ndarray):
    """Weighted least-squares continuum polynomial for ``model`` (n_pix,): the model times it."""
    a = model[:, None] * basis
    coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], np.nan_to_num(flux) * np.sqrt(w),
                           rcond=None)[0]
    return model * (basis @ coef)


def ca_ii_regions(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the Ca II cores (within :data:`CORE_HALF_WIDTH`) and wings (to
    :data:`WING_HALF_WIDTH`) over ``wave``."""
    from sb2dask.simulate.realism import ca_ii_distance

    dist = ca_ii_distance(wave)
    return dist <= CORE_HALF_WIDTH, (dist > CORE_HALF_WIDTH) & (dist <= WING_HALF_WIDTH)


def _regions(wave: np.ndarray, depth: np.ndarray) -> dict[str, np.ndarray]:
    core, wing = ca_ii_regions(wave)
    line = ~core & ~wing & (depth > LINE_DEPTH)
    return dict(ca_core=core, ca_wing=wing, lines=line, continuum=~core & ~wing & ~line)


def _ca_ew_ratio(wave, flux, model) -> float:
    from sb2dask.evaluate.library_validation import CA_BANDS, equivalent_width

    ew = [(equivalent_width(wave, flux, b), equivalent_width(wave, model, b)) for b in CA_BANDS]
    return float(sum(e[0] for e in ew) / sum(e[1] for e in ew))


#: Resolving powers the PHOENIX files are compared at (step 0).
R_SCAN = (7000.0, 8000.0, 9000.0, 10000.0, 11000.0, 12000.0, 13000.0, 15000.0, 20000.0)


def phoenix_resolution(phoenix_dir: Path) -> list[dict]:
    """Step 0 for every ``lte*.fits`` of ``phoenix_dir``: RMS per R of :data:`R_SCAN`, the best
    R and the depth factor there."""
    from sb2dask.evaluate.library_validation import observe
    from sb2dask.evaluate.real_sky import read_phoenix_stars, upper_envelope
    from sb2dask.library import load_library
    from sb2dask.library.wavelength import vac_to_air

    lib = load_library("embedded")
    out = []
    for name, wave, flux, h in read_phoenix_stars(phoenix_dir):
        air = vac_to_air(wave)
        rms, scale = [], []
        for r in R_SCAN:
            ew, ef = observe(lib, h["PHXTEFF"], h["PHXLOGG"], h["PHXM_H"], resolution=r)
            sel = (ew > 8500) & (ew < 8700)
            p = np.interp(ew[sel], air, flux)
            d1 = 1 - p / upper_envelope(ew[sel], p)
            d2 = 1 - ef[sel] / upper_envelope(ew[sel], ef[sel])
            a = float(d1 @ d2 / (d2 @ d2))
            rms.append(float(np.sqrt(np.mean((d1 - a * d2) ** 2))))
            scale.append(a)
        i = int(np.clip(np.argmin(rms), 1, len(R_SCAN) - 2))
        x = 1.0 / np.asarray(R_SCAN[i - 1:i + 2])
        c = np.polyfit(x, rms[i - 1:i + 2], 2)
        best = 1.0 / (-c[1] / (2 * c[0])) if c[0] > 0 else R_SCAN[int(np.argmin(rms))]
        out.append(dict(file=name, teff=float(h["PHXTEFF"]), rms=rms, depth_factor=scale,
                        best_resolution=float(best)))
    return out


def add_spectra_args(ap, models: bool = False) -> None:
    """The shared spectra's folders and ``--tag`` (and, with ``models``, ``--models`` and
    ``--names``) on ``ap``: the arguments of this and the other real-sky diagnoses."""
    if models:
        ap.add_argument("--models", nargs="+", default=["students"])
        ap.add_argument("--names", nargs="+", default=None)
    ap.add_argument("--gaia-dir", default="../shared/data/gaia_rvs")
    ap.add_argument("--phoenix-dir", default="../shared/data/phoenix")
    ap.add_argument("--tag", default="")


def model_names(args) -> list[str]:
    """One name per ``--models`` (default: the models themselves)."""
    names = args.names or args.models
    if len(names) != len(args.models):
        raise SystemExit("--names needs one name per --models")
    return names


def cases_and_fits(args, who: str) -> tuple[list, dict]:
    """The cases of ``args``' folders (:func:`_cases`) and their :func:`best_single_fits`;
    exits naming ``who`` when there are none."""
    cases = _cases(Path(args.gaia_dir) if args.gaia_dir else None,
                   Path(args.phoenix_dir) if args.phoenix_dir else None)
    if not cases:
        raise SystemExit(f"{who}: no real or PHOENIX spectra found")
    return cases, best_single_fits(cases)


def _cases(gaia_dir: Path | None, phoenix_dir: Path | None) -> list:
    from sb2dask.evaluate.real_sky import build_cases

    cases = build_cases(gaia_dir, phoenix_dir)
    return [c for c in cases if (c.kind == "real" and c.truth.get("shift_kms") == 0.0)
            or c.kind == "phoenix_single"]


def _group(case) -> str:
    """``original`` (the shared real spectra), ``held_out`` (real, shipped) or ``phoenix``."""
    if case.kind != "real":
        return "phoenix"
    return "held_out" if case.truth.get("heldout") else "original"


def best_single_fits(cases: list) -> dict:
    """Step 1 for ``cases`` (:class:`~sb2dask.evaluate.real_sky.RealSkyCase`, one wavelength
    grid): the best single embedded-grid star of each, weighted by the quoted errors alone.

    Returns ``wave`` (the pixels inside the grid's range, ``sel`` the mask of them on the cases'
    grid), ``flux``, ``err``, the weights ``w``, the bare model ``bare`` and the model with its
    fitted continuum ``best`` (all (n_cases, n_pix)), the continuum ``basis``, the fit
    ``config`` and the fit's outputs ``fit``."""
    import torch

    from sb2dask.evidence.fit import FitConfig, _legendre_basis, fit_spectra, noise_weights
    from sb2dask.evidence.model import ForwardModel
    from sb2dask.library import load_library

    torch.set_num_threads(1)
    wave = np.asarray(cases[0].wave, float)
    lib = load_library("embedded")
    sel = (wave >= lib.wave[0] + 5) & (wave <= lib.wave[-1] - 5)
    wave = wave[sel]
    flux = np.stack([np.asarray(c.flux, float)[sel] for c in cases])
    err = np.stack([np.asarray(c.flux_error, float)[sel] for c in cases])
    config = FitConfig(error_floor=0.0, mask_ca_ii=False, precision="float64")
    model = ForwardModel(lib, wave, resolution=config.resolution, working_dv=config.working_dv)
    w = noise_weights(wave, flux, err, None, config)
    start = {f"{k}_{i}": np.full(len(cases), np.nan) for k in ("teff", "logg", "feh", "vsini")
             for i in (1, 2)}
    fit = fit_spectra(model, flux, w, start, config)
    labels = torch.tensor(np.stack([fit["fit_teff_single"], fit["fit_logg_single"],
                                    fit["fit_feh_single"]], 1), dtype=torch.float64)
    with torch.no_grad():
        bare = model.single(labels, torch.tensor(fit["fit_vsini_single"], dtype=torch.float64),
                            torch.tensor(fit["rv_single"], dtype=torch.float64)).numpy()
    basis = _legendre_basis(wave, config.continuum_degree, torch.float64).numpy()
    best = np.stack([_continuum_fit(bare[i], flux[i], w[i], basis) for i in range(len(cases))])
    return dict(wave=wave, sel=sel, flux=flux, err=err, w=w, bare=bare, best=best, basis=basis,
                config=config, fit=fit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_spectra_args(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cases, fits = cases_and_fits(args, "library_fidelity")
    wave, flux, err, w, bare, best, basis, config, fit = (
        fits[k] for k in ("wave", "flux", "err", "w", "bare", "best", "basis", "config", "fit"))
    n_par = 5 + basis.shape[1]
    rel = np.where(w > 0, flux / best - 1.0, np.nan)  # relative residuals, rest frame
    rng = np.random.default_rng(20261130)
    groups = np.array([_group(c) for c in cases])
    kinds = np.array([c.kind for c in cases])
    rows = []
    for i, c in enumerate(cases):
        used = w[i] > 0
        chi = np.where(used, (np.nan_to_num(flux[i]) - best[i]) ** 2 * w[i], 0.0)
        reg = _regions(wave, 1.0 - bare[i])
        # calibration stars: the other spectra of the same family (real or PHOENIX), never
        # the star itself (leave one out)
        calib = (kinds == c.kind) & (np.arange(len(cases)) != i)
        corr = np.nanmedian(rel[calib], axis=0) if calib.any() else np.zeros(len(wave))
        fixed = _continuum_fit(bare[i] * (1.0 + np.nan_to_num(corr)), flux[i], w[i], basis)
        chi_fixed = np.where(used, (np.nan_to_num(flux[i]) - fixed) ** 2 * w[i], 0.0)
        # the correction carries the calibration stars' noise: the same median of pure noise
        # (their relative errors, NULL_DRAWS draws) applied alike measures what that alone costs
        null = []
        for _ in range(NULL_DRAWS):
            draw = rng.normal(size=(int(calib.sum()), len(wave))) * err[calib] / best[calib]
            noise = np.nanmedian(np.where(w[calib] > 0, draw, np.nan), axis=0)
            m0 = _continuum_fit(bare[i] * (1.0 + np.nan_to_num(noise)), flux[i], w[i], basis)
            null.append(np.where(used, (np.nan_to_num(flux[i]) - m0) ** 2 * w[i], 0.0).sum())
        penalty = (np.mean(null) - chi[used].sum()) if calib.any() else 0.0
        dof = max(int(used.sum()) - n_par, 1)
        row = dict(
            case=c.case, group=groups[i], star=c.truth.get("star") or c.truth.get("file"),
            single=c.truth.get("single"), n_pixels=int(used.sum()),
            fit=dict(teff=float(fit["fit_teff_single"][i]), logg=float(fit["fit_logg_single"][i]),
                     feh=float(fit["fit_feh_single"][i]),
                     vsini=float(fit["fit_vsini_single"][i]), rv=float(fit["rv_single"][i])),
            chi2_red=float(chi[used].sum() / dof),
            rms_residual=float(np.sqrt(np.mean((flux[i] - best[i])[used] ** 2))),
            median_error=float(np.median(err[i][used])),
            ca_ew_data_over_model=_ca_ew_ratio(wave, np.where(used, flux[i], best[i]), best[i]),
            mean_residual_blue_edge=float(np.nanmean(rel[i][used & (wave < wave[0] + EDGE_WIDTH)])),
            mean_residual_red_edge=float(np.nanmean(rel[i][used & (wave > wave[-1] - EDGE_WIDTH)])),
            chi2_red_corrected=float(chi_fixed[used].sum() / dof),
            chi2_red_noise_penalty=float(penalty / dof),
            excess_removed_net=float((chi[used].sum() - chi_fixed[used].sum() + penalty)
                                     / max(chi[used].sum() - dof, 1e-9)),
            calibration_stars=[cases[j].case for j in np.flatnonzero(calib)])
        for name, m in reg.items():
            m = m & used
            row[f"chi2_per_pixel_{name}"] = float(chi[m].mean()) if m.any() else float("nan")
            row[f"chi2_share_{name}"] = float(chi[m].sum() / chi[used].sum())
            row[f"chi2_per_pixel_{name}_corrected"] = (float(chi_fixed[m].mean()) if m.any()
                                                       else float("nan"))
        rows.append(row)
    scan = phoenix_resolution(Path(args.phoenix_dir)) if args.phoenix_dir else []
    seconds = time.perf_counter() - t0
    if scan:
        best = [r["best_resolution"] for r in scan]
        print("\nPHOENIX files' resolving power (embedded grid convolved to match): "
              + ", ".join(f"{r['teff']:.0f} K {r['best_resolution']:.0f}" for r in scan)
              + f"; median {np.median(best):.0f}")
    names = ("ca_core", "ca_wing", "lines", "continuum")
    print(f"\nBest single embedded-grid fit, quoted errors only ({len(cases)} spectra, "
          f"{seconds:.0f} s)\n")
    print("| spectrum | group | χ²_red | RMS | σ median | χ²/pixel: Ca core / wing / lines / "
          "continuum | share of χ²: core / wing / lines / cont. | Ca EW data/model | χ²_red "
          "corrected | noise-only penalty | excess removed, net | mean residual, blue / red "
          "edge |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['group']} | {r['chi2_red']:.2f} | {r['rms_residual']:.4f} | "
              f"{r['median_error']:.4f} | "
              + " / ".join(f"{r[f'chi2_per_pixel_{n}']:.1f}" for n in names) + " | "
              + " / ".join(f"{r[f'chi2_share_{n}']:.2f}" for n in names)
              + f" | {r['ca_ew_data_over_model']:.3f} | {r['chi2_red_corrected']:.2f} | "
              f"+{r['chi2_red_noise_penalty']:.2f} | {r['excess_removed_net']:.0%} | "
              f"{r['mean_residual_blue_edge']:+.2%} / {r['mean_residual_red_edge']:+.2%} |")
    write_results(f"library_fidelity{'_' + args.tag if args.tag else ''}", seconds=seconds,
                  fit_config=config.to_dict(), regions=dict(
                      ca_core_half_width=CORE_HALF_WIDTH, ca_wing_half_width=WING_HALF_WIDTH,
                      line_depth=LINE_DEPTH, edge_width=EDGE_WIDTH), spectra=rows,
                  phoenix_resolution=dict(r_scan=list(R_SCAN), files=scan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
