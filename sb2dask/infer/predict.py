"""Prediction core: a set of trained networks applied to a partition of spectra.

:class:`ModelSet` loads every manifest in a model directory (detector, temperature and parameter
ensembles) once per process. :func:`predict_partition` takes a reader partition (see
:mod:`sb2dask.infer.readers`) and returns one output row per input row in the schema of
``catalogs/epoch_parameters.yaml``: it is what ``map_partitions`` maps.
"""

from __future__ import annotations

import json
import threading
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..devices import resolve_device
from ..gaia import FRAME_BARYCENTRIC, FRAME_UNKNOWN
from ..models.io import (
    ModelFileError,
    detector_target,
    load_feature_statistics,
    load_model,
    mahalanobis,
)
from ..models.predict import sort_pairs
from ..observe.flags import QualityFlag
from ..observe.rv_bulk import LINE_DETECTION_PEAK, preprocess_in_frame
from ..runtime import release_free_memory, tune_process
from ..train.calibrate import Calibration
from .config import PRECISIONS, InferenceConfig
from .flags import BoundaryFlag
from .readers.base import TRANSIT_COLUMNS
from .schema import empty_frame

__all__ = ["PARAMETERS", "PRECISIONS", "DEFAULT_MODEL_DIR", "DEFAULT_PRESET", "MODEL_PRESETS",
           "read_ensemble_calibration",
           "PAPER_MODEL_DIR", "BATCH_SIZE",
           "PAD_STEPS", "ModelSet", "get_model_set", "predict_partition", "resolve_model_dir"]

#: The paper-recipe ensembles shipped with the package (Binnenfeld et al. 2025's recipe on the
#: embedded grid: stars at rest, no survey nuisances; docs/models.md): ``--models paper``. Not
#: the default: on real Gaia spectra they call single stars binaries (docs/validation/real_sky).
PAPER_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "models"

#: Named model sets shipped with the package (``--models NAME``), all but ``paper`` trained on
#: the realistic recipe for what a spectrum shows (``double_lined``; docs/models.md):
#: ``students``, three distilled one-pass students (seeds of one recipe, with 3.7x the detector
#: rows of ``fast``'s) run as an equal mixture with a width calibration of its own:
#: ``p_binary_err`` is their disagreement; ``fast``, one student (sb2dask.models.student) of the
#: earlier recipe, one network instead of nine and a quarter faster end to end than
#: ``students``, for DR4-scale throughput; ``paper``, the paper-recipe ensembles.
MODEL_PRESETS = {"students": PAPER_MODEL_DIR / "students", "fast": PAPER_MODEL_DIR / "fast",
                 "paper": PAPER_MODEL_DIR}

#: The preset used where no model set is named: the one validated on real Gaia spectra whose
#: numbers are not one seed's draw (docs/validation/real_sky_students; docs/models.md, "The
#: default model set").
DEFAULT_PRESET = "students"

#: The directory of the default model set (:data:`DEFAULT_PRESET`).
DEFAULT_MODEL_DIR = MODEL_PRESETS[DEFAULT_PRESET]


def resolve_model_dir(model_dir: str | Path | None) -> Path:
    """The directory that ``model_dir`` names: None → :data:`DEFAULT_MODEL_DIR`, a key of
    :data:`MODEL_PRESETS` → that shipped set (a local directory of that name is ``./fast``),
    anything else → itself."""
    if model_dir is None:
        return DEFAULT_MODEL_DIR
    if str(model_dir) in MODEL_PRESETS:
        return MODEL_PRESETS[str(model_dir)]
    return Path(model_dir)

PARAMETERS = ("logg", "feh", "vsini")


#: Spectra per forward pass. On CPUs smaller batches keep the activations closer to the caches:
#: measured 424 spectra/s at 256 against 219/s at 1024 (one thread, TemperatureNet, 2-core test
#: machine), and 74 at 128 against 62 at 256 and 72 at 64 (one model per network, fp32, one
#: thread, AVX2 machine). 128 also halves the activations, which the heap keeps between batches
#: (docs/inference.md, "Memory"). GPUs want large batches.
BATCH_SIZE = {"cpu": 128, "cuda": 2048}

#: A short last batch is padded (with copies of its last spectrum) up to the next multiple of
#: ``batch_size / PAD_STEPS``, so a process sees at most ``PAD_STEPS`` batch shapes whatever its
#: partition sizes. Every new shape left the CPU heap larger (fragmentation around the new oneDNN
#: primitives and outputs): over 40 partitions of 300-600 rows (batch 128, one model per network,
#: heap trimmed after each) the peak grew to 0.85 GB and was still growing unpadded, and stayed
#: at 0.66 GB padded to 8 shapes (0.56 GB to 4 shapes, which cost 4 % throughput against 0.5 %).
#: Rows are independent, so results do not change.
PAD_STEPS = 8

_EDGE_FLAGS = {"teff": BoundaryFlag.TEFF_EDGE, "logg": BoundaryFlag.LOGG_EDGE,
               "feh": BoundaryFlag.FEH_EDGE, "vsini": BoundaryFlag.VSINI_EDGE}


def _spread(members: np.ndarray) -> np.ndarray:
    """Ensemble standard deviation over axis 0 (NaN for a single member: no spread to measure)."""
    if len(members) < 2:
        return np.full(members.shape[1:], np.nan)
    return members.std(axis=0, ddof=1)


def read_ensemble_calibration(path: Path) -> tuple[dict, list, np.ndarray, tuple]:
    """A student-ensemble width calibration file (``students.json``): the record as stored, its
    members' ``(name, weights_sha256)``, the scales ``(n_bins, 9)`` and the S/N edges. A file
    that is not one (unreadable, fields missing, scales of the wrong shape) is a
    :class:`ModelFileError` naming it."""
    try:
        rec = json.loads(Path(path).read_text())
        fitted = [(m["name"], m["weights_sha256"]) for m in rec["members"]]
        scales = np.asarray(rec["scales"], np.float64)
        edges = tuple(float(e) for e in rec["snr_edges"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{path}: not a student-ensemble calibration "
                             f"({type(err).__name__}: {err})") from None
    if scales.shape != (len(edges) + 1, 9):
        raise ModelFileError(f"{path}: scales of shape {scales.shape}, expected "
                             f"({len(edges) + 1}, 9)")
    return rec, fitted, scales, edges


class ModelSet:
    """All networks of one model directory, ready to predict.

    Parameters
    ----------
    directory : path with ``teff-*.json``, ``logg-*.json``, ``feh-*.json``, ``vsini-*.json`` and
        ``p_binary-*.json`` manifests (each with its ``.safetensors``), or with one
        ``student-*.json`` (the distilled one-pass student, :mod:`sb2dask.models.student`), or a
        name of :data:`MODEL_PRESETS`
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``
    precision : one of :data:`PRECISIONS`
    batch_size : spectra per forward pass (default :data:`BATCH_SIZE` of the device)
    members : use at most this many ensemble members per network (the lowest-numbered ones);
        ``None`` uses all. Fewer members run proportionally faster and give no spreads at 1.
        In a student directory: the first this many students (``student-0``, ``student-1``,
        ...; one student gives no ``p_binary_err``).
    ensemble_calibration : bool
        Several students: apply the directory's width calibration of their mixture
        (:data:`~sb2dask.models.student.ENSEMBLE_CALIBRATION_FILE`). False leaves the file
        unread (what :func:`~sb2dask.train.distill.calibrate_student_ensemble` fits on).
    layout : ``"1d"`` (Conv1d) or ``"2d"`` (Conv2d 1×k, channels-last); same function. On this
        project's 2-core test machine Conv1d was the faster of the two for the full model set
        (95 against 86 spectra/s in fp32, 211 against 167 in bf16, one thread, batch 256).
    """

    def __init__(self, directory: str | Path, device: str = "auto", precision: str = "fp32",
                 batch_size: int | None = None, layout: str = "1d", members: int | None = None,
                 ensemble_calibration: bool = True):
        self.directory = resolve_model_dir(directory)
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.batch_size = int(batch_size or BATCH_SIZE.get(self.device.type, 256))
        self.members: dict[str, list] = {}
        students = sorted(self.directory.glob("student-*.json"),
                          key=lambda q: (len(q.stem), q.stem))[:members]
        #: the one-pass student (model, manifest) when the directory holds one, else None; with
        #: several (``student-0``, ``student-1``, ...: seeds of one recipe) the first, and all of
        #: them in :attr:`students`
        self.student = None
        #: every student of the directory: dicts of model, manifest and its calibration
        self.students: list[dict] = []
        #: several students: the directory's width calibration of their mixture
        #: (:data:`~sb2dask.models.student.ENSEMBLE_CALIBRATION_FILE`), or None
        self.ensemble_calibration: dict | None = None
        if students:
            self._init_student(students, layout, ensemble_calibration, capped=members is not None)
            return
        for target in ("p_binary", "teff") + PARAMETERS:
            paths = sorted(self.directory.glob(f"{target}-*.json"),
                           key=lambda q: (len(q.stem), q.stem))[:members]
            self.members[target] = [load_model(p, layout=layout, device=self.device)
                                    for p in paths]
        missing = [t for t in ("teff",) + PARAMETERS if not self.members[t]]
        if missing:
            raise ModelFileError(f"{self.directory}: no models for {missing} "
                                 "(expected e.g. teff-0.json / teff-0.safetensors)")
        waves = {tuple(np.round(m.wave, 6)) for ms in self.members.values() for _, m in ms}
        if len(waves) != 1:
            raise ModelFileError(f"{self.directory}: models were trained on different pixel grids")
        first = self.members["teff"][0][1]
        self.wave = np.asarray(first.wave)
        self.training = first.training
        frames = {m.training.get("frame", "rest") for ms in self.members.values() for _, m in ms}
        if len(frames) != 1:
            raise ModelFileError(f"{self.directory}: models trained in different frames "
                                 f"{sorted(frames)}; a model set must share one")
        #: how the models' training spectra were framed: "rest" or "rv_bulk"
        self.frame = frames.pop()
        targets = {detector_target(m.training) for _, m in self.members["p_binary"]}
        if len(targets) > 1:
            raise ModelFileError(f"{self.directory}: detector members trained for different "
                                 f"targets {sorted(targets)}; an ensemble must share one")
        #: what p_binary means (:data:`sb2dask.labels.DETECTOR_TARGETS`): ``is_binary`` (any
        #: binary) or ``double_lined`` (a binary whose two stars this spectrum shows); None
        #: without a detector
        self.detector_target = targets.pop() if targets else None
        self.feature_stats = load_feature_statistics(first, self.directory)
        self.manifests = {t: [m.to_dict() for _, m in ms] for t, ms in self.members.items()}
        #: the label uncertainties' calibration (``calibration.json``), or None: raw spreads
        self.calibration = self._load_calibration()
        self.lock = threading.Lock()  # one forward pass at a time per process (torch threads)

    def _init_student(self, paths: list[Path], layout: str, ensemble_calibration: bool,
                      capped: bool) -> None:
        for path in paths:
            model, man = load_model(path, layout=layout, device=self.device)
            cal = man.training.get("calibration") or {}
            self.students.append(dict(
                model=model, manifest=man,
                # per-S/N-bin width factors (n_bins, 9) and the bin edges, from the manifest
                width_scales=np.asarray(cal["scales"]) if cal.get("scales") else None,
                snr_edges=tuple(cal.get("snr_edges", ())),
                # added to the p_binary logit: its prior made 0.5, the detectors' (0 for
                # students calibrated before the offset existed)
                logit_offset=float(cal.get("p_binary_logit_offset", 0.0)),
                feature_stats=load_feature_statistics(man, self.directory)))
        first = self.students[0]
        man = first["manifest"]
        self.student = (first["model"], man)
        for other in self.students[1:]:
            m = other["manifest"]
            same = (np.array_equal(np.round(m.wave, 6), np.round(man.wave, 6))
                    and m.training.get("frame", "rest") == man.training.get("frame", "rest")
                    and detector_target(m.training) == detector_target(man.training))
            if not same:
                raise ModelFileError(f"{self.directory}: {m.name} and {man.name} differ in "
                                     "pixel grid, frame or detector target; one student "
                                     "ensemble must share them")
        self.members = {t: [] for t in ("p_binary", "teff") + PARAMETERS}
        self.wave = np.asarray(man.wave)
        self.training = man.training
        self.frame = man.training.get("frame", "rest")
        self.detector_target = detector_target(man.training)
        self.feature_stats = first["feature_stats"]
        self.manifests = {"student": [s["manifest"].to_dict() for s in self.students]}
        self.calibration = None  # its widths are calibrated in its manifest (above)
        if ensemble_calibration:
            self.ensemble_calibration = self._load_ensemble_calibration(capped)
        self.lock = threading.Lock()

    def _load_ensemble_calibration(self, capped: bool) -> dict | None:
        """The width calibration of the loaded students' mixture, when the directory has one
        fitted with exactly these students (names and weights). One student is calibrated by
        its own manifest; the first students of those fitted, loaded so by ``--members``
        (``capped``), run uncalibrated with a warning; a calibration of other weights is an
        error."""
        from ..models.student import ENSEMBLE_CALIBRATION_FILE

        path = self.directory / ENSEMBLE_CALIBRATION_FILE
        if len(self.students) < 2 or not path.exists():
            return None
        rec, fitted, scales, edges = read_ensemble_calibration(path)
        loaded = [(s["manifest"].name, s["manifest"].weights_sha256) for s in self.students]
        if loaded == fitted:
            return dict(rec, scales=scales, snr_edges=edges)
        if capped and loaded == fitted[:len(loaded)]:
            warnings.warn(f"{path} was fitted for {len(fitted)} students, {len(loaded)} are "
                          "loaded (--members): not applied; the widths are the members' "
                          "mixture, which over-covers", stacklevel=4)
            return None
        raise ModelFileError(f"{path} was fitted with other students than this directory's; "
                             "fit it again (sb2dask.train.distill.calibrate_student_ensemble) "
                             "or remove the file")

    def _load_calibration(self) -> Calibration | None:
        """The directory's calibration when it was fitted with exactly the loaded members.

        A calibration of other weights (the directory retrained after ``sb2dask calibrate``) is
        an error; one of the same networks used with fewer members (``--members 1``: no spread,
        the one it was fitted on) is not applied, with a warning: the errors are then the raw
        spreads and the source table adds the validation RMSE floor again.
        """
        from ..train.calibrate import CALIBRATION_FILE, members_digest

        cal = Calibration.load(self.directory)
        fitted = (cal.provenance.get("members_digest") if cal is not None else None)
        if cal is None or fitted is None or fitted == members_digest(self.manifests):
            return cal
        recorded = {m["name"]: m["weights_sha256"] for ms in cal.provenance.get(
            "models", {}).values() for m in ms}
        loaded = {m["name"]: m["weights_sha256"] for ms in self.manifests.values() for m in ms}
        if all(recorded.get(k) == v for k, v in loaded.items()):
            warnings.warn(f"{self.directory / CALIBRATION_FILE} was fitted with "
                          f"{len(recorded)} networks, {len(loaded)} are loaded (--members): "
                          "not applied; the *_err columns are raw ensemble spreads",
                          stacklevel=3)
            return None
        raise ModelFileError(f"{self.directory / CALIBRATION_FILE} was fitted with other "
                             "weights than the models in this directory; run sb2dask calibrate "
                             "again or remove the file")

    @property
    def p_binary_target(self) -> str:
        """The truth p_binary is fitted and scored against: :attr:`detector_target`, or
        ``is_binary`` for a set without a detector."""
        return self.detector_target or "is_binary"

    @property
    def calibration_record(self) -> dict | None:
        """What the outputs' metadata and a run's settings record of the calibration applied:
        the file's SHA-256 and where it was fitted (None without one)."""
        from ..fileio import file_sha256

        ens = self.ensemble_calibration
        if ens is not None:
            from ..models.student import ENSEMBLE_CALIBRATION_FILE

            return dict(sha256=file_sha256(self.directory / ENSEMBLE_CALIBRATION_FILE),
                        kind="student_ensemble", split=ens.get("split"), n=ens.get("n"),
                        store_sha256={k: v.get("sha256") for k, v in
                                      (ens.get("stores") or {}).items()})
        if self.calibration is None:
            return None
        from ..train.calibrate import CALIBRATION_FILE

        prov = self.calibration.provenance
        return dict(sha256=file_sha256(self.directory / CALIBRATION_FILE),
                    store_sha256=prov.get("store_sha256"), split=prov.get("split"),
                    n=prov.get("n"))

    @property
    def provenance(self) -> dict:
        """Model names, hashes, training sets and metrics, for output metadata; the detector's
        (and a student's) entries say what p_binary means (``detector_target``)."""
        def entry(t, m):
            d = dict(name=m["name"], weights_sha256=m["weights_sha256"],
                     training_set=m["training_set"].get("sha256"), metrics=m["metrics"])
            if t in ("p_binary", "student"):
                d["detector_target"] = detector_target(m.get("training") or {})
            if t == "student":  # calibrated in the manifest, not in the weights
                cal = (m.get("training") or {}).get("calibration") or {}
                d["p_binary_logit_offset"] = float(cal.get("p_binary_logit_offset", 0.0))
            return d

        return {t: [entry(t, m) for m in ms] for t, ms in self.manifests.items()}

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def uses_rest_frame(self, mode: str = "auto", frames=None):
        """Whether inference removes each spectrum's bulk velocity.

        Parameters
        ----------
        mode : one of :data:`~sb2dask.infer.config.REST_FRAME_MODES`
            ``on``: always; ``off``: never; ``auto``: as the models were trained, and always for
            spectra not in a stellar rest frame (``frames`` ``"barycentric"``: Gaia DR4 epoch
            spectra, which carry the star's full radial velocity).
        frames : array_like of str (n,), optional
            The input frame of each spectrum (the readers' ``frame`` column).

        Returns
        -------
        bool, or ndarray of bool (n,) when ``frames`` is given
        """
        models = mode == "on" or (mode == "auto" and self.frame == "rv_bulk")
        if frames is None:
            return models
        frames = np.asarray(frames, dtype=object)
        return np.full(len(frames), models) | ((mode == "auto") & (frames == FRAME_BARYCENTRIC))

    def predict(self, flux: np.ndarray, batch_size: int | None = None,
                snr: np.ndarray | None = None, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Predictions for spectra on :attr:`wave` (float32 ``(n, n_pix)``).

        Returns ``p_binary``, ``p_binary_err`` (n,), ``ood_distance`` (n,) and for each of teff,
        logg, feh, vsini the mean, ``(n, 2)``, cooler first, and ``_err``. For ensembles also
        the ``_spread`` (the members' standard deviation); ``_err`` is the calibrated 1σ
        uncertainty when the model directory has a calibration (:mod:`sb2dask.train.calibrate`;
        ``snr`` (n,) selects S/N bins) and ``calibrated`` is true, otherwise the spread.
        A student (:attr:`student`) returns its calibrated widths as the ``_err`` (the S/N
        ``snr`` selects the calibration bin; NaN or None: the middle bin), ``p_binary_err`` NaN
        (no members), and ``light_fraction_faint`` and its ``_err`` (n,), which the ensembles do
        not predict.
        """
        out = {}
        batch_size = batch_size or self.batch_size
        snr = np.full(len(flux), np.nan) if snr is None else np.asarray(snr, np.float64)
        with self.lock, torch.inference_mode(), self._autocast():
            parts = [self._predict_padded(flux[s:s + batch_size], batch_size,
                                          snr[s:s + batch_size])
                     for s in range(0, len(flux), batch_size)]
            # the activations' heap, free now, would stay resident (and, fragmented, grow)
            release_free_memory()
        for k in parts[0] if parts else ():
            out[k] = np.concatenate([p[k] for p in parts])
        for label in ("teff",) + PARAMETERS:
            if self.student is not None or f"{label}_err" not in out:
                continue  # a student's widths are calibrated already
            out[f"{label}_spread"] = out[f"{label}_err"]
            if calibrated and self.calibration is not None:
                out[f"{label}_err"] = self.calibration.apply(label, out[f"{label}_spread"], snr,
                                                             out[label])
        return out

    def _predict_padded(self, flux: np.ndarray, batch_size: int,
                        snr: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`_predict_batch` with ``flux`` padded to one of :data:`PAD_STEPS` shapes."""
        n = len(flux)
        step = -(-batch_size // PAD_STEPS)
        padded = min(batch_size, -(-n // step) * step)
        run = self._student_batch if self.student is not None else self._predict_batch
        if padded == n:
            return run(flux, snr)
        res = run(np.concatenate([flux, np.repeat(flux[-1:], padded - n, 0)]),
                  np.concatenate([snr, np.repeat(snr[-1:], padded - n)]))
        return {k: v[:n] for k, v in res.items()}

    def _student_batch(self, flux: np.ndarray, snr: np.ndarray) -> dict[str, np.ndarray]:
        """One batch through every student. Several (seeds of one recipe) are combined as an
        equal mixture: p_binary the mean probability and ``p_binary_err`` the members' standard
        deviation; each label the mean and, as ``_err``, the mixture's width (the members'
        calibrated variances averaged plus the variance of their means); ``ood_distance`` the
        mean. One student is returned as it decodes (``p_binary_err`` NaN)."""
        from ..models.student import decode, scale_decoded_widths

        x = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32)).to(self.device)
        runs = []
        for st in self.students:
            model = st["model"]
            feats = model.embed(x)
            logit, mean, log_width = (t.float().cpu().numpy() for t in model.heads(feats))
            res = decode(logit, mean, log_width, snr, st["width_scales"], st["snr_edges"],
                         st["logit_offset"])
            res["ood_distance"] = self._ood_distance(feats, st["feature_stats"])
            runs.append(res)
        if len(runs) == 1:
            res = runs[0]
            res["p_binary_err"] = np.full(len(flux), np.nan)
            return res
        out = {}
        p = np.stack([r["p_binary"] for r in runs])
        out["p_binary"], out["p_binary_err"] = p.mean(0), p.std(0, ddof=1)
        for k in ("teff",) + PARAMETERS + ("light_fraction_faint",):
            means = np.stack([r[k] for r in runs])
            var = np.stack([r[f"{k}_err"] for r in runs]) ** 2
            out[k] = means.mean(0)
            out[f"{k}_err"] = np.sqrt(var.mean(0) + means.var(0))
        out["ood_distance"] = np.mean([r["ood_distance"] for r in runs], axis=0)
        cal = self.ensemble_calibration
        if cal is not None:
            out = scale_decoded_widths(out, cal["scales"], snr, cal["snr_edges"])
        return out

    def _ood_distance(self, feats: torch.Tensor, stats: dict | None = None) -> np.ndarray:
        """Mahalanobis distance of trunk features from the training set's, in units of its
        99.5 % quantile (NaN without reference statistics); ``stats``: a student's own (default
        :attr:`feature_stats`)."""
        fs = self.feature_stats if stats is None else stats
        if fs is None:
            return np.full(len(feats), np.nan)
        return (mahalanobis(feats.float().cpu().numpy(), fs["mean"], fs["precision"])
                / fs["threshold"][0])

    def detect(self, flux: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """The detector ensemble alone on spectra on :attr:`wave` (float32 ``(n, n_pix)``):
        ``p_binary`` and ``p_binary_err`` (n,), as :meth:`predict` gives them, at a fraction of
        its cost (for studies of p_binary, e.g. ``benchmarks/bench_source_evidence.py``). A
        student has no cheaper part: it runs :meth:`predict`."""
        if self.student is not None:
            res = self.predict(flux, batch_size)
            return {k: res[k] for k in ("p_binary", "p_binary_err")}
        batch_size = batch_size or self.batch_size
        with self.lock, torch.inference_mode(), self._autocast():
            parts = [self._detect_batch(torch.from_numpy(np.ascontiguousarray(
                flux[s:s + batch_size], dtype=np.float32)).to(self.device))
                for s in range(0, len(flux), batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0)
                for k in ("p_binary", "p_binary_err")}

    def _detect_batch(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        if not self.members["p_binary"]:
            nan = np.full(len(x), np.nan, np.float32)
            return {"p_binary": nan, "p_binary_err": nan}
        p = np.stack([torch.sigmoid(m(x).float()).cpu().numpy()
                      for m, _ in self.members["p_binary"]])
        return {"p_binary": p.mean(0), "p_binary_err": _spread(p)}

    def _predict_batch(self, flux: np.ndarray, snr: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32)).to(self.device)
        res = self._detect_batch(x)
        temps = []
        for i, (model, man) in enumerate(self.members["teff"]):
            feats = model.trunk(x)
            t = man.scaling.unscale(model.head(feats).float().cpu().numpy().astype(np.float64))
            temps.append(sort_pairs(t)[0])
            if i == 0:
                res["ood_distance"] = self._ood_distance(feats)
        temps = np.stack(temps)
        res["teff"], res["teff_err"] = temps.mean(0), _spread(temps)
        for target in PARAMETERS:
            preds = []
            for model, man in self.members[target]:
                tin = torch.from_numpy(man.temperature_scaling.scale(res["teff"]).astype(
                    np.float32)).to(self.device)
                scaled = model(x, tin).float().cpu().numpy().astype(np.float64)
                preds.append(man.scaling.unscale(scaled))
            preds = np.stack(preds)
            res[target], res[f"{target}_err"] = preds.mean(0), _spread(preds)
        return res

    def boundary_flags(self, pred: dict, snr: np.ndarray) -> np.ndarray:
        """:class:`BoundaryFlag` bits from the training set's label limits and S/N range."""
        lim = self.training.get("label_limits", {})
        flags = np.zeros(len(pred["teff"]), dtype=np.int32)
        for target, bit in _EDGE_FLAGS.items():
            if not lim.get(target):
                continue
            lo, hi = lim[target]
            margin = 0.02 * (hi - lo)
            v = pred[target]
            edge = np.any((v < lo + margin) | (v > hi - margin), axis=1)
            flags[edge] |= int(bit)
        steps = self.training.get("logg_max_by_teff") or []
        if steps:
            t_hi = np.array([s[0] for s in steps])
            g_max = np.array([s[1] for s in steps])
            j = np.clip(np.searchsorted(t_hi, pred["teff"]), 0, len(t_hi) - 1)
            flags[np.any(pred["logg"] > g_max[j] - 0.05, axis=1)] |= int(BoundaryFlag.LOGG_EDGE)
        snr_lo = (self.training.get("snr_range") or [0, 0])[0]
        flags[np.isfinite(snr) & (snr < snr_lo)] |= int(BoundaryFlag.LOW_SNR)
        flags[pred["ood_distance"] > 1.0] |= int(BoundaryFlag.TRAINING_UNLIKE)
        for target in ("teff",) + PARAMETERS:
            width = pred[f"{target}_err"]
            if self.student is not None:  # its calibrated width against its validation RMSE
                rmse = np.median([st["manifest"].metrics.get(f"rmse_{target}", np.nan)
                                  for st in self.students])
            elif len(self.members[target]) > 1:
                rmse = np.median([m["metrics"].get("rmse", np.nan)
                                  for m in self.manifests[target]])
                width = pred.get(f"{target}_spread", width)  # not the calibrated σ
            else:
                rmse = np.nan
            if np.isfinite(rmse):
                flags[np.any(width > 3 * rmse, axis=1)] |= int(
                    BoundaryFlag.LARGE_SPREAD)
        flags[pred["p_binary"] < 0.5] |= int(BoundaryFlag.LIKELY_SINGLE)
        return flags


_MODEL_SETS: dict = {}
_MODEL_SETS_LOCK = threading.Lock()


def forget_model_sets() -> None:
    """Drop this process's cached model sets (after their files changed on disk, e.g. a new
    ``calibration.json``): the next :func:`get_model_set` loads them again."""
    with _MODEL_SETS_LOCK:
        _MODEL_SETS.clear()


def get_model_set(config: InferenceConfig | None = None) -> ModelSet:
    """The :class:`ModelSet` that ``config`` names (model directory, device, precision, batch
    size, members), loaded once per process (per worker); the first call also tunes the process
    (torch threads, malloc: :func:`sb2dask.runtime.tune_process`)."""
    config = InferenceConfig() if config is None else config
    directory = resolve_model_dir(config.model_dir)
    device = str(resolve_device(config.device))  # one entry per real device: "auto" and "cpu"
    key = (str(directory.resolve()), device, config.precision, config.batch_size, config.members)
    with _MODEL_SETS_LOCK:
        if key not in _MODEL_SETS:
            tune_process()
            _MODEL_SETS[key] = ModelSet(directory, device, config.precision, config.batch_size,
                                        members=config.members)
        return _MODEL_SETS[key]


def predict_partition(df: pd.DataFrame, config: InferenceConfig | None = None) -> pd.DataFrame:
    """One output row per input spectrum: the pure core that ``map_partitions`` maps.

    With ``config.rest_frame`` on (``auto``: when the models were trained so, and for every
    spectrum whose ``frame`` is ``"barycentric"``, i.e. Gaia DR4 epoch spectra) each spectrum's
    bulk radial velocity is measured (:func:`sb2dask.observe.rv_bulk.estimate_rv`, reported as
    ``rv_bulk``) and removed before the networks see it; off, spectra are taken to be in their
    rest frame already.

    ``df`` has the reader schema (source_id, epoch_id, wave, flux, flux_error, file, row,
    read_flags, and the per-transit columns and ``frame``, which default to absent/unknown when
    missing); the result has the schema of ``catalogs/epoch_parameters.yaml``. ``config`` names
    the models and how they run (default: the shipped models, ``InferenceConfig()``).
    """
    config = InferenceConfig() if config is None else config
    out = empty_frame("epoch", len(df))
    if len(df) == 0:
        return out
    models = get_model_set(config)
    errors = list(df["flux_error"]) if "flux_error" in df else None
    waves, fluxes = list(df["wave"]), list(df["flux"])
    frames = df["frame"].to_numpy(object) if "frame" in df else \
        np.full(len(df), FRAME_UNKNOWN, dtype=object)
    pre, rv_bulk, ccf_peak = preprocess_in_frame(
        waves, fluxes, errors, models.wave, models.uses_rest_frame(config.rest_frame, frames),
        config.max_nan_fraction, carry_errors=config.fit)
    qflags = pre.quality_flags.copy()
    read_flags = df["read_flags"].to_numpy(np.int32) if "read_flags" in df else np.zeros(len(df),
                                                                                           np.int32)
    from .readers.base import INFORMATIONAL_FLAGS

    qflags[(read_flags & ~int(INFORMATIONAL_FLAGS)) != 0] |= int(QualityFlag.READ_PROBLEM)
    usable = pre.usable
    pred = {k: np.full((len(df), 2), np.nan) for k in ("teff", "logg", "feh", "vsini")}
    pred.update({f"{k}_err": np.full((len(df), 2), np.nan) for k in ("teff", "logg", "feh",
                                                                      "vsini")})
    pred.update(p_binary=np.full(len(df), np.nan), p_binary_err=np.full(len(df), np.nan),
                ood_distance=np.full(len(df), np.nan),
                light_fraction_faint=np.full(len(df), np.nan),
                light_fraction_faint_err=np.full(len(df), np.nan))
    boundary = np.zeros(len(df), dtype=np.int32)
    if usable.any():
        got = models.predict(pre.flux[usable], snr=pre.snr_estimate[usable])
        for k, v in got.items():
            if k in pred:  # not the spreads behind calibrated errors (flags use them below)
                pred[k][usable] = v
        boundary[usable] = models.boundary_flags(got, pre.snr_estimate[usable])
        no_lines = usable & ~(np.nan_to_num(ccf_peak) >= LINE_DETECTION_PEAK)
        boundary[no_lines] |= int(BoundaryFlag.NO_LINES)
    out["source_id"] = df["source_id"].to_numpy(np.int64)
    out["epoch_id"] = df["epoch_id"].to_numpy(np.int64)
    out["p_binary"] = pred["p_binary"].astype(np.float32)
    out["p_binary_err"] = pred["p_binary_err"].astype(np.float32)
    for k in ("teff", "logg", "feh", "vsini"):
        for c in (0, 1):
            out[f"{k}_{c + 1}"] = pred[k][:, c].astype(np.float32)
            out[f"{k}_{c + 1}_err"] = pred[f"{k}_err"][:, c].astype(np.float32)
    out["light_fraction_faint"] = pred["light_fraction_faint"].astype(np.float32)
    out["light_fraction_faint_err"] = pred["light_fraction_faint_err"].astype(np.float32)
    out["rv_bulk"] = rv_bulk.astype(np.float32)
    out["ccf_peak"] = ccf_peak.astype(np.float32)
    out["snr_estimate"] = pre.snr_estimate
    out["nan_fraction"] = pre.nan_fraction
    out["ood_distance"] = pred["ood_distance"].astype(np.float32)
    out["flag_boundary"] = boundary
    out["quality_flags"] = qflags
    out["read_flags"] = read_flags
    out["usable"] = usable
    out["file"] = df["file"].astype(str).to_numpy()
    out["row"] = df["row"].to_numpy(np.int64)
    for name, (dtype, missing) in TRANSIT_COLUMNS.items():
        out[name] = df[name].to_numpy(dtype) if name in df else np.full(len(df), missing, dtype)
    out["frame"] = frames.astype(str)
    if config.fit:  # the evidence fits see what the networks saw; their RVs go back to the input
        from ..evidence import fit_partition

        spectra = dict(wave=models.wave, flux=pre.flux, flux_error=pre.flux_error,
                       snr=pre.snr_estimate, rv_offset=rv_bulk)
        fit = fit_partition(out, spectra, config.fit_config())
        for k in fit.columns:
            out[k] = fit[k].to_numpy()
    out.index = df.index
    return out
