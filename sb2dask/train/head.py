"""Refitting the students' p_binary head on their frozen trunk features, with the pairs that sit
at the ``double_lined`` thresholds left out.

Why: a detector fitted to :func:`sb2dask.labels.double_lined` is paid to call a companion at 5 %
of the light or 13 km/s away a binary and one at 4 % or 12 km/s a single star. The spectrum says
little about which side of that line such a pair falls, so the network hedges, and every
spectrum that looks single inherits the hedge: a third of the simulated single stars of the
realistic recipe get p_binary above 0.2 from the distilled students (docs/models.md). Leaving
the pairs within a factor of the thresholds out of the fit (:func:`~sb2dask.labels.
near_double_lined_threshold`) keeps the question the detector answers and drops the hedge.

Only the head (``StudentNet.p_binary``, 256 weights and a bias) is refitted: a class-balanced
logistic regression on the trunk features of a store's training rows (the pure core,
:func:`fit_logistic_head`), started from the shipped head, and the logit offset
(:func:`~sb2dask.models.student.balanced_logit_offset`) on its validation rows. The label heads,
their width calibration, the trunk and with it the out-of-distribution distance and the speed
stay bit for bit what they were; the directory's ensemble width calibration is carried over with
the new weights' hashes and a record saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["DEFAULT_MARGIN", "DEFAULT_L2", "fit_logistic_head", "head_target", "trunk_features",
           "refit_student_heads"]

#: The factor around each ``double_lined`` threshold within which pairs are left out: chosen on
#: the validation split of the refit store among 1 (none), 1.5 and 2 (docs/models.md).
DEFAULT_MARGIN = 2.0

#: L2 penalty on the head's weights (per weight, against the mean weighted cross-entropy).
DEFAULT_L2 = 1e-4


def fit_logistic_head(features: np.ndarray, truth: np.ndarray, weight: np.ndarray,
                      weight0: np.ndarray, bias0: float, l2: float = DEFAULT_L2,
                      max_iter: int = 500,
                      strata: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Weights ``(d,)`` and bias of a logistic head on ``features`` ``(n, d)``: the minimum of
    the class-balanced cross-entropy against ``truth`` (bool (n,); positives weighted by
    n_neg / n_pos among rows of non-zero ``weight``, as the detectors' loss weights them),
    times ``weight`` (n,) per row, plus ``l2`` × |w|². Started from ``weight0``, ``bias0`` (the
    head being refitted); L-BFGS in float64 (the problem is convex).

    ``strata`` (n,) labels (e.g. the store or S/N range of each row): the classes are balanced
    within each stratum instead of over all rows, so a stratum with few positives (noisy
    spectra whose companions are left out) does not raise the positives' weight in the others.
    Every stratum needs both classes."""
    from ..models.student import class_balance

    y = np.asarray(truth, bool)
    w = np.asarray(weight, np.float64)
    ratio = class_balance(y, keep=w > 0, strata=strata,
                          who="the head (rows of weight > 0)")
    x = torch.from_numpy(np.asarray(features, np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    wt = torch.from_numpy(w * ratio)
    wt = wt / wt.sum()
    wv = torch.tensor(np.asarray(weight0, np.float64), requires_grad=True)
    bv = torch.tensor([float(bias0)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wv, bv], max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x @ wv + bv, yt,
                                                                  reduction="none")
        loss = (wt * ce).sum() + l2 * (wv ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return wv.detach().numpy().copy(), float(bv.detach()[0])


def head_target(labels: dict, margin: float | None = DEFAULT_MARGIN,
                min_companion_signal: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a head refit is fitted to: ``double_lined`` (bool (n,)) from store ``labels``
    (``is_binary``, ``light_fraction``, ``rv_separation`` and, with ``min_companion_signal``,
    ``snr``) and row weights (n,): 0 for the pairs within ``margin`` of its thresholds
    (:func:`~sb2dask.labels.near_double_lined_threshold`; None: none) and for the double-lined
    pairs whose companion is lost in the noise (:func:`~sb2dask.labels.companion_in_noise`;
    None: none), 1 otherwise."""
    from ..labels import companion_in_noise, double_lined, near_double_lined_threshold

    truth = double_lined(labels["is_binary"], labels["light_fraction"], labels["rv_separation"])
    weight = np.ones(len(truth))
    if margin is not None:
        weight[near_double_lined_threshold(labels["is_binary"], labels["light_fraction"],
                                           labels["rv_separation"], margin)] = 0.0
    if min_companion_signal is not None:
        weight[truth & companion_in_noise(labels["is_binary"], labels["light_fraction"],
                                          labels["snr"], min_companion_signal)] = 0.0
    return truth, weight


def trunk_features(model, flux: np.ndarray, batch: int = 1024) -> np.ndarray:
    """A student's trunk features ``(n, hidden)`` float32 on ``flux`` ``(n, n_pix)``: what its
    heads read, as inference computes them."""
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(flux), batch):
            x = torch.from_numpy(np.ascontiguousarray(flux[s:s + batch], dtype=np.float32))
            out.append(model.embed(x).float().numpy())
    return np.concatenate(out) if out else np.empty((0, model.p_binary.in_features), np.float32)


def _ensemble_calibration(model_dir: Path, ms) -> dict | None:
    """The directory's ensemble width calibration as stored, when it has one, after checking it
    was fitted for exactly these students (names and weights), as ModelSet checks it."""
    from ..infer.predict import read_ensemble_calibration
    from ..models.student import ENSEMBLE_CALIBRATION_FILE

    path = model_dir / ENSEMBLE_CALIBRATION_FILE
    if not path.exists():
        return None
    rec, fitted, _, _ = read_ensemble_calibration(path)
    loaded = [(st["manifest"].name, st["manifest"].weights_sha256) for st in ms.students]
    if fitted != loaded:
        raise ValueError(f"{path} was fitted for other students than the directory's; fit it "
                         "again (sb2dask.train.distill.calibrate_student_ensemble) or remove it "
                         "before refitting the heads")
    return rec


def _rows(store, split: str, n: int | None, ms, target_fields):
    from ..dataset.store import load_split, split_indices

    index = split_indices(store, split)[:n]
    if not len(index):
        raise ValueError(f"{store}: no {split} rows to refit the heads on")
    return load_split(store, index, target_fields, frame=ms.frame, wave=ms.wave)


def refit_student_heads(model_dir: str | Path, store, out_dir: str | Path,
                        margin: float | None = DEFAULT_MARGIN, l2: float = DEFAULT_L2,
                        max_train: int | None = None,
                        max_validation: int | None = None,
                        min_companion_signal: float | None = None,
                        balance: str = "pooled") -> dict:
    """Copy the student directory ``model_dir`` to ``out_dir`` with every student's p_binary
    head refitted on ``store`` (a detector store, or a list of them whose rows are pooled:
    single stars and binaries, the students' frame and a grid covering theirs), the pairs
    within ``margin`` of the ``double_lined`` thresholds left out (None: none left out), and,
    with ``min_companion_signal``, the double-lined pairs whose fainter star's light fraction ×
    S/N is below it (:func:`~sb2dask.labels.companion_in_noise`; None: none). ``balance``:
    ``"pooled"`` balances the classes over all rows, ``"per_store"`` within each store's rows
    (head and offset), so that a store of noisy spectra with few positives left does not
    raise the positives' weight in the others.

    Each student's manifest gets the new logit offset and a ``detector_head`` record (store
    fingerprint, margin, rows, the previous weights' hash, validation numbers before and after);
    the ensemble width calibration file, when present, is carried over to the new weights'
    hashes with a ``carried_over`` record (the label heads are unchanged). Returns a summary
    dict (also the records). ``out_dir`` must not exist. ``max_train`` and ``max_validation``
    limit the rows taken from each store."""
    from ..dataset.store import store_fingerprint
    from ..fileio import atomic_write_json
    from ..infer.predict import ModelSet
    from ..models.io import load_model, save_model
    from ..models.student import ENSEMBLE_CALIBRATION_FILE, balanced_logit_offset
    from ..provenance import package_versions
    from ..stats import roc_auc

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; refit into a new directory")
    ms = ModelSet(model_dir, device="cpu", ensemble_calibration=False)
    model_dir = ms.directory  # a preset name ('students') resolved to its directory
    if not ms.students:
        raise ValueError(f"{model_dir}: no students (student-*.json) to refit")
    if ms.detector_target != "double_lined":
        raise ValueError(f"{model_dir}: its students detect {ms.detector_target!r}; the margin "
                         "is defined around the double_lined thresholds")
    ensemble_cal = _ensemble_calibration(model_dir, ms)  # checked before any work
    stores = [store] if isinstance(store, (str, os.PathLike)) else list(store)
    if not stores:
        raise ValueError("no store to refit the heads on")
    if balance not in ("pooled", "per_store"):
        raise ValueError(f"balance must be 'pooled' or 'per_store', got {balance!r}")
    t0 = time.perf_counter()
    fields = ["is_binary", "light_fraction", "rv_separation", "snr"]
    tr = [_rows(s, "train", max_train, ms, fields) for s in stores]
    va = [_rows(s, "validation", max_validation, ms, fields) for s in stores]

    def target(parts):
        lab = {k: np.concatenate([d.labels[k] for d in parts]) for k in fields}
        return (*head_target(lab, margin, min_companion_signal), lab)

    y_tr, w_tr, _ = target(tr)
    y_va, w_va, lab_va = target(va)
    kept = w_va > 0
    strata_tr = strata_va = None
    if balance == "per_store":
        strata_tr = np.concatenate([np.full(len(d.flux), i) for i, d in enumerate(tr)])
        strata_va = np.concatenate([np.full(len(d.flux), i) for i, d in enumerate(va)])[kept]
        for i, s in enumerate(stores):  # a store with no row kept would drop out silently
            if not (strata_va == i).any():
                raise ValueError(f"{s}: no validation row left to balance the offset on "
                                 f"(margin {margin}, min_companion_signal "
                                 f"{min_companion_signal})")
    fits, p_old, p_new = [], [], []
    for st in ms.students:
        model = st["model"]
        head = model.p_binary
        f_tr = np.concatenate([trunk_features(model, d.flux) for d in tr]).astype(np.float64)
        f_va = np.concatenate([trunk_features(model, d.flux) for d in va]).astype(np.float64)
        w0 = head.weight.detach().numpy()[0].astype(np.float64)
        b0 = float(head.bias.detach()[0])
        try:
            w, b = fit_logistic_head(f_tr, y_tr, w_tr, w0, b0, l2=l2, strata=strata_tr)
            z_va = f_va @ w + b
            offset = balanced_logit_offset(z_va[kept], y_va[kept], strata=strata_va)
        except ValueError as err:  # a margin that leaves one class empty
            raise ValueError(f"{', '.join(map(str, stores))} (train / validation rows, margin "
                             f"{margin}, min_companion_signal {min_companion_signal}, "
                             f"balance {balance}; stratum i is the i-th store): {err}"
                             ) from None
        p_old.append(1 / (1 + np.exp(-(f_va @ w0 + b0 + st["logit_offset"]))))
        p_new.append(1 / (1 + np.exp(-(z_va + offset))))
        fits.append((w, b, offset, z_va))
    # the students' mixture (the mean probability, as ModelSet forms it) on the validation rows
    snr = lab_va["snr"]
    single = ~lab_va["is_binary"].astype(bool)

    def scores(p):
        p = np.mean(p, axis=0)
        return dict(auc_double_lined=roc_auc(y_va, p),
                    auc_kept=roc_auc(y_va[kept], p[kept]),
                    recall_double_lined=float((p[y_va] > 0.5).mean()),
                    singles_above_0_2=float((p[single] > 0.2).mean()),
                    singles_above_0_5=float((p[single] > 0.5).mean()),
                    singles_above_0_2_snr_below_100=(  # None when no single star is that noisy
                        float((p[single & (snr < 100)] > 0.2).mean())
                        if (single & (snr < 100)).any() else None))

    mixture = dict(before=scores(p_old), after=scores(p_new))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fingerprint = [store_fingerprint(s) for s in stores]
    fingerprint = fingerprint[0] if len(fingerprint) == 1 else fingerprint
    shutil.copytree(model_dir, out_dir)
    records = []
    for st, (w, b, offset, z_va) in zip(ms.students, fits):
        model, man = st["model"], st["manifest"]
        head = model.p_binary
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w[None]).to(head.weight.dtype))
            head.bias.copy_(torch.tensor([b], dtype=head.bias.dtype))
        record = dict(
            method="p_binary head refitted on frozen trunk features: class-balanced logistic "
                   "regression (L-BFGS, L2) against double_lined, the pairs near its thresholds "
                   "left out; logit offset balanced on the validation rows kept",
            margin=margin, min_companion_signal=min_companion_signal, balance=balance, l2=l2,
            store=fingerprint, n_train=int(len(y_tr)),
            n_train_used=int((w_tr > 0).sum()), n_validation=int(len(y_va)),
            n_validation_used=int(kept.sum()), previous_weights_sha256=man.weights_sha256,
            previous_logit_offset=st["logit_offset"], logit_offset=offset,
            validation_mixture=mixture, created=created, versions=package_versions("torch"))
        cal = dict(man.training.get("calibration") or {}, p_binary_logit_offset=offset,
                   p_binary_offset_method="balanced_logit_offset on the validation rows of "
                   "the head refit's store(s), the pairs near the double_lined thresholds (and "
                   "the companions in noise, with min_companion_signal) left out, the classes "
                   f"balanced {'within each store' if balance == 'per_store' else 'over all rows'} "
                   "(training.detector_head)", n_p_binary=int(kept.sum()))
        training = dict(man.training, calibration=cal, detector_head=record)
        metrics = dict(man.metrics or {})
        # the old head's AUC; the new one's on the refit stores' validation rows, pooled
        if "auc" in metrics:
            metrics["auc_before_head_refit"] = metrics["auc"]
        metrics["auc"] = roc_auc(y_va, z_va)
        path = save_model(out_dir, model, replace(man, training=training, metrics=metrics))
        records.append(dict(record, weights_sha256=load_model(path)[1].weights_sha256))
    if ensemble_cal is not None:
        rec = dict(ensemble_cal)
        rec["carried_over"] = dict(
            reason="the students' p_binary heads were refitted (sb2dask.train.head); the label "
                   "heads, whose widths these factors scale, are unchanged",
            previous_members=rec["members"], created=created)
        rec["members"] = [dict(name=st["manifest"].name, weights_sha256=r["weights_sha256"])
                          for st, r in zip(ms.students, records)]
        atomic_write_json(out_dir / ENSEMBLE_CALIBRATION_FILE, rec)
    return dict(mixture, seconds=time.perf_counter() - t0, students=records)
