"""predict and eval on awkward input: --show-input never replaces a file; FIFOs, odd image modes, a missing device."""

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

from mnistcli.data.preprocess import READABLE_MODES, convert, open_image
from mnistcli.deploy.predict import predict_images
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FAKE = {
    "seed": 1,
    "data": {"name": "fake", "fake_size": 32, "val_split": 8, "batch_size": 16},
    "model": {"name": "cnn", "channels": [4], "hidden": [8]},
    "train": {"epochs": 1},
}
LAB_MESSAGE = "unsupported image mode 'LAB'; save it as an RGB or grayscale PNG/JPEG"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint (1x28x28 input, 10 classes) shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(FAKE, out=out)
    return out / "best.pt"


def mnistcli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; the timeout turns a hang into a failure."""
    return forked(*args, cwd=REPO, timeout=timeout)


def photo(path: Path, seed: int, fmt: str = "PNG") -> bytes:
    """Write a small random RGB picture; return its bytes, to compare with afterwards."""
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path.read_bytes()


def test_show_input_into_the_images_own_folder_replaces_nothing(ckpt: Path, tmp_path: Path) -> None:
    """Originals, and a file already named like an input PNG, stay byte for byte; inputs get fresh names."""
    png, jpg, taken = tmp_path / "photo.png", tmp_path / "photo.jpg", tmp_path / "photo.input.png"
    before = {png: photo(png, 0), jpg: photo(jpg, 1, "JPEG"), taken: photo(taken, 2)}
    proc = mnistcli("predict", png, jpg, "--ckpt", ckpt, "--show-input", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert {path: path.read_bytes() for path in before} == before
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    written = [r["input_png"] for r in results]
    assert written == [str(tmp_path / "photo.input-2.png"), str(tmp_path / "photo.input-3.png")]
    assert all(Image.open(path).size == (28, 28) for path in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["photo.png", "photo.jpg", "photo.input.png", "photo.input-2.png", "photo.input-3.png"]
    )


def test_same_stem_in_two_folders_gives_two_inputs(ckpt: Path, tmp_path: Path) -> None:
    """a/digit.png (black) and b/digit.png (white): two files, each showing its own image."""
    for name, level in (("a", 0), ("b", 255)):
        (tmp_path / name).mkdir()
        Image.new("L", (20, 20), level).save(tmp_path / name / "digit.png")
    out = tmp_path / "seen"
    images = [tmp_path / "a" / "digit.png", tmp_path / "b" / "digit.png"]
    proc = mnistcli("predict", *images, "--ckpt", ckpt, "--show-input", out, "--json")
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line)["input_png"] for line in proc.stdout.splitlines()]
    assert written == [str(out / "digit.input.png"), str(out / "digit.input-2.png")]
    assert [np.asarray(Image.open(path)).tolist() for path in written] == [[[0] * 28] * 28, [[255] * 28] * 28]


def test_show_input_that_is_a_file_stops_before_predicting(ckpt: Path, tmp_path: Path) -> None:
    img, target = tmp_path / "x.png", tmp_path / "notes.txt"
    photo(img, 0)
    target.write_text("keep me\n")
    proc = mnistcli("predict", img, "--ckpt", ckpt, "--show-input", target)
    assert proc.returncode == 2
    assert proc.stderr == f"error: --show-input {target}: is a file, not a folder\n"
    assert proc.stdout == "" and target.read_text() == "keep me\n"


def test_show_input_that_cannot_be_created_is_checked_before_the_checkpoint(tmp_path: Path) -> None:
    """The folder is checked first: the checkpoint named here does not even exist."""
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as info:
        predict_images([tmp_path / "x.png"], tmp_path / "missing.pt", show_input=tmp_path / "file" / "seen")
    seen = tmp_path / "file" / "seen"
    assert str(info.value) == f"--show-input {seen}: cannot create the folder (part of the path is a file)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its permissions")
def test_show_input_folder_that_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError) as info:
        predict_images([tmp_path / "x.png"], tmp_path / "missing.pt", show_input=locked)
    assert str(info.value) == f"--show-input {locked}: folder is not writable (Permission denied)"


def lab_tiff(path: Path) -> Path:
    """A LAB TIFF (as scanners write): white paper, a black square."""
    img = Image.new("LAB", (20, 20), (255, 128, 128))  # L = 100%, a = b = 0: white
    img.paste((0, 128, 128), (5, 5, 15, 15))  # L = 0: black
    img.save(path, format="TIFF")
    assert Image.open(path).mode == "LAB"
    return path


def lab_converts() -> bool:
    """Whether this Pillow converts LAB to RGB (it needs LittleCMS and a recent version)."""
    try:
        Image.new("LAB", (1, 1)).convert("RGB")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not lab_converts(), reason="this Pillow cannot convert LAB to RGB")
def test_lab_tiff_is_read_as_rgb(ckpt: Path, tmp_path: Path) -> None:
    """open_image (predict's decoder, and training's) gives RGB; a grayscale model predicts it."""
    tif = lab_tiff(tmp_path / "scan.tif")
    img = open_image(tif)
    assert img.mode == "RGB"
    assert min(img.getpixel((0, 0))) >= 250 and max(img.getpixel((10, 10))) <= 5
    proc = mnistcli("predict", tif, "--ckpt", ckpt, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(tif)


@pytest.mark.skipif(lab_converts(), reason="this Pillow converts LAB to RGB, so LAB files are read")
def test_lab_tiff_is_refused_by_name(ckpt: Path, tmp_path: Path) -> None:
    tif = lab_tiff(tmp_path / "scan.tif")
    with pytest.raises(UserError) as info:
        open_image(tif)
    assert str(info.value) == f"{tif}: {LAB_MESSAGE}"
    proc = mnistcli("predict", tif, "--ckpt", ckpt)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {tif}: {LAB_MESSAGE}", "error: 1 of 1 image(s) could not be predicted"]


def test_every_readable_mode_converts() -> None:
    """open_image lets through only modes that convert turns into 1 and 3 channels."""
    for mode in sorted(READABLE_MODES):
        img = Image.new(mode, (4, 3))
        assert convert(img, 1).mode == "L" and convert(img, 3).mode == "RGB", mode


def test_fifo_is_refused_at_once(ckpt: Path, tmp_path: Path) -> None:
    """A FIFO with no writer would block a reader forever: it gets one line, and the good image is still predicted."""
    fifo, good = tmp_path / "x.png", tmp_path / "good.png"
    os.mkfifo(fifo)
    photo(good, 0)
    proc = mnistcli("predict", fifo, good, "--ckpt", ckpt, "--json", timeout=30)
    assert proc.returncode == 2
    assert [json.loads(line)["path"] for line in proc.stdout.splitlines()] == [str(good)]
    message = f"{fifo}: not a regular file (a FIFO); give an image file"
    assert proc.stderr.splitlines() == [f"error: {message}", "error: 1 of 2 image(s) could not be predicted"]
    (tmp_path / "link.png").symlink_to(fifo)  # a symlink is followed to what it points at
    with pytest.raises(UserError, match=r"link\.png: not a regular file \(a FIFO\)"):
        open_image(tmp_path / "link.png")
    (tmp_path / "good-link.png").symlink_to(good)
    assert open_image(tmp_path / "good-link.png").size == (40, 30)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_eval_device_error_names_the_option(ckpt: Path) -> None:
    proc = mnistcli("eval", "--ckpt", ckpt, "--device", "cuda")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "train.device" not in lines[0]
    assert lines[0].startswith(
        "error: --device 'cuda' is not available on this machine (0 CUDA device(s)); available: cpu"
    )


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PNG of 20,000 x 4,000 black pixels: 80 Mpx (under Pillow's own bomb limit) in under 100 kB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("L", (20_000, 4_000)).save(path)
    assert path.stat().st_size < 100_000
    return path


def test_a_decompression_bomb_is_refused_from_its_header(ckpt: Path, bomb: Path) -> None:
    """predict refuses it by name without decoding it, and says how to decode it anyway; --max-pixels raises it."""
    proc = mnistcli("predict", bomb, "--ckpt", ckpt)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"error: {bomb}: 20000 x 4000 pixels, 80.0 Mpx, is over the decoding budget of 64 Mpx; to decode it anyway "
        "raise data.max_pixels for training and data show, or --max-pixels for predict"
    )
    assert mnistcli("predict", bomb, "--ckpt", ckpt, "--max-pixels", "100000000").returncode == 0
    with pytest.raises(UserError, match="over the decoding budget of 0.001 Mpx"):
        open_image(bomb, max_pixels=1000)


def test_the_budget_has_one_default_everywhere() -> None:
    """The decoder's constant, the config key's default and the CLI option's default are the same number."""
    import inspect

    from mnistcli.cli.deploy import predict as predict_command
    from mnistcli.config.schema import DataConfig
    from mnistcli.data.preprocess import MAX_PIXELS

    option = inspect.signature(predict_command).parameters["max_pixels"].default.default
    assert MAX_PIXELS == DataConfig().max_pixels == option == 64_000_000


def test_an_output_that_overflows_is_no_answer(ckpt: Path, tmp_path: Path) -> None:
    # finite weights, each under float32's limit, whose products overflow: the logits come out inf - inf = NaN
    state = torch.load(ckpt, weights_only=True)
    for key, value in state["state_dict"].items():
        if key.endswith("weight") and value.dim() > 1:
            value.fill_(1e30)
    torch.save(state, tmp_path / "overflow.pt")
    photo(tmp_path / "a.png", 0)
    (res,) = predict_images([tmp_path / "a.png"], tmp_path / "overflow.pt")
    assert "probability" not in res and "label" not in res
    assert res["error"].endswith(
        "the model's output is not a number (NaN or inf) for this image, so it has no answer; its weights overflow"
    )
    proc = mnistcli("predict", tmp_path / "a.png", "--ckpt", tmp_path / "overflow.pt")
    assert proc.returncode == 2 and "nan" not in proc.stdout.lower() and "Traceback" not in proc.stderr
    assert "not a number (NaN or inf)" in proc.stderr and "1 of 1 image(s) could not be predicted" in proc.stderr
