"""Inference configuration: which models, on what device and in what arithmetic, in what pieces.

A frozen dataclass that round-trips to YAML like :class:`~sb2dask.simulate.config.SimulationConfig`
and :class:`~sb2dask.train.config.TrainConfig`. It is what ``sb2dask infer`` builds from its
options and what :func:`~sb2dask.infer.run.run_inference`, the partition task, the model cache
(:func:`~sb2dask.infer.predict.get_model_set`) and :func:`~sb2dask.infer.predict.predict_partition`
take. This module imports neither torch nor Dask, so the command line can check its options
before loading either.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from ..config import ConfigMixin

__all__ = ["InferenceConfig", "PRECISIONS", "REST_FRAME_MODES"]

#: Arithmetic of the forward passes. ``fp32`` reproduces the evaluation in docs/models.md;
#: ``bf16`` (autocast: convolutions and matrix products in bfloat16, accumulation and the label
#: scaling in float32) runs the networks 1.5-1.7x faster end to end on CPUs with AVX512-BF16 or
#: AMX (docs/inference.md) and moves predictions by far less than their errors
#: (benchmarks/bench_infer.py).
PRECISIONS = ("fp32", "bf16")

#: Whether each spectrum's bulk radial velocity is measured and removed before the networks:
#: ``auto`` does what the models were trained for (their manifests' ``training.frame``), and
#: always removes it from spectra in the barycentric frame (Gaia DR4 epoch spectra, the readers'
#: ``frame`` column).
REST_FRAME_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class InferenceConfig(ConfigMixin):
    """How a catalogue is run through a model set.

    Attributes
    ----------
    model_dir : str or None
        Directory of model manifests (``teff-0.json`` + ``.safetensors`` ...) or the name of a
        shipped set (:data:`sb2dask.infer.predict.MODEL_PRESETS`): ``"students"``, three
        distilled students as one calibrated mixture, ``"fast"``, one student (a quarter faster
        end to end), ``"paper"``, the paper-recipe ensembles; ``None`` means the
        default, :data:`sb2dask.infer.predict.DEFAULT_PRESET` (``"students"``).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` (:func:`sb2dask.devices.
        resolve_device`).
    precision : str
        One of :data:`PRECISIONS`.
    batch_size : int or None
        Spectra per forward pass (default 256 on CPU, 2048 on GPU); does not change results.
    members : int or None
        Use at most this many ensemble members per network (the lowest-numbered); ``None``: all.
        At 1 the per-epoch ``_err`` columns are NaN (no spread to measure).
    partition_rows : int or None
        Spectra per Dask partition; ``None`` sizes them from the workers' memory limits
        (:func:`sb2dask.infer.run.auto_partition_rows`).
    max_nan_fraction : float
        A spectrum with more than this fraction of its model-grid pixels missing is unusable
        (``QualityFlag.TOO_MANY_NAN``).
    rest_frame : str
        One of :data:`REST_FRAME_MODES`. ``on`` measures each spectrum's bulk radial velocity
        (:func:`sb2dask.observe.rv_bulk.estimate_rv`, the ``rv_bulk`` column) and resamples the
        spectrum into that frame; ``off`` takes spectra as in their rest frame; ``auto`` follows
        the models (on for models trained in that frame, off for the paper's, trained at rest)
        and is on for every spectrum whose ``frame`` is ``"barycentric"`` (Gaia DR4 epoch
        spectra, which carry the star's full radial velocity;
        :meth:`~sb2dask.infer.predict.ModelSet.uses_rest_frame`).
    fit : bool
        Also fit every usable spectrum with the single- and two-star forward models
        (:func:`sb2dask.evidence.fit_partition`: component RVs, ΔBIC, ``sb2_class``); slow
        (docs/evidence.md).
    fit_threshold : float
        With ``fit``, fit only spectra with ``p_binary`` at or above this value (0: all).
    fit_fast : bool
        With ``fit``, the faster setting of the fits (:meth:`sb2dask.evidence.FitConfig.fast`).
    """

    model_dir: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None
    members: int | None = None
    partition_rows: int | None = None
    max_nan_fraction: float = 0.2
    rest_frame: str = "auto"
    fit: bool = False
    fit_threshold: float = 0.0
    fit_fast: bool = False

    def fit_config(self):
        """The :class:`~sb2dask.evidence.FitConfig` the evidence fits of this run use."""
        from ..evidence import FitConfig

        make = FitConfig.fast if self.fit_fast else FitConfig
        return make(p_threshold=self.fit_threshold)

    def __post_init__(self):
        if self.model_dir is not None:
            # a Path in, a str stored: the config stays YAML-able and hashable
            object.__setattr__(self, "model_dir", str(Path(self.model_dir)))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "members", "partition_rows"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.rest_frame not in REST_FRAME_MODES:
            raise ValueError(f"rest_frame must be one of {REST_FRAME_MODES}, got "
                             f"{self.rest_frame!r}")
        if not 0.0 <= self.fit_threshold <= 1.0:
            raise ValueError(f"fit_threshold must lie in [0, 1], got {self.fit_threshold}")
        if not 0.0 <= self.max_nan_fraction <= 1.0:
            raise ValueError(f"max_nan_fraction must lie in [0, 1], got {self.max_nan_fraction}")
