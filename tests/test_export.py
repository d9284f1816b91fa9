"""mnistcli export: TorchScript and ONNX files that run without mnistcli (ONNX without torch), give predict's
probabilities, are checked before they are kept and never replace a file; predict --model reads them."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from forkserver import mnistcli as forked
from PIL import Image

from mnistcli import predict as api_predict
from mnistcli import train
from mnistcli.data.pipeline import tta_views
from mnistcli.deploy.artifact import load_exported
from mnistcli.deploy.export import TOLERANCE, compare, export_checkpoint, publish_checked
from mnistcli.deploy.predict import predict_images
from mnistcli.evaluation.calibration import calibrate_checkpoint
from mnistcli.evaluation.scores import eval_details
from mnistcli.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
N_PNG = 40  # more than the odd batch size 37, so a second, partial batch runs too
FRESH = """
import json, sys
import numpy as np
from PIL import Image
model, paths = sys.argv[1], sys.argv[2:]
pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8)[None] for p in paths])
if model.endswith(".onnx"):
    import onnxruntime as ort
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(["probabilities"], {"images": x})[0]
else:
    import torch
    module = torch.jit.load(model)
    run = lambda x: module(torch.from_numpy(x)).detach().numpy()
probs = {n: np.concatenate([run(pixels[i : i + n]) for i in range(0, len(pixels), n)]).tolist() for n in (1, 37)}
print(json.dumps({"probs": probs, "imported": [m for m in ("torch", "mnistcli") if m in sys.modules]}))
"""


def mnistcli(*args: object, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    return forked(*args, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A tiny CNN trained for one epoch on the small IDX MNIST."""
    out = tmp_path_factory.mktemp("export") / "run"
    config = {
        "seed": 0,
        "data": {"name": "mnist", "root": str(mnist_root), "val_split": 50, "batch_size": 32},
        "model": {"name": "cnn", "channels": [4], "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 1},
    }
    train(config, out=out, progress="off")
    return out / "best.pt"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> list[Path]:
    """The first N_PNG test images of the IDX files, as 28x28 grayscale PNGs."""
    raw = gzip.decompress((mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)[:N_PNG]
    folder = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"test_{i:03d}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def predicted(ckpt: Path, pngs: list[Path]) -> list[dict[str, Any]]:
    """`mnistcli predict FOLDER --ckpt` with every class's probability."""
    proc = mnistcli("predict", pngs[0].parent, "--ckpt", ckpt, "--json", "--topk", "10")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def onnx_export(ckpt: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`mnistcli export --format onnx` to the default name beside the checkpoint."""
    proc = mnistcli("export", "--ckpt", ckpt, "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    return ckpt.with_name("best.onnx"), proc


@pytest.fixture(scope="module")
def ts_export(ckpt: Path) -> Path:
    """A TorchScript export through the library, to the default name."""
    return Path(export_checkpoint(ckpt, "torchscript")["path"])


def probability_rows(results: list[dict[str, Any]]) -> np.ndarray:
    """predict's per-image top-k lists (all classes) as an (images, classes) array in class order."""
    rows = np.zeros((len(results), len(results[0]["topk"])))
    for row, res in zip(rows, results):
        for top in res["topk"]:
            row[top["index"]] = top["probability"]
    return rows


def test_export_prints_the_file_the_check_and_the_metadata(onnx_export: tuple[Path, Any], ckpt: Path) -> None:
    path, proc = onnx_export
    lines = proc.stdout.splitlines()
    assert (
        lines[0]
        == f"wrote {path} (onnx, opset 18): input 'images' uint8 N x 1 x 28 x 28 -> output 'probabilities' N x 10"
    )
    assert re.fullmatch(
        r"check \(onnxruntime [\d.]+\): 100 images of the mnist test split, max \|dp\| \S+ \(allowed 0\.0001\), "
        r"top-1 agree 100/100, batch sizes 1, 37, 100",
        lines[1],
    ), lines[1]
    assert lines[2:] == [f"metadata: {path}.json"]
    assert "Warning" not in proc.stderr, proc.stderr  # torch's own warnings, which a user cannot act on, stay quiet
    side = json.loads(Path(f"{path}.json").read_text())
    assert side["classes"][0] == "0 - zero" and side["input"]["shape"] == ["N", 1, 28, 28]
    assert side["check"]["top1_agree"] == side["check"]["images"] == 100
    assert side["check"]["max_abs_diff"] <= TOLERANCE and side["check"]["batch_sizes"] == [1, 37, 100]
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]  # the temporary file is gone


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_runs_in_a_fresh_process_as_predict_does(
    fmt: str, onnx_export: tuple[Path, Any], ts_export: Path, pngs: list[Path], predicted: list[dict[str, Any]]
) -> None:
    """The file alone, at batch 1 and 37: predict's top-1 and probabilities; ONNX without torch, neither with
    mnistcli."""
    model = onnx_export[0] if fmt == "onnx" else ts_export
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(model), *map(str, pngs)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["imported"] == ([] if fmt == "onnx" else ["torch"])
    want = probability_rows(predicted)
    for size in ("1", "37"):
        got = np.array(res["probs"][size])
        assert got.argmax(1).tolist() == [r["index"] for r in predicted]
        assert np.abs(got - want).max() <= TOLERANCE


def test_deploy_snippet_serves_a_png_without_torch(
    onnx_export: tuple[Path, Any], pngs: list[Path], predicted: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    snippet = re.findall(r"<!-- deploy-snippet -->\n```python\n(.*?)\n```\n", text, flags=re.DOTALL)
    assert len(snippet) == 1
    shutil.copy(onnx_export[0], tmp_path / "model.onnx")
    check = "\nassert 'torch' not in sys.modules and 'mnistcli' not in sys.modules\n"
    proc = subprocess.run(
        [sys.executable, "-c", snippet[0] + check, str(pngs[3])], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    label, probability = proc.stdout.strip().rsplit(" ", 1)
    assert label == predicted[3]["label"]
    assert float(probability) == pytest.approx(predicted[3]["probability"], abs=TOLERANCE)


def test_predict_model_gives_the_labels_of_predict_ckpt(
    onnx_export: tuple[Path, Any], ts_export: Path, pngs: list[Path], predicted: list[dict[str, Any]]
) -> None:
    proc = mnistcli("predict", pngs[0].parent, "--model", onnx_export[0], "--json", "--topk", "10")
    assert proc.returncode == 0, proc.stderr
    from_onnx = [json.loads(line) for line in proc.stdout.splitlines()]
    from_ts = api_predict(pngs[0].parent, topk=10, model=ts_export)  # the Python API
    for results in (from_onnx, from_ts):
        assert [(r["path"], r["label"]) for r in results] == [(r["path"], r["label"]) for r in predicted]
        assert np.abs(probability_rows(results) - probability_rows(predicted)).max() <= TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_float_input_export(ckpt: Path, ts_export: Path, pngs: list[Path], tmp_path: Path) -> None:
    res = export_checkpoint(ckpt, "torchscript", tmp_path / "float.pt", input_kind="float")
    assert res["metadata"]["input"] == {
        "name": "images",
        "kind": "float",
        "dtype": "float32",
        "shape": ["N", 1, 28, 28],
        "range": [0.0, 1.0],
    }
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p))[None] for p in pngs]))
    with torch.inference_mode():
        as_float = torch.jit.load(res["path"])(pixels.float() / 255)
        as_uint8 = torch.jit.load(ts_export)(pixels)
    assert as_float.dtype == torch.float32 and (as_float - as_uint8).abs().max() <= TOLERANCE
    assert as_float.argmax(1).tolist() == as_uint8.argmax(1).tolist()


def test_existing_out_is_refused_and_left_intact(ckpt: Path, onnx_export: tuple[Path, Any], tmp_path: Path) -> None:
    taken = tmp_path / "model.onnx"
    taken.write_bytes(b"the user's own file")
    proc = mnistcli("export", "--ckpt", ckpt, "--format", "onnx", "--out", taken)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: --out {taken}: the file exists and is never replaced; give a new file name"
    ]
    assert taken.read_bytes() == b"the user's own file" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    before = onnx_export[0].read_bytes()
    with pytest.raises(UserError, match=r"best\.onnx: the file exists and is never replaced; give a new file name"):
        export_checkpoint(ckpt, "onnx")  # the default name, taken by the earlier export
    assert onnx_export[0].read_bytes() == before


def test_calibrated_checkpoint_exports_calibrated_probabilities(ckpt: Path, pngs: list[Path], tmp_path: Path) -> None:
    calibrated = tmp_path / "calibrated.pt"
    shutil.copy(ckpt, calibrated)
    temperature = calibrate_checkpoint(calibrated, device="cpu")["temperature"]
    assert abs(temperature - 1) > 0.01
    res = export_checkpoint(calibrated, "torchscript")
    assert res["metadata"]["temperature"] == temperature
    exported = predict_images(pngs, None, topk=10, model_path=res["path"])
    want, plain = (predict_images(pngs, path, topk=10) for path in (calibrated, ckpt))
    assert np.abs(probability_rows(exported) - probability_rows(want)).max() <= TOLERANCE
    assert np.abs(probability_rows(exported) - probability_rows(plain)).max() > 100 * TOLERANCE


def test_failing_check_removes_the_file(ts_export: Path, pngs: list[Path], tmp_path: Path) -> None:
    """A file whose probabilities are off by more than the tolerance never gets its name; nothing is left."""
    exported = load_exported(ts_export)
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p))[None] for p in pngs]))
    reference = exported.probabilities(pixels)
    assert compare(exported.probabilities, pixels, reference)["top1_agree"] == N_PNG
    perturbed = lambda x: exported.probabilities(x) + 2 * TOLERANCE
    target = tmp_path / "model.pt"
    message = (
        r"export check failed: max \|probability difference\| 0\.0002 \(allowed 0\.0001\), top-1 agrees on 40/40 "
        r"images, batch sizes 1, 37, 40; no file was written"
    )
    with pytest.raises(UserError, match=message):
        publish_checked(
            target,
            lambda tmp: shutil.copyfile(ts_export, tmp),
            lambda tmp: compare(lambda x: load_exported(tmp).probabilities(x) + 2 * TOLERANCE, pixels, reference),
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=message):
        compare(perturbed, pixels, reference)


def test_files_that_are_not_exports_are_one_line(ckpt: Path, onnx_export: tuple[Path, Any], tmp_path: Path) -> None:
    proc = mnistcli("predict", REPO / "data" / "samples" / "digit_7.png", "--model", ckpt)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {ckpt}: a PyTorch checkpoint, not an exported model; give it as --ckpt, or export it first"
    ]
    bare = onnx.load(onnx_export[0])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    (tmp_path / "notes.txt").write_text("not a model")
    cases = {
        tmp_path / "bare.onnx": "an ONNX model without mnistcli metadata; write one with `mnistcli export`",
        tmp_path / "notes.txt": "neither a TorchScript archive nor an ONNX model; give a file written by",
        tmp_path / "missing.onnx": "model file not found",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=re.escape(f"{path}: {message}")):
            load_exported(path)
    with pytest.raises(UserError, match="give exactly one of --ckpt PATH"):
        predict_images([tmp_path / "notes.txt"], ckpt, model_path=onnx_export[0])


def with_metadata(source: Path, target: Path, edit: Any) -> Path:
    """A copy of an ONNX export whose embedded metadata `edit` changed (the graph left as exported)."""
    model = onnx.load(source)
    (prop,) = [p for p in model.metadata_props if p.key == "mnistcli"]
    meta = json.loads(prop.value)
    edit(meta)
    prop.value = json.dumps(meta)
    onnx.save(model, target)
    return target


def test_onnx_metadata_that_disagrees_with_its_graph_is_refused(onnx_export: tuple[Path, Any], tmp_path: Path) -> None:
    path = onnx_export[0]
    cases = {
        "one class too many": (
            lambda m: m["classes"].append("extra"),
            "the graph's output is [batch, 10] but its metadata gives [batch, 11] (one output per class name)",
        ),
        "another input size": (
            lambda m: m["input_spec"].update(stored=[1, 32, 32]),
            "the graph's input is [batch, 1, 28, 28] but its metadata gives [batch, 1, 32, 32]",
        ),
        "float input for a uint8 graph": (
            lambda m: m["input"].update(kind="float"),
            "the metadata says float input but the graph takes tensor(uint8)",
        ),
        "another output name": (
            lambda m: m["output"].update(name="scores"),
            "the metadata names input 'images' and output 'scores' but the graph has",
        ),
    }
    for i, (edit, message) in enumerate(cases.values()):
        broken = with_metadata(path, tmp_path / f"broken{i}.onnx", edit)
        with pytest.raises(UserError, match=re.escape(f"{broken}: {message}")):
            load_exported(broken)
    proc = mnistcli("predict", REPO / "data" / "samples" / "digit_7.png", "--model", tmp_path / "broken0.onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "selected index" not in proc.stderr


def test_torchscript_metadata_naming_more_classes_than_it_gives_is_refused(ts_export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(ts_export) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/extra/mnistcli.json"):
                meta = json.loads(data)
                meta["classes"] = meta["classes"][:3]
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(
        UserError, match=re.escape(f"{broken}: its metadata names 3 classes but the model gives [1, 10]")
    ):
        load_exported(broken)


def test_a_sidecar_that_differs_is_named_and_the_embedded_metadata_used(
    onnx_export: tuple[Path, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_export[0], model)
    side = json.loads(onnx_export[0].with_name("best.onnx.json").read_text())
    side["classes"] = [f"c{i}" for i in range(10)]
    model.with_name("model.onnx.json").write_text(json.dumps(side))
    with caplog.at_level("WARNING", logger="mnistcli"):
        loaded = load_exported(model)
    assert loaded.classes == load_exported(onnx_export[0]).classes != side["classes"]
    assert (
        f"{model}.json differs from the metadata inside model.onnx (classes); the embedded metadata is used"
        in caplog.text
    )
    caplog.clear()
    shutil.copy(onnx_export[0].with_name("best.onnx.json"), model.with_name("model.onnx.json"))  # the true sidecar
    with caplog.at_level("WARNING", logger="mnistcli"):
        load_exported(model)
    assert "differs" not in caplog.text


# --- test-time augmentation -------------------------------------------------------------------------------------


def test_tta_views_are_the_mirror_and_four_edge_repeating_shifts() -> None:
    x = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    plain, mirror, *shifts = tta_views(x, "flip+shift")
    assert torch.equal(plain, x) and torch.equal(mirror, x.flip(-1)) and len(shifts) == 4
    down = shifts[0]  # the first shift moves the content 1 px (16 / 16) down, repeating the top row
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.equal(down[..., 0, :], x[..., 0, :])
    assert all(view.shape == x.shape for view in shifts)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, "shift")) == 5


def test_eval_predict_and_export_agree_under_tta(ckpt: Path, pngs: list[Path], tmp_path: Path) -> None:
    details = eval_details(ckpt, split="test", device="cpu", tta="flip+shift")
    assert details.report["tta"] == "flip+shift"
    plain = eval_details(ckpt, split="test", device="cpu")
    assert not np.allclose(details.confidences, plain.confidences)  # the views change the probabilities
    # pngs are the first test images: predict --tta gives eval --tta's probability for each
    results = predict_images(pngs, ckpt, topk=1, tta="flip+shift")
    predicted = np.array([r["probability"] for r in results])
    assert np.allclose(predicted, details.confidences[: len(pngs)], atol=1e-5)
    assert [r["index"] for r in results] == details.predicted[: len(pngs)].tolist()
    # built into an export: the file averages alike
    onnx_file = Path(export_checkpoint(ckpt, "onnx", tmp_path / "tta.onnx", tta="flip+shift")["path"])
    exported = predict_images(pngs, None, topk=1, model_path=onnx_file)
    assert np.allclose([r["probability"] for r in exported], predicted, atol=TOLERANCE)
    assert json.loads(onnx_file.with_name("tta.onnx.json").read_text())["tta"] == "flip+shift"
    with pytest.raises(UserError, match="--tta applies to --ckpt"):
        predict_images(pngs[:1], None, model_path=onnx_file, tta="flip")
    proc = mnistcli("predict", pngs[0], "--ckpt", ckpt, "--tta", "mirror")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: unknown --tta 'mirror'; allowed: none, flip, shift, flip+shift"
    ]
