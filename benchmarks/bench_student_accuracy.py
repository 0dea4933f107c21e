"""The distilled student against its teachers on the same independent test rows.

    python benchmarks/bench_student_accuracy.py [--teachers /work/runs/s8/mC]
        [--teacher-cache /work/runs/s9/teachers_dl] [--n-detector 2000] [--n-labels 2000]

Rows: the first ``--n-detector`` of the test split (split 2) of the detector store (half single
stars: ROC AUC) and the first ``--n-labels`` of the labels store's test split (SB2s), with the
teachers' predictions from the cache that ``sb2dask.train.distill.label_with_teachers`` wrote
(computed here if missing). The student runs through ``ModelSet("fast")`` as inference runs it,
with each row's true S/N selecting its width-calibration bin (inference uses the S/N measured from
the flux errors). Per label, pooled over both components of the SB2s: RMSE of the student and of
the teacher ensemble, and the fraction of truths within ±1σ / ±2σ: the student's calibrated
widths; the ensemble's spread alone (its ``_err`` columns), and spread ⊕ its validation RMSE.
The ROC AUC of p_binary is against the student's detector target (``double_lined`` students
against the visible pairs, ``sb2dask.labels.detector_truth``; its teachers must have the same)
and, for comparison with students of the other target, against ``is_binary``.
Prints a table and writes ``benchmarks/results/bench_student_accuracy.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="/work/runs/s8/mC")
    ap.add_argument("--teacher-cache", default="/work/runs/s9/teachers_dl")
    ap.add_argument("--detector-store", default="/work/runs/det_v2.zarr")
    ap.add_argument("--labels-store", default="/work/runs/train_v2.zarr")
    ap.add_argument("--models", default="fast", help="the student (default: the shipped one)")
    ap.add_argument("--n-detector", type=int, default=2000)
    ap.add_argument("--n-labels", type=int, default=2000)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    import torch

    from sb2dask.infer.predict import ModelSet
    from sb2dask.labels import PARAMETERS
    from sb2dask.stats import roc_auc
    from sb2dask.train.distill import label_with_teachers, load_distill_data

    torch.set_num_threads(1)
    student = ModelSet(args.models, "cpu")
    stores = {"detector": args.detector_store, "labels": args.labels_store}
    sizes = {"detector": args.n_detector, "labels": args.n_labels}
    target = student.p_binary_target
    tset = ModelSet(args.teachers, "cpu")
    if tset.p_binary_target != target:
        raise SystemExit(f"the student detects {target!r}, its teachers {args.teachers} "
                         f"{tset.detector_target!r}: pass the teachers it was distilled from")
    teach = {k: label_with_teachers(args.teachers, s, "test", sizes[k], args.teacher_cache,
                                    progress=False) for k, s in stores.items()}
    data = load_distill_data(stores, "test", sizes, None, student.frame, student.wave, target)
    teacher = {k: np.concatenate([teach[s][k] for s in stores]) for k in teach["detector"]
               if k != "index"}
    pred = student.predict(data.flux, snr=data.snr)
    from sb2dask.models.student import decode

    truth = decode(np.zeros(len(data.y)), data.y, np.zeros_like(data.y))
    val_rmse = {t: float(np.median([m["metrics"]["rmse"] for m in tset.manifests[t]]))
                for t in PARAMETERS}
    b = data.is_binary
    rows = {}
    for k in PARAMETERS:
        t = truth[k][b]
        s_err, t_err = pred[k][b] - t, teacher[k][b] - t
        zs = np.abs(s_err) / pred[f"{k}_err"][b]
        zt = np.abs(t_err) / teacher[f"{k}_err"][b]
        zt_tot = np.abs(t_err) / np.hypot(teacher[f"{k}_err"][b], val_rmse[k])
        rows[k] = dict(
            rmse_student=float(np.sqrt(np.mean(s_err ** 2))),
            rmse_teacher=float(np.sqrt(np.mean(t_err ** 2))),
            rmse_student_by_component=np.sqrt(np.mean(s_err ** 2, axis=0)).tolist(),
            rmse_teacher_by_component=np.sqrt(np.mean(t_err ** 2, axis=0)).tolist(),
            cover1_student=float(np.mean(zs <= 1)), cover2_student=float(np.mean(zs <= 2)),
            cover1_teacher_spread=float(np.mean(zt <= 1)),
            cover2_teacher_spread=float(np.mean(zt <= 2)),
            cover1_teacher_total=float(np.mean(zt_tot <= 1)),
            cover2_teacher_total=float(np.mean(zt_tot <= 2)))
        rows[k]["ratio"] = rows[k]["rmse_student"] / rows[k]["rmse_teacher"]
    lf_t = data.y[b][:, -1]  # the light fraction is not scaled
    lf_err = pred["light_fraction_faint"][b] - lf_t
    z = np.abs(lf_err) / pred["light_fraction_faint_err"][b]
    rows["light_fraction_faint"] = dict(
        rmse_student=float(np.sqrt(np.mean(lf_err ** 2))), cover1_student=float(np.mean(z <= 1)),
        cover2_student=float(np.mean(z <= 2)))
    det = data.detector_row
    auc = dict(target=target,
               student=roc_auc(data.p_truth[det], pred["p_binary"][det]),
               teacher=roc_auc(data.p_truth[det], teacher["p_binary"][det]),
               student_vs_is_binary=roc_auc(data.is_binary[det], pred["p_binary"][det]),
               teacher_vs_is_binary=roc_auc(data.is_binary[det], teacher["p_binary"][det]))
    # coverage per S/N bin (the student's calibration bins)
    from sb2dask.models.student import SNR_EDGES

    bins = np.searchsorted(SNR_EDGES, data.snr[b])
    by_snr = {}
    for i in range(len(SNR_EDGES) + 1):
        m = bins == i
        by_snr[str(i)] = {k: float(np.mean(np.abs(pred[k][b][m] - truth[k][b][m])
                                           / pred[f"{k}_err"][b][m] <= 1)) for k in PARAMETERS}
    n_bin = int(b.sum())
    print(f"\nStudent vs teacher ensemble on the same test rows: {n_bin} SB2s "
          f"({args.n_detector} detector-store rows, half single stars, and {args.n_labels} "
          "labels-store rows), both components pooled")
    print(f"{'label':<22}{'RMSE student':>13}{'teacher':>10}{'ratio':>7}"
          f"{'1σ/2σ student':>15}{'1σ/2σ ens. spread':>19}{'1σ/2σ ens. ⊕ RMSE':>19}")
    for k, r in rows.items():
        if "rmse_teacher" in r:
            print(f"{k:<22}{r['rmse_student']:13.3f}{r['rmse_teacher']:10.3f}{r['ratio']:7.2f}"
                  f"{r['cover1_student']:9.1%} /{r['cover2_student']:5.1%}"
                  f"{r['cover1_teacher_spread']:12.1%} /{r['cover2_teacher_spread']:5.1%}"
                  f"{r['cover1_teacher_total']:12.1%} /{r['cover2_teacher_total']:5.1%}")
        else:
            print(f"{k:<22}{r['rmse_student']:13.3f}{'-':>10}{'-':>7}"
                  f"{r['cover1_student']:9.1%} /{r['cover2_student']:5.1%}")
    print(f"\nROC AUC against {target} (detector-store rows, {int(det.sum())}): student "
          f"{auc['student']:.4f}, teachers {auc['teacher']:.4f}, difference "
          f"{auc['student'] - auc['teacher']:+.4f}; against is_binary: student "
          f"{auc['student_vs_is_binary']:.4f}, teachers {auc['teacher_vs_is_binary']:.4f}")
    print("student 1σ coverage per S/N bin (<60, 60-120, >120): " + "; ".join(
        f"{k} " + "/".join(f"{by_snr[str(i)][k]:.0%}" for i in range(3)) for k in PARAMETERS))
    write_results(f"bench_student_accuracy{'_' + args.tag if args.tag else ''}",
                  student=str(student.directory), teachers=str(Path(args.teachers).resolve()),
                  n_detector=args.n_detector, n_labels=args.n_labels, n_sb2=n_bin,
                  labels=rows, auc=auc, student_cover1_by_snr_bin=by_snr,
                  snr_edges=list(SNR_EDGES), teacher_validation_rmse=val_rmse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
