"""TensorBoard logging of a run (`train.tensorboard: true`): event files in <run folder>/tensorboard/.

`tensorboard --logdir checkpoints` then shows every run, and its HPARAMS view compares them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid

from ..data.input_spec import InputSpec
from ..utils.extras import require

log = logging.getLogger(__name__)

FOLDER = "tensorboard"  # inside the run folder
MAX_IMAGES = 64  # inputs per grid: an 8 x 8 grid
GRID_COLUMNS = 8
REASON_CHARS = 200  # of a tracing error in the warning line: the tracer's own messages run long
# metrics.csv column -> TensorBoard tag, each plotted at step = epoch
EPOCH_TAGS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "lr_mean": "lr/mean",
    "lr_max": "lr/max",
    "seconds": "time/epoch_seconds",
}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config dict -> dotted keys with values the HPARAMS view shows (None as 'null', lists as text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is None:
            flat[f"{prefix}{key}"] = "null"  # as config.yaml writes it; TensorBoard would drop the key
        elif isinstance(value, bool | int | float | str):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class TensorBoardLog:
    """One run's TensorBoard event files: per-step loss and lr, per-epoch metrics, inputs, graph, hparams."""

    def __init__(self, out: Path, step_every: int = 50) -> None:
        """Open a writer into out/tensorboard/; without the tensorboard package, one line naming the extra."""
        require("tensorboard", "tensorboard", what="train.tensorboard: true")
        from torch.utils.tensorboard import SummaryWriter  # only importable with tensorboard installed

        self.dir = Path(out) / FOLDER
        self.step_every = step_every
        self.started = time.time()  # s since the epoch: the session start the HPARAMS view shows
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def step(self, global_step: int, loss: torch.Tensor, lr: float) -> None:
        """At step 1 and every step_every optimizer steps, the step's loss and lr (no device sync otherwise)."""
        if global_step != 1 and global_step % self.step_every:
            return
        self.writer.add_scalar("train/loss_step", loss.item(), global_step)
        self.writer.add_scalar("lr/step", lr, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """An epoch's metrics.csv row as scalars at step = epoch, written to disk at once."""
        for key, tag in EPOCH_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), row["epoch"])
        self.writer.flush()

    def inputs(self, x: torch.Tensor, spec: InputSpec, epoch: int) -> None:
        """A grid of up to MAX_IMAGES network inputs (after augmentation), normalization undone to [0, 1]."""
        images = x[:MAX_IMAGES].detach().float().cpu()
        if spec.normalize:  # pipeline.normalized computes (x - mean) / std per channel
            mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
            std = torch.tensor(spec.std).view(1, -1, 1, 1)
            images = images * std + mean
        grid = make_grid(images.clamp(0, 1), nrow=GRID_COLUMNS, padding=2)
        self.writer.add_image("inputs/train", grid, epoch)

    def graph(self, model: nn.Module, x: torch.Tensor) -> None:
        """The model's graph, traced on one input; a model that does not trace is a warning, never an error."""
        # the tracer reports through print and TracerWarnings: the reason goes to the warning line instead
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                self.writer.add_graph(model, x[:1])
            except Exception as exc:  # any tracing failure costs only the graph, never the run
                reason = (str(exc).strip().splitlines() or [""])[0][:REASON_CHARS]
                log.warning("TensorBoard: no model graph, it does not trace (%s: %s)", type(exc).__name__, reason)

    def hparams(self, cfg_dict: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The run's config (dotted keys) with its final metrics (as hparam/<name> scalars) for the HPARAMS view."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

        # a session per run and no experiment summary: TensorBoard then builds the HPARAMS table from every run's
        # session, so runs with different keys (a cnn, a resnet) share one table; an experiment summary would fix
        # the columns to those of whichever run it finds first
        self.writer.file_writer.add_summary(summary_v2.hparams_pb(flatten(cfg_dict), start_time_secs=self.started))
        for key, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(f"hparam/{key}", float(value))
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
        ended = Summary()
        ended.value.add(
            tag=metadata.SESSION_END_INFO_TAG,
            metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end)),
            tensor=metadata.NULL_TENSOR,
        )
        self.writer.file_writer.add_summary(ended)
        self.writer.flush()

    def close(self) -> None:
        """Write what is pending and close the event file."""
        self.writer.close()
