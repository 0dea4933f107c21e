"""The bulk velocity of simulated spectra with a gap (missing pixels), with and without the
filled pixels left out of the cross-correlation (``estimate_rv(..., missing=...)``).

For the spectra of a realistic store whose simulated gap (``gap_start``, ``gap_width``) is
present, split into those whose gap covers a Ca II line (within 1 Å of it at the spectrum's
systemic velocity) and the others: the median |rv_bulk − γ| and the share off by more than
10 km/s or without a velocity, for single stars, both ways. The velocity is measured as
inference measures it (``preprocess``, then ``estimate_rv``).

    python benchmarks/bench_rv_bulk_gaps.py --store runs/head_fit.zarr [--store ...] [--real-sky]

With ``--real-sky``, also the real-sky suite's real spectra (at rest, +30 and −100 km/s on their
grid) and PHOENIX singles with every pixel within 1 Å of a Ca II line made missing: the velocity
against the same spectrum's without the gap, both ways.

One run. Writes ``benchmarks/results/bench_rv_bulk_gaps.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def _summary(err: np.ndarray) -> dict:
    return dict(n=int(len(err)),
                median_abs_error_kms=float(np.nanmedian(np.abs(err))) if len(err) else None,
                off_by_10_or_none=float(np.mean(~(np.abs(err) <= 10.0))) if len(err) else None)


def _real_sky(gaia_dir: Path, phoenix_dir: Path) -> dict:
    """The real-sky cases with their Ca II cores missing (module docstring)."""
    from sb2dask.evaluate.real_sky import build_cases
    from sb2dask.observe.preprocess import preprocess
    from sb2dask.observe.rv_bulk import estimate_rv, velocity_to_factor
    from sb2dask.simulate.config import output_wave
    from sb2dask.simulate.realism import ca_ii_distance

    model_wave = output_wave("gaia_dr3_903")
    cases = [c for c in build_cases(gaia_dir, phoenix_dir)
             if (c.kind == "real" and c.truth.get("shift_kms") in (0.0, 30.0, -100.0))
             or c.kind == "phoenix_single"]
    rows = {}
    for c in cases:
        wave = np.asarray(c.wave, float)
        shift = c.truth.get("shift_kms", 0.0)
        core = ca_ii_distance(wave / velocity_to_factor(shift)) <= 1.0
        full = preprocess([wave], [np.asarray(c.flux, float)], None, model_wave)
        gap = preprocess([wave], [np.where(core, np.nan, c.flux)], None, model_wave)
        v = float(estimate_rv(model_wave, full.flux).rv[0])
        rows[c.case] = dict(
            full=v, filled_pixels_as_continuum=float(estimate_rv(model_wave, gap.flux).rv[0]),
            filled_pixels_ignored=float(estimate_rv(model_wave, gap.flux,
                                                    missing=gap.filled).rv[0]))
    off = {k: np.array([abs(r[k] - r["full"]) for r in rows.values()])
           for k in ("filled_pixels_as_continuum", "filled_pixels_ignored")}
    for k, d in off.items():
        print(f"real sky, cores missing, {k:<27}: {int((d > 20).sum())} of {len(d)} off by "
              f"> 20 km/s; largest {d.max():.2f} km/s")
    return dict(cases=rows, **{f"{k}_off_by_20": int((d > 20).sum()) for k, d in off.items()},
                **{f"{k}_max_abs_kms": float(d.max()) for k, d in off.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", action="append", default=[])
    ap.add_argument("--real-sky", action="store_true")
    ap.add_argument("--gaia-dir", default="../shared/data/gaia_rvs")
    ap.add_argument("--phoenix-dir", default="../shared/data/phoenix")
    args = ap.parse_args(argv)
    if not args.store and not args.real_sky:
        raise SystemExit("nothing to do: give --store and/or --real-sky")

    import zarr

    from sb2dask.constants import C_KMS
    from sb2dask.observe.preprocess import preprocess
    from sb2dask.observe.rv_bulk import estimate_rv
    from sb2dask.simulate.realism import CA_II_AIR

    out = {}
    for store in args.store:
        root = zarr.open_group(store, mode="r")
        lab = root["labels"]
        width = lab["gap_width"][...]
        rows = np.flatnonzero((width > 0) & ~lab["is_binary"][...].astype(bool))
        wave = root["wave"][...].astype(np.float64)
        flux = root["flux"].oindex[rows].astype(np.float64)
        gamma = lab["gamma"].oindex[rows].astype(np.float64)
        start = lab["gap_start"].oindex[rows]
        lo = wave[np.clip(start, 0, len(wave) - 1)]
        hi = wave[np.clip(start + width[rows] - 1, 0, len(wave) - 1)]
        lines = np.asarray(CA_II_AIR)[None, :] * (1.0 + gamma[:, None] / C_KMS)
        over = ((lines >= lo[:, None] - 1.0) & (lines <= hi[:, None] + 1.0)).any(axis=1)
        pre = preprocess([wave] * len(flux), list(flux), None, wave)
        ok = pre.usable
        before = np.full(len(rows), np.nan)
        after = np.full(len(rows), np.nan)
        before[ok] = estimate_rv(wave, pre.flux[ok]).rv_if_detected
        after[ok] = estimate_rv(wave, pre.flux[ok], missing=pre.filled[ok]).rv_if_detected
        res = {}
        for name, m in (("gap over a Ca II line", over), ("gap elsewhere", ~over)):
            res[name] = dict(filled_pixels_ignored=_summary(after[m] - gamma[m]),
                             filled_pixels_as_continuum=_summary(before[m] - gamma[m]))
            b, a = (res[name][k] for k in ("filled_pixels_as_continuum",
                                            "filled_pixels_ignored"))
            print(f"{Path(store).stem:<16} single stars, {name:<22} n {a['n']:5d}: median "
                  f"|error| {b['median_abs_error_kms']:.2f} -> {a['median_abs_error_kms']:.2f} "
                  f"km/s, off by > 10 km/s or none {b['off_by_10_or_none']:.3f} -> "
                  f"{a['off_by_10_or_none']:.3f}")
        out[Path(store).stem] = res
    if args.real_sky:
        out["real_sky"] = _real_sky(Path(args.gaia_dir), Path(args.phoenix_dir))
    write_results("bench_rv_bulk_gaps", stores=args.store, results=out,
                  note="single stars with a simulated gap; before -> after leaving filled "
                       "pixels out of the cross-correlation; one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
