"""TensorBoard logging: what TensorBoardLog writes, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, digit_like
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from torch import nn

from mnistcli.config.schema import ModelConfig, load_config
from mnistcli.data.input_spec import InputSpec
from mnistcli.data.pipeline import network_input
from mnistcli.models.families import arch_of, build_model
from mnistcli.runs.tensorboard_log import TensorBoardLog
from mnistcli.utils.errors import ConfigError

MNIST = InputSpec("mnist", 1, (28, 28), True, (0.1307,), (0.3081,), "stretch", (1, 28, 28))
RGB = InputSpec("image_folder", 3, (16, 16), True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "stretch", (3, 16, 16))
ROW = {"train_loss": 0.52, "train_acc": 0.81, "val_loss": 0.43, "val_acc": 0.87, "lr_mean": 1e-3, "lr_max": 2e-3}
TAGS = {
    "train/loss": "train_loss",
    "train/acc": "train_acc",
    "val/loss": "val_loss",
    "val/acc": "val_acc",
    "lr/mean": "lr_mean",
    "lr/max": "lr_max",
    "time/epoch_seconds": "seconds",
}


def events(out: Path) -> EventAccumulator:
    """Everything the run's event files hold, nothing sampled away."""
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def tiny_cnn() -> nn.Module:
    return build_model(arch_of(ModelConfig(name="cnn", channels=[4], hidden=[8]), [1, 28, 28], 10))


def stored_batch(n: int) -> torch.Tensor:
    """n uint8 digit-like images (N, 1, 28, 28), as a loader stores them."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([digit_like(i % 10, rng) for i in range(n)])[:, None])


def test_steps_and_epochs_read_back(tmp_path: Path) -> None:
    tb = TensorBoardLog(tmp_path, step_every=3)
    for step in range(1, 11):
        tb.step(step, torch.tensor(10.0 / step), lr=0.01 * step)
    rows = [{**ROW, "epoch": e, "train_loss": ROW["train_loss"] / e, "seconds": 2.5 * e} for e in (1, 2)]
    for row in rows:
        tb.epoch(row)
    tb.close()
    acc = events(tmp_path)
    assert scalars(acc, "train/loss_step") == [(s, pytest.approx(10.0 / s)) for s in (1, 3, 6, 9)]
    assert scalars(acc, "lr/step") == [(s, pytest.approx(0.01 * s)) for s in (1, 3, 6, 9)]
    for tag, column in TAGS.items():
        assert scalars(acc, tag) == [(r["epoch"], pytest.approx(r[column])) for r in rows], tag


def test_input_grid_undoes_normalization(tmp_path: Path) -> None:
    stored = stored_batch(70)
    tb = TensorBoardLog(tmp_path)
    tb.inputs(network_input(stored, MNIST), MNIST, epoch=1)
    tb.close()
    (image,) = events(tmp_path).Images("inputs/train")
    grid = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    # 64 of the 70 in 8 rows of 8 tiles of 28 px, 2 px apart and around
    assert (image.step, image.width, image.height, grid.shape) == (1, 242, 242, (242, 242, 3))
    for k in (0, 9, 63):
        top, left = 2 + 30 * (k // 8), 2 + 30 * (k % 8)
        tile = grid[top : top + 28, left : left + 28, 0].astype(int)
        assert np.abs(tile - stored[k, 0].numpy().astype(int)).max() <= 1, k
    assert grid[:2].max() == 0 and grid[:, :2].max() == 0  # the padding between tiles is black


def test_input_grid_of_rgb_images(tmp_path: Path) -> None:
    stored = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8))
    tb = TensorBoardLog(tmp_path)
    tb.inputs(network_input(stored, RGB), RGB, epoch=4)
    tb.close()
    (image,) = events(tmp_path).Images("inputs/train")
    grid = np.asarray(Image.open(io.BytesIO(image.encoded_image_string))).astype(int)
    assert (image.step, image.width, image.height) == (4, 5 * 18 + 2, 20)  # one row of 5 tiles
    tile = grid[2:18, 20:36]  # the second image, each channel with its own mean and std undone
    assert np.abs(tile - stored[1].permute(1, 2, 0).numpy().astype(int)).max() <= 1


def test_graph_leaves_the_model_as_it_was(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_cnn().train()
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tb = TensorBoardLog(tmp_path)
    tb.graph(model, network_input(stored_batch(8), MNIST))
    tb.close()
    ops = {node.op for node in events(tmp_path).Graph().node}
    assert {"aten::_convolution", "aten::batch_norm", "aten::linear"} <= ops
    assert model.training and norm.training  # traced in eval mode: batch statistics were not updated
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert capfd.readouterr().out == ""


class Untraceable(nn.Module):
    """Returns a dict, which the tracer refuses."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x.flatten(1)}


def test_untraceable_graph_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tb = TensorBoardLog(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mnistcli.runs.tensorboard_log"):
        tb.graph(Untraceable(), torch.zeros(2, 1, 28, 28))
    tb.epoch({**ROW, "epoch": 1, "seconds": 1.0})  # the log goes on
    tb.close()
    (record,) = caplog.records
    line = record.getMessage()
    assert line.startswith("TensorBoard: no model graph, it does not trace (RuntimeError: Encountering a dict")
    assert "\n" not in line
    acc = events(tmp_path)
    assert not acc.Tags()["graph"] and scalars(acc, "val/acc") == [(1, pytest.approx(ROW["val_acc"]))]


def test_hparams_hold_config_and_final_metrics(tmp_path: Path) -> None:
    cfg = load_config({"data": {"name": "fake"}}, ["optimizer.lr=0.003", "model.channels=[8,16]"])
    tb = TensorBoardLog(tmp_path)
    tb.hparams(cfg.to_dict(), {"best_val_acc": 0.875, "best_val_loss": 0.41, "epochs": 3})
    tb.close()
    acc = events(tmp_path)
    content = acc.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hp = start.hparams
    assert hp["optimizer.lr"].number_value == pytest.approx(0.003)
    assert hp["data.name"].string_value == "fake"
    assert hp["model.channels"].string_value == "[8, 16]"
    assert hp["data.image_size"].string_value == "null"
    assert hp["train.tensorboard"].WhichOneof("kind") == "bool_value" and not hp["train.tensorboard"].bool_value
    assert hp["data.augment.rotation"].number_value == 0.0  # nested sections become dotted keys
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    assert metadata.EXPERIMENT_TAG not in content  # TensorBoard builds the table from all runs' sessions
    assert scalars(acc, "hparam/best_val_acc") == [(0, 0.875)]
    assert scalars(acc, "hparam/epochs") == [(0, 3.0)]


def test_without_tensorboard_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "sys.modules['tensorboard'] = None; sys.modules['torch.utils.tensorboard'] = None\n"
        "from mnistcli.utils.errors import UserError\n"
        "from mnistcli.runs.tensorboard_log import TensorBoardLog\n"
        "try:\n"
        f"    TensorBoardLog(Path({str(tmp_path)!r}))\n"
        "except UserError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "train.tensorboard: true needs tensorboard: pip install 'mnistcli[tensorboard]'\n"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_step_interval_is_checked() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({}, ["train.tensorboard_every=0"])
    assert str(err.value) == (
        "--set 'train.tensorboard_every=0': 'train.tensorboard_every' must be an integer >= 1 (optimizer steps), got 0"
    )


def test_a_training_run_writes_events_equal_to_its_metrics(tmp_path: Path) -> None:
    """train.tensorboard: true end to end: the per-epoch scalars read back equal metrics.csv; curves.png is kept."""
    from mnistcli.runs.folder import read_metrics
    from mnistcli.training.train import train

    cfg = {
        "data": {"name": "fake", "fake_size": 200, "val_split": 40, "batch_size": 16},
        "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
        "train": {"epochs": 3, "tensorboard": True, "tensorboard_every": 5},
    }
    train(cfg, out=tmp_path / "run", progress="off")
    rows = read_metrics(tmp_path / "run")
    acc = events(tmp_path / "run")
    for tag, column in (("val/acc", "val_acc"), ("train/loss", "train_loss"), ("lr/max", "lr_max")):
        got = scalars(acc, tag)
        assert [step for step, _ in got] == [1, 2, 3]
        assert [v for _, v in got] == pytest.approx([r[column] for r in rows], rel=1e-5)
    assert acc.Tags()["images"] and (tmp_path / "run" / "curves.png").stat().st_size > 10_000
