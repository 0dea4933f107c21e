"""What p_binary single stars get from the training library itself: the yardstick of issue 14's
real-sky target "every real single star p_binary < 0.2".

    python benchmarks/bench_single_star_yardstick.py --models fast \
        --detector-store runs/det_v2.zarr --real-sky docs/validation/real_sky_fast

For each model directory (its detector alone, ``ModelSet.detect``, in the ``rv_bulk`` frame as
inference reads a catalogue), the single stars among the first ``--n-test`` rows of
``--detector-store``'s test split (spectra no network was trained on; half of a detector store's
rows are single stars): their p_binary per S/N bin (median, 90th percentile, share above 0.2 and
0.5). With ``--real-sky`` (a report directory of ``sb2dask real-sky`` run with the same models),
each real single star at rest is set beside the simulated single stars of the same S/N (within
±30 % of its ``snr_estimate``; the lowest bin when fewer than 20 are that close): its percentile
among them and their share above 0.2. A real star at the 80th percentile is as far from "binary"
as a fifth of the library's own single stars: its p_binary is the detector's power, not a library
gap; one at the 99th is not.

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


def _stats(p: np.ndarray) -> dict:
    if not p.size:
        return dict(n=0)
    return dict(n=int(p.size), median=float(np.median(p)), p90=float(np.percentile(p, 90)),
                above_0_2=float(np.mean(p > 0.2)), above_0_5=float(np.mean(p > 0.5)))


def real_singles_at_rest(report: Path) -> list[dict]:
    """The real single stars at rest of a real-sky report (``real_sky_cases.csv``)."""
    import pandas as pd

    cases = pd.read_csv(report / "real_sky_cases.csv")
    out = []
    for _, r in cases[cases["kind"] == "real"].iterrows():
        t = json.loads(r["truth"])
        if t.get("single") is True and float(t["shift_kms"]) == 0.0:
            out.append(dict(star=t["star"], heldout=bool(t.get("heldout")),
                            p_binary=float(r["p_binary"]), snr=float(r["snr_estimate"])))
    return out


def beside_the_library(star: dict, p: np.ndarray, snr: np.ndarray) -> dict:
    """``star``'s percentile among the simulated singles ``p`` of similar S/N."""
    near = (snr > 0.7 * star["snr"]) & (snr < 1.3 * star["snr"])
    how = "S/N within ±30 %"
    if near.sum() < 20:
        near = snr < SNR_EDGES[2]
        how = f"S/N < {SNR_EDGES[2]:g} (fewer than 20 within ±30 %)"
    ref = p[near]
    return dict(star, compared_with=how, n=int(near.sum()),
                percentile=float(100.0 * np.mean(ref < star["p_binary"])),
                library_median=float(np.median(ref)), library_above_0_2=float(np.mean(ref > 0.2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fast"], help="model directories or presets")
    ap.add_argument("--names", nargs="+", default=None)
    ap.add_argument("--detector-store", required=True, help="store with single stars")
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--real-sky", nargs="+", default=None,
                    help="a real-sky report directory per model directory (same order)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    names = args.names or args.models
    if len(names) != len(args.models):
        ap.error(f"--names gives {len(names)} names for {len(args.models)} model sets")
    if args.real_sky is not None and len(args.real_sky) != len(args.models):
        ap.error(f"--real-sky gives {len(args.real_sky)} reports for {len(args.models)} model sets")
    import torch

    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.infer.predict import ModelSet, resolve_model_dir

    torch.set_num_threads(args.threads)
    rows = split_indices(args.detector_store, "test")[: args.n_test]
    results = {}
    for i, (m, name) in enumerate(zip(args.models, names)):
        models = ModelSet(m)
        d = load_split(args.detector_store, rows, ["is_binary", "snr"], frame="rv_bulk",
                       wave=models.wave)
        single = ~d.labels["is_binary"].astype(bool)
        p = models.detect(d.flux[single])["p_binary"]
        snr = d.labels["snr"][single]
        per_bin = {f"{lo:g}-{hi:g}": _stats(p[(snr >= lo) & (snr < hi)])
                   for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:])}
        row = dict(directory=str(resolve_model_dir(m)), detector_target=models.p_binary_target,
                   all_singles=_stats(p), per_snr=per_bin)
        print(f"\n{name} ({models.p_binary_target}): {int(single.sum())} simulated single stars")
        print("| S/N | n | median p_binary | 90th percentile | above 0.2 | above 0.5 |")
        print("|---|---|---|---|---|---|")
        for b, s in per_bin.items():
            if s["n"]:
                print(f"| {b} | {s['n']} | {s['median']:.3f} | {s['p90']:.3f} | "
                      f"{s['above_0_2']:.2f} | {s['above_0_5']:.3f} |")
        if args.real_sky is not None:
            report = Path(args.real_sky[i])
            said = json.loads((report / "real_sky.json").read_text()).get("models")
            row["real_sky"] = dict(report=str(report), report_models=said, stars=[
                beside_the_library(s, p, snr) for s in real_singles_at_rest(report)])
            print(f"\nreal single stars at rest ({report}, models {said}):")
            print("| star | S/N | p_binary | percentile among simulated singles | their median | "
                  "their share above 0.2 |")
            print("|---|---|---|---|---|---|")
            for s in row["real_sky"]["stars"]:
                print(f"| {s['star']}{' (held out)' if s['heldout'] else ''} | {s['snr']:.0f} | "
                      f"{s['p_binary']:.3f} | {s['percentile']:.0f} ({s['compared_with']}) | "
                      f"{s['library_median']:.3f} | {s['library_above_0_2']:.2f} |")
        results[str(name)] = row
    write_results(f"bench_single_star_yardstick{args.tag}", machine=dict(threads=args.threads),
                  detector_store=str(args.detector_store), n_test=args.n_test,
                  snr_edges=list(SNR_EDGES), models=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
