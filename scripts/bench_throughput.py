"""Training throughput: a tutorial loop against mnistcli's data path and training step, on the same network."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from itertools import islice
from pathlib import Path

import torch

from mnistcli.config.schema import OptimizerConfig, load_config
from mnistcli.data.input_spec import input_spec
from mnistcli.data.loaders import make_batches, open_splits
from mnistcli.engine import StepSetup, train_one_epoch
from mnistcli.models.families import arch_of, build_model
from mnistcli.optim import build_optimizer
from mnistcli.utils.runtime import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]

# The pytorch/examples MNIST network, as a `cnn` config: conv 32, conv 64 (3x3 valid), max-pool, dropout,
# dense 128, dropout, out.
EXAMPLES_NET = {
    "name": "cnn",
    "channels": [32, 64],
    "padding": 0,
    "pool_every": 2,
    "batch_norm": False,
    "conv_dropout": 0.25,
    "hidden": [128],
    "dropout": 0.5,
}


class TutorialNet(torch.nn.Module):
    """A CNN as tutorials write it: conv -> (batch norm) -> ReLU -> (max-pool), then dense layers."""

    def __init__(
        self,
        channels: list[int],
        padding: int,
        pool_every: int,
        batch_norm: bool,
        hidden: int,
        conv_dropout: float,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        in_ch, side = 1, 28
        for i, out_ch in enumerate(channels, start=1):
            layers += [torch.nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=not batch_norm)]
            layers += [torch.nn.BatchNorm2d(out_ch)] if batch_norm else []
            layers += [torch.nn.ReLU()]
            side = side - 2 + 2 * padding
            if i % pool_every == 0:
                layers += [torch.nn.MaxPool2d(2), torch.nn.Dropout(conv_dropout)]
                side //= 2
            in_ch = out_ch
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(in_ch * side * side, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for (N, 1, 28, 28) images."""
        return self.classifier(self.features(x))


def tutorial_loader(batch: int) -> torch.utils.data.DataLoader:
    """The tutorial data path: torchvision MNIST + ToTensor + Normalize through a per-sample DataLoader."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(REPO / "data"), train=True, transform=tf, download=False)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)


WARMUP = 10  # untimed steps first: allocator and oneDNN kernel set-up are not throughput


def tutorial_steps(model: torch.nn.Module, loader: torch.utils.data.DataLoader, steps: int) -> float:
    """Images per second of a plain loop: tensors as the DataLoader gives them, default memory format."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(islice(loader, WARMUP + steps)):
        if i == WARMUP:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y) if i >= WARMUP else 0
    return seen / (time.perf_counter() - start)


def tutorial_process(hand_kwargs: dict, batch: int, steps: int) -> float:
    """Run in a fresh interpreter, as a user's tutorial script runs: the hand-written net on its DataLoader."""
    torch.manual_seed(0)
    return tutorial_steps(TutorialNet(**hand_kwargs), tutorial_loader(batch), steps)


def engine_steps(model: torch.nn.Module, batches: object, steps: int) -> float:
    """Images per second of mnistcli's data path and training step on the same network."""
    optimizer = build_optimizer([{"params": list(model.parameters())}], OptimizerConfig(name="adam", lr=1e-3))
    setup = StepSetup(torch.nn.CrossEntropyLoss(), optimizer)
    train_one_epoch(model, islice(iter(batches), WARMUP), setup, torch.device("cpu"), 1)
    start = time.perf_counter()
    res = train_one_epoch(model, islice(iter(batches), steps), setup, torch.device("cpu"), 1)
    return res["n"] / (time.perf_counter() - start)


def throughput(repeats: int, steps: int, batch: int) -> list[dict]:
    """Tutorial loop vs engine, same network and batch size, alternated in this process."""
    keep_freed_memory()  # as `mnistcli train` does
    rows = []
    default = load_config(REPO / "configs" / "mnist_cnn.yaml").model
    nets = (
        ("pytorch/examples Net", EXAMPLES_NET, dict(channels=[32, 64], padding=0, pool_every=2, batch_norm=False)),
        (
            "cnn default (mnist_cnn.yaml)",
            load_config(REPO / "configs" / "mnist_cnn.yaml").to_dict()["model"],
            dict(channels=default.channels, padding=1, pool_every=1, batch_norm=True),
        ),
    )
    for label, model_cfg, layout in nets:
        cfg = load_config(
            {"data": {"name": "mnist", "root": str(REPO / "data"), "batch_size": batch}, "model": model_cfg}
        )
        spec = input_spec(cfg)
        splits, _ = open_splits(cfg, spec, ["train"])
        batches = make_batches(splits["train"], cfg, spec, torch.device("cpu"), train=True, channels_last=True)
        arch = arch_of(cfg.model, [1, 28, 28], 10)
        m = cfg.model
        hand_kwargs = dict(**layout, hidden=m.hidden[0], conv_dropout=m.conv_dropout, dropout=m.dropout)
        count = lambda net: sum(p.numel() for p in net.parameters())
        assert count(TutorialNet(**hand_kwargs)) == count(build_model(arch)), "both sides must train one network"
        tut, eng = [], []
        for _ in range(repeats):
            # A fresh process per tutorial measurement: nothing mnistcli sets up in this one may help it.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                tut.append(pool.apply(tutorial_process, (hand_kwargs, batch, steps)))
            torch.manual_seed(0)
            eng.append(engine_steps(build_model(arch).to(memory_format=torch.channels_last), batches, steps))
        t, e = statistics.median(tut), statistics.median(eng)
        rows.append(
            {
                "network": label,
                "batch": batch,
                "tutorial img/s": round(t),
                "mnistcli img/s": round(e),
                "ratio": round(e / t, 2),
            }
        )
        print(rows[-1], flush=True)
    return rows
