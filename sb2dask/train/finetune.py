"""Fine-tuning a directory of students, whole, on detector stores of another S/N range.

Why: the students' p_binary head was fitted on S/N 30-350. Below that a companion giving a few
per cent of the light drowns in the noise, yet ``double_lined`` still calls the pair an SB2, so
the detector learnt to hedge on every noisy spectrum (KOI-001 at S/N 21: 0.17-0.26). Refitting
the head alone on noisier spectra, with such companions left out, cannot serve S/N 10-50 and
S/N 100-350 at once (docs/models.md, "Refitting the head down to S/N 10"); a trunk that has seen
the noisy spectra can.

What :func:`finetune_students` does to each student (a copy; the originals stay):

* a few epochs of Adam at a small learning rate on the training rows of all the ``stores``;
* p_binary: the class-balanced cross-entropy against ``double_lined``
  (:func:`~sb2dask.train.head.head_target`: the pairs within ``margin`` of its thresholds and
  the double-lined pairs whose companion is lost in the noise left out; the classes balanced
  within each store);
* the labels: ``distill_weight`` × the mean squared difference of the label means and log
  widths from the untouched student's (self-distillation, so what it knew is kept without its
  teachers) plus ``truth_weight`` × the beta-NLL of the binaries' truths
  (:func:`~sb2dask.train.distill.beta_nll`);
* then, on the stores' validation rows: the p_binary logit offset (balanced over the kept rows),
  the width calibration per output and S/N bin, and the trunk feature statistics of the
  ``ood_distance`` column, all refitted because the trunk moved; and the directory's ensemble
  width calibration (:func:`~sb2dask.train.distill.calibrate_student_ensemble`) on the same rows.

Every manifest gets a ``fine_tune`` record (stores' fingerprints, settings, rows, the previous
weights' hash and its detector-head record, the validation numbers before and after); the
manifests' ``metrics`` (the LARGE_SPREAD flag's reference RMSE, the AUC) are recomputed on the
stores' validation rows (the AUC on the rows kept for the offset), the previous ones kept in
the record (``metrics_before``). The models'
``snr_range`` (the LOW_SNR flag's floor) is kept even when the stores go below it: the flag
stays the user's warning that the labels there are less certain.

With ``bridge_ca_ii`` (a half width in Å) the fine-tuned students are made blind to the Ca II
triplet's cores (:meth:`~sb2dask.models.student.StudentNet.set_bridged`): they see, in
training and at inference alike, a straight line across each core, while the untouched
student they are distilled from still sees the whole spectrum. The windows are recorded in the
manifests' architecture (``bridged``) and in the ``fine_tune`` record.

The output is written into a temporary sibling directory and renamed at the end, so a failure
leaves no half-written model directory behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .head import DEFAULT_MARGIN

__all__ = ["finetune_students", "finetune_one"]

_METHOD = ("whole student fine-tuned (Adam): class-balanced cross-entropy of p_binary against "
           "double_lined (classes balanced within each store; pairs near the thresholds and "
           "companions in noise left out) + distill_weight x squared difference of label means "
           "and log widths from the previous student + truth_weight x beta-NLL of the "
           "binaries' truths; offset, widths and feature statistics refitted on the stores' "
           "validation rows (sb2dask.train.finetune)")
_CALIBRATION_METHOD = ("per output and S/N bin: 68.27th percentile of |truth - mean| / width on "
                       "the fine-tune stores' validation rows (training.fine_tune)")
_FIELDS = ["is_binary", "light_fraction", "rv_separation", "snr", "teff", "logg", "feh", "vsini"]


def finetune_one(model, flux: np.ndarray, truth: np.ndarray, weight: np.ndarray,
                 y: np.ndarray, *, epochs: int, lr: float, batch_size: int = 256,
                 distill_weight: float = 1.0, truth_weight: float = 0.0, beta: float = 0.5,
                 seed: int = 0, bridged=None):
    """A fine-tuned copy of student ``model`` (the pure core; ``model`` is left as it is).

    ``flux`` ``(n, n_pix)`` float32; ``truth`` bool (n,) p_binary's target; ``weight`` (n,)
    its per-row weight (class balance included; 0 leaves a row out of the p_binary term);
    ``y`` ``(n, 9)`` the scaled label truths (NaN where undefined). Loss per batch: the
    weighted cross-entropy + ``distill_weight`` × the mean squared difference of the means and
    log widths from ``model``'s + ``truth_weight`` × beta-NLL of ``y``. Batches are drawn from a
    generator seeded with ``seed``, so the result depends on the rows and seed only.
    ``bridged`` (pixel windows, :meth:`~sb2dask.models.student.StudentNet.set_bridged`; None:
    as ``model``) are bridged in the copy from the start; ``model``'s outputs, the
    distillation targets, stay those of its own inputs."""
    from .distill import beta_nll

    ref = model.eval()
    tuned = copy.deepcopy(model).train()
    if bridged is not None:
        tuned.set_bridged(bridged)
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned.parameters(), lr)
    x = torch.from_numpy(np.ascontiguousarray(flux, np.float32))
    yt = torch.from_numpy(np.asarray(truth, np.float32))
    wt = torch.from_numpy(np.asarray(weight, np.float32))
    lab = torch.from_numpy(np.asarray(y, np.float32))
    gen = torch.Generator().manual_seed(int(seed))  # the network has no dropout
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = perm[s:s + batch_size]
            logit, mean, log_width = tuned(x[idx])
            ce = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt[idx],
                                                                      reduction="none")
            loss = (wt[idx] * ce).sum() / wt[idx].sum().clamp(min=1e-6)
            if distill_weight:
                with torch.no_grad():
                    _, mean_ref, log_width_ref = ref(x[idx])
                loss = loss + distill_weight * (((mean - mean_ref) ** 2).mean()
                                                + ((log_width - log_width_ref) ** 2).mean())
            if truth_weight:
                loss = loss + truth_weight * beta_nll(lab[idx], mean, log_width, beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return tuned.eval()


def _label_rmse(mean: np.ndarray, y: np.ndarray) -> dict:
    """RMSE of the scaled ``mean`` against ``y`` in physical units, per parameter pooled over
    both components and for the light fraction; rows with NaN truths skipped."""
    from ..labels import PARAMETERS
    from ..models.student import OUTPUTS, _scaling

    out = {}
    for k in [*PARAMETERS, "light_fraction_faint"]:
        cols = [j for j, o in enumerate(OUTPUTS) if o == k or o.rsplit("_", 1)[0] == k]
        err = []
        for j in cols:
            lo, hi = _scaling(OUTPUTS[j])
            ok = np.isfinite(y[:, j])
            err.append((mean[ok, j] - y[ok, j]) * (hi - lo))
        e = np.concatenate(err)
        out[k] = float(np.sqrt(np.mean(e ** 2))) if len(e) else float("nan")
    return out


def finetune_students(model_dir: str | Path, stores, out_dir: str | Path, *,
                      margin: float | None = DEFAULT_MARGIN,
                      min_companion_signal: float | None = 12.0, epochs: int = 2,
                      lr: float = 1e-4, batch_size: int = 256, distill_weight: float = 1.0,
                      truth_weight: float = 1.0, beta: float = 0.5,
                      max_train: int | None = None, max_validation: int | None = None,
                      bridge_ca_ii: float | None = None, progress: bool = False) -> dict:
    """Copy the student directory ``model_dir`` to ``out_dir`` (which must not exist) with every
    student fine-tuned on the training rows of ``stores`` (detector stores: single stars and
    binaries in the students' frame, a grid covering theirs) and recalibrated on their
    validation rows (module docstring). ``max_train`` / ``max_validation`` limit the rows taken
    from each store. Student i is seeded with i. Returns a summary: per store, the mixture's
    AUC, recall and single stars above 0.2 and the label RMSE, before and after."""
    from ..dataset.store import load_split, split_indices, store_fingerprint
    from ..infer.predict import ModelSet
    from ..models.io import feature_statistics, load_model, save_feature_statistics, save_model
    from ..models.student import (
        ENSEMBLE_CALIBRATION_FILE,
        SNR_EDGES,
        balanced_logit_offset,
        ca_ii_core_windows,
        class_balance,
        scaled_targets,
        width_scales,
    )
    from ..provenance import package_versions
    from ..stats import roc_auc
    from .distill import calibrate_student_ensemble, student_metrics, student_outputs
    from .head import head_target, trunk_features

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; fine-tune into a new directory")
    stores = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)
    if not stores:
        raise ValueError("no store to fine-tune on")
    stems = [Path(s).stem for s in stores]
    if len(set(stems)) != len(stems):
        raise ValueError(f"stores of the same name ({', '.join(map(str, stores))}): the "
                         "summary is keyed by name; rename one")
    ms = ModelSet(model_dir, device="cpu", ensemble_calibration=False)
    model_dir = ms.directory
    if not ms.students:
        raise ValueError(f"{model_dir}: no students (student-*.json) to fine-tune")
    if ms.detector_target != "double_lined":
        raise ValueError(f"{model_dir}: its students detect {ms.detector_target!r}; the "
                         "fine-tune's target is double_lined")
    t0 = time.perf_counter()

    def rows(split, n):
        parts = []
        for s in stores:
            index = split_indices(s, split)[:n]
            if not len(index):
                raise ValueError(f"{s}: no {split} rows to fine-tune on")
            parts.append(load_split(s, index, _FIELDS, frame=ms.frame, wave=ms.wave))
        lab = {k: np.concatenate([np.asarray(d.labels[k]) for d in parts]) for k in _FIELDS}
        src = np.concatenate([np.full(len(d.flux), i) for i, d in enumerate(parts)])
        flux = np.concatenate([d.flux for d in parts]).astype(np.float32)
        y = scaled_targets(lab)
        y[~lab["is_binary"].astype(bool)] = np.nan  # a single star has no second component
        return flux, lab, src, y

    x_tr, lab_tr, src_tr, y_tr = rows("train", max_train)
    x_va, lab_va, src_va, y_va = rows("validation", max_validation)
    t_tr, w_tr = head_target(lab_tr, margin, min_companion_signal)
    try:
        w_tr = w_tr * class_balance(t_tr, keep=w_tr > 0, strata=src_tr,
                                    who="the fine-tune (training rows kept, per store)")
    except ValueError as err:
        raise ValueError(f"{', '.join(map(str, stores))} (stratum i is the i-th store): {err}"
                         ) from None
    t_va, w_va = head_target(lab_va, margin, min_companion_signal)
    kept = w_va > 0
    single = ~lab_va["is_binary"].astype(bool)
    # what the recalibration needs, checked before any student is trained
    need = 50 * (len(SNR_EDGES) + 1)
    problems = []
    if not (t_va[kept].any() and (~t_va[kept]).any()):
        problems.append("no positive or no negative of the p_binary target among the "
                        "validation rows kept")
    if len(ms.students) > 1 and np.isfinite(y_va[:, 0]).sum() < need:
        problems.append(f"{int(np.isfinite(y_va[:, 0]).sum())} binaries among the validation "
                        f"rows, fewer than the {need} the ensemble width calibration needs")
    if problems:
        raise ValueError(f"{', '.join(map(str, stores))}: {'; '.join(problems)}")
    bridged = None if bridge_ca_ii is None else ca_ii_core_windows(ms.wave, bridge_ca_ii)

    tuned, before, after = [], [], []
    for i, st in enumerate(ms.students):
        model = finetune_one(st["model"], x_tr, t_tr, w_tr, y_tr, epochs=epochs, lr=lr,
                             batch_size=batch_size, distill_weight=distill_weight,
                             truth_weight=truth_weight, beta=beta, seed=i, bridged=bridged)
        z_old, m_old, _ = student_outputs(st["model"], x_va)
        z_new, m_new, lw_new = student_outputs(model, x_va)
        offset = balanced_logit_offset(z_new[kept], t_va[kept])
        scales = width_scales((y_va - m_new) / np.exp(lw_new), lab_va["snr"], SNR_EDGES)
        before.append((1 / (1 + np.exp(-(z_old.astype(np.float64) + st["logit_offset"]))),
                       m_old))
        after.append((1 / (1 + np.exp(-(z_new.astype(np.float64) + offset))), m_new))
        tuned.append((model, offset, scales, (z_new, m_new, lw_new)))
        if progress:
            print(f"student {i}: fine-tuned, offset {offset:+.3f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)

    def summary(outs):
        p = np.mean([o[0] for o in outs], axis=0)
        mean = np.mean([o[1] for o in outs], axis=0)
        res = {}
        for j, s in enumerate(stores):
            m = src_va == j
            res[Path(s).stem] = dict(
                auc_double_lined=roc_auc(t_va[m], p[m]),
                recall_double_lined=float((p[m & t_va] > 0.5).mean()),
                singles_above_0_2=float((p[m & single] > 0.2).mean()),
                singles_above_0_5=float((p[m & single] > 0.5).mean()),
                label_rmse=_label_rmse(mean[m], y_va[m]))
        res["singles_above_0_2"] = float((p[single] > 0.2).mean())
        return res

    validation = dict(before=summary(before), after=summary(after))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fingerprints = [store_fingerprint(s) for s in stores]
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    shutil.copytree(model_dir, tmp_dir)
    try:
        # the OOD reference: at most 20 000 validation rows, spread over every store's
        ref = np.unique(np.linspace(0, len(x_va) - 1, min(len(x_va), 20000)).astype(int))
        records = []
        for st, (model, offset, scales, outs) in zip(ms.students, tuned):
            man = st["manifest"]
            record = dict(
                method=_METHOD,
                stores=fingerprints, margin=margin, min_companion_signal=min_companion_signal,
                epochs=epochs, learning_rate=lr, batch_size=batch_size,
                distill_weight=distill_weight, truth_weight=truth_weight, beta=beta,
                bridge_ca_ii=bridge_ca_ii, bridged=model.bridged,
                n_train=int(len(x_tr)), n_train_p_binary=int((w_tr > 0).sum()),
                n_validation=int(len(x_va)), n_validation_p_binary=int(kept.sum()),
                previous_weights_sha256=man.weights_sha256,
                previous_logit_offset=st["logit_offset"], logit_offset=offset,
                previous_detector_head=man.training.get("detector_head"),
                validation_mixture=validation, created=created,
                versions=package_versions("torch", "numpy"))
            cal = dict(man.training.get("calibration") or {},
                       method=_CALIBRATION_METHOD,
                       snr_edges=list(SNR_EDGES), scales=np.asarray(scales).tolist(),
                       n=int(np.isfinite(y_va[:, 0]).sum()), p_binary_logit_offset=offset,
                       p_binary_offset_method="balanced_logit_offset on the fine-tune stores' "
                       "validation rows kept (pooled; training.fine_tune)",
                       n_p_binary=int(kept.sum()))
            training = {k: v for k, v in man.training.items() if k != "detector_head"}
            training.update(calibration=cal, fine_tune=record)
            # the outputs on the validation rows computed once, above
            metrics = student_metrics(*outs, y_va, lab_va["snr"], cal, t_va[kept], kept)
            record["metrics_before"] = dict(man.metrics or {})
            arch = dict(man.architecture_kwargs, bridged=model.bridged) if model.bridged else \
                {k: v for k, v in man.architecture_kwargs.items() if k != "bridged"}
            path = save_model(tmp_dir, model, replace(man, training=training, metrics=metrics,
                                                      architecture_kwargs=arch))
            # the reference set: validation rows (spectra it was not fitted to), as finalize_student
            save_feature_statistics(path, feature_statistics(trunk_features(model, x_va[ref])))
            records.append(dict(name=man.name, weights_sha256=load_model(path)[1].weights_sha256))
        ensemble = None
        if len(ms.students) > 1:
            keys = ["detector"] + [f"detector_{i}" for i in range(1, len(stores))]
            calibrate_student_ensemble(tmp_dir, dict(zip(keys, stores)),
                                       {k: max_validation for k in keys})
            ensemble = str(out_dir / ENSEMBLE_CALIBRATION_FILE)
        tmp_dir.rename(out_dir)
    except BaseException:  # no half-written model directory is left behind
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return dict(validation, seconds=time.perf_counter() - t0, students=records,
                ensemble_calibration=ensemble)
