"""Files that training, a checkpoint or an export would accept but that break a promise later: class folders whose
names a checkpoint refuses, exports with forged class names, outputs that are not probabilities, graphs that loop
for ever, a checkpoint declaring a layer larger than the machine, weights stored as views. Each is one line, exit 2,
before anything runs or allocates."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from forkserver import mnistcli as forked
from PIL import Image

from mnistcli.deploy.export import export_checkpoint
from mnistcli.models.families import build_model
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError
from tests.conftest import make_image_folder, one_error_line

onnx = pytest.importorskip("onnx")
helper = onnx.helper

BASE = {
    "seed": 0,
    "data": {"name": "fake", "fake_size": 60, "val_split": 20, "batch_size": 20},
    "model": {"name": "mlp", "hidden": [8]},
    "train": {"epochs": 1},
}


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return forked(*args, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(BASE, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    return Path(export_checkpoint(run / "best.pt", "onnx", run / "m.onnx")["path"])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(path)
    return path


def meta_of(model: object) -> dict:
    (prop,) = [p for p in model.metadata_props if p.key == "mnistcli"]  # type: ignore[attr-defined]
    return json.loads(prop.value)


def with_meta(model: object, meta: dict, path: Path) -> Path:
    (prop,) = [p for p in model.metadata_props if p.key == "mnistcli"]  # type: ignore[attr-defined]
    prop.value = json.dumps(meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "name, shown",
    [
        ("b\nerror: forged", "[1] is 'b\\nerror: forged'"),
        ("b\tc", "[1] is 'b\\tc'"),
        (" ", "[0] is ' '"),  # sorted before 'a'
        (b"caf\xe9", "[1] is 'caf\\udce9'"),
    ],
)
def test_class_folders_a_checkpoint_would_refuse_are_refused_before_training(
    name: str | bytes, shown: str, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "train", ["a", "zz"], 3, size=8)
    odd = os.fsencode(root) + b"/" + (name if isinstance(name, bytes) else name.encode())
    os.rename(root / "zz", odd)
    cfg = {**BASE, "data": {"name": "image_folder", "train_dir": str(root), "val_split": 2, "batch_size": 2}}
    with pytest.raises(UserError) as err:
        train(cfg, out=tmp_path / "run", quiet=True)
    assert str(err.value) == (
        f"data.train_dir: {root}: the class folders' names{shown}; a class name must be printable text, not "
        "empty; rename that folder (its name is the class's name)"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "classes, problem",
    [
        (["0", "b\nerror: forged", *map(str, range(2, 10))], "[1] is 'b\\nerror: forged'; a class name must be"),
        (["0", "0", *map(str, range(2, 10))], " holds '0' more than once; each class needs its own name"),
        (["", *map(str, range(1, 10))], "[0] is ''; a class name must be printable text, not empty"),
        (["\x1b[31mred", *map(str, range(1, 10))], "[0] is '\\x1b[31mred'; a class name must be printable"),
    ],
)
def test_exports_with_forged_class_names_are_refused(
    classes: list[str], problem: str, exported: Path, image: Path, tmp_path: Path
) -> None:
    model = onnx.load(str(exported))
    path = with_meta(model, {**meta_of(model), "classes": classes}, tmp_path / "forged.onnx")
    proc = cli("predict", image, "--model", path)
    assert (
        one_error_line(proc)
        == f"error: {path}: the metadata's classes{problem}" + one_error_line(proc).split(problem, 1)[1]
    )
    assert "\x1b" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_an_export_whose_outputs_are_not_probabilities_is_refused(exported: Path, image: Path, tmp_path: Path) -> None:
    model = onnx.load(str(exported))
    (softmax,) = [n for n in model.graph.node if n.op_type == "Softmax"]
    logits = softmax.input[0]
    model.graph.node.remove(softmax)
    for node in model.graph.node:  # the logits, scaled, are the output now
        node.output[:] = [model.graph.output[0].name if o == logits else o for o in node.output]
    path = tmp_path / "logits.onnx"
    onnx.save(model, str(path))
    line = one_error_line(cli("predict", image, "--model", path))
    assert line.startswith(f"error: {path}: its outputs are not probabilities (values from -")
    assert line.endswith("; export the model again")


def loop_model(meta: dict) -> object:
    """A 1 kB ONNX graph with the right input, output and metadata whose Loop runs 2^62 times."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [1, 10]),
        ],
        [
            helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [1, 10]),
        ],
    )
    nodes = [
        helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", onnx.TensorProto.INT64, [], [2**62])),
        helper.make_node("Constant", [], ["t"], value=helper.make_tensor("t", onnx.TensorProto.BOOL, [], [True])),
        helper.make_node(
            "Constant", [], ["v0"], value=helper.make_tensor("v0", onnx.TensorProto.FLOAT, [1, 10], [0.1] * 10)
        ),
        helper.make_node("Loop", ["n", "t", "v0"], ["probabilities"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"mnistcli": json.dumps(meta)})
    return model


def test_an_onnx_graph_that_loops_is_refused_before_it_runs(exported: Path, image: Path, tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(meta_of(onnx.load(str(exported)))), str(path))
    assert path.stat().st_size < 2000
    line = one_error_line(cli("predict", image, "--model", path, timeout=60))
    assert line == (
        f"error: {path}: its graph holds Loop, an operator that repeats a sub-graph and that no exported classifier "
        "has; not run"
    )


class Endless(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(x.shape[0], 10)
        i = 0
        while i >= 0:
            i += 1
        return y + 0.1


def test_a_torchscript_file_with_a_loop_is_refused_before_it_runs(exported: Path, image: Path, tmp_path: Path) -> None:
    meta = meta_of(onnx.load(str(exported)))
    meta.update({"model_format": "torchscript"})
    path = tmp_path / "endless.pt"
    torch.jit.save(torch.jit.script(Endless()), str(path), _extra_files={"mnistcli.json": json.dumps(meta)})
    line = one_error_line(cli("predict", image, "--model", path, timeout=60))
    assert line == (
        f"error: {path}: its TorchScript code holds a loop (prim::Loop), which no exported classifier has; not run "
        "(an export of `mnistcli export` is traced: straight-line code)"
    )


def forged_checkpoint(run: Path, path: Path, hidden: int, views: bool) -> Path:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["arch"]["kwargs"]["hidden"] = [hidden]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(ckpt["arch"]).state_dict().items()}
    ckpt["state_dict"] = {
        k: torch.zeros(1).expand(*shape) if views else torch.zeros(shape) for k, shape in shapes.items()
    }
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_declaring_a_layer_larger_than_the_machine_is_refused(run: Path, tmp_path: Path) -> None:
    path = forged_checkpoint(run, tmp_path / "huge.pt", 10**8, views=True)
    assert path.stat().st_size < 10_000
    line = one_error_line(cli("eval", "--ckpt", path, "--no-report"))
    assert line.startswith(f"error: {path}: arch needs 296.2 GiB for its 79,500,000,010 parameters but this machine")
    assert line.endswith(" GiB available")


def test_weights_stored_as_views_are_refused(run: Path, tmp_path: Path) -> None:
    path = forged_checkpoint(run, tmp_path / "views.pt", 8, views=True)
    line = one_error_line(cli("eval", "--ckpt", path, "--no-report"))
    assert line == (
        f"error: {path}: state_dict.net.1.weight is [8, 784] but its file stores 1 value(s) for it; the weights are "
        "corrupt"
    )


def test_predict_and_export_help_say_that_torchscript_runs_code() -> None:
    for command in ("predict", "export"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "TorchScript file runs its code: load only files you trust" in text
