"""The whole-student fine-tune down to S/N 10 under its written rule
(docs/criteria/2026-12-01_finetune_low_snr.md): the selection on validation rows, then the
detector criteria on the fresh test stores.

    sb2dask finetune --stores runs/head_fit.zarr runs/low_fit.zarr --truth-weight 0 \
        --out runs/students_A --threads 1
    sb2dask finetune --stores runs/head_fit.zarr runs/low_fit.zarr --truth-weight 1 \
        --out runs/students_B --threads 1
    python benchmarks/bench_finetune_students.py --candidates A=runs/students_A \
        B=runs/students_B --test-stores runs/ft_high_test.zarr runs/ft_low_test.zarr

(the stores: the rule's commands). Selection reads each candidate's ``fine_tune`` record
(its validation numbers before and after, written by ``sb2dask finetune``); the test stores
are then scored whole through ``ModelSet`` for the shipped students (C) and every candidate,
one run: ROC AUC against ``double_lined``, its recall at 0.5, the single stars above 0.5 and
0.2 (also per S/N bin, and at S/N >= 100 per bin of the Ca II core factor drawn: active stars
below 0.85). The second rule (docs/criteria/2026-12-01_finetune_active.md) adds ``--candidates
D=runs/students_D --test-stores ... runs/act_test.zarr --tag _active``.

Criteria 3-6 (labels through ``sb2dask evaluate``, the paper recipe,
the real-sky suite, DR4) are their own commands (docs/models.md). Writes
``benchmarks/results/bench_finetune_students.json``.
"""

from __future__ import annotations

import argparse
import sys

from _results import write_results  # benchmarks/ is on sys.path when run as a script

FIELDS = ["is_binary", "light_fraction", "rv_separation", "snr", "ca_ii_scale"]
CA_BINS = [(0.4, 0.55), (0.55, 0.7), (0.7, 0.85), (0.85, 1.03)]
SNR_BINS = [(10, 20), (20, 30), (30, 50), (50, 100), (100, 350)]
LABELS = ("teff", "logg", "feh", "vsini")


def eligible(before: dict, after: dict, high: str, low: str | None) -> tuple[bool, list[str]]:
    """The rule's selection conditions on the validation summaries (see the module docstring);
    returns whether all hold and the failed ones. ``low`` None (the third rule,
    docs/criteria/2026-12-01_finetune_bridge_ca.md): ``high``'s conditions only."""
    b, a = before[high], after[high]
    checks = {
        "high AUC >= C - 0.005": a["auc_double_lined"] >= b["auc_double_lined"] - 0.005,
        "high recall >= C - 0.04": a["recall_double_lined"] >= b["recall_double_lined"] - 0.04,
    }
    if low is not None:
        checks["low AUC >= C - 0.01"] = (after[low]["auc_double_lined"]
                                         >= before[low]["auc_double_lined"] - 0.01)
    for k in LABELS:
        checks[f"high {k} RMSE <= 1.02 C"] = a["label_rmse"][k] <= 1.02 * b["label_rmse"][k]
    return all(checks.values()), [k for k, ok in checks.items() if not ok]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="students", help="the control (C)")
    ap.add_argument("--candidates", nargs="+", required=True, metavar="NAME=DIR")
    ap.add_argument("--test-stores", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    ap.add_argument("--select-on", choices=("both", "high"), default="both",
                    help="both (the first two rules): eligibility on both stores' validation "
                         "rows, the lowest share of single stars above 0.2 over both; high "
                         "(the third rule): the first store's conditions and share only")
    args = ap.parse_args(argv)

    import torch

    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.infer.predict import ModelSet
    from sb2dask.labels import double_lined
    from sb2dask.stats import roc_auc

    torch.set_num_threads(args.threads)
    cands = dict(c.split("=", 1) for c in args.candidates)
    selection = {}
    for name, d in cands.items():
        rec = ModelSet(d, "cpu").students[0]["manifest"].training["fine_tune"]
        val = rec["validation_mixture"]
        high, *rest = [k for k in val["before"] if k != "singles_above_0_2"]
        if args.select_on == "both" and not rest:
            raise SystemExit(f"{name}: fine-tuned on one store; --select-on both needs two")
        low = rest[0] if args.select_on == "both" else None
        ok, failed = eligible(val["before"], val["after"], high, low)
        def pick(v, high=high):  # the share the selection compares
            return v["singles_above_0_2"] if args.select_on == "both" else \
                v[high]["singles_above_0_2"]

        selection[name] = dict(eligible=ok, failed=failed,
                               singles_above_0_2=pick(val["after"]),
                               singles_above_0_2_control=pick(val["before"]),
                               validation=val["after"], control=val["before"])
        print(f"{name}: eligible {ok} {failed}; validation singles > 0.2 "
              f"{pick(val['before']):.3f} -> {pick(val['after']):.3f}")
    pool = [n for n, s in selection.items() if s["eligible"]]
    chosen = min(pool, key=lambda n: selection[n]["singles_above_0_2"]) if pool else None
    print(f"chosen on validation: {chosen}")

    tests = {}
    for store in args.test_stores:
        sets = {"C": args.models, **cands}
        tests[store] = {}
        for name, d in sets.items():
            ms = ModelSet(d, "cpu")
            data = load_split(store, split_indices(store, "test"), FIELDS, frame=ms.frame,
                              wave=ms.wave)
            lab = data.labels
            p = ms.predict(data.flux, snr=lab["snr"])["p_binary"]
            truth = double_lined(lab["is_binary"], lab["light_fraction"], lab["rv_separation"])
            single = ~lab["is_binary"].astype(bool)
            some = truth.any()  # a store of single stars only has no AUC or recall
            r = dict(n=len(p), auc_double_lined=roc_auc(truth, p) if some else None,
                     recall_double_lined=float((p[truth] > 0.5).mean()) if some else None,
                     singles_above_0_5=float((p[single] > 0.5).mean()),
                     singles_above_0_2=float((p[single] > 0.2).mean()))
            for lo, hi in SNR_BINS:
                m = single & (lab["snr"] >= lo) & (lab["snr"] < hi)
                if m.sum() >= 20:
                    r[f"singles_above_0_2_snr_{lo}_{hi}"] = float((p[m] > 0.2).mean())
            # by the Ca II core factor the simulator drew (< 0.85: an active star), S/N >= 100
            for lo, hi in CA_BINS:
                m = single & (lab["snr"] >= 100) & (lab["ca_ii_scale"] >= lo) & (
                    lab["ca_ii_scale"] < hi)
                if m.sum() >= 20:
                    r[f"singles_above_0_2_snr_100_ca_{lo}_{hi}"] = float((p[m] > 0.2).mean())
            tests[store][name] = r
            auc, rec = (f"{r[k]:.3f}" if r[k] is not None else "-"
                        for k in ("auc_double_lined", "recall_double_lined"))
            print(f"{store.rsplit('/', 1)[-1]:<18} {name:<3} AUC {auc} recall {rec} singles>0.5 "
                  f"{r['singles_above_0_5']:.3f} >0.2 {r['singles_above_0_2']:.3f} "
                  + " ".join(f"{k.split('above_0_2_', 1)[1]}:{v:.3f}" for k, v in r.items()
                             if "_snr_" in k), flush=True)
    write_results(f"bench_finetune_students{args.tag}", machine=dict(threads=args.threads),
                  models=args.models, candidates=cands, select_on=args.select_on,
                  selection=selection, chosen=chosen,
                  test=tests, note="criteria 1-2 of the rule; one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
