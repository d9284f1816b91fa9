"""`mnistcli export`: a deployable TorchScript or ONNX file, checked against PyTorch before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .call import run, setup_logging


def export(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    fmt: str = typer.Option(
        ..., "--format", metavar="torchscript|onnx", help="torchscript (torch.jit) or onnx (needs the onnx extra)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="FILE",
        help="The file to write [default: beside the checkpoint, <stem>.torchscript.pt or <stem>.onnx]; FILE.json "
        "goes beside it. An existing file is never replaced.",
    ),
    input_kind: str = typer.Option(
        "uint8", "--input", metavar="uint8|float", help="What the file takes: uint8 pixels, or float32 in [0, 1]."
    ),
    check_images: Path | None = typer.Option(
        None,
        "--check-images",
        metavar="DIR",
        help="Check the export on these image files (prepared as predict prepares them) [default: images of the "
        "checkpoint's test split].",
    ),
    device: str = typer.Option(
        "cpu", "--device", metavar="D", help="Where to trace and check: cpu | cuda | cuda:N | mps (ONNX checks on cpu)."
    ),
) -> None:
    """Export a checkpoint as one file that takes images at the stored shape and returns class probabilities
    (pipeline and calibration inside); it is kept only if, loaded back with its runtime, it matches PyTorch."""
    setup_logging(False)

    def work() -> dict[str, Any]:
        from ..deploy.export import export_checkpoint

        return export_checkpoint(ckpt, fmt, out, input_kind, check_images, device)

    res = run(work)
    meta, check = res["metadata"], res["check"]
    inp, outp = meta["input"], meta["output"]
    opset = f", opset {meta['versions']['onnx_opset']}" if "onnx_opset" in meta["versions"] else ""
    typer.echo(
        f"wrote {res['path']} ({meta['model_format']}{opset}): input '{inp['name']}' {inp['dtype']} "
        f"{' x '.join(map(str, inp['shape']))} -> output '{outp['name']}' {' x '.join(map(str, outp['shape']))}"
    )
    typer.echo(
        f"check ({check['runtime']}): {check['source']}, max |dp| {check['max_abs_diff']:.2g} "
        f"(allowed {check['tolerance']:g}), top-1 agree {check['top1_agree']}/{check['images']}, "
        f"batch sizes {', '.join(map(str, check['batch_sizes']))}"
    )
    typer.echo(f"metadata: {res['sidecar']}")
