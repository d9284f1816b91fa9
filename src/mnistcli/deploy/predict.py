"""`predict_images`: class names and top-k probabilities for image files, from a checkpoint alone."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.image_folder import IMAGE_EXTENSIONS
from ..data.input_spec import InputSpec
from ..data.pipeline import check_tta, mode_for, network_input, prepare_pixels, resized_input, tta_views
from ..data.preprocess import MAX_PIXELS, open_image, save_pixels
from ..runs.checkpoint import load_model
from ..utils.errors import UserError
from ..utils.files import writable_folder, write_new
from ..utils.names import shown
from ..utils.runtime import resolve_device

BATCH = 256  # images per forward pass
log = logging.getLogger(__name__)
PATTERN_CHARS = frozenset("*?[")  # what makes an argument a glob pattern
OUTPUT_FORMATS = (".csv", ".jsonl")
NOT_A_NUMBER = (
    "the model's output is not a number (NaN or inf) for this image, so it has no answer; its weights overflow"
)
CSV_COLUMNS = ["path", "label", "index", "probability", "topk"]  # then input_png (with --show-input) and error


def predict_images(
    paths: list[str | Path],
    ckpt_path: str | Path | None,
    topk: int = 5,
    preprocess: str = "auto",
    show_input: str | Path | None = None,
    device: str = "cpu",
    model_path: str | Path | None = None,
    max_pixels: int = MAX_PIXELS,
    tta: str = "none",
) -> list[dict[str, Any]]:
    """One result per image (folders and patterns expanded): label, index, probability, top-k and `input_png` if
    saved, or `error` if it failed. From a checkpoint (`ckpt_path`) or a file `mnistcli export` wrote (`model_path`);
    `tta`: probabilities averaged over flipped and/or shifted views (an export does what it was exported with)."""
    check_source(ckpt_path, model_path)
    check_tta(tta)
    if tta != "none" and model_path is not None:
        raise UserError("--tta applies to --ckpt; an exported file averages what `mnistcli export --tta` built in")
    if topk < 1:
        raise UserError(f"--topk must be >= 1, got {topk}")
    if max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {max_pixels}")
    folder = None if show_input is None else input_folder(show_input)  # before the slow part, so a typo costs nothing
    paths = expand_images(paths)
    dev = resolve_device(device, "device")
    spec, classes, probabilities = _classifier(ckpt_path, model_path, dev, tta)
    mode = mode_for(spec, preprocess)
    results: list[dict[str, Any]] = []
    ready: list[tuple[int, torch.Tensor]] = []
    for path in paths:
        try:
            pixels = prepare_pixels(open_image(path, max_pixels), spec, mode)
        except UserError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        results.append({"path": str(path)})
        ready.append((len(results) - 1, pixels))
    k = min(topk, len(classes))
    with torch.inference_mode():
        for start in range(0, len(ready), BATCH):
            chunk = ready[start : start + BATCH]
            probs = probabilities(torch.stack([px for _, px in chunk]))
            top_p, top_i = probs.topk(k, dim=1)
            finite = torch.isfinite(probs).all(1).tolist()
            for (slot, _), p_row, i_row, ok in zip(chunk, top_p.tolist(), top_i.tolist(), finite):
                if not ok:  # finite weights can still overflow on an image: NaN is no answer
                    results[slot]["error"] = f"{results[slot]['path']}: {NOT_A_NUMBER}"
                    continue
                top = [{"label": classes[i], "index": i, "probability": p} for p, i in zip(p_row, i_row)]
                results[slot].update(
                    label=top[0]["label"], index=top[0]["index"], probability=top[0]["probability"], topk=top
                )
    if folder is not None:
        _show(ready, results, spec, folder)
    return results


def check_source(ckpt_path: str | Path | None, model_path: str | Path | None) -> None:
    """Exactly one of a checkpoint and an exported model to predict with."""
    if (ckpt_path is None) == (model_path is None):
        raise UserError("give exactly one of --ckpt PATH (a checkpoint) and --model FILE (an exported model)")


def class_probabilities(
    model: nn.Module, pixels: torch.Tensor, spec: InputSpec, temperature: float, tta: str = "none"
) -> torch.Tensor:
    """Stored uint8 pixels (N, C, H, W) on the model's device -> class probabilities: predict's (and export's) path;
    `tta`: averaged over the test-time views of each image (pipeline.tta_views)."""
    views = tta_views(network_input(pixels, spec), tta)
    # calibrated: softmax(output / T); for log-softmax models softmax(log p / T) is p^(1/T) renormalised
    probs = [(model(view).float() / temperature).softmax(1) for view in views]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def _classifier(
    ckpt_path: str | Path | None, model_path: str | Path | None, dev: torch.device, tta: str = "none"
) -> tuple[InputSpec, list[str], Callable[[torch.Tensor], torch.Tensor]]:
    """Input spec, class names and a (uint8 batch on the CPU -> probabilities) function of a checkpoint or export."""
    if model_path is not None:
        from .artifact import load_exported

        exported = load_exported(model_path, dev)
        return exported.spec, exported.classes, exported.probabilities
    model, info = load_model(ckpt_path, dev)
    spec, temperature = info["input_spec"], info["temperature"]
    return spec, info["classes"], lambda pixels: class_probabilities(model, pixels.to(dev), spec, temperature, tta)


def expand_images(args: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched for image files; patterns the shell left unexpanded ('photos/*.jpg', quoted)
    expanded here as the shell would. A pattern matching nothing, or a folder with no image, is a UserError."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if not str(arg).strip():  # Path('') is the current folder: never searched by accident
            raise UserError("an image argument is empty; give a file, a folder or a pattern")
        if path.is_dir():
            paths += images_in(path)
        elif not os.path.lexists(path) and PATTERN_CHARS & set(str(arg)):
            matches = sorted(glob.glob(str(arg), recursive=True))
            if not matches:
                raise UserError(f"{arg}: no file matches this pattern")
            paths += [p for m in matches for p in (images_in(Path(m)) if os.path.isdir(m) else [Path(m)])]
        else:
            paths.append(path)  # a file, or a name that is not there: its own error line when read
    return paths


def images_in(folder: Path) -> list[Path]:
    """Image files in a folder and its sub-folders, sorted; hidden ones skipped. A link to a folder inside the tree
    is followed once; a link to a folder outside it is not (`predict /proc` would otherwise search the whole file
    system through /proc/*/root), and how many were skipped is said."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    tree = os.path.realpath(folder)
    outside: list[str] = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        here = os.stat(top)
        if (here.st_dev, here.st_ino) in seen:  # a link back up the tree: already searched
            dirs[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):  # sorted: which name reaches a folder is fixed
            path = os.path.join(top, d)
            real = os.path.realpath(path)
            if os.path.islink(path) and os.path.commonpath([tree, real]) != tree:
                outside.append(path)
            else:
                kept.append(d)
        dirs[:] = kept
        found += [Path(top) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    if outside:
        log.warning(
            "%s: not following %d link(s) to folders outside it: %s%s",
            folder,
            len(outside),
            ", ".join(shown(p) for p in outside[:3]),
            f" and {len(outside) - 3} more" if len(outside) > 3 else "",
        )
    if not found:
        raise UserError(f"{folder}: no image files in this folder or below; looked for {', '.join(IMAGE_EXTENSIONS)}")
    return sorted(found)


def check_output(path: str | Path) -> Path:
    """The --output file: a new .csv or .jsonl file in a writable folder; checked before any work."""
    out = Path(path)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"--output {path}: unknown file type '{out.suffix}'; allowed: a .csv or .jsonl file name")
    if os.path.lexists(out):
        raise UserError(f"--output {path}: the file exists and is never replaced; give a new file name")
    writable_folder(out.parent, "--output")
    return out


def write_output(results: list[dict[str, Any]], path: Path) -> None:
    """One row per image into a new .csv or .jsonl file, written whole or not at all; no file is ever replaced."""
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(res) + "\n" for res in results)
    else:
        columns = CSV_COLUMNS + (["input_png"] if any("input_png" in r for r in results) else []) + ["error"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        for res in results:
            named = {k: shown(res[k]) for k in ("path", "error") if k in res}  # one line per image, always
            writer.writerow({**res, **named, "topk": json.dumps(res["topk"]) if "topk" in res else ""})
        text = buf.getvalue()
    # a file name that is not valid UTF-8 is written escaped (\udce9), never as bytes that break the CSV's encoding
    data = text.encode("utf-8", "backslashreplace")
    write_new(path, data, f"--output {path}: a file of that name appeared while predicting; it was not replaced")


def input_folder(path: str | Path) -> Path:
    """The --show-input folder, created if missing; a file there, or a folder that cannot be written, is a UserError."""
    return writable_folder(Path(path), "--show-input")


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
