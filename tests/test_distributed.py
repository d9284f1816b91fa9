"""Training in several processes through torchrun (DDP over gloo on the CPU): real launches, real signals."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnistcli import evaluate
from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.runs.folder import read_metrics
from mnistcli.training.train import train
from mnistcli.utils.distributed import World, check_batch
from mnistcli.utils.errors import UserError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 211 training images in global batches of 16: the last batch of 3 splits 2 + 1 across two ranks
SAME = {
    "seed": 3,
    "data": {"name": "fake", "fake_size": 250, "val_split": 39, "batch_size": 16},
    "model": {"name": "cnn", "channels": [4, 8], "hidden": [16], "batch_norm": False, "dropout": 0.0},
    "optimizer": {"name": "adam", "lr": 0.002},
    "train": {"epochs": 2},
}
SAME["data"]["augment"] = {"rotation": 10, "translate": 0.1}  # drawn for the global batch: the same on N ranks
# dropout: each rank draws its own masks, so its RNG state must come back on resume
DROPOUT = {**SAME, "data": {**SAME["data"], "fake_size": 500}, "train": {"epochs": 3}}
DROPOUT["model"] = {**SAME["model"], "dropout": 0.3}
LONG = {**SAME, "data": {**SAME["data"], "fake_size": 3000}, "train": {"epochs": 20}}


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def nproc2(*args: str) -> list[str]:
    """`mnistcli train ARGS --nproc 2`: torchrun's agent inside mnistcli's own process."""
    return [sys.executable, "-m", "mnistcli", "train", *args, "--nproc", "2"]


def torchrun(*args: str, nproc: int = 2, command: str = "train") -> list[str]:
    """`torchrun --standalone` (a free port of its own) starting `mnistcli COMMAND ARGS` in `nproc` processes."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launch, "-m", "mnistcli", command, *args]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def our_lines(stderr: str) -> list[str]:
    """What mnistcli itself printed (torchrun's own log lines and failure report left out)."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "stopped", "best"))]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()[1] if proc.poll() is not None else f"no {path}"


def test_two_processes_via_nproc_train_like_one_and_validate_exactly(tmp_path: Path) -> None:
    cfg = write(tmp_path / "same.yaml", SAME)
    cmd = [sys.executable, "-m", "mnistcli", "train", str(cfg), "--out", "two", "--nproc", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()  # rank 0's summary alone
    assert len(lines) == 1 and lines[0].startswith("best val_acc ") and lines[0].endswith(" -> two/best.pt")
    assert "rank 0 of 2 on cpu (gloo)" in proc.stderr and "rank 1 of 2" not in proc.stderr  # rank 1: warnings only
    assert sum(line.startswith("epoch 2/2") for line in proc.stderr.splitlines()) == 1
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [".mnistcli-run", "best.pt", "config.yaml", "curves.png", "last.pt", "metrics.csv"]
    )
    assert len((two / "metrics.csv").read_text().splitlines()) == 3  # one writer: header + 2 epochs
    best = torch.load(two / "best.pt", weights_only=True)
    assert evaluate(two / "best.pt", split="val", device="cpu")["accuracy"] == best["metrics"]["val_acc"]
    one = train(SAME, out=tmp_path / "one", quiet=True)
    # Not bit-equal: the all-reduce adds the ranks' gradient sums in another order than one process's batch mean
    # (float32 rounding, about 1e-7 per step); 1e-5 after 28 Adam steps leaves room for that, none for a
    # different batch, image, augmentation or loss weighting (those move weights by 1e-3 and more).
    w1, w2 = weights(tmp_path / "one" / "last.pt"), weights(two / "last.pt")
    assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=1e-5) for k in w1)
    # eval under torchrun: each rank scores a contiguous share, rank 0 alone reports what one process reports
    ev = subprocess.run(
        torchrun("--ckpt", "two/best.pt", "--json", "--no-report", command="eval"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert ev.returncode == 0, ev.stderr
    two_ranks, one_rank = json.loads(ev.stdout), evaluate_checkpoint(two / "best.pt", device="cpu")
    assert two_ranks["n"] == one_rank["n"] == 62 and two_ranks["accuracy"] == one_rank["accuracy"]
    assert two_ranks["confusion_matrix"] == one_rank["confusion_matrix"]
    # outputs of other batch groupings (a share's batches, not the split's) differ in float rounding only
    assert (two_ranks["loss"], two_ranks["ece"]) == pytest.approx((one_rank["loss"], one_rank["ece"]), abs=1e-6)
    row = read_metrics(two)[-1]  # train metrics summed over the ranks: the numbers one process reports
    assert (row["train_loss"], row["train_acc"]) == pytest.approx(
        (one["final"]["train_loss"], one["final"]["train_acc"]), abs=1e-5
    )


def test_accumulation_and_a_balanced_sampler_under_torchrun_step_like_one_process(tmp_path: Path) -> None:
    # 2 ranks x micro-batches of 8 x accumulate 2 against one process's batches of 16: the same images per step,
    # drawn by the balanced sampler (with replacement, seeded), whose order every rank must share
    data = {**SAME["data"], "fake_size": 199, "batch_size": 8, "augment": {}, "sampler": "balanced"}
    cfg = {**SAME, "data": data, "train": {"epochs": 1, "accumulate": 2}}
    cmd = nproc2(str(write(tmp_path / "acc.yaml", cfg)), "--out", "two")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    train(cfg, ["data.batch_size=16", "train.accumulate=1"], out=tmp_path / "one", quiet=True)
    w1, w2 = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=1e-5) for k in w1)  # as above: rounding only
    shuffled = tmp_path / "shuffled"  # the sampler mattered: the usual shuffle trains other weights
    train(cfg, ["data.batch_size=16", "train.accumulate=1", "data.sampler=shuffle"], out=shuffled, quiet=True)
    w3 = weights(shuffled / "last.pt")
    assert not all(torch.allclose(w1[k], w3[k], rtol=0, atol=1e-5) for k in w1)


def test_two_agents_sigint_and_resume_restore_every_rank(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = write(tmp_path / "dropout.yaml", DROPOUT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    node += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=ref"]
    agents = [
        subprocess.Popen(
            [*node, "-m", "mnistcli", "train", str(cfg), "--out", "ref", "-q"],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [a.communicate(timeout=120) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outs
    assert sum(len(out.splitlines()) for out, _ in outs) == 1  # rank 0's summary line only

    cut = subprocess.Popen(
        nproc2(str(cfg), "--out", "cut", "-q"),
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(tmp_path / "cut" / "last.pt", cut)  # epoch 1 is done: the stop comes in epoch 2
    cut.send_signal(signal.SIGINT)  # to the launcher alone: the agent passes it on to both ranks
    _, err = cut.communicate(timeout=60)
    assert cut.returncode == 130, err  # as one process exits; `torchrun` itself would exit 1
    assert "Traceback" not in err
    assert our_lines(err) == [
        f"stopped by SIGINT: wrote cut/interrupted.pt; resume with: mnistcli train {cfg} --nproc 2 "
        "--resume cut/interrupted.pt"
    ], err
    state = torch.load(tmp_path / "cut" / "interrupted.pt", weights_only=True)["resume"]
    assert len(state["rank_rng"]) == 2 and not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")

    again = subprocess.run(
        torchrun(str(cfg), "--out", "cut", "--resume", "-q"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    ref, resumed = weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)  # two ranks sum two numbers: exact in any order

    with caplog.at_level(logging.WARNING, logger="mnistcli"):
        train(cfg, out=tmp_path / "cut1", resume="last", quiet=True)
    assert "resuming with 1 process(es) a run saved by 2: it goes on, but not bit-identical" in caplog.text


def test_a_killed_rank_stops_the_others_with_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "long.yaml", LONG)
    proc = subprocess.Popen(
        nproc2(str(cfg), "--out", "run", "-q"),
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(tmp_path / "run" / "config.yaml", proc)  # both ranks are training
    ranks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    rank1 = [p for p in ranks if b"LOCAL_RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes()]
    killed = time.monotonic()
    os.kill(int(rank1[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 60 and proc.returncode == 1, err
    # the launcher names the killed rank last; before it, rank 0 may have said one line of its own: that it lost
    # contact (it noticed first) or that it was stopped (the agent's SIGTERM to the ranks left came first)
    assert our_lines(err)[-1] == "error: rank 1 of 2 was killed by SIGKILL; the other ranks stopped", err
    survivor = ("error: rank 0 of 2: lost contact with another rank (", "stopped by SIGTERM")
    assert len(our_lines(err)) <= 2 and all(line.startswith(survivor) for line in our_lines(err)[:-1]), err
    assert "Traceback" not in err


def test_on_nan_skip_is_refused_under_torchrun(tmp_path: Path) -> None:
    cfg = write(tmp_path / "skip.yaml", {**SAME, "train": {"epochs": 1, "on_nan": "skip"}})
    proc = subprocess.run(
        torchrun(str(cfg), "--out", "run"), cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode != 0 and not (tmp_path / "run").exists()
    assert our_lines(proc.stderr) == [
        "error: train.on_nan: skip works in one process only; under torchrun use stop (the default)"
    ], proc.stderr


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(
        UserError,
        match=r"^data.batch_size 30 does not split evenly across 4 processes: it is the "
        r"global batch of one step; use a multiple of 4$",
    ):
        check_batch(30, World(0, 4, 0))
    assert [World(r, 3, r).part(8) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 8)]
