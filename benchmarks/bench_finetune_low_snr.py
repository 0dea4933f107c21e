"""Exploration, validation rows only: fine-tune the whole of each default student on S/N 10-350,
its own label outputs as targets, and see whether a trunk that has seen noisy spectra escapes the
trade-off of the head-only refits (docs/models.md, "Refitting the head down to S/N 10").

    python benchmarks/bench_finetune_low_snr.py --stores runs/head_fit.zarr runs/low_fit.zarr \
        [--k 12] [--epochs 2] [--lr 1e-4] [--lam 1] [--threads 2] [--tag _lam1]

(the stores' commands: ``bench_head_low_snr.py``'s docstring). For each student: a copy is
trained on both stores' training rows for ``--epochs`` epochs (Adam, batch 256, seed = the
student's index) on the class-balanced cross-entropy of p_binary against ``double_lined`` (the
pairs within a factor 2 of its thresholds and, with ``--k``, the double-lined pairs whose
fainter star's light fraction × S/N is below k left out; the classes balanced within each
store) plus ``--lam`` × the mean squared difference of its label means and log widths from the
untouched student's on the same spectra (self-distillation: no teachers needed). Scored on
both stores' validation rows against the shipped students, one run: the mixture's AUC against
``double_lined``, its recall, the single stars above 0.2 per S/N bin (logit offset balanced on
the kept validation rows, pooled), and the label means' RMSE against the truths of the
binaries (physical units, per output) with the drift from the shipped outputs. Nothing is
written into the package; ``benchmarks/results/bench_finetune_low_snr{--tag}.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

FIELDS = ["is_binary", "light_fraction", "rv_separation", "snr", "teff", "logg", "feh", "vsini"]
SNR_BINS = [(10, 20), (20, 30), (30, 50), (50, 100), (100, 350)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="students")
    ap.add_argument("--stores", nargs=2, required=True,
                    help="the S/N 30-350 and the S/N 10-50 stores (train + validation)")
    ap.add_argument("--k", type=float, default=12.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import torch

    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.infer.predict import ModelSet
    from sb2dask.models.student import (
        OUTPUTS,
        _scaling,
        balanced_logit_offset,
        class_balance,
        scaled_targets,
    )
    from sb2dask.stats import roc_auc
    from sb2dask.train.finetune import finetune_one
    from sb2dask.train.head import head_target

    torch.set_num_threads(args.threads)
    ms = ModelSet(args.models, device="cpu", ensemble_calibration=False)

    def pooled(split):
        parts = [load_split(s, split_indices(s, split), FIELDS, frame=ms.frame, wave=ms.wave)
                 for s in args.stores]
        lab = {k: np.concatenate([np.asarray(d.labels[k]) for d in parts]) for k in FIELDS}
        src = np.concatenate([np.full(len(d.flux), i) for i, d in enumerate(parts)])
        return np.concatenate([d.flux for d in parts]).astype(np.float32), lab, src

    x_tr, lab_tr, src_tr = pooled("train")
    x_va, lab_va, src_va = pooled("validation")
    y, w = head_target(lab_tr, 2.0, args.k or None)
    w = w * class_balance(y, keep=w > 0, strata=src_tr)  # within each store
    yv, wv = head_target(lab_va, 2.0, args.k or None)
    kept = wv > 0

    def outputs(model, x):
        res = [[], [], []]
        with torch.inference_mode():
            for s in range(0, len(x), 1024):
                for r, t in zip(res, model(torch.from_numpy(x[s:s + 1024]))):
                    r.append(t.float().numpy())
        return [np.concatenate(r).astype(np.float64) for r in res]

    t0 = time.perf_counter()
    p_old, p_new, mean_old, mean_new, drift = [], [], [], [], []
    for i, st in enumerate(ms.students):
        ref = st["model"].eval()
        model = finetune_one(ref, x_tr, y, w, np.full((len(x_tr), 9), np.nan, np.float32),
                             epochs=args.epochs, lr=args.lr, distill_weight=args.lam,
                             truth_weight=0.0, seed=i)
        z_new, m_new, lw_new = outputs(model, x_va)
        z_old, m_old, lw_old = outputs(ref, x_va)
        off = balanced_logit_offset(z_new[kept], yv[kept])
        p_new.append(1 / (1 + np.exp(-(z_new + off))))
        p_old.append(1 / (1 + np.exp(-(z_old + st["logit_offset"]))))
        mean_new.append(m_new)
        mean_old.append(m_old)
        drift.append(dict(student=i, offset=off,
                          mean_rms=float(np.sqrt(((m_new - m_old) ** 2).mean())),
                          log_width_rms=float(np.sqrt(((lw_new - lw_old) ** 2).mean())),
                          seconds=time.perf_counter() - t0))
        print(f"student {i}: {drift[-1]}", flush=True)

    single = ~lab_va["is_binary"].astype(bool)

    def scores(p, m):
        out = dict(auc_double_lined=roc_auc(yv[m], p[m]),
                   recall_double_lined=float((p[yv & m] > 0.5).mean()),
                   singles_above_0_2=float((p[single & m] > 0.2).mean()))
        for lo, hi in SNR_BINS:
            mm = single & m & (lab_va["snr"] >= lo) & (lab_va["snr"] < hi)
            if mm.sum() >= 20:
                out[f"singles_above_0_2_snr_{lo}_{hi}"] = float((p[mm] > 0.2).mean())
        return out

    parts = {"fit_high": src_va == 0, "fit_low": src_va == 1}
    detector = {name: {part: scores(np.mean(p, axis=0), m) for part, m in parts.items()}
                for name, p in [("shipped", p_old), ("fine_tuned", p_new)]}
    binary = ~single
    truth = scaled_targets({k: lab_va[k][binary] for k in ("teff", "logg", "feh", "vsini",
                                                            "light_fraction")})
    labels = {}
    for name, means in [("shipped", mean_old), ("fine_tuned", mean_new)]:
        mean = np.mean(means, axis=0)[binary]
        labels[name] = {}
        for j, out in enumerate(OUTPUTS):
            lo, hi = _scaling(out)
            for part, m in parts.items():
                mm = m[binary] & np.isfinite(truth[:, j])
                labels[name][f"{out}_{part}"] = float(
                    np.sqrt(np.mean((mean[mm, j] - truth[mm, j]) ** 2)) * (hi - lo))
    print(f"{'':<12} {'':<9} {'AUC':>6} {'recall':>7} {'singles>0.2':>12} "
          + " ".join(f"{lo}-{hi:>3}" for lo, hi in SNR_BINS))
    for name, r in detector.items():
        for part, v in r.items():
            print(f"{name:<12} {part:<9} {v['auc_double_lined']:6.3f} "
                  f"{v['recall_double_lined']:7.3f} {v['singles_above_0_2']:12.3f} "
                  + " ".join(f"{v.get(f'singles_above_0_2_snr_{lo}_{hi}', np.nan):6.3f}"
                             for lo, hi in SNR_BINS))
    print("label RMSE on validation binaries (shipped -> fine-tuned):")
    for key in labels["shipped"]:
        print(f"  {key:<34} {labels['shipped'][key]:9.3f} -> {labels['fine_tuned'][key]:9.3f}")
    write_results(f"bench_finetune_low_snr{args.tag}", machine=dict(threads=args.threads),
                  models=str(ms.directory), stores=args.stores, k=args.k, epochs=args.epochs,
                  lr=args.lr, lam=args.lam, detector=detector, label_rmse=labels, drift=drift,
                  note="exploration on validation rows only; nothing shipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
