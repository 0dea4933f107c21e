"""Diagnosis: the Ca II cores left out at inference only, in-library (issue 14).

The first ``--n`` test rows of a realistic detector store (e.g. ``ft_high_test``), through the
inference path (``predict_partition``, by the real-sky suite's runner: the bulk velocity
measured and removed), once as stored and once with every pixel within 1 Å of a Ca II line (at
each spectrum's true systemic velocity) made missing (NaN: inference fills it like any gap and
leaves it out of the bulk-velocity correlation). ROC AUC against ``double_lined``, its recall
at 0.5, single stars above 0.2, and the bulk velocity's error against the true systemic
velocity of the single stars.

    python benchmarks/bench_ca_core_mask.py --store runs/ft_high_test.zarr [--models students]

The real-sky side of the same question is ``bench_occlusion_real.py``'s ``gap ca_core``. Not a
target and not a criterion. One run. Writes ``benchmarks/results/bench_ca_core_mask.json``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

HALF_WIDTH = 1.0
FIELDS = ["is_binary", "light_fraction", "rv_separation", "gamma", "snr"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--models", default="students")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import zarr

    from sb2dask.constants import C_KMS
    from sb2dask.dataset.store import split_indices
    from sb2dask.evaluate.real_sky import RealSkyCase, run_suite
    from sb2dask.infer.config import InferenceConfig
    from sb2dask.labels import double_lined
    from sb2dask.simulate.realism import ca_ii_distance
    from sb2dask.stats import roc_auc

    root = zarr.open_group(args.store, mode="r")
    test = split_indices(args.store, "test")[:args.n]
    wave = root["wave"][...].astype(np.float64)
    flux = root["flux"].oindex[test].astype(np.float64)
    lab = {k: root["labels"][k].oindex[test] for k in FIELDS}
    rest = wave[None, :] / (1.0 + lab["gamma"][:, None] / C_KMS)
    core = ca_ii_distance(rest) <= HALF_WIDTH
    truth = double_lined(lab["is_binary"], lab["light_fraction"], lab["rv_separation"])
    single = ~lab["is_binary"].astype(bool)
    out = {}
    for name, f in (("as stored", flux), ("Ca II cores missing", np.where(core, np.nan, flux))):
        cases = [RealSkyCase(case=str(i), kind="store", wave=wave, flux=f[i], flux_error=None)
                 for i in range(len(f))]
        r = run_suite(cases, InferenceConfig(model_dir=args.models))
        p = r["p_binary"].to_numpy(float)
        err = r["rv_bulk"].to_numpy(float) - lab["gamma"]
        out[name] = dict(auc_double_lined=roc_auc(truth, p),
                         recall_double_lined=float((p[truth] > 0.5).mean()),
                         singles_above_0_2=float((p[single] > 0.2).mean()),
                         singles_rv_bulk_median_abs_error=float(np.nanmedian(np.abs(err[single]))),
                         singles_rv_bulk_off_by_10=float(np.mean(~(np.abs(err[single]) <= 10))))
        print(f"{name:<22} AUC {out[name]['auc_double_lined']:.3f} recall "
              f"{out[name]['recall_double_lined']:.3f} singles > 0.2 "
              f"{out[name]['singles_above_0_2']:.3f}; singles' rv_bulk: median |error| "
              f"{out[name]['singles_rv_bulk_median_abs_error']:.2f} km/s, off by > 10 km/s or "
              f"none {out[name]['singles_rv_bulk_off_by_10']:.3f}", flush=True)
    write_results(f"bench_ca_core_mask{args.tag}", store=args.store, models=args.models,
                  n=int(len(test)), half_width=HALF_WIDTH, results=out,
                  note="Ca II cores made missing at inference only; one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
