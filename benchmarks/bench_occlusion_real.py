"""Diagnosis: which part of an off-library spectrum makes p_binary? (issue 14 item 5)

For every real Gaia DR3 spectrum of the real-sky suite at rest (the shared and the held-out
ones) and every PHOENIX single star of the suite (its own rendering, S/N 100), the best single
star of the embedded grid is fitted (``benchmarks/library_fidelity.py``, step 1: quoted errors
only). Its spectrum plus white noise at the quoted errors is the star's *library twin*: what the
spectrum would be if the library described it exactly. Then, for each window W of the spectrum
(the Ca II cores, ±1 Å; the Ca II wings, 1-15 Å; the rest in eight runs of equal width):

- ``replace W``: the real spectrum with W taken from the twin (how much of p_binary W carries);
- ``only W``: the twin with W taken from the real spectrum (how much W alone makes).

p_binary is the mean over ``--draws`` noise draws (seeded per spectrum). The few Å at each end
that the grid does not cover keep the real flux in every variant. One more variant,
``gap ca_core``, blanks the Ca II cores (NaN: inference fills them as missing pixels) to show
what masking them at inference alone does to models never trained so.

    python benchmarks/bench_occlusion_real.py [--models students ...] [--names ...]

Not a target and not a criterion of any rule: it locates what the suite's failures are made of.
The held-out stars are diagnosed, not tuned on. Writes
``benchmarks/results/bench_occlusion_real.json`` and prints a table per model set.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script
from library_fidelity import (
    add_spectra_args,
    ca_ii_regions,
    cases_and_fits,
    model_names,
)

#: Runs of equal width the pixels outside the Ca II windows are cut into.
N_SEGMENTS = 8
SEED = 20261210


def windows(wave: np.ndarray) -> dict[str, np.ndarray]:
    """Masks over ``wave`` (air Å): ``ca_core``, ``ca_wing`` and :data:`N_SEGMENTS` runs of the
    rest, named by their wavelength range."""
    core, wing = ca_ii_regions(wave)
    out = dict(ca_core=core, ca_wing=wing)
    rest = ~core & ~wing
    edges = np.linspace(wave[0], wave[-1] + 1e-6, N_SEGMENTS + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[f"{lo:.0f}-{hi:.0f}"] = rest & (wave >= lo) & (wave < hi)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_spectra_args(ap, models=True)
    ap.add_argument("--draws", type=int, default=4)
    args = ap.parse_args(argv)
    names = model_names(args)

    from sb2dask.evaluate.real_sky import RealSkyCase, run_suite
    from sb2dask.infer.config import InferenceConfig

    t0 = time.perf_counter()
    cases, fits = cases_and_fits(args, "bench_occlusion_real")
    sel, best, err = fits["sel"], fits["best"], fits["err"]
    wins = windows(fits["wave"])
    variants = (["data", "twin", "gap ca_core"] + [f"replace {k}" for k in wins]
                + [f"only {k}" for k in wins])
    inputs, keys = [], []
    for i, c in enumerate(cases):
        rng = np.random.default_rng([SEED, i])
        data = np.asarray(c.flux, float)
        for d in range(args.draws):
            twin = best[i] + rng.normal(size=best.shape[1]) * np.nan_to_num(err[i])
            for v in variants:
                flux = data.copy()
                if v == "twin":
                    flux[sel] = twin
                elif v == "gap ca_core":
                    flux[np.flatnonzero(sel)[wins["ca_core"]]] = np.nan
                elif v.startswith("replace "):
                    m = wins[v.removeprefix("replace ")]
                    flux[np.flatnonzero(sel)[m]] = twin[m]
                elif v.startswith("only "):
                    m = wins[v.removeprefix("only ")]
                    part = twin.copy()
                    part[m] = data[sel][m]
                    flux[sel] = part
                if v in ("data", "gap ca_core") and d > 0:
                    continue  # no noise drawn
                inputs.append(RealSkyCase(case=f"{c.case} | {v} | {d}", kind=c.kind, wave=c.wave,
                                          flux=flux, flux_error=c.flux_error, truth={}))
                keys.append((c.case, v))
    table = {}
    for name, models in zip(names, args.models):
        r = run_suite(inputs, InferenceConfig(model_dir=models))
        p = np.asarray(r["p_binary"], float)
        per = {}
        for (case, v), x in zip(keys, p):
            per.setdefault(case, {}).setdefault(v, []).append(float(x))
        table[name] = {case: {v: float(np.mean(x)) for v, x in vs.items()}
                       for case, vs in per.items()}
    seconds = time.perf_counter() - t0

    short = {"data": "data", "twin": "twin"}
    for name, rows in table.items():
        print(f"\n{name}: p_binary (mean of {args.draws} noise draws); replace W / only W\n")
        print("| spectrum | data | twin | gap core | " + " | ".join(wins) + " |")
        print("|---|---|---|---|" + "---|" * len(wins))
        for case, vs in rows.items():
            cells = [f"{vs[f'replace {k}']:.2f} / {vs[f'only {k}']:.2f}" for k in wins]
            print(f"| {case} | {vs['data']:.2f} | {vs['twin']:.2f} | {vs['gap ca_core']:.2f} | "
                  + " | ".join(cells) + " |")
    write_results(f"bench_occlusion_real{'_' + args.tag if args.tag else ''}", seconds=seconds,
                  models=dict(zip(names, args.models)), draws=args.draws, seed=SEED,
                  windows={k: [float(fits["wave"][m].min()), float(fits["wave"][m].max()),
                               int(m.sum())] for k, m in wins.items()},
                  fits={c.case: dict(teff=float(fits["fit"]["fit_teff_single"][i]),
                                     logg=float(fits["fit"]["fit_logg_single"][i]),
                                     feh=float(fits["fit"]["fit_feh_single"][i]),
                                     vsini=float(fits["fit"]["fit_vsini_single"][i]))
                        for i, c in enumerate(cases)},
                  p_binary=table, variants=[short.get(v, v) for v in variants],
                  note="diagnosis, one run: windows of each off-library spectrum swapped with "
                       "its best single embedded-grid fit plus white noise at the quoted errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
