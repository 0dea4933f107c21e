"""Can the students' p_binary head alone be refitted down to S/N 10? The pre-registered experiment
of docs/criteria/2026-12-01_head_low_snr.md, end to end (one run; session 13).

    sb2dask simulate --recipe realistic --n 60000 --chunk 5000 --binary-fraction 0.5 \
        --seed 20261220 --split 0.8 0.2 0 --out runs/head_fit.zarr
    sb2dask simulate --recipe realistic --snr 10 50 --n 30000 --chunk 5000 \
        --binary-fraction 0.5 --seed 20261230 --split 0.8 0.2 0 --out runs/low_fit.zarr
    sb2dask simulate --recipe realistic --n 6000 --chunk 2000 --binary-fraction 0.5 \
        --seed 20261221 --split 0 0 1 --out runs/head_test.zarr
    sb2dask simulate --recipe realistic --snr 10 50 --n 6000 --chunk 2000 \
        --binary-fraction 0.5 --seed 20261231 --split 0 0 1 --out runs/low_test.zarr
    python benchmarks/bench_head_low_snr.py --fit-stores runs/head_fit.zarr runs/low_fit.zarr \
        --test-stores runs/head_test.zarr runs/low_test.zarr

For each student of ``--models`` the trunk features of both fit stores' training and validation
rows and of the test stores' test rows (:func:`sb2dask.train.head.trunk_features`); the variants
C (the shipped heads), L0 (refit on the pooled training rows, margin 2) and Lk (also leaving out
the double-lined pairs whose fainter star's light fraction × S/N is below k,
:func:`sb2dask.labels.companion_in_noise`), each by :func:`~sb2dask.train.head.
fit_logistic_head` and the balanced offset on the kept validation rows, as
:func:`~sb2dask.train.head.refit_student_heads` fits them. The rule chooses on validation (lowest
share of single stars above 0.2, subject to the first fit store's AUC against double_lined ≥ C −
0.005 and recall ≥ C − 0.02, the second's AUC ≥ C − 0.01); every variant is scored on the test
stores (the rule's criteria 1-2 need only those). Also, outside the rule (found after it had
failed), the Lk variants with the classes balanced within each fit store (``Lks``: head
``strata`` and offset), the diagnosis of why the pooled ones raise the high-S/N singles. Prints
one line per variant and store, writes ``benchmarks/results/bench_head_low_snr.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

FIELDS = ["is_binary", "light_fraction", "rv_separation", "snr"]
SNR_BINS = [(10, 20), (20, 30), (30, 50), (50, 100), (100, 350)]


def features(ms, store: str, split: str) -> tuple[np.ndarray, dict]:
    """Trunk features (students, n, hidden) float64 and the labels of ``store``'s ``split``."""
    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.train.head import trunk_features

    d = load_split(store, split_indices(store, split), FIELDS, frame=ms.frame, wave=ms.wave)
    return (np.stack([trunk_features(st["model"], d.flux) for st in ms.students]
                     ).astype(np.float64), {k: np.asarray(v) for k, v in d.labels.items()})


def pooled(parts):
    feats = np.concatenate([f for f, _ in parts], axis=1)
    lab = {k: np.concatenate([lab[k] for _, lab in parts]) for k in FIELDS}
    source = np.concatenate([np.full(len(lab["snr"]), i) for i, (_, lab) in enumerate(parts)])
    return feats, lab, source


def scores(p: np.ndarray, lab: dict) -> dict:
    from sb2dask.labels import double_lined
    from sb2dask.stats import roc_auc

    dl = double_lined(lab["is_binary"], lab["light_fraction"], lab["rv_separation"])
    single = ~np.asarray(lab["is_binary"], bool)
    out = dict(n=int(len(p)), auc_double_lined=roc_auc(dl, p),
               recall_double_lined=float((p[dl] > 0.5).mean()),
               singles_above_0_2=float((p[single] > 0.2).mean()),
               singles_above_0_5=float((p[single] > 0.5).mean()),
               singles_median=float(np.median(p[single])))
    for lo, hi in SNR_BINS:
        m = single & (lab["snr"] >= lo) & (lab["snr"] < hi)
        if m.sum() >= 20:
            out[f"singles_above_0_2_snr_{lo}_{hi}"] = float((p[m] > 0.2).mean())
    return out


def mixture(heads, feats):
    """The students' mean probability from per-student (weight, bias, offset)."""
    return np.mean([1.0 / (1.0 + np.exp(-(f @ w + b + off)))
                    for (w, b, off), f in zip(heads, feats)], axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="students")
    ap.add_argument("--fit-stores", nargs=2, required=True,
                    help="the S/N 30-350 and the S/N 10-50 fit stores (train + validation)")
    ap.add_argument("--test-stores", nargs="+", required=True)
    ap.add_argument("--k", type=float, nargs="+", default=[4.0, 8.0, 12.0])
    ap.add_argument("--margin", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import torch

    from sb2dask.infer.predict import ModelSet
    from sb2dask.models.student import balanced_logit_offset
    from sb2dask.train.head import fit_logistic_head, head_target

    torch.set_num_threads(args.threads)
    ms = ModelSet(args.models, device="cpu")
    f_tr, lab_tr, src_tr = pooled([features(ms, s, "train") for s in args.fit_stores])
    f_va, lab_va, src_va = pooled([features(ms, s, "validation") for s in args.fit_stores])
    names = [Path(s).stem for s in args.test_stores]
    if len(set(names)) != len(names):
        ap.error(f"test stores need distinct names, got {names}")
    tests = {n: features(ms, s, "test") for n, s in zip(names, args.test_stores)}
    shipped = [(st["model"].p_binary.weight.detach().numpy()[0].astype(np.float64),
                float(st["model"].p_binary.bias.detach()[0]), st["logit_offset"])
               for st in ms.students]
    variants = {"C": shipped}
    # the rule's variants (classes balanced over the pooled rows), then the diagnosis found
    # after it (suffix s: balanced within each store, head and offset; not part of the rule)
    for k, per_store in [(k, False) for k in [None] + list(args.k)] + [
            (k, True) for k in args.k]:
        y, w = head_target(lab_tr, args.margin, k or None)
        yv, wv = head_target(lab_va, args.margin, k or None)
        kept = wv > 0
        heads = []
        for i, (w0, b0, _) in enumerate(shipped):
            wt, bt = fit_logistic_head(f_tr[i], y, w, w0, b0,
                                       strata=src_tr if per_store else None)
            z = f_va[i] @ wt + bt
            heads.append((wt, bt, balanced_logit_offset(
                z[kept], yv[kept], strata=src_va[kept] if per_store else None)))
        variants[(f"L{k:g}" if k else "L0") + ("s" if per_store else "")] = heads
    parts = {"all": np.ones(len(src_va), bool), "fit_high": src_va == 0, "fit_low": src_va == 1}
    validation = {name: {part: scores(mixture(h, f_va[:, m]), {k: v[m] for k, v in
                                                                 lab_va.items()})
                         for part, m in parts.items()} for name, h in variants.items()}
    c = validation["C"]
    eligible = {name: bool(v["fit_high"]["auc_double_lined"]
                           >= c["fit_high"]["auc_double_lined"] - 0.005
                           and v["fit_high"]["recall_double_lined"]
                           >= c["fit_high"]["recall_double_lined"] - 0.02
                           and v["fit_low"]["auc_double_lined"]
                           >= c["fit_low"]["auc_double_lined"] - 0.01)
                for name, v in validation.items() if name != "C" and not name.endswith("s")}
    passing = [n for n, ok in eligible.items() if ok]
    chosen = min(passing, key=lambda n: validation[n]["all"]["singles_above_0_2"]) \
        if passing else None
    test = {store: {name: scores(mixture(h, f), lab) for name, h in variants.items()}
            for store, (f, lab) in tests.items()}
    print(f"chosen on validation: {chosen} (eligible: {eligible})")
    cols = ["auc_double_lined", "recall_double_lined", "singles_above_0_2", "singles_above_0_5"]
    print(f"{'set':<22} {'variant':<5} " + " ".join(f"{c[:22]:>22}" for c in cols))
    for where, table in [("validation " + p, {n: v[p] for n, v in validation.items()})
                         for p in parts] + [(f"test {s}", t) for s, t in test.items()]:
        for name, r in table.items():
            print(f"{where:<22} {name:<5} " + " ".join(f"{r[c]:>22.3f}" for c in cols))
    write_results(f"bench_head_low_snr{args.tag}", machine=dict(threads=args.threads),
                  models=str(ms.directory), fit_stores=args.fit_stores,
                  test_stores=args.test_stores, margin=args.margin, k=args.k,
                  criteria="docs/criteria/2026-12-01_head_low_snr.md", validation=validation,
                  eligible=eligible, chosen=chosen, test=test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
