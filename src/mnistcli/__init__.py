"""mnistcli: config-driven training, evaluation and prediction for image classifiers.

The package imports no torch until a function below is called, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .version import __version__


@contextlib.contextmanager
def _api() -> Iterator[None]:
    """Around every call of the API: errors name its parameters, and a torch or torchvision that cannot be imported
    is the CLI's one line as a UserError rather than the import's own exception."""
    from .utils.errors import UserError, python_api
    from .utils.extras import broken_install

    with python_api():
        try:
            yield
        except UserError:
            raise
        except Exception as exc:
            line = broken_install(exc)
            if line is None:
                raise
            raise UserError(line) from None


def train(
    config: Any,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool | str | None = "auto",
    log_every: float | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train from a YAML path or a dict, with optional `a.b=value` overrides; returns the run's metrics.

    The same choices as `mnistcli train`: out (--out), resume (--resume: a checkpoint, or 'last'), overwrite
    (--overwrite: replace an earlier run's files in its folder, so a notebook cell can run again), quiet (--quiet).
    progress: 'auto' (bars in a terminal or notebook, plain lines otherwise), 'bar', 'lines' or 'off' (also
    True/False); log_every: the least seconds between two progress lines (default 30). Errors are UserError, one
    line naming these parameters."""
    with _api():
        from .training.train import train as _train

        return _train(
            config, overrides, out, quiet, resume=resume, progress=progress, log_every=log_every, overwrite=overwrite
        )


def load_model(ckpt_path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint alone, in eval mode; info holds classes, input spec, metrics."""
    with _api():
        from .runs.checkpoint import load_model as _load_model

        return _load_model(ckpt_path, device)


def evaluate(
    ckpt: str | Path, split: str = "test", data_root: str | Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy of a checkpoint on a split: the object `mnistcli eval --json` prints."""
    with _api():
        from .evaluation.scores import evaluate_checkpoint

        return evaluate_checkpoint(ckpt, split, data_root, device)


def predict(
    images: str | Path | list[str | Path],
    ckpt: str | Path | None = None,
    topk: int = 3,
    preprocess: str = "auto",
    device: str = "cpu",
    model: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One dict per image (files, folders, patterns), as `mnistcli predict --json` prints; failures hold `error`.
    From a checkpoint (`ckpt`) or a file `export` wrote (`model`): give one."""
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    with _api():
        from .deploy.predict import predict_images

        return predict_images(paths, ckpt, topk, preprocess, None, device, model_path=model)


def export(
    ckpt: str | Path, fmt: str = "onnx", out: str | Path | None = None, input_kind: str = "uint8"
) -> dict[str, Any]:
    """Write a TorchScript or ONNX file (`fmt`) that takes raw images and returns probabilities, checked against
    the checkpoint with the real runtime before it is kept; returns the file, its metadata and the check."""
    with _api():
        from .deploy.export import export_checkpoint

        return export_checkpoint(ckpt, fmt, out, input_kind)


__all__ = ["__version__", "evaluate", "export", "load_model", "predict", "train"]
