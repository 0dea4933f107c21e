"""The shared behaviour of the configuration dataclasses: replace, dict and YAML round trips."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path

__all__ = ["ConfigMixin"]


class ConfigMixin:
    """Mixed into frozen dataclasses (``SimulationConfig``, ``TrainConfig``): tuples become lists
    in dicts/YAML and come back as tuples; unknown keys are an error, never silently ignored."""

    __slots__ = ()

    def replace(self, **changes):
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path):
        """From a ``.yaml``/``.yml`` file, or from YAML text."""
        import yaml

        p = Path(path_or_text)
        text = p.read_text() if p.suffix in (".yaml", ".yml") and p.exists() else str(path_or_text)
        return cls.from_dict(yaml.safe_load(text) or {})
