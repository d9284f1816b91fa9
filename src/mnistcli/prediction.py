"""`predict_images`: class names and top-k probabilities for image files, from a checkpoint alone."""

from __future__ import annotations

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
    """One result per path: label, index, probability and top-k, or `error` for an image that failed."""
    if topk < 1:
        raise UserError(f"--topk must be >= 1, got {topk}")
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
    if show_input is not None:
        _show(ready, results, spec, Path(show_input))
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
    return results


def _show(ready: list[tuple[int, torch.Tensor]], results: list[dict[str, Any]], spec: InputSpec, folder: Path) -> None:
    """Save what the network saw for each image (before normalization) as PNG, named after the image."""
    for slot, pixels in ready:
        seen = resized_input(pixels[None], spec)[0].mul(255).round().clamp(0, 255).to(torch.uint8)
        save_pixels(seen, folder / f"{Path(results[slot]['path']).stem}.png")
