"""Saving and loading networks without pickle: safetensors weights plus a JSON manifest.

A model ``NAME`` is two files: ``NAME.safetensors`` (canonical Conv1d-shaped weights) and
``NAME.json`` (the manifest: architecture, label scaling, input grid, library and training-set
hashes, training budget, metrics, and the SHA-256 of the weights file). Loading verifies the
checksum and rebuilds the architecture from the manifest; a mismatch in either is an error, never
a silently wrong model. No code is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path, atomic_write_json, file_sha256
from ..provenance import package_versions
from .densenet import ParameterNet, TemperatureNet
from .detector import BinaryDetector
from .layers import canonical_state_dict, load_canonical_state_dict
from .student import StudentNet

__all__ = ["ARCHITECTURES", "LabelScaling", "ModelManifest", "ModelFileError", "save_model",
           "load_model", "file_sha256"]

ARCHITECTURES = {"TemperatureNet": TemperatureNet, "ParameterNet": ParameterNet,
                 "BinaryDetector": BinaryDetector, "StudentNet": StudentNet}


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or does not match its manifest."""


@dataclass(frozen=True, slots=True)
class LabelScaling:
    """Linear map of a label from ``[low, high]`` (physical units) to ``[0, 1]``."""

    low: float
    high: float
    unit: str = ""

    def scale(self, x):
        return (x - self.low) / (self.high - self.low)

    def unscale(self, y):
        return self.low + y * (self.high - self.low)


@dataclass(frozen=True)
class ModelManifest:
    """Everything needed to use (and trust) a trained network.

    Attributes
    ----------
    name : str
        File stem, e.g. ``teff-0`` (ensemble member 0 of the temperature model).
    target : str
        ``teff``, ``logg``, ``feh``, ``vsini``, ``p_binary``, or ``student`` (the one-pass
        student, :class:`~sb2dask.models.student.StudentNet`, which predicts them all).
    architecture : str
        Key of :data:`ARCHITECTURES`; ``architecture_kwargs`` are passed to it (never the layout).
    scaling : LabelScaling or None
        Output scaling (None for the detector, whose output is a logit).
    temperature_scaling : LabelScaling or None
        Scaling of the temperature inputs of a parameter model.
    wave : list of float
        The input pixel grid [Å, air] the model was trained on.
    """

    name: str
    target: str
    architecture: str
    wave: tuple[float, ...]
    scaling: LabelScaling | None = None
    temperature_scaling: LabelScaling | None = None
    architecture_kwargs: dict = field(default_factory=dict)
    member: int = 0
    seed: int = 0
    library: dict = field(default_factory=dict)
    training_set: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    weights_sha256: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["wave"] = [float(w) for w in self.wave]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelManifest:
        d = dict(d)
        for key in ("scaling", "temperature_scaling"):
            if d.get(key) is not None:
                d[key] = LabelScaling(**d[key])
        d["wave"] = tuple(d["wave"])
        return cls(**d)





def detector_target(training: dict) -> str:
    """What a detector was trained to recognise (:data:`sb2dask.labels.DETECTOR_TARGETS`), from
    its manifest's ``training`` record (a detector's training configuration, or a distilled
    student's own entry): ``is_binary`` for models trained before the setting existed."""
    return training.get("detector_target") or (training.get("config") or {}).get(
        "detector_target", "is_binary")


def save_model(directory: str | Path, model: torch.nn.Module, manifest: ModelManifest) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically; returns the manifest path."""
    from dataclasses import replace

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{manifest.name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(canonical_state_dict(model), str(tmp))
    manifest = replace(manifest, weights_sha256=file_sha256(weights),
                       versions=manifest.versions or package_versions("torch", "safetensors"))
    path = directory / f"{manifest.name}.json"
    atomic_write_json(path, manifest.to_dict())
    return path


def load_model(manifest_path: str | Path, layout: str = "1d",
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelManifest]:
    """Rebuild a network from its manifest and verified weights, in eval mode.

    Raises
    ------
    ModelFileError
        Missing files, a checksum mismatch, an unknown architecture, or weights whose names or
        shapes do not fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest_path = Path(manifest_path)
    try:
        manifest = ModelManifest.from_dict(json.loads(manifest_path.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{manifest_path}: unreadable model manifest ({exc})") from exc
    weights = manifest_path.with_name(f"{manifest.name}.safetensors")
    if not weights.exists():
        raise ModelFileError(f"{weights}: weights file missing for manifest {manifest_path}")
    digest = file_sha256(weights)
    if digest != manifest.weights_sha256:
        raise ModelFileError(f"{weights}: SHA-256 {digest[:12]}… does not match the manifest's "
                             f"{manifest.weights_sha256[:12]}…; refusing to load")
    cls = ARCHITECTURES.get(manifest.architecture)
    if cls is None:
        raise ModelFileError(f"{manifest_path}: unknown architecture {manifest.architecture!r}")
    model = cls(layout=layout, **manifest.architecture_kwargs)
    try:
        load_canonical_state_dict(model, load_file(str(weights)))
    except (RuntimeError, SafetensorError) as exc:
        raise ModelFileError(f"{weights}: weights do not fit {manifest.architecture} "
                             f"({str(exc).splitlines()[0]})") from exc
    # the detector's output is a logit; the student carries its own scalings (models.student)
    if manifest.scaling is None and manifest.target not in ("p_binary", "student"):
        raise ModelFileError(f"{manifest_path}: a {manifest.target} model needs label scaling")
    if len(manifest.wave) < 2 or not np.all(np.diff(manifest.wave) > 0):
        raise ModelFileError(f"{manifest_path}: input wavelength grid missing or unsorted")
    return model.to(device).eval(), manifest


def feature_statistics(features: np.ndarray, quantile: float = 0.995,
                       ridge: float = 1e-3) -> dict[str, np.ndarray]:
    """Gaussian model of a network's trunk features on its training set, for the
    out-of-distribution distance: mean, regularised precision matrix, and the ``quantile`` of the
    training spectra's own Mahalanobis distances (the threshold)."""
    f = np.asarray(features, dtype=np.float64)
    mean = f.mean(axis=0)
    cov = np.cov(f, rowvar=False)
    cov += ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    d = mahalanobis(f, mean, precision)
    return dict(mean=mean, precision=precision,
                threshold=np.array([np.quantile(d, quantile)]), n=np.array([len(f)]))


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of rows of ``features`` from ``mean``."""
    x = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, precision, x), 0.0))


def save_feature_statistics(manifest_path: str | Path, stats: dict) -> Path:
    """Write ``NAME.features.safetensors`` beside a model and record it (with its SHA-256) in the
    manifest's ``training["feature_statistics"]``."""
    from safetensors.numpy import save_file

    manifest_path = Path(manifest_path)
    man = json.loads(manifest_path.read_text())
    path = manifest_path.with_name(f"{man['name']}.features.safetensors")
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in stats.items()}, str(tmp))
    man["training"]["feature_statistics"] = dict(file=path.name, sha256=file_sha256(path),
                                                 threshold=float(stats["threshold"][0]),
                                                 n=int(stats["n"][0]))
    atomic_write_json(manifest_path, man)
    return path


def load_feature_statistics(manifest: ModelManifest, directory: str | Path) -> dict | None:
    """The feature statistics recorded in ``manifest`` (verified), or None if it has none."""
    from safetensors.numpy import load_file

    rec = manifest.training.get("feature_statistics")
    if not rec:
        return None
    path = Path(directory) / rec["file"]
    if not path.exists() or file_sha256(path) != rec["sha256"]:
        raise ModelFileError(f"{path}: feature statistics missing or not matching the manifest")
    return load_file(str(path))
