"""What a detector calls an SB2: in-library metrics against both truths, and the rates on what is
not a double-lined spectrum (issue 14 item 3).

    python benchmarks/bench_detector_target.py --models runs/models_v2 runs/models_dl \
        --detector-store runs/det_v2.zarr --work runs/detector_negatives

For each model directory (its detector ensemble alone, ``ModelSet.detect``; a directory without
a detector is refused), the stores read in the ``rv_bulk`` frame (the realistic recipe's systemic
velocities removed as inference measures them: ``--rest-frame on`` for rest-frame models):

* the first ``--n-test`` rows of ``--detector-store``'s test split (half single stars): ROC AUC,
  recall, precision and the single stars' rate above 0.5, scored against ``is_binary`` (every
  simulated
  binary) and against ``double_lined`` (:func:`sb2dask.labels.double_lined`: the binaries whose
  two stars the spectrum shows; its precision counts the other binaries as negatives), and the
  share of the other binaries above 0.5;
* three sets of the realistic recipe with seeds no training store used, simulated into ``--work``
  on the first run (``--n-negatives`` spectra each, 3 × for the binaries): fast-rotating single
  stars (v sin i 60-100 km/s), giants at the grid's edge (single stars, log g 3.0-3.5), and
  binaries, of which the single-lined ones (fainter star < 5 % of the light) and the unresolved
  ones (|ΔRV| < 13 km/s) are negatives and the double-lined ones (fainter star ≥ 10 %, |ΔRV| ≥
  20 km/s: clearly visible) measure the recall that is left.

Writes ``benchmarks/results/bench_detector_target.json`` and prints one line per model set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

#: name -> (seed, SimulationConfig.realistic overrides, spectra per --n-negatives)
NEGATIVE_SETS = {
    "fast_rotators": (20261131, dict(binary_fraction=0.0, vsini_range=(60.0, 100.0)), 1),
    "giants": (20261132, dict(binary_fraction=0.0, logg_range=(3.0, 3.5)), 1),
    "binaries": (20261133, dict(binary_fraction=1.0), 3),
}
FIELDS = ["is_binary", "light_fraction", "rv_separation", "snr"]


def negative_stores(work: Path, n: int) -> dict[str, Path]:
    """The negative sets' stores under ``work`` (simulated when missing; resumable)."""
    from sb2dask.dataset.factory import generate
    from sb2dask.simulate.config import SimulationConfig

    out = {}
    for name, (seed, changes, factor) in NEGATIVE_SETS.items():
        cfg = SimulationConfig.realistic(output_grid="gaia_dr3_903", seed=seed, **changes)
        path = work / f"{name}.zarr"
        generate(path, cfg, factor * n, min(1000, factor * n), progress=False)
        out[name] = path
    return out


def rates(p: np.ndarray, lab: dict) -> dict:
    from sb2dask.evaluate.metrics import detector_metrics
    from sb2dask.gaia import RVS_RESOLVING_POWER
    from sb2dask.labels import MIN_LIGHT_FRACTION, detector_truth, min_separation

    binary = detector_truth("is_binary", lab)
    dl = detector_truth("double_lined", lab)
    out = {}
    if binary.all():
        faint = np.nan_to_num(np.min(lab["light_fraction"], 1), nan=0.0)
        sep = lab["rv_separation"]
        sb1 = faint < MIN_LIGHT_FRACTION
        unresolved = ~sb1 & (sep < min_separation(RVS_RESOLVING_POWER))
        clear = (faint >= 0.1) & (sep >= 20.0)
        out.update(n_single_lined=int(sb1.sum()), single_lined_above_0_5=_mean(p[sb1] > 0.5),
                   n_unresolved=int(unresolved.sum()),
                   unresolved_above_0_5=_mean(p[unresolved] > 0.5),
                   n_clear_double_lined=int(clear.sum()),
                   clear_double_lined_recall=_mean(p[clear] > 0.5),
                   all_binaries_above_0_5=_mean(p > 0.5))
    elif not binary.any():
        out.update(n=int(p.size), above_0_5=_mean(p > 0.5), median=float(np.median(p)))
    else:
        for truth, y in (("is_binary", binary), ("double_lined", dl)):
            m = detector_metrics(y, p)
            out[truth] = dict(roc_auc=m["roc_auc"], recall=m["recall"],
                              precision=m["precision"])
        out.update(n=int(p.size), n_binary=int(binary.sum()), n_double_lined=int(dl.sum()),
                   singles_above_0_5=_mean(p[~binary] > 0.5),
                   other_binaries_above_0_5=_mean(p[binary & ~dl] > 0.5))
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="model directories")
    ap.add_argument("--names", nargs="+", default=None,
                    help="a name for each model directory in the results (default: its path)")
    ap.add_argument("--detector-store", required=True, help="store with singles and SB2s")
    ap.add_argument("--work", required=True, help="directory of the negative sets' stores")
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--n-negatives", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.models):
        ap.error(f"--names gives {len(args.names)} names for {len(args.models)} model directories")
    names = args.names or args.models
    import torch

    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.infer.predict import ModelSet

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = {"in_library": (Path(args.detector_store),
                           split_indices(args.detector_store, "test")[: args.n_test])}
    for kind, path in negative_stores(work, args.n_negatives).items():
        import zarr

        n = zarr.open_group(str(path), mode="r").attrs["sb2dask"]["n"]
        sets[kind] = (path, np.arange(n))
    results = {}
    for m, name in zip(args.models, names):
        models = ModelSet(m)
        if models.student is None and not models.members["p_binary"]:
            raise SystemExit(f"{m}: no detector (p_binary-*.json) to measure")
        frame = "rv_bulk"
        row = dict(directory=str(m), detector_target=models.detector_target, frame=frame)
        for kind, (store, rows) in sets.items():
            d = load_split(store, rows, FIELDS, frame=frame, wave=models.wave)
            row[kind] = rates(models.detect(d.flux)["p_binary"], d.labels)
        results[str(name)] = row
        lib = row["in_library"]
        print(f"{name} ({row['detector_target']}): AUC is_binary "
              f"{lib['is_binary']['roc_auc']:.3f}, double_lined "
              f"{lib['double_lined']['roc_auc']:.3f}; singles > 0.5 "
              f"{lib['singles_above_0_5']:.3f}; fast rotators "
              f"{row['fast_rotators']['above_0_5']:.3f}, giants {row['giants']['above_0_5']:.3f}, "
              f"single-lined {row['binaries']['single_lined_above_0_5']:.3f}, unresolved "
              f"{row['binaries']['unresolved_above_0_5']:.3f}; clear SB2 recall "
              f"{row['binaries']['clear_double_lined_recall']:.3f}", flush=True)
    write_results(f"bench_detector_target{args.tag}", machine=dict(threads=args.threads),
                  detector_store=str(args.detector_store), n_test=args.n_test,
                  negative_sets={k: dict(seed=v[0], changes={c: list(x) if isinstance(x, tuple)
                                                             else x for c, x in v[1].items()})
                                 for k, v in NEGATIVE_SETS.items()},
                  models=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
