"""`mnistcli eval`: a checkpoint scored on a split (report, plots, calibration), or two compared. Imports torch
only when it runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from ..utils.errors import UserError
from .call import file_arg, import_torch, setup_logging, user_errors


def eval_(
    given: list[Path] | None = typer.Argument(
        None,
        metavar="CKPT",
        help="Checkpoint written by `mnistcli train` (as --ckpt); two of them: compared on the same images.",
    ),
    ckpt_option: list[Path] | None = typer.Option(
        None,
        "--ckpt",
        metavar="CKPT",
        help="Checkpoint written by `mnistcli train`; give it twice to compare two on the same images.",
    ),
    split: str = typer.Option("test", "--split", metavar="test|val|train", help="test | val | train."),
    data_root: Path | None = typer.Option(
        None, "--data-root", metavar="DIR", help="Where the dataset lives (image_folder: the split's folder)."
    ),
    device: str = typer.Option("auto", "--device", metavar="D", help="auto | cpu | cuda | cuda:N | mps."),
    report: Path | None = typer.Option(
        None,
        "--report",
        metavar="PATH",
        help="Write the JSON report here [default: beside the checkpoint, <name>.eval.json for the test split, "
        "<name>.eval_<split>.json for the others]. An earlier report of the same checkpoint and split is replaced "
        "(eval's own output, made again by running eval); any other file is refused.",
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Write no report file."),
    plots: Path | None = typer.Option(
        None, "--plots", metavar="DIR", help="Save confusion_matrix.png, mistakes.png and reliability.png into DIR."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="With --plots: redraw earlier pictures of mnistcli's there (nothing else is replaced)."
    ),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="First fit a temperature on the validation split and store it in the checkpoint; eval and predict "
        "then report calibrated probabilities.",
    ),
    tta: str = typer.Option(
        "none",
        "--tta",
        metavar="none|flip|shift|flip+shift",
        help="Test-time augmentation: average each image's probabilities over its mirror image (flip) and/or four "
        "shifts by 1/16 of a side (shift), as predict --tta does.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Accuracy (with its 95% interval), loss, per-class precision/recall/F1, the confusion matrix and the
    calibration error of a checkpoint on a split of its dataset; saved as a JSON report."""
    setup_logging(as_json)
    ckpt = [*(given or []), *(ckpt_option or [])]
    with user_errors():
        _checkpoints(ckpt) and _single_process(len(ckpt) > 1, calibrate)
    if len(ckpt) > 1:
        _compare(ckpt, split, data_root, device, as_json)
        return

    with user_errors():
        import_torch()
        if report is not None and no_report:
            raise UserError("--report and --no-report: give one of them")
        from ..evaluation.report import check_report, report_path

        path = None if no_report else report or report_path(ckpt[0], split)
        if path is not None:  # before any work: a file that is not an earlier report is refused
            check_report(path, ckpt[0], split, asked=report is not None)
        if plots is not None:
            _check_plots(plots, replace)
        if calibrate:
            _calibrate(ckpt[0], data_root, device, as_json)
        bar = not as_json and sys.stderr.isatty()
        res = _evaluate(ckpt[0], split, data_root, device, plots, bar, tta, replace)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        typer.echo(json.dumps(res))
    else:
        for line in report_lines(res):
            typer.echo(line)
    if path is not None:
        from ..evaluation.report import write_report

        with user_errors():
            written = write_report(res, path, asked=report is not None)
        if written and not as_json:
            typer.echo(f"report: {path}")


PICTURES = ("confusion_matrix.png", "mistakes.png", "reliability.png")


def _checkpoints(ckpts: list[Path]) -> list[Path]:
    """One checkpoint, or two to compare, named as arguments or with --ckpt."""
    if not ckpts:
        raise UserError("eval: no checkpoint given; mnistcli eval CKPT (or --ckpt CKPT), e.g. checkpoints/x/best.pt")
    if len(ckpts) > 2:
        raise UserError(f"eval: give one checkpoint, or two to compare; got {len(ckpts)}")
    return [file_arg(c, "--ckpt") for c in ckpts]


def _single_process(compare: bool, calibrate: bool) -> None:
    """Under torchrun each rank scores its share of one checkpoint's split and rank 0 reports; comparing two
    checkpoints and calibrating run in one process only."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (compare or calibrate):
        what = "comparing two checkpoints" if compare else "--calibrate"
        raise UserError(f"eval: {what} runs in one process; run it without torchrun")


def _check_plots(folder: Path, replace: bool) -> None:
    """--plots DIR: a folder whose pictures of these names do not exist yet, or (--replace) are earlier pictures of
    the same kind that mnistcli drew; nothing else is ever replaced."""
    from ..runs.plots import CONFUSION, MISTAKES, RELIABILITY, check_target
    from ..utils.files import writable_folder

    writable_folder(folder, "--plots")
    for name, kind in zip(PICTURES, (CONFUSION, MISTAKES, RELIABILITY)):
        check_target(folder / name, kind, replace, "--plots")


def _calibrate(ckpt: Path, data_root: Path | None, device: str, quiet: bool) -> None:
    """Fit and store the temperature, saying what it changed on the validation split."""
    from ..evaluation.calibration import calibrate_checkpoint

    res = calibrate_checkpoint(ckpt, data_root, device)
    if not quiet:
        before, after = res["before"], res["after"]
        typer.echo(
            f"calibrated on {res['n']} validation images: temperature {res['temperature']:.4g}  "
            f"ECE {before['ece']:.4f} -> {after['ece']:.4f}  NLL {before['nll']:.4f} -> {after['nll']:.4f}"
        )


def _evaluate(
    ckpt: Path,
    split: str,
    data_root: Path | None,
    device: str,
    plots: Path | None,
    bar: bool,
    tta: str = "none",
    replace: bool = False,
) -> dict:
    """The report; with `plots`, also the confusion matrix, the most confident mistakes and the reliability
    diagram as PNGs."""
    import numpy as np

    from ..evaluation.scores import eval_details, mistake_images
    from ..utils import distributed as ddp

    world = ddp.launched()
    try:
        with ddp.rank0_speaks(world):
            details = eval_details(ckpt, split, data_root, device, progress=bar and world.main, tta=tta)
    finally:
        ddp.stop()
    if plots is None or not world.main:
        return details.report
    from ..runs.plots import save_confusion_matrix, save_mistakes, save_reliability

    res, classes = details.report, details.classes
    save_confusion_matrix(np.asarray(res["confusion_matrix"]), classes, plots / PICTURES[0], replace)
    worst = details.mistakes
    save_mistakes(
        mistake_images(details.split, worst),
        [classes[i] for i in details.true[worst]],
        [classes[i] for i in details.predicted[worst]],
        [float(p) for p in details.confidences[worst]],
        plots / PICTURES[1],
        total=int((~details.correct).sum()),  # all of them, not only those drawn
        replace=replace,
    )
    save_reliability(details.confidences, details.correct, plots / PICTURES[2], replace=replace)
    return {**res, "plots": [str(plots / name) for name in PICTURES]}


def report_lines(res: dict[str, Any]) -> list[str]:
    """eval's report as aligned text: the headline, a per-class table with averages, the confusion matrix."""
    lo, hi = res["accuracy_ci95"]
    lines = [
        f"{res['dataset']} {res['split']}: accuracy {res['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f})  "
        f"loss {res['loss']:.4f}  ECE {res['ece']:.4f}  n {res['n']}"
        + (f"  temperature {res['temperature']:.4g}" if res.get("temperature", 1.0) != 1.0 else ""),
        f"  {'class':>20}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}",
    ]
    rows = [*res["per_class_metrics"].items(), ("macro avg", res["macro"]), ("weighted avg", res["weighted"])]
    for name, m in rows:
        name = name if len(name) <= 20 else name[:19] + "…"
        lines.append(
            f"  {name:>20}  {m['precision']:>9.4f}  {m['recall']:>6.4f}  {m['f1']:>6.4f}  "
            f"{int(m.get('support', res['n'])):>7}"  # the averages are over all n images
        )
    matrix = res["confusion_matrix"]
    if len(matrix) <= 20:  # wider than a terminal beyond that: the JSON report holds it
        width = max(5, len(str(max(max(row) for row in matrix))) + 1)
        lines.append("  confusion matrix (rows: true class, columns: predicted, in class order)")
        lines += ["  " + "".join(f"{v:>{width}}" for v in row) for row in matrix]
    for path in res.get("plots", []):
        lines.append(f"  plot: {path}")
    return lines


def _compare(ckpts: list[Path], split: str, data_root: Path | None, device: str, as_json: bool) -> None:
    """Two checkpoints on the same images: accuracies, disagreements, McNemar's exact test."""
    with user_errors():
        import_torch()
        from ..evaluation.scores import compare_checkpoints

        res = compare_checkpoints(ckpts[0], ckpts[1], split, data_root, device)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['dataset']} {res['split']}, {res['n']} images:")
    typer.echo(f"  A {res['a']}: accuracy {res['accuracy_a']:.4f}; right where B is wrong: {res['only_a']}")
    typer.echo(f"  B {res['b']}: accuracy {res['accuracy_b']:.4f}; right where A is wrong: {res['only_b']}")
    typer.echo(f"  McNemar exact p = {res['p_value']:.3g}: {res['verdict']}")
