"""mnistcli: config-driven training, evaluation and prediction for image classifiers.

The package imports no torch until a function below is called, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def train(config: Any, overrides: list[str] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Train from a YAML path or a dict, with optional `a.b=value` overrides; returns the run's metrics."""
    from .training import train as _train

    return _train(config, overrides, out)


def load_model(ckpt_path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint alone, in eval mode; info holds classes, input spec, metrics."""
    from .checkpoint import load_model as _load_model

    return _load_model(ckpt_path, device)


__all__ = ["__version__", "load_model", "train"]
