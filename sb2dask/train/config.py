"""Training configuration: a frozen dataclass that round-trips to YAML."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigMixin
from ..labels import DETECTOR_TARGETS, PARAMETERS, TABLE1_RANGES, TARGETS

__all__ = ["PARAMETER_TARGETS", "TrainConfig"]

#: The labels of the parameter models (Table 3), which are fed the predicted temperatures.
PARAMETER_TARGETS = tuple(p for p in PARAMETERS if p != "teff")


@dataclass(frozen=True, slots=True)
class TrainConfig(ConfigMixin):
    """How one network is trained (Binnenfeld et al. 2025, Sect. 3: MSE, Adam).

    Attributes
    ----------
    target : str
        One of :data:`sb2dask.labels.TARGETS`. ``teff`` trains the temperature model (Table 2);
        :data:`PARAMETER_TARGETS` (``logg``, ``feh``, ``vsini``) train parameter models
        (Table 3) fed the temperatures predicted by ``temperature_model``; ``p_binary`` trains
        the SB2 detector.
    epochs, batch_size, learning_rate : training budget and Adam step size.
    max_train : int or None
        Use only the first ``max_train`` training spectra (budget control).
    lr_schedule : str
        ``"plateau"`` (halve on a validation plateau of ``lr_patience`` epochs), ``"cosine"``
        (per-batch warm-up and cosine decay over the whole budget, for short budgets) or
        ``"none"``.
    early_stopping : int or None
        Stop after this many (>= 1) epochs without validation improvement; None: never.
    member : int
        Ensemble member; it changes the seed and which validation fold is held out
        (``validation_folds`` > 1 rotates part of the validation split into training).
    temperature_model : str or None
        Manifest path of the trained temperature model, for parameter models.
    label_range : tuple of float or None
        Target range scaled to [0, 1] (default: the target's range in Table 1,
        :data:`sb2dask.labels.TABLE1_RANGES`).
    temperature_range : tuple of float
        Range (K) with which the predicted temperatures fed to parameter models are scaled.
    layout : str
        ``"2d"`` (Conv2d 1×k, channels-last: fastest on CPU) or ``"1d"``; same function.
    threads : int or None
        ``torch.set_num_threads`` for CPU training (None: leave as is).
    mix : tuple of float or None
        With several training stores (synthetic and semi-empirical, say), the fraction of the
        training and validation rows drawn from each, in the stores' order (normalised; the
        total is ``max_train`` / ``max_validation`` or all rows). None: every store's rows, in
        proportion to its size. Recorded in the model manifests (``training["mix"]``).
    detector_target : str
        What the detector (``target="p_binary"``) learns to recognise, one of
        :data:`sb2dask.labels.DETECTOR_TARGETS`: ``"is_binary"`` (the paper's: every simulated
        binary) or ``"double_lined"`` (binaries whose two stars the spectrum shows:
        :func:`sb2dask.labels.double_lined`; single-lined binaries and unresolved pairs are
        negatives). Ignored by the other targets.
    """

    target: str = "teff"
    epochs: int = 75
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_train: int | None = None
    max_validation: int | None = None
    lr_schedule: str = "plateau"
    lr_patience: int = 3
    early_stopping: int | None = 10
    member: int = 0
    seed: int = 0
    validation_folds: int = 1
    temperature_model: str | None = None
    label_range: tuple[float, float] | None = None
    temperature_range: tuple[float, float] = TABLE1_RANGES["teff"]
    layout: str = "2d"
    device: str = "auto"
    threads: int | None = None
    mix: tuple[float, ...] | None = None
    detector_target: str = "is_binary"

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.detector_target not in DETECTOR_TARGETS:
            raise ValueError(f"detector_target must be one of {DETECTOR_TARGETS}, got "
                             f"{self.detector_target!r}")
        if self.target != "p_binary":  # (a base config's setting must not change the others)
            object.__setattr__(self, "detector_target", "is_binary")
        if self.lr_schedule not in ("plateau", "cosine", "none"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(f"early_stopping must be None or at least 1 epoch, got "
                             f"{self.early_stopping!r}")
        if self.mix is not None:
            mix = tuple(float(m) for m in self.mix)
            if not mix or min(mix) < 0 or sum(mix) <= 0:
                raise ValueError(f"mix must be non-negative fractions, one per store, not all "
                                 f"zero; got {self.mix!r}")
            object.__setattr__(self, "mix", mix)
        for name in ("label_range", "temperature_range"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (float(v[0]), float(v[1])))

    @property
    def scaling_range(self) -> tuple[float, float] | None:
        if self.target == "p_binary":
            return None
        return self.label_range or TABLE1_RANGES[self.target]

    @property
    def name(self) -> str:
        return f"{self.target}-{self.member}"
