"""What p_binary single stars get from the training library itself: the yardstick of issue 14's
real-sky target "every real single star p_binary < 0.2".

    python benchmarks/bench_single_star_yardstick.py --models fast \
        --detector-store runs/det_v2.zarr --real-sky docs/validation/real_sky_fast

For each model directory (its detector alone, ``ModelSet.detect``, in the frame inference uses
for it: ``rv_bulk`` removed for models trained so, at rest for rest-frame models, as
``--rest-frame auto``), the single stars among the first ``--n-test`` rows of
``--detector-store``'s test split (spectra no network was trained on; half of a detector store's
rows are single stars; use a store of the models' own recipe): their p_binary per S/N bin
(median, 90th percentile, share above 0.2 and 0.5). With ``--real-sky`` (a report directory of
``sb2dask real-sky`` run with the same models), each real single star at rest is set beside the
simulated single stars like it, twice:

* ``snr``: the ``--k`` nearest in log S/N (any Teff, log g, v sin i);
* ``matched``: where the star has reference labels, the ``--k`` nearest in log S/N among the
  single stars within 500 K in Teff and 0.5 in log g rotating slower than 20 km/s (the real
  dwarfs' v_broad is 4-6 km/s; p_binary rises with v sin i, so the unmatched comparison flatters
  a slow rotator). Few test rows are that alike, so with ``--work`` they are drawn from a set of
  single dwarfs of the ``--recipe`` simulated there on the first run (``--n-dwarfs`` spectra,
  Teff 5000-6500 K, log g 4-5, v sin i 0-20 km/s, seed 20261204, no training store's).

Each gives the star's percentile among them, their median and their share above 0.2, and the
S/N span they cover. A star whose S/N lies outside the store's S/N range is marked (its
neighbours are then all at the range's edge). The real stars' S/N is the pipeline's
``snr_estimate``, the simulated ones' their label ``snr``.

Writes ``benchmarks/results/bench_single_star_yardstick{--tag}.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

SNR_EDGES = (0.0, 50.0, 100.0, 150.0, 250.0, 400.0)

#: The slow-rotating single dwarfs of the matched comparison: seed, SimulationConfig changes.
DWARFS = (20261204, dict(binary_fraction=0.0, teff_range=(5000.0, 6500.0), logg_range=(4.0, 5.0),
                         vsini_range=(0.0, 20.0)))


def dwarf_store(work: Path, n: int, recipe: str) -> Path:
    """The single dwarfs of ``recipe`` (``paper`` or ``realistic``) under ``work`` (simulated
    when missing; resumable)."""
    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.simulate.config import SimulationConfig

    seed, changes = DWARFS
    cfg = getattr(SimulationConfig, recipe)(output_grid="gaia_dr3_903", seed=seed, **changes)
    path = work / f"dwarfs_{recipe}.zarr"
    generate(path, cfg, n, min(1000, n), split=SplitSpec(0.0, 0.0, 1.0), progress=False)
    return path


FIELDS = ["is_binary", "snr", "teff", "logg", "vsini"]


def _first_star(labels: dict, rows: np.ndarray) -> dict:
    """The single stars' labels (the first component) of ``rows``, float."""
    return {k: (v[rows][:, 0] if v.ndim == 2 else v[rows]).astype(float)
            for k, v in labels.items() if k != "is_binary"}


def _stats(p: np.ndarray) -> dict:
    if not p.size:
        return dict(n=0)
    return dict(n=int(p.size), median=float(np.median(p)), p90=float(np.percentile(p, 90)),
                above_0_2=float(np.mean(p > 0.2)), above_0_5=float(np.mean(p > 0.5)))


def real_singles_at_rest(report: Path) -> list[dict]:
    """The real single stars at rest of a real-sky report (``real_sky_cases.csv``), with their
    reference Teff / log g / v_broad where known (NaN otherwise)."""
    import pandas as pd

    cases = pd.read_csv(report / "real_sky_cases.csv")
    out = []
    for _, r in cases[cases["kind"] == "real"].iterrows():
        t = json.loads(r["truth"])
        if t.get("single") is True and float(t["shift_kms"]) == 0.0:
            out.append(dict(star=t["star"], heldout=bool(t.get("heldout")),
                            p_binary=float(r["p_binary"]), snr=float(r["snr_estimate"]),
                            **{k: float(t.get(k, np.nan)) for k in ("teff", "logg", "vbroad")}))
    return out


def _beside(value: float, snr0: float, p: np.ndarray, snr: np.ndarray, mask: np.ndarray,
            k: int) -> dict:
    idx = np.flatnonzero(mask)
    if not idx.size:
        return dict(n=0)
    idx = idx[np.argsort(np.abs(np.log(snr[idx] / snr0)), kind="stable")[:k]]
    ref = p[idx]
    return dict(n=int(idx.size), snr_span=[float(snr[idx].min()), float(snr[idx].max())],
                percentile=float(100.0 * np.mean(ref < value)), median=float(np.median(ref)),
                above_0_2=float(np.mean(ref > 0.2)))


def beside_the_library(star: dict, p: np.ndarray, lab: dict, snr_range, k: int = 100,
                       p_like: np.ndarray | None = None, lab_like: dict | None = None) -> dict:
    """``star``'s percentile among the simulated single stars (p_binary ``p``, labels ``lab``:
    ``snr``, ``teff``, ``logg``, ``vsini``) nearest in S/N, and among those also like it in Teff,
    log g and rotation where its reference labels are known (the module docstring), drawn from
    ``p_like`` / ``lab_like`` when given (else from ``p`` / ``lab``)."""
    out = dict(star, inside_store_snr=bool(snr_range[0] <= star["snr"] <= snr_range[1]))
    out["snr_only"] = _beside(star["p_binary"], star["snr"], p, lab["snr"],
                              np.ones(p.size, bool), k)
    if np.isfinite(star["teff"]) and np.isfinite(star["logg"]):
        p2, lab2 = (p, lab) if p_like is None else (p_like, lab_like)
        like = ((np.abs(lab2["teff"] - star["teff"]) < 500.0)
                & (np.abs(lab2["logg"] - star["logg"]) < 0.5) & (lab2["vsini"] < 20.0))
        out["matched"] = _beside(star["p_binary"], star["snr"], p2, lab2["snr"], like, k)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fast"], help="model directories or presets")
    ap.add_argument("--names", nargs="+", default=None)
    ap.add_argument("--detector-store", required=True, help="store with single stars")
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--real-sky", nargs="+", default=None,
                    help="a real-sky report directory per model directory (same order)")
    ap.add_argument("--k", type=int, default=100, help="simulated neighbours per real star")
    ap.add_argument("--work", default=None,
                    help="directory of the simulated dwarfs of the matched comparison (default: "
                         "match among the test rows)")
    ap.add_argument("--recipe", choices=["realistic", "paper"], default="realistic",
                    help="the dwarfs' recipe: the models' own (default realistic)")
    ap.add_argument("--n-dwarfs", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    names = args.names or args.models
    if len(names) != len(args.models):
        ap.error(f"--names gives {len(names)} names for {len(args.models)} model sets")
    if args.real_sky is not None and len(args.real_sky) != len(args.models):
        ap.error(f"--real-sky gives {len(args.real_sky)} reports for {len(args.models)} model sets")
    import torch

    from sb2dask.dataset.factory import store_metadata
    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.infer.predict import ModelSet, resolve_model_dir

    torch.set_num_threads(args.threads)
    rows = split_indices(args.detector_store, "test")[: args.n_test]
    results = {}
    for i, (m, name) in enumerate(zip(args.models, names)):
        models = ModelSet(m)
        frame = "rv_bulk" if models.uses_rest_frame("auto") else "rest"
        d = load_split(args.detector_store, rows, FIELDS, frame=frame, wave=models.wave)
        single = ~d.labels["is_binary"].astype(bool)
        p = models.detect(d.flux[single])["p_binary"]
        lab = _first_star(d.labels, single)
        snr = lab["snr"]
        per_bin = {f"{lo:g}-{hi:g}": _stats(p[(snr >= lo) & (snr < hi)])
                   for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:])}
        row = dict(directory=str(resolve_model_dir(m)), detector_target=models.p_binary_target,
                   frame=frame, all_singles=_stats(p), per_snr=per_bin)
        print(f"\n{name} ({models.p_binary_target}, {frame}): {int(single.sum())} simulated "
              "single stars")
        print("| S/N | n | median p_binary | 90th percentile | above 0.2 | above 0.5 |")
        print("|---|---|---|---|---|---|")
        for b, s in per_bin.items():
            if s["n"]:
                print(f"| {b} | {s['n']} | {s['median']:.3f} | {s['p90']:.3f} | "
                      f"{s['above_0_2']:.2f} | {s['above_0_5']:.3f} |")
        if args.real_sky is not None:
            report = Path(args.real_sky[i])
            said = json.loads((report / "real_sky.json").read_text()).get("models")
            snr_range = store_metadata(args.detector_store)["config"]["snr_range"]
            p_like = lab_like = None
            if args.work is not None:
                dwarfs = dwarf_store(Path(args.work), args.n_dwarfs, args.recipe)
                dd = load_split(dwarfs, split_indices(dwarfs, "test"), FIELDS, frame=frame,
                                wave=models.wave)
                p_like = models.detect(dd.flux)["p_binary"]
                lab_like = _first_star(dd.labels, np.ones(len(p_like), bool))
            row["real_sky"] = dict(report=str(report), report_models=said, k=args.k,
                                   matched_from=str(dwarfs) if args.work else "the test rows",
                                   stars=[beside_the_library(s, p, lab, snr_range, args.k,
                                                             p_like, lab_like)
                                          for s in real_singles_at_rest(report)])
            print(f"\nreal single stars at rest ({report}, models {said}), beside the {args.k} "
                  "simulated single stars nearest in S/N (all; like it: Teff ± 500 K, log g ± "
                  "0.5, v sin i < 20 km/s):")
            print("| star | S/N | p_binary | percentile: all / like it | their median: all / "
                  "like it | their share above 0.2: all / like it |")
            print("|---|---|---|---|---|---|")

            def _f(d, key, fmt):
                return format(d[key], fmt) if d.get("n") else "-"

            for s in row["real_sky"]["stars"]:
                a, b = s["snr_only"], s.get("matched", {})
                note = "" if s["inside_store_snr"] else " (outside the store's S/N)"
                print(f"| {s['star']}{' (held out)' if s['heldout'] else ''} | "
                      f"{s['snr']:.0f}{note} | {s['p_binary']:.3f} | "
                      f"{_f(a, 'percentile', '.0f')} / {_f(b, 'percentile', '.0f')} | "
                      f"{_f(a, 'median', '.3f')} / {_f(b, 'median', '.3f')} | "
                      f"{_f(a, 'above_0_2', '.2f')} / {_f(b, 'above_0_2', '.2f')} |")
        results[str(name)] = row
    write_results(f"bench_single_star_yardstick{args.tag}", machine=dict(threads=args.threads),
                  detector_store=str(args.detector_store), n_test=args.n_test,
                  snr_edges=list(SNR_EDGES), models=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
