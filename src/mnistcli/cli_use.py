"""The commands that use a trained checkpoint: `eval` and `predict`. Each imports torch only when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from .clirun import run, setup_logging
from .errors import UserError


def eval_(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    split: str = typer.Option("test", "--split", help="test | val | train."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the dataset lives (image_folder: the split's folder)."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    report: Path | None = typer.Option(
        None,
        "--report",
        metavar="PATH",
        help="Write the JSON report here [default: beside the checkpoint, <name>.eval.json for the test split, "
        "<name>.eval_<split>.json for the others]. An earlier report of the same checkpoint and split is replaced "
        "(eval's own output, made again by running eval); any other file is refused.",
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Write no report file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss, accuracy and per-class accuracy of a checkpoint on a split of its dataset; saved as a JSON report."""
    setup_logging(as_json)

    def work() -> tuple[dict[str, Any], Path | None]:
        if report is not None and no_report:
            raise UserError("--report and --no-report: give one of them")
        from .evaluation import check_report, evaluate_checkpoint, report_path

        path = None if no_report else report or report_path(ckpt, split)
        if path is not None:  # before any work: a file that is not an earlier report is refused
            check_report(path, ckpt, split, asked=report is not None)
        progress = not as_json and sys.stderr.isatty()
        return evaluate_checkpoint(ckpt, split, data_root, device, progress=progress), path

    res, path = run(work)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(
            f"{res['dataset']} {res['split']}: accuracy {res['accuracy']:.4f}  loss {res['loss']:.4f}  n {res['n']}"
        )
        for name, acc in res["per_class"].items():
            typer.echo(f"  {name:>20}  {acc:.4f}")
    if path is not None:
        from .evaluation import write_report

        if run(lambda: write_report(res, path, asked=report is not None)) and not as_json:
            typer.echo(f"report: {path}")


def predict(
    images: list[str] = typer.Argument(
        ...,
        metavar="IMAGE",
        help="Image files (PNG, JPEG, ...), folders (searched with their sub-folders for image files) or patterns "
        "such as 'photos/*.jpg'.",
    ),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    topk: int = typer.Option(3, "--topk", help="How many classes to list per image."),
    preprocess: str = typer.Option("auto", "--preprocess", help="auto | mnist | none: how images are prepared."),
    show_input: Path | None = typer.Option(None, "--show-input", help="Save what the network saw, as PNG, here."),
    output: Path | None = typer.Option(
        None,
        "--output",
        metavar="FILE",
        help="Write one row per image into a new FILE.csv or FILE.jsonl (an existing file is never replaced).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
) -> None:
    """Predicted class and top-k probabilities for each image, from the checkpoint alone."""

    def work() -> list[dict[str, Any]]:
        if output is not None and as_json:
            raise UserError("--json and --output: give one of them (--output FILE.jsonl writes the JSON lines)")
        from .prediction import check_output, predict_images, write_output

        target = None if output is None else check_output(output)  # before any work: a refusal costs nothing
        results = predict_images(images, ckpt, topk, preprocess, show_input)
        if target is not None:
            write_output(results, target)
        return results

    results = run(work)
    if output is not None:
        typer.echo(f"wrote {len(results)} row(s) to {output}")
    for res in results:
        if "error" in res:
            typer.echo(f"error: {res['error']}", err=True)
        elif output is not None:
            continue
        elif as_json:
            typer.echo(json.dumps(res))
        else:
            top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in res["topk"])
            seen = f"  input: {res['input_png']}" if "input_png" in res else ""
            typer.echo(
                f"{res['path']}: {res['label']} (index {res['index']}, p={res['probability']:.3f})  top: {top}{seen}"
            )
    failed = sum("error" in r for r in results)
    if failed:
        typer.echo(f"error: {failed} of {len(results)} image(s) could not be predicted", err=True)
        raise typer.Exit(2)
