"""Diagnosis: does p_binary tolerate chromospheric infill on real spectra? The real single
stars of the real-sky suite with reference labels (Kepler-93, KOI-001 and, held out,
Kepler-409), at rest, with their Ca II core depths multiplied by k through the simulator's own
operator (:func:`sb2dask.simulate.realism.scale_line_depths`, ``weak_scale`` 1: a cosine bell of
±1.2 Å about each line centre, as the realistic recipe draws ``active_ca_ii_scale`` 0.55-0.85
for a tenth of its spectra), and the held-out active star for comparison.

    python benchmarks/bench_ca_infill_real.py --models students [runs/students_B ...] \
        [--names students B]

One run (the spectra and the operator are deterministic). Not a target and not a criterion
of any rule: it reads a weakness the suite's own cases do not isolate. Writes
``benchmarks/results/bench_ca_infill_real.json`` and prints p_binary per star and k.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

FACTORS = (0.4, 0.55, 0.7, 0.85, 1.0, 1.2)
STARS = ("Kepler-93", "KOI-001", "Kepler-409", "GaiaDR3-3174658066485297152")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["students"])
    ap.add_argument("--names", nargs="+", default=None)
    ap.add_argument("--gaia-dir", default=None,
                    help="the shared DR3 spectra (default: ../shared/data/gaia_rvs beside the "
                         "repository)")
    args = ap.parse_args(argv)
    names = args.names or args.models
    if len(names) != len(args.models):
        raise SystemExit("--names needs one name per --models")

    from sb2dask.evaluate.real_sky import HELDOUT_DIR, RealSkyCase, _real_cases, run_suite
    from sb2dask.infer.config import InferenceConfig
    from sb2dask.simulate.realism import scale_line_depths

    gaia = Path(args.gaia_dir) if args.gaia_dir else (
        Path(__file__).resolve().parents[2] / "shared" / "data" / "gaia_rvs")
    real = [c for c in _real_cases(gaia) + _real_cases(Path(HELDOUT_DIR), heldout=True)
            if c.truth.get("shift_kms") == 0 and c.truth["star"] in STARS]
    found = [c.truth["star"] for c in real]
    if sorted(found) != sorted(STARS):
        raise SystemExit(f"expected the spectra of {', '.join(STARS)}; found {found} "
                         f"({gaia}, {HELDOUT_DIR})")
    cases = []
    for c in real:
        for k in FACTORS:
            flux = scale_line_depths(np.asarray(c.flux, float), np.asarray(c.wave, float), 1.0,
                                     k)[0]
            cases.append(RealSkyCase(case=f"{c.truth['star']} k={k}", kind="real", wave=c.wave,
                                     flux=flux, flux_error=c.flux_error, truth={}))
    table = {}
    for name, models in zip(names, args.models):
        r = run_suite(cases, InferenceConfig(model_dir=models))
        table[name] = {}
        for star in STARS:
            p = [float(r.loc[r["case"] == f"{star} k={k}", "p_binary"].iloc[0]) for k in FACTORS]
            table[name][star] = dict(zip([f"{k}" for k in FACTORS], p))
    print(f"{'models':<12} {'star':<30} " + " ".join(f"k={k:<5}" for k in FACTORS))
    for name, rows in table.items():
        for star, p in rows.items():
            print(f"{name:<12} {star:<30} " + " ".join(f"{v:7.2f}" for v in p.values()))
    write_results("bench_ca_infill_real", models=dict(zip(names, args.models)),
                  factors=list(FACTORS), p_binary=table,
                  note="Ca II core depths x k (simulator's operator) on real spectra at rest; "
                       "diagnosis, one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
