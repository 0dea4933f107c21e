"""Distilling the model-set ensembles into the one-pass student (:class:`~sb2dask.models.student.
StudentNet`): teacher labels, the blended loss, the resumable training loop, and the width
recalibration on the validation split.

The steps, each resumable from files under one work directory:

1. :func:`label_with_teachers`: the teacher ensembles (a model directory, loaded with
   :class:`~sb2dask.infer.predict.ModelSet` exactly as inference loads it) predict a bounded
   subset of a store's rows, in the frame they were trained in; chunks of rows are cached as
   ``teacher-STORE-SPLIT-START.npz`` so an interrupted run restarts where it stopped.
2. :func:`distill`: the student fits the blend of the hard targets (the simulated truths) and
   the soft ones (the teachers' outputs, where a row has them), :data:`DEFAULT_BLEND`; a
   checkpoint per epoch.
3. :func:`calibrate_widths`: one scale per label and S/N bin makes the predicted widths cover
   the validation truths (:func:`sb2dask.models.student.width_scales`); stored in the manifest.
4. For an ensemble of students (seeds of one recipe in one directory):
   :func:`calibrate_student_ensemble` does the same for their mixture as inference forms it, in
   the directory's :data:`~sb2dask.models.student.ENSEMBLE_CALIBRATION_FILE`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset.store import load_split, split_indices
from ..fileio import atomic_path, atomic_write_json
from ..labels import PARAMETERS, detector_fields, detector_truth

__all__ = ["TEACHER_KEYS", "DEFAULT_BLEND", "label_with_teachers", "load_teacher_labels",
           "teachers_digest", "calibrate_student_ensemble", "beta_nll", "student_metrics"]

logger = logging.getLogger(__name__)

#: What the teachers' cache holds per row: the ensemble means (``(n, 2)`` labels, cooler
#: first; ``(n,)`` p_binary) and the ensemble spreads.
TEACHER_KEYS = ("p_binary", "p_binary_err") + PARAMETERS + tuple(f"{k}_err" for k in PARAMETERS)


#: Weights of the loss terms (see :func:`distill`): ``p_binary_hard`` / ``p_binary_soft`` mix
#: the target of the detector's cross-entropy (truth 0/1 and the teachers' mean probability),
#: ``nll_hard`` weights the heteroscedastic (beta-)NLL of every label against the truth,
#: ``mean_soft`` an extra squared error (in scaled units) of the label means against the
#: teachers' means. The truths dominate the labels: the teachers' own errors (docs/models.md)
#: are larger than what the student reaches on the truths alone; their probabilities carry the
#: detector's ranking, which the hard 0/1 target does not.
DEFAULT_BLEND = dict(p_binary_hard=0.5, p_binary_soft=0.5, nll_hard=1.0, mean_soft=0.25,
                     beta=0.5)


def _cache_name(store: str | Path, split: str, start: int) -> str:
    return f"teacher-{Path(store).stem}-{split}-{start:06d}.npz"


def teachers_digest(models) -> str:
    """Which teachers wrote a cache chunk: SHA-256 over the detector target and the weights'
    hashes of every member of ``models`` (a :class:`~sb2dask.infer.predict.ModelSet`), so a
    cache of other teachers (another target, retrained weights) is not blended in unnoticed."""
    import hashlib

    hashes = sorted(m["weights_sha256"] for ms in models.manifests.values() for m in ms)
    key = f"{models.p_binary_target}:" + ",".join(hashes)
    return hashlib.sha256(key.encode()).hexdigest()


def label_with_teachers(model_dir: str | Path, store: str | Path, split: str, n: int,
                        out_dir: str | Path, chunk: int = 1000, precision: str = "fp32",
                        progress: bool = True, first: int = 0,
                        detector_only: bool = False) -> dict[str, np.ndarray]:
    """Teacher predictions for ``n`` rows of ``split`` of ``store`` from its ``first``, cached.

    Parameters
    ----------
    model_dir : directory of the teacher model set (detector + temperature + parameter
        ensembles); the spectra are framed as its manifests say (``rest`` or ``rv_bulk``)
    store : simulated Zarr store
    split : ``train``, ``validation`` or ``test``
    n : rows (rows ``first`` to ``first + n`` of the split; fewer if the split is shorter)
    out_dir : the cache directory (one ``.npz`` per ``chunk`` rows, named by its first row,
        written atomically; a chunk already there is kept, whichever call wrote it)
    detector_only : the detector ensemble alone (:meth:`~sb2dask.infer.predict.ModelSet.detect`,
        ~30× cheaper than the whole set): ``p_binary`` and ``p_binary_err`` cached, every label
        key NaN (the student then has the teachers' probability but no teacher means there)

    Returns
    -------
    dict
        ``index`` (n,) global rows and :data:`TEACHER_KEYS` (float32, ``(n,)`` or ``(n, 2)``).
    """
    from ..infer.predict import ModelSet  # the teachers run exactly as inference runs them

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if first < 0 or n < 0:
        raise ValueError(f"label_with_teachers: first and n must be >= 0, got {first}, {n}")
    index = split_indices(store, split)[first:first + n]
    teachers = ModelSet(model_dir, device="cpu", precision=precision)
    digest = teachers_digest(teachers)
    t0, done = time.perf_counter(), 0
    for s in range(0, len(index), chunk):
        path = out_dir / _cache_name(store, split, int(index[s]))
        if path.exists():
            with np.load(path) as cached:
                theirs = str(cached["teachers"]) if "teachers" in cached else None
            if theirs is not None and theirs != digest:
                raise ValueError(f"{path}: written by other teachers than {model_dir} (another "
                                 "detector target or other weights); use another cache directory")
            continue
        rows = index[s:s + chunk]
        data = load_split(store, rows, ["is_binary"], frame=teachers.frame, wave=teachers.wave)
        if detector_only:
            pred = {k: np.full((len(rows), 2), np.nan) for k in TEACHER_KEYS}
            pred.update(teachers.detect(data.flux))
        else:
            pred = teachers.predict(data.flux, calibrated=False)  # *_err: the raw spreads
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, index=rows, teachers=np.array(digest),
                     **{k: pred[k].astype(np.float32) for k in TEACHER_KEYS})
        done += len(rows)
        if progress:
            rate = done / (time.perf_counter() - t0)
            print(f"teachers {Path(store).stem}/{split}: rows {s + len(rows)}/{len(index)} "
                  f"({rate:.1f} spectra/s)", file=sys.stderr, flush=True)
    return load_teacher_labels(store, split, out_dir, index)


def load_teacher_labels(store: str | Path, split: str, out_dir: str | Path,
                        index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The cached teacher predictions of ``store``/``split`` (every cached row, or those of
    ``index`` that are cached), in row order, each row once (chunks of runs with other chunk
    sizes may overlap); ``{"index": []}`` when none are cached."""
    paths = sorted(Path(out_dir).glob(_cache_name(store, split, 0).replace("000000", "*")))
    parts = []
    for path in paths:
        part = dict(np.load(path))
        # per row: which teachers wrote it ("" in caches written before that was recorded)
        part["teachers"] = np.full(len(part["index"]), str(part.get("teachers", "")))
        parts.append(part)
    if not parts:
        return {"index": np.zeros(0, np.int64)}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(out["index"], return_index=True)  # sorted by row, duplicates dropped
    keep = first if index is None else first[np.isin(out["index"][first], index)]
    return {k: v[keep] for k, v in out.items()}


#: Label fields read from the stores for distillation and calibration (with the detector
#: target's, :func:`sb2dask.labels.detector_fields`).
_FIELDS = ["is_binary", *PARAMETERS, "light_fraction", "snr"]


def _fields(target: str) -> list[str]:
    return _FIELDS + [f for f in detector_fields(target) if f not in _FIELDS]


@dataclass(frozen=True)
class DistillData:
    """The rows the student is fitted to (or validated on), in RAM.

    Attributes
    ----------
    flux : float32 (n, n_pix), in the teachers' frame
    y : float32 (n, 9) scaled truths (:func:`~sb2dask.models.student.scaled_targets`), NaN for
        single stars
    is_binary : bool (n,): whether a row has a second component to label
    p_truth : bool (n,): the detector target's truth (:func:`sb2dask.labels.detector_truth`;
        ``is_binary`` itself for that target), what p_binary is fitted and scored against
    detector_row : bool (n,), rows of the detector store (half single stars): the p_binary term
        is fitted on these only, whose class balance is the detector's
    p_teacher : float32 (n,) teachers' p_binary (NaN: not labelled)
    y_teacher : float32 (n, 9) teachers' means, scaled (NaN: not labelled; always NaN for the
        light fraction, which the teachers do not predict)
    snr : float32 (n,) true S/N
    """

    flux: np.ndarray
    y: np.ndarray
    is_binary: np.ndarray
    p_truth: np.ndarray
    detector_row: np.ndarray
    p_teacher: np.ndarray
    y_teacher: np.ndarray
    snr: np.ndarray


def _teacher_scaled(teach: dict) -> np.ndarray:
    from ..models.student import scaled_targets

    lab = {k: teach[k] for k in PARAMETERS}
    lab["light_fraction"] = np.full_like(teach["teff"], np.nan)
    return scaled_targets(lab)


def is_detector_role(key: str) -> bool:
    """Whether the store under ``key`` of a distillation's ``stores`` trains p_binary: the
    ``detector`` store and any other under a ``detector_*`` key (their class balance is the
    detector's); every other store (``labels``) trains the labels only."""
    if not (key in ("detector", "labels") or key.startswith(("detector_", "labels_"))):
        raise ValueError(f"distillation store role {key!r}: use 'detector', 'labels', "
                         "'detector_*' or 'labels_*'")
    return key == "detector" or key.startswith("detector_")


def load_distill_data(stores: dict[str, str | Path], split: str, max_rows: dict[str, int],
                      teacher_dir: str | Path | None, frame: str, wave: np.ndarray,
                      target: str = "is_binary") -> DistillData:
    """Rows of ``split`` from the ``detector`` and ``labels`` stores (``stores`` keys; more
    detector stores as ``detector_*`` keys, see :func:`is_detector_role`), the first
    ``max_rows[key]`` of each, with the cached teacher labels of ``teacher_dir`` where present;
    p_binary's truth for detector ``target``."""
    from ..models.student import scaled_targets

    parts = []
    for key, store in stores.items():
        index = split_indices(store, split)[: max_rows.get(key)]
        d = load_split(store, index, _fields(target), frame=frame, wave=wave)
        n = len(index)
        p_t = np.full(n, np.nan, np.float32)
        y_t = np.full((n, 9), np.nan, np.float32)
        if teacher_dir is not None:
            teach = load_teacher_labels(store, split, teacher_dir)
            if len(teach["index"]):
                pos = np.searchsorted(index, teach["index"])
                ok = (pos < n) & (index[np.minimum(pos, n - 1)] == teach["index"])
                p_t[pos[ok]] = teach["p_binary"][ok]
                y_t[pos[ok]] = _teacher_scaled({k: v[ok] for k, v in teach.items()})
        binary = d.labels["is_binary"].astype(bool)
        y = scaled_targets(d.labels)
        y[~binary] = np.nan  # a single star has no second component to label
        y_t[~binary] = np.nan
        parts.append(DistillData(d.flux, y, binary, detector_truth(target, d.labels),
                                 np.full(n, is_detector_role(key)), p_t, y_t,
                                 d.labels["snr"].astype(np.float32)))
    return DistillData(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in DistillData.__dataclass_fields__))


def distill_loss(logit, mean, log_width, batch: dict, blend: dict) -> tuple[torch.Tensor, dict]:
    """The student's loss on one batch and its terms.

    * p_binary (detector rows): binary cross-entropy on the logit against
      ``p_binary_hard * p_truth + p_binary_soft * p_teacher`` (the truth alone where a row
      has no teacher label; ``p_truth`` the detector target's truth);
    * every finite truth: beta-NLL (Seitzer et al. 2022), the Gaussian NLL of the truth under
      (mean, width) weighted by ``width^(2 beta)`` (detached), which keeps the means learning
      where the NLL alone would widen the widths instead; times ``nll_hard``;
    * every finite teacher mean: squared error of the mean (scaled units) times ``mean_soft``.
    """
    det = batch["detector_row"]
    terms = {}
    if det.any():
        hard = batch["p_truth"][det].float()
        pt = batch["p_teacher"][det]
        soft = torch.where(torch.isfinite(pt), blend["p_binary_hard"] * hard
                           + blend["p_binary_soft"] * torch.nan_to_num(pt), hard)
        terms["bce"] = torch.nn.functional.binary_cross_entropy_with_logits(logit[det], soft)
    else:
        terms["bce"] = logit.sum() * 0.0
    terms["nll"] = beta_nll(batch["y"], mean, log_width, blend["beta"])
    yt = batch["y_teacher"]
    okt = torch.isfinite(yt)
    terms["soft"] = (((torch.nan_to_num(yt) - mean) ** 2) * okt).sum() / okt.sum().clamp(min=1)
    total = terms["bce"] + blend["nll_hard"] * terms["nll"] + blend["mean_soft"] * terms["soft"]
    return total, {k: float(v.detach()) for k, v in terms.items()}


def beta_nll(y: torch.Tensor, mean: torch.Tensor, log_width: torch.Tensor,
             beta: float) -> torch.Tensor:
    """The beta-NLL (Seitzer et al. 2022) of the finite truths ``y`` under Gaussians (``mean``,
    ``exp(log_width)``), each term weighted by ``width^(2 beta)`` (detached), averaged over the
    finite entries (0 when there are none); NaN in ``y`` marks a truth that does not exist."""
    ok = torch.isfinite(y)
    var = torch.exp(2.0 * log_width)
    nll = 0.5 * ((torch.nan_to_num(y) - mean) ** 2 / var + 2.0 * log_width)
    nll = nll * var.detach() ** beta
    return (nll * ok).sum() / ok.sum().clamp(min=1)


def _batch(data: DistillData, rows: np.ndarray) -> dict:
    return dict(flux=torch.from_numpy(data.flux[rows]), y=torch.from_numpy(data.y[rows]),
                p_truth=torch.from_numpy(data.p_truth[rows]),
                detector_row=torch.from_numpy(data.detector_row[rows]),
                p_teacher=torch.from_numpy(data.p_teacher[rows]),
                y_teacher=torch.from_numpy(data.y_teacher[rows]))


def student_outputs(model, flux: np.ndarray, batch: int = 512) -> tuple[np.ndarray, ...]:
    """(logit (n,), mean (n, 9), log width (n, 9)) of ``model`` on ``flux``, float32."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(flux), batch):
            outs.append([t.float().numpy() for t in model(torch.from_numpy(
                np.ascontiguousarray(flux[s:s + batch], dtype=np.float32)))])
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))


def validation_summary(model, val: DistillData) -> dict:
    """Validation loss terms, detector AUC and per-output RMSE in scaled units."""
    from ..models.student import OUTPUTS
    from ..stats import roc_auc

    logit, mean, logw = student_outputs(model, val.flux)
    b = {k: torch.from_numpy(v) for k, v in dict(
        y=val.y, p_truth=val.p_truth, detector_row=val.detector_row,
        p_teacher=val.p_teacher, y_teacher=val.y_teacher).items()}
    total, terms = distill_loss(torch.from_numpy(logit), torch.from_numpy(mean),
                                torch.from_numpy(logw), b, DEFAULT_BLEND)
    det = val.detector_row
    rmse = np.sqrt(np.nanmean((mean - val.y) ** 2, axis=0))
    return dict(val_loss=float(total), **{f"val_{k}": v for k, v in terms.items()},
                auc=roc_auc(val.p_truth[det], logit[det]),
                rmse_scaled={n: float(r) for n, r in zip(OUTPUTS, rmse)})


@dataclass(frozen=True)
class _Setting:
    """What the student is fitted in: the frame and pixel grid of its inputs, p_binary's target,
    and the teachers (None: the truths alone)."""

    frame: str
    wave: np.ndarray
    target: str
    teachers: object = None  # a ModelSet


def _setting(teachers, stores: dict[str, str | Path], detector_target: str | None) -> _Setting:
    """The teachers' frame, grid and detector target; without teachers the first store's frame
    and grid and ``detector_target`` (required then)."""
    from ..infer.predict import ModelSet

    if teachers is not None:
        tset = ModelSet(teachers, device="cpu")  # every member: the cache digest covers all
        target = tset.p_binary_target
        if detector_target not in (None, target):
            raise ValueError(f"detector_target {detector_target!r}: the teachers {teachers} "
                             f"detect {target!r}")
        return _Setting(tset.frame, tset.wave, target, tset)
    if detector_target is None:
        raise ValueError("without teachers, say what p_binary is fitted to (detector_target)")
    import zarr

    from ..dataset.store import store_frame

    first = next(iter(stores.values()))
    return _Setting(store_frame(first), zarr.open_group(str(first), mode="r")["wave"][...],
                    detector_target)


def _check_cache(stores: dict[str, str | Path], teacher_dir, digest: str, teachers) -> None:
    """The cached training rows were labelled by ``teachers`` (:func:`teachers_digest`); a cache
    written before the digest was recorded is accepted with a warning."""
    if teacher_dir is None:
        return
    seen = set()
    for store in stores.values():
        seen |= set(load_teacher_labels(store, "train", teacher_dir).get("teachers", []))
    if seen - {digest, ""}:
        raise ValueError(f"{teacher_dir}: cached rows labelled by other teachers than {teachers} "
                         "(another detector target or other weights); use another cache")
    if "" in seen:
        logger.warning("%s: cache chunks without a record of their teachers; assumed to be %s's",
                       teacher_dir, teachers)


def distill(stores: dict[str, str | Path], teacher_dir: str | Path | None,
            teachers: str | Path | None, out_dir: str | Path, max_train: dict[str, int],
            max_validation: dict[str, int], epochs: int = 6, batch_size: int = 256,
            learning_rate: float = 2e-3, blend: dict | None = None,
            budget_s: float | None = None, seed: int = 0, threads: int | None = None,
            progress: bool = True, detector_target: str | None = None) -> Path:
    """Fit (or resume) the student; returns the path of its last checkpoint's progress file.

    Without ``teachers`` (and ``teacher_dir``) the student is fitted to the truths alone, in the
    first store's frame and on its pixel grid, p_binary to ``detector_target``.

    Checkpoints after every epoch in ``out_dir/checkpoints`` (weights, optimiser, scheduler,
    progress); a rerun resumes after the last finished epoch. ``budget_s`` stops after the
    epoch during which the wall time (this run) passes it; the learning-rate schedule is
    per batch over ``epochs`` and so does not depend on it.
    """
    from safetensors.torch import load_file, save_file

    from ..models.layers import canonical_state_dict, load_canonical_state_dict
    from ..models.student import StudentNet
    from .fit import warmup_cosine

    blend = dict(DEFAULT_BLEND, **(blend or {}))
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    setting = _setting(teachers, stores, detector_target)
    target = setting.target
    state_json = ckpt / "student-state.json"
    if state_json.exists():  # before loading the data: a resume must fit the same truth
        done = json.loads(state_json.read_text()).get("detector_target", "is_binary")
        if done != target:
            raise ValueError(f"{state_json}: this run fitted p_binary to {done!r}, now "
                             f"{target!r} (teachers {teachers}); resume with the same teachers "
                             "and target or use a new output directory")
    if setting.teachers is not None:
        _check_cache(stores, teacher_dir, teachers_digest(setting.teachers), teachers)
    train = load_distill_data(stores, "train", max_train, teacher_dir, setting.frame,
                              setting.wave, target)
    val = load_distill_data(stores, "validation", max_validation, None, setting.frame,
                            setting.wave, target)
    if progress:
        print(f"student: {len(train.flux)} training rows ({np.isfinite(train.p_teacher).sum()} "
              f"with teacher labels), {len(val.flux)} validation rows, loaded in "
              f"{time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    torch.manual_seed(seed)
    model = StudentNet(n_pix=len(setting.wave))
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * -(-len(train.flux) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    state = dict(epoch=0, history=[], best=float("inf"), n_train=len(train.flux),
                 n_teacher=int(np.isfinite(train.p_teacher).sum()
                               + np.isfinite(train.y_teacher[:, 0]).sum()
                               - (np.isfinite(train.p_teacher)
                                  & np.isfinite(train.y_teacher[:, 0])).sum()),
                 n_validation=len(val.flux), blend=blend, detector_target=target,
                 epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                 seconds=0.0)
    if state_json.exists():
        state = json.loads(state_json.read_text())
        load_canonical_state_dict(model, load_file(str(ckpt / "student-last.safetensors")))
        opt_state = torch.load(ckpt / "student-opt.pt", weights_only=True)
        opt.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
    t_run = time.perf_counter()
    while state["epoch"] < epochs:
        if budget_s is not None and time.perf_counter() - t_run > budget_s:
            break
        model.train()
        rng = np.random.default_rng([seed, state["epoch"]])
        order = rng.permutation(len(train.flux))
        t0, seen, agg = time.perf_counter(), 0, {}
        for s in range(0, len(order), batch_size):
            rows = np.sort(order[s:s + batch_size])
            b = _batch(train, rows)
            loss, terms = distill_loss(*model(b["flux"]), b, blend)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            seen += len(rows)
            for k, v in terms.items():
                agg[k] = agg.get(k, 0.0) + v * len(rows)
            if progress and (s // batch_size) % 100 == 0:
                rate = seen / (time.perf_counter() - t0)
                print(f"student epoch {state['epoch'] + 1} rows {seen}/{len(order)} "
                      f"loss {float(loss):.4f} {terms} ({rate:.0f} spectra/s)",
                      file=sys.stderr, flush=True)
        secs = time.perf_counter() - t0
        metrics = dict(epoch=state["epoch"] + 1, seconds=secs, train_samples_per_s=seen / secs,
                       lr=opt.param_groups[0]["lr"],
                       **{f"train_{k}": v / seen for k, v in agg.items()},
                       **validation_summary(model, val))
        state["epoch"] += 1
        state["seconds"] += secs
        state["history"].append(metrics)
        if metrics["val_loss"] < state["best"]:
            state["best"] = metrics["val_loss"]
            state["best_epoch"] = state["epoch"]
            with atomic_path(ckpt / "student-best.safetensors") as tmp:
                save_file(canonical_state_dict(model), str(tmp))
        with atomic_path(ckpt / "student-last.safetensors") as tmp:
            save_file(canonical_state_dict(model), str(tmp))
        with atomic_path(ckpt / "student-opt.pt") as tmp:
            torch.save(dict(optimizer=opt.state_dict(), scheduler=sched.state_dict()), tmp)
        atomic_write_json(state_json, state)
        if progress:
            print(f"student {json.dumps(metrics)}", file=sys.stderr, flush=True)
    return state_json


def calibrate_widths(model, val: DistillData) -> dict:
    """The width calibration of ``model`` on validation rows ``val``: per output and S/N bin
    (:data:`~sb2dask.models.student.SNR_EDGES`), the factor that brings the 1σ coverage of the
    truths to 68.3 % (:func:`~sb2dask.models.student.width_scales`); and the p_binary logit
    offset that makes its output the posterior for prior 0.5, as the detectors'
    (:func:`~sb2dask.models.student.balanced_logit_offset`, on the detector rows). For the
    manifest's ``training["calibration"]``."""
    from ..models.student import OUTPUTS, SNR_EDGES, balanced_logit_offset, width_scales

    logit, mean, logw = student_outputs(model, val.flux)
    z = (val.y - mean) / np.exp(logw)
    scales = width_scales(z, val.snr)
    det = val.detector_row
    return dict(method="per output and S/N bin: 68.27th percentile of |truth - mean| / width "
                       "on the validation split", snr_edges=list(SNR_EDGES), outputs=list(OUTPUTS),
                scales=scales.tolist(), n=int(np.isfinite(val.y[:, 0]).sum()),
                p_binary_logit_offset=balanced_logit_offset(logit[det], val.p_truth[det]),
                p_binary_offset_method="class-balanced cross-entropy on the validation "
                                       "detector rows: p_binary is the posterior for prior 0.5",
                n_p_binary=int(det.sum()))


def student_metrics(logit, mean, logw, y, snr, calibration: dict, p_truth: np.ndarray,
                    rows: np.ndarray) -> dict:
    """A student's validation metrics for its manifest, from its raw outputs (``logit``,
    ``mean``, ``logw``) on rows of scaled truths ``y`` (NaN for single stars) and S/N ``snr``,
    decoded with ``calibration`` (``scales``, ``p_binary_logit_offset``): the RMSE in
    physical units per parameter (pooled over the components and per component) and of the
    light fraction over the binaries (the reference of the LARGE_SPREAD flag), and the ROC AUC
    of p_binary against ``p_truth`` on the rows ``rows`` (bool mask)."""
    from ..models.student import decode
    from ..stats import roc_auc

    dec = decode(logit, mean, logw, snr, np.asarray(calibration["scales"]),
                 logit_offset=calibration["p_binary_logit_offset"])
    truth = decode(logit, y, logw)
    metrics = {}
    for k in PARAMETERS:
        err = dec[k] - truth[k]
        metrics[f"rmse_{k}"] = float(np.sqrt(np.nanmean(err ** 2)))
        for c in (0, 1):
            metrics[f"rmse_{k}_{c + 1}"] = float(np.sqrt(np.nanmean(err[:, c] ** 2)))
    metrics["rmse_light_fraction_faint"] = float(np.sqrt(np.nanmean(
        (dec["light_fraction_faint"] - np.clip(y[:, -1], 0, 0.5)) ** 2)))
    metrics["auc"] = roc_auc(p_truth, dec["p_binary"][rows])
    return metrics


def finalize_student(state_json: str | Path, stores: dict[str, str | Path],
                     teachers: str | Path | None, teacher_dir: str | Path | None,
                     out_dir: str | Path, max_calibration: dict[str, int],
                     name: str = "student-0") -> Path:
    """Save the best student of a :func:`distill` run with its manifest: architecture and pixel
    grid, frame, the distillation (blend, teacher model names and hashes, teacher-labelled rows),
    the width calibration (:func:`calibrate_widths` on ``max_calibration`` validation rows), the
    training sets, label limits, and validation metrics in physical units. Also the trunk
    feature statistics for the ``ood_distance`` column. Returns the manifest path."""
    from safetensors.torch import load_file

    from ..dataset.factory import store_metadata
    from ..models.io import (
        ModelManifest,
        feature_statistics,
        save_feature_statistics,
        save_model,
    )
    from ..models.layers import load_canonical_state_dict
    from ..models.student import StudentNet, count_flops
    from .fit import label_limits, logg_max_by_teff

    state_json = Path(state_json)
    state = json.loads(state_json.read_text())
    target = state.get("detector_target", "is_binary")
    tset = _setting(teachers, stores, None if teachers is not None else target)
    if tset.target != target:
        raise ValueError(f"{state_json}: the student fitted p_binary to {target!r}, the teachers "
                         f"{teachers} detect {tset.target!r}; finalize with the teachers it was "
                         "distilled from")
    model = StudentNet(n_pix=len(tset.wave))
    load_canonical_state_dict(model, load_file(str(state_json.with_name(
        "student-best.safetensors"))))
    model.eval()
    val = load_distill_data(stores, "validation", max_calibration, None, tset.frame, tset.wave,
                            target)
    calibration = calibrate_widths(model, val)
    logit, mean, logw = student_outputs(model, val.flux)
    metrics = student_metrics(logit, mean, logw, val.y, val.snr, calibration,
                              val.p_truth[val.detector_row], val.detector_row)
    # label space of the training rows (binaries), as the ensembles' manifests record it
    labels = {k: [] for k in PARAMETERS}
    snr_ranges = []
    for store in stores.values():
        idx = split_indices(store, "train")
        d = load_split(store, idx[: min(len(idx), 20000)], _FIELDS, frame="rest")
        for k in PARAMETERS:
            labels[k].append(d.labels[k][d.labels["is_binary"].astype(bool)])
        snr_ranges.append(store_metadata(store)["config"]["snr_range"])
    labels = {k: np.concatenate(v) for k, v in labels.items()}
    teacher_models = [] if tset.teachers is None else [
        dict(name=m["name"], weights_sha256=m["weights_sha256"])
        for ms in tset.teachers.manifests.values() for m in ms]
    teacher_rows = {}  # rows with the teachers' p_binary / with their label means
    for store in stores.values() if teacher_dir is not None else ():
        for split in ("train", "test"):
            t = load_teacher_labels(store, split, teacher_dir)
            if len(t["index"]):
                teacher_rows[f"{Path(store).stem}/{split}"] = dict(
                    p_binary=int(np.isfinite(t["p_binary"]).sum()),
                    labels=int(np.isfinite(t["teff"][:, 0]).sum()))
    from ..dataset.store import store_fingerprint

    manifest = ModelManifest(
        name=name, target="student", architecture="StudentNet", wave=tuple(tset.wave),
        architecture_kwargs=dict(n_pix=len(tset.wave)), seed=state["seed"],
        training_set={k: store_fingerprint(s) for k, s in stores.items()},
        training=dict(
            frame=tset.frame, detector_target=target, n_train=state["n_train"],
            n_validation=state["n_validation"],
            epochs=state["epoch"], best_epoch=state.get("best_epoch"),
            batch_size=state["batch_size"], learning_rate=state["learning_rate"],
            seconds=state["seconds"], mflop_per_spectrum=count_flops(model, len(tset.wave)) / 1e6,
            distillation=dict(blend=state["blend"],
                              teachers=None if teachers is None else str(Path(teachers).resolve()),
                              teacher_models=teacher_models, teacher_rows=teacher_rows,
                              n_train_with_teacher=state["n_teacher"],
                              teacher_precision="fp32"),
            calibration=calibration, label_limits=label_limits(labels),
            logg_max_by_teff=logg_max_by_teff(labels),
            snr_range=[min(r[0] for r in snr_ranges), max(r[1] for r in snr_ranges)],
            history=state["history"]),
        metrics=metrics)
    path = save_model(out_dir, model, manifest)
    with torch.inference_mode():
        flux = torch.from_numpy(val.flux[: min(len(val.flux), 20000)])
        feats = np.concatenate([model.embed(flux[s:s + 512]).numpy()
                                for s in range(0, len(flux), 512)])
    # the reference set is validation rows (spectra the student was not fitted to)
    save_feature_statistics(path, feature_statistics(feats))
    return path


def calibrate_student_ensemble(model_dir: str | Path, stores: dict[str, str | Path],
                               max_rows: dict[str, int], split: str = "validation") -> Path:
    """Fit the width calibration of a directory of several students as one mixture.

    Each student's widths are calibrated alone (its manifest); their equal mixture, as
    :class:`~sb2dask.infer.predict.ModelSet` forms it (the members' variances averaged plus the
    variance of their means), then over-covers. This predicts the first ``max_rows[key]`` rows
    of ``split`` of each store (``stores`` as :func:`distill` takes them; use the rows the
    members were calibrated on, never the rows the result is then tested on) through the
    uncalibrated mixture, with each row's true S/N selecting its bin, and writes per output and
    S/N bin the 68.27th percentile of ``|truth - mean| / width``
    (:func:`~sb2dask.models.student.width_scales`) with the members' names and weight hashes,
    the rows' stores, and the coverage before and after, to the directory's
    :data:`~sb2dask.models.student.ENSEMBLE_CALIBRATION_FILE` (replacing one there). Returns
    its path.
    """
    from ..dataset.store import store_fingerprint
    from ..infer.predict import ModelSet
    from ..models.student import (
        ENSEMBLE_CALIBRATION_FILE,
        OUTPUTS,
        SNR_EDGES,
        decode,
        decoded_z,
        snr_bins,
        width_scales,
    )
    from ..provenance import package_versions, utc_now

    # the mixture as it is: a students.json there (of these students or, stale, of others) is
    # neither applied nor checked, and is replaced below
    models = ModelSet(model_dir, "cpu", ensemble_calibration=False)
    if len(models.students) < 2:
        raise ValueError(f"{models.directory}: {len(models.students)} student(s); an ensemble "
                         "calibration needs several (student-0, student-1, ...)")
    val = load_distill_data(stores, split, max_rows, None, models.frame, models.wave,
                            models.p_binary_target)
    binary = np.isfinite(val.y[:, 0])
    if binary.sum() < 50 * (len(SNR_EDGES) + 1):
        raise ValueError(f"{int(binary.sum())} binaries in the {split} rows: too few for "
                         f"{len(SNR_EDGES) + 1} S/N bins of at least 50")
    pred = models.predict(val.flux[binary], snr=val.snr[binary])
    # the truths in the decoded layout (each pair sorted by its true Teff; the light fraction
    # clipped to [0, 0.5] as predicted)
    truth = decode(np.zeros(int(binary.sum())), val.y[binary], np.zeros_like(val.y[binary]))
    z = decoded_z(pred, truth)
    scales = width_scales(z, val.snr[binary], SNR_EDGES)
    after = z / scales[snr_bins(val.snr[binary], SNR_EDGES, len(scales))]

    def coverage(v):
        return {o: float(np.mean(np.abs(v[np.isfinite(v[:, j]), j]) < 1.0))
                for j, o in enumerate(OUTPUTS)}

    record = dict(
        kind="student_ensemble_calibration",
        method="per output and S/N bin: 68.27th percentile of |truth - mean| / width of the "
               "students' equal mixture (ModelSet) on the rows below",
        members=[dict(name=s["manifest"].name, weights_sha256=s["manifest"].weights_sha256)
                 for s in models.students],
        snr_edges=list(SNR_EDGES), outputs=list(OUTPUTS), scales=scales.tolist(),
        split=split, n=int(binary.sum()), max_rows=dict(max_rows),
        stores={k: store_fingerprint(v) for k, v in stores.items()},
        coverage_1sigma_before=coverage(z), coverage_1sigma_after=coverage(after),
        versions=package_versions("torch", "numpy"), created=utc_now())
    path = models.directory / ENSEMBLE_CALIBRATION_FILE
    atomic_write_json(path, record)
    return path
