"""`predict_images`: class names and top-k probabilities for image files, from a checkpoint alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model, outputs_log_probs
from .errors import UserError
from .inputspec import InputSpec
from .pipeline import network_input, resized_input
from .preprocess import mode_for, open_image, prepare_pixels, save_pixels

BATCH = 256  # images per forward pass


def predict_images(
    paths: list[str | Path],
    ckpt_path: str | Path,
    topk: int = 5,
    preprocess: str = "auto",
    show_input: str | Path | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One result per path: label, index, probability, top-k and `input_png` if saved, or `error` if it failed."""
    if topk < 1:
        raise UserError(f"--topk must be >= 1, got {topk}")
    folder = None if show_input is None else input_folder(show_input)  # before the slow part, so a typo costs nothing
    model, info = load_model(ckpt_path, device)
    spec, classes = info["input_spec"], info["classes"]
    mode = mode_for(spec, preprocess)
    results: list[dict[str, Any]] = []
    ready: list[tuple[int, torch.Tensor]] = []
    for path in paths:
        try:
            pixels = prepare_pixels(open_image(path), spec, mode)
        except UserError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        results.append({"path": str(path)})
        ready.append((len(results) - 1, pixels))
    k = min(topk, len(classes))
    with torch.inference_mode():
        for start in range(0, len(ready), BATCH):
            chunk = ready[start : start + BATCH]
            x = network_input(torch.stack([px for _, px in chunk]).to(device), spec)
            out = model(x).float()
            probs = out.exp() if outputs_log_probs(info["arch"]) else out.softmax(1)
            top_p, top_i = probs.topk(k, dim=1)
            for (slot, _), p_row, i_row in zip(chunk, top_p.tolist(), top_i.tolist()):
                top = [{"label": classes[i], "index": i, "probability": p} for p, i in zip(p_row, i_row)]
                results[slot].update(
                    label=top[0]["label"], index=top[0]["index"], probability=top[0]["probability"], topk=top
                )
    if folder is not None:
        _show(ready, results, spec, folder)
    return results


def input_folder(path: str | Path) -> Path:
    """The --show-input folder, created if missing; a file there, or a folder that cannot be written, is a UserError."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--show-input {path}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        raise UserError(f"--show-input {path}: cannot create the folder (part of the path is a file)") from None
    except OSError as exc:
        raise UserError(f"--show-input {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--show-input {path}: folder is not writable (Permission denied)")
    return folder


def _show(ready: list[tuple[int, torch.Tensor]], results: list[dict[str, Any]], spec: InputSpec, folder: Path) -> None:
    """Save what the network saw for each image (before normalization) as a new PNG; its path goes in `input_png`."""
    for slot, pixels in ready:
        seen = resized_input(pixels[None], spec)[0].mul(255).round().clamp(0, 255).to(torch.uint8)
        results[slot]["input_png"] = str(_save_new(seen, folder, Path(results[slot]["path"]).stem))


def _save_new(pixels: torch.Tensor, folder: Path, stem: str) -> Path:
    """Write `<stem>.input.png`, or `<stem>.input-2.png`, `-3`... when taken: no existing file is ever replaced."""
    n = 1
    while True:
        path = folder / (f"{stem}.input.png" if n == 1 else f"{stem}.input-{n}.png")
        try:
            save_pixels(pixels, path)
            return path
        except FileExistsError:
            n += 1  # another image with this stem, or a file of the user's: try the next name
        except OSError as exc:
            raise UserError(f"--show-input {folder}: cannot write {path.name} ({exc.strerror or exc})") from None
