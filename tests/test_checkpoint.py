"""Checkpoints are data: unsafe, broken or foreign files are refused with one line; writes are atomic."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistcli.config.schema import ModelConfig
from mnistcli.data.input_spec import InputSpec
from mnistcli.models.families import arch_of, build_model
from mnistcli.runs.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from mnistcli.utils.errors import CheckpointError

SPEC = {
    "dataset": "mnist",
    "channels": 1,
    "size": [28, 28],
    "normalize": True,
    "mean": [0.1307],
    "std": [0.3081],
    "resize": "stretch",
}


def real_payload() -> dict:
    arch = arch_of(ModelConfig(name="cnn", channels=[4], hidden=[8]), [1, 28, 28], 10)
    model = build_model(arch)
    return {
        "arch": arch,
        "state_dict": model.state_dict(),
        "classes": [str(i) for i in range(10)],
        "input_spec": SPEC,
        "epoch": 1,
        "metrics": {"val_acc": 0.5},
        "config": {},
        "versions": {},
    }


class Exploit:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_rebuilds_the_model(tmp_path: Path) -> None:
    payload = real_payload()
    save_checkpoint(payload, tmp_path / "a.pt")
    model, info = load_model(tmp_path / "a.pt")
    assert (
        not model.training and info["classes"] == payload["classes"] and info["input_spec"] == InputSpec.from_dict(SPEC)
    )
    for key, tensor in payload["state_dict"].items():
        assert torch.equal(model.state_dict()[key], tensor)


def test_code_executing_checkpoint_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"format": "mnistcli", "format_version": 1, "arch": Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused.*pickled code.*posix.system"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_cli_refuses_code_executing_checkpoint(tmp_path: Path, command: str) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Exploit(marker), f)
    args = ["--ckpt", str(tmp_path / "evil.pt")]
    if command == "predict":
        args = [str(Path(__file__).resolve().parents[1] / "data" / "samples" / "digit_7.png"), *args]
    proc = subprocess.run([sys.executable, "-m", "mnistcli", command, *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "refused" in proc.stderr
    assert not marker.exists()


def test_truncated_file(tmp_path: Path) -> None:
    save_checkpoint(real_payload(), tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_bare_state_dict_is_explained(tmp_path: Path) -> None:
    torch.save(build_model(real_payload()["arch"]).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="bare state_dict.*mnistcli train"):
        load_checkpoint(tmp_path / "sd.pt")


def test_newer_format_version(tmp_path: Path) -> None:
    payload = real_payload()
    save_checkpoint(payload, tmp_path / "a.pt")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this mnistcli reads"):
        load_checkpoint(tmp_path / "new.pt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_of_the_format_before_families_is_refused_in_one_line(tmp_path: Path) -> None:
    """The earliest checkpoints stored {'name': 'cnn', 'preset': ...} with no family: no longer read, said so."""
    payload = real_payload()
    payload["arch"] = {"name": "cnn", "preset": "lenet_tutorial", "kwargs": payload["arch"]["kwargs"]}
    save_checkpoint(payload, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as caught:
        load_model(tmp_path / "old.pt")
    assert str(caught.value) == (
        f"{tmp_path / 'old.pt'}: arch names the model 'cnn' but no family: an mnistcli older than checkpoint format 2 "
        "wrote it, which this version no longer reads; train the model again"
    )


def test_checkpoint_whose_input_spec_has_no_stored_shape_loads(tmp_path: Path) -> None:
    """Input specs written before the stored shape was recorded: the input size stands for it."""
    payload = real_payload()
    payload["input_spec"].pop("stored", None)
    save_checkpoint(payload, tmp_path / "old.pt")
    model, info = load_model(tmp_path / "old.pt")
    assert info["input_spec"].stored == (1, 28, 28)
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in model.state_dict().items())
