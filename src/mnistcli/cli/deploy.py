"""The commands that use a trained model: `predict` (from a checkpoint or an exported file) and `export` (a
TorchScript or ONNX file, checked against PyTorch before it is kept). Each imports torch only when it runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..utils.errors import UserError
from ..utils.names import shown
from .call import file_arg, import_torch, setup_logging, user_errors


def export(
    ckpt: Path = typer.Option(..., "--ckpt", metavar="CKPT", help="Checkpoint written by `mnistcli train`."),
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
    tta: str = typer.Option(
        "none", "--tta", metavar="none|flip|shift|flip+shift", help="Build predict --tta's averaging into the file."
    ),
) -> None:
    """Export a checkpoint as one file that takes images at the stored shape and returns class probabilities
    (pipeline and calibration inside); it is kept only if, loaded back with its runtime, it matches PyTorch.

    A TorchScript file runs its code: load only files you trust. An ONNX file holds a graph and runs no Python
    code."""
    setup_logging(False)

    with user_errors():
        import_torch()
        file_arg(ckpt, "--ckpt")
        file_arg(out, "--out")
        from ..deploy.export import export_checkpoint

        res = export_checkpoint(ckpt, fmt, out, input_kind, check_images, device, tta)
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


def predict(
    images: list[str] = typer.Argument(
        ...,
        metavar="IMAGE",
        help="Image files (PNG, JPEG, ...), folders (searched with their sub-folders for image files) or patterns "
        "such as 'photos/*.jpg'.",
    ),
    ckpt: Path | None = typer.Option(None, "--ckpt", metavar="CKPT", help="Checkpoint written by `mnistcli train`."),
    model: Path | None = typer.Option(
        None,
        "--model",
        metavar="FILE",
        help="Instead of --ckpt: a TorchScript or ONNX file written by `mnistcli export` (classes and input spec "
        "are read from the file). A TorchScript file runs its code: load only files you trust; an ONNX file runs "
        "no Python code, and a graph that loops is refused.",
    ),
    topk: int = typer.Option(3, "--topk", metavar="K", help="How many classes to list per image."),
    preprocess: str = typer.Option(
        "auto", "--preprocess", metavar="auto|mnist|none", help="auto | mnist | none: how images are prepared."
    ),
    show_input: Path | None = typer.Option(
        None, "--show-input", metavar="DIR", help="Save what the network saw, as PNG, here."
    ),
    max_pixels: int = typer.Option(
        64_000_000,
        "--max-pixels",
        metavar="N",
        help="Refuse images of more pixels, from their header, before decoding.",
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        metavar="FILE",
        help="Write one row per image into a new FILE.csv or FILE.jsonl (an existing file is never replaced).",
    ),
    tta: str = typer.Option(
        "none",
        "--tta",
        metavar="none|flip|shift|flip+shift",
        help="Average each image's probabilities over its mirror image (flip) and/or four shifts by 1/16 of a side.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
) -> None:
    """Predicted class and top-k probabilities for each image, from the checkpoint alone or an exported model."""
    with user_errors():
        for path, option in ((ckpt, "--ckpt"), (model, "--model"), (output, "--output"), (show_input, "--show-input")):
            file_arg(path, option)
        if output is not None and as_json:
            raise UserError("--json and --output: give one of them (--output FILE.jsonl writes the JSON lines)")
        from ..deploy.predict import check_output, check_source, predict_images, write_output

        check_source(ckpt, model)
        target = None if output is None else check_output(output)  # before any work: a refusal costs nothing
        results = predict_images(
            images, ckpt, topk, preprocess, show_input, model_path=model, max_pixels=max_pixels, tta=tta
        )
        if target is not None:
            write_output(results, target)
    if output is not None:
        typer.echo(f"wrote {len(results)} row(s) to {output}")
    for res in results:
        if "error" in res:
            typer.echo(f"error: {shown(res['error'])}", err=True)
        elif output is not None:
            continue
        elif as_json:
            typer.echo(json.dumps(res))
        else:
            top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in res["topk"])
            seen = f"  input: {shown(res['input_png'])}" if "input_png" in res else ""
            name = shown(res["path"])  # a file name that is not valid UTF-8 or holds control characters: escaped
            typer.echo(f"{name}: {res['label']} (index {res['index']}, p={res['probability']:.3f})  top: {top}{seen}")
    failed = sum("error" in r for r in results)
    if failed:
        typer.echo(f"error: {failed} of {len(results)} image(s) could not be predicted", err=True)
        raise typer.Exit(2)
