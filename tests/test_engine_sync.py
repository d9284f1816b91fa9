"""Training steps that never wait on the device (CUDA's path under on_nan stop, run here on the CPU): a non-finite
loss is found later yet reported with its exact epoch and batch. on_nan skip reads each loss on the host, even
where steps would be deferred, and skips exactly the batches whose loss is not finite."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from conftest import digit_like

from mnistcli.config.schema import OptimizerConfig
from mnistcli.engine import SEND_EVERY, StepSetup, train_one_epoch
from mnistcli.optim import build_optimizer
from mnistcli.utils.errors import UserError
from mnistcli.utils.progress import Display

CPU = torch.device("cpu")
STEPS = 40  # batches per epoch: more than two windows of SEND_EVERY


def batches(bad: set[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS batches of 8 normalized digit-like images; the batches numbered in `bad` (from 1) hold an inf pixel."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(1, STEPS + 1):
        y = torch.as_tensor(rng.integers(0, 10, 8))
        x = torch.as_tensor(np.stack([digit_like(int(k), rng) for k in y]), dtype=torch.float32)[:, None] / 255
        if i in bad:
            x[0, 0, 5, 5] = math.inf
        out.append((x, y))
    return out


def run(defer: bool, on_nan: str, bad: dict[int, set[int]], optimizer: str = "adam", **kw) -> tuple:
    """Train two epochs of a small network; returns (setup, model, results, steps that trained or the error)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)
    )
    opt_cfg = OptimizerConfig(name=optimizer, lr=1e-3, momentum=0.9)
    setup = StepSetup(
        torch.nn.CrossEntropyLoss(), build_optimizer([{"params": list(model.parameters())}], opt_cfg), on_nan=on_nan
    )
    setup.defer, setup.grad_clip = defer, kw.pop("grad_clip", None)
    trained: list[tuple[int, int]] = []
    results = []
    on_step = lambda epoch, step, x, loss, lr: trained.append((epoch, step))
    try:
        for epoch in (1, 2):
            results.append(
                train_one_epoch(model, batches(bad.get(epoch, set()), epoch), setup, CPU, epoch, **kw, on_step=on_step)
            )
    except UserError as exc:
        return setup, model, results, trained, str(exc)
    return setup, model, results, trained, None


def test_stop_names_the_first_nonfinite_batch_exactly_as_the_synchronous_path() -> None:
    *_, trained, error = run(True, "stop", {2: {21, 30}})
    *_, sync_error = run(False, "stop", {2: {21, 30}})
    assert (
        error
        == sync_error
        == (
            "non-finite loss (nan) at epoch 2, batch 21: training stopped, the last good checkpoint is kept; "
            "lower optimizer.lr, set train.grad_clip, or set train.on_nan: skip"
        )
    )
    # found as the host reads that window of losses (at its last step, before the step is reported), long before
    # the epoch ends
    assert trained[-1] == (2, math.ceil(21 / SEND_EVERY) * SEND_EVERY - 1)


def test_stop_is_acted_on_at_the_next_progress_line() -> None:
    *_, trained, error = run(True, "stop", {1: {21}}, progress=Display("lines", every=1e-9))
    assert error is not None and "at epoch 1, batch 21:" in error
    assert trained[-1] == (1, 24)  # lines every 10% of the 40 batches: 4, 8, ..., 24


def test_stop_signal_after_a_nonfinite_batch_raises_instead_of_returning() -> None:
    """A stop request returns a resumable partial epoch; after a non-finite loss it must not (nothing is saved)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = build_optimizer([{"params": list(model.parameters())}], OptimizerConfig(name="sgd", lr=0.1))
    setup = StepSetup(torch.nn.CrossEntropyLoss(), opt, defer=True)
    on_step = lambda epoch, step, x, loss, lr: setup.stop.ask(signal.SIGINT) if step == 3 else None
    with pytest.raises(UserError, match=r"^non-finite loss \(nan\) at epoch 1, batch 3: "):
        train_one_epoch(model, batches({3}), setup, CPU, 1, on_step=on_step)


@pytest.mark.parametrize(("optimizer", "grad_clip"), [("adam", None), ("sgd", 1.0), ("rmsprop", None)])
def test_skip_reads_every_loss_and_leaves_the_synchronous_state(optimizer: str, grad_clip: float | None) -> None:
    bad = {1: {1, 21, 22}, 2: {40}}  # the very first step too: before it the optimizer holds no state
    setup, model, results, trained, error = run(True, "skip", bad, optimizer, grad_clip=grad_clip)
    sync_setup, sync_model, sync_results, sync_trained, _ = run(False, "skip", bad, optimizer, grad_clip=grad_clip)
    assert error is None
    assert setup.skipped == sync_setup.skipped == ["1/1", "1/21", "1/22", "2/40"]
    assert [r["n"] for r in results] == [(STEPS - 3) * 8, (STEPS - 1) * 8]
    assert results == sync_results  # losses, accuracies, counts and resume sums, to the bit
    for name, value in model.state_dict().items():
        assert torch.equal(value, sync_model.state_dict()[name]), name
    state, sync_state = setup.optimizer.state_dict()["state"], sync_setup.optimizer.state_dict()["state"]
    assert state.keys() == sync_state.keys()
    for key in state:
        for name, value in state[key].items():
            assert torch.equal(value, sync_state[key][name]), (key, name)
    # skip never defers: only the steps that trained are reported, on both
    assert trained == sync_trained and len(trained) == 2 * STEPS - 4
