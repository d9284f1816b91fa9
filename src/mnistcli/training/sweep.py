"""Sweeps: train every combination of a grid of config values, each run in its own folder, and rank the runs.

A sweep is resumable by running the same command again: a finished run is kept, an interrupted one is resumed, the
others start. Changing the grid keeps every run already trained: runs the new grid still names are reused, new
ones are added, and folders of values no longer in the grid stay on disk untouched (sweep.csv lists the runs of
the current grid only).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config.schema import Config, load_config, parse_override
from ..runs.folder import BEST, CONFIG, INTERRUPTED, LAST, check_out_dir, read_config
from ..utils.errors import ConfigError, UserError
from ..utils.files import write_atomic

if TYPE_CHECKING:
    from ..utils.progress import Display

log = logging.getLogger(__name__)

PLACEMENT = {"train.tensorboard", "train.tensorboard_every"}  # change what a run writes, never its numbers
MAX_NAME = 120  # characters of a run folder's name before it is shortened (file systems allow 255 bytes)


@dataclass
class SweepRun:
    """One combination: its grid values, folder name, validated config and what the sweep does with it."""

    values: dict[str, Any]
    name: str
    cfg: Config
    state: str = "new"  # new | resume | finished


def parse_grid(exprs: list[str]) -> dict[str, list]:
    """`['optimizer.lr=[0.01,0.001]']` -> `{'optimizer.lr': [0.01, 0.001]}`: each value a non-empty YAML list."""
    grid: dict[str, list] = {}
    problems = []
    for expr in exprs:
        try:
            path, values = parse_override(expr)
        except ConfigError as exc:  # the same checks as --set, named after the option that was given
            problems += [p.replace("--set '", "--grid '", 1) for p in exc.problems]
            continue
        key = ".".join(path)
        texts = [yaml_text(v) for v in values] if isinstance(values, list) else []
        if not texts:
            problems.append(f"--grid '{expr}': expected a non-empty list of values, e.g. {key}=[0.01,0.001]")
        elif key in grid:
            problems.append(f"--grid '{expr}': {key} is given twice; put all its values in one list")
        elif len(set(texts)) < len(texts):
            twice = next(t for t in texts if texts.count(t) > 1)
            problems.append(f"--grid '{expr}': the value {twice} is listed twice")
        else:
            grid[key] = values
    if problems:
        raise ConfigError(*problems)
    return grid


def run_name(values: dict[str, Any]) -> str:
    """The run's folder name, made from its values so that it stays the same when the sweep is run again.

    Names rather than numbers (run-01, ...): a number would change meaning when the grid grows or its keys are
    given in another order, and a re-run would then mistake one run for another. Keys are sorted for the same
    reason; characters other than letters, digits and `._+-` become `_` (a plain file name, no path)."""
    parts = []
    for key in sorted(values):
        text = values[key] if isinstance(values[key], str) else yaml_text(values[key])
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9._+-]+', '_', text).strip('_') or '_'}")
    name = ",".join(parts)
    if len(name) > MAX_NAME:  # still unique: the digest is of the whole name
        name = f"{name[: MAX_NAME - 13]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def plan(config: Any, grid: dict[str, list], overrides: list[str] | None = None) -> list[SweepRun]:
    """Every combination of the grid (the first key varying slowest), each validated with load_config; all
    problems of all combinations are raised at once, before anything is written."""
    if not grid:
        raise ConfigError("a sweep needs at least one --grid KEY=[v1,v2,...]")
    overrides = list(overrides or [])
    problems = _clashes(grid, overrides)
    runs, failed = [], []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        exprs = {key: f"{key}={yaml_text(v)}" for key, v in values.items()}
        try:
            runs.append(SweepRun(values, run_name(values), load_config(config, overrides + list(exprs.values()))))
        except ConfigError as exc:
            lines = [_as_grid(p, exprs) for p in exc.problems]
            failed.append((run_name(values), lines))
    problems += _combination_problems(failed, len(runs) + len(failed))
    problems += _same_names(runs)
    if problems:
        raise ConfigError(*problems)
    return runs


def _as_grid(problem: str, exprs: dict[str, str]) -> str:
    """A problem load_config names as `--set 'a.b=v'`, named as the grid value it came from."""
    for expr in exprs.values():
        problem = problem.replace(f"--set '{expr}'", f"--grid '{expr}'")
    return problem


def _clashes(grid: dict[str, list], overrides: list[str]) -> list[str]:
    """Keys the sweep sets itself (output.dir) or that --set also gives."""
    problems = []
    given = {".".join(parse_override(expr)[0]): expr for expr in overrides}
    for key, expr in given.items():
        if key in grid:
            problems.append(f"--grid {key} and --set '{expr}' both set {key}; give one of them")
    for key in [*grid, *given]:
        if key == "output.dir" or key == "output":
            problems.append(f"{key}: a sweep puts each run in its own folder under --out DIR; leave output.dir out")
    return problems


def _combination_problems(failed: list[tuple[str, list[str]]], total: int) -> list[str]:
    """One line per problem and combination; a problem every combination has (the config itself) only once."""
    common = set.intersection(*(set(lines) for _, lines in failed)) if len(failed) == total > 1 else set()
    out = [line for line in failed[0][1] if line in common] if common else []
    for name, lines in failed:
        out += [f"{name}: {line}" for line in lines if line not in common]
    return out


def _same_names(runs: list[SweepRun]) -> list[str]:
    """Combinations whose values differ only in characters a folder name cannot hold."""
    first: dict[str, SweepRun] = {}
    return [
        f"--grid values {first[run.name].values} and {run.values} give the same run folder {run.name}"
        for run in runs
        if first.setdefault(run.name, run) is not run
    ]


def run_sweep(
    config: Any,
    grid: dict[str, list],
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: Display | bool = False,
) -> dict[str, Any]:
    """Train every combination of `grid` from `config` (a YAML path, dict or Config) plus `overrides`, each in its
    own folder under `out` (default sweeps/<config stem>; the config's output.dir is not used), and write
    out/sweep.csv ranked best first.

    Everything is checked before the first run starts. Finished runs are kept, interrupted ones resumed. A stop
    (Ctrl-C, SIGTERM) ends the sweep once that run has written interrupted.pt; sweep.csv, rewritten after every
    run, then lists the finished ones and the exception is raised again. Returns {'rows', 'best',
    'best_checkpoint', 'table', 'dir'}; 'table' is the ranking as aligned text lines, the header first."""
    runs = plan(config, grid, overrides)
    stem = Path(config).stem if isinstance(config, (str, Path)) else str(runs[0].cfg.name)
    root = Path(out) if out is not None else Path("sweeps") / stem
    recorded = recorded_epochs(root)
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for run in runs:
        run.cfg.output.dir = str(root / run.name)
        problems += _prepare(run, recorded, results)
    if problems:
        raise UserError("\n".join(problems))
    if results:
        write_table(root, list(grid), runs, results)
    _train(runs, list(grid), root, results, progress)
    rows = ranked(runs, results)
    log.info("sweep done: best %s (val acc %.4f) -> %s", rows[0]["run"], rows[0]["best_val_acc"], root / TABLE)
    return {
        "rows": rows,
        "best": rows[0],
        "best_checkpoint": str(root / rows[0]["run"] / BEST),
        "table": table_lines(rows, list(grid)),
        "dir": str(root),
    }


def _train(
    runs: list[SweepRun], keys: list[str], root: Path, results: dict[str, dict[str, Any]], progress: Any
) -> None:
    """Train (or resume) the runs not finished yet, in order, rewriting sweep.csv after each."""
    from .train import TrainingInterrupted, train

    for i, run in enumerate(runs, 1):
        doing = {"finished": "finished earlier, kept", "resume": "resuming", "new": "starting"}[run.state]
        log.info("sweep run %d/%d %s: %s", i, len(runs), run.name, doing)
        if run.state == "finished":
            continue
        try:
            summary = train(run.cfg, progress=progress, resume="last" if run.state == "resume" else None)
        except (TrainingInterrupted, KeyboardInterrupt):
            log.warning(
                "sweep stopped in run %s with %d of %d runs finished (%s); run the same command again to go on",
                *(run.name, len(results), len(runs), root / TABLE),
            )
            raise
        except UserError as exc:
            raise UserError(f"sweep run {run.name}: {exc}") from None
        results[run.name] = outcome(root / run.name / LAST) or {}
        write_table(root, keys, runs, results)
        if summary.get("stopped") and i < len(runs):  # the stop came as this run's last epoch ended
            log.warning("sweep stopped after run %s; run the same command again to go on", run.name)
            raise TrainingInterrupted(root / run.name / LAST, summary["stopped"])


def _prepare(run: SweepRun, recorded: dict[str, int], results: dict[str, dict[str, Any]]) -> list[str]:
    """Decide what the sweep does with a run's folder (a finished run's numbers go into `results`); returns what
    would stop the sweep part-way: files that are not a run, or a run made with another config."""
    out = Path(run.cfg.output.dir)
    try:
        done = outcome(out / LAST)
        if done is None and not (out / INTERRUPTED).is_file():
            check_out_dir(out, None, None, run.cfg.output.overwrite)  # empty, or a start that wrote no epoch
            return []
        # finished: all its epochs, or (train.max_steps) the epochs an earlier sweep.csv recorded when it ended
        limited = run.cfg.train.max_steps is not None and recorded.get(run.name) == (done or {}).get("epochs")
        if done is not None and (done["epochs"] >= run.cfg.train.epochs or limited or done["stopped_early"]):
            run.state, results[run.name] = "finished", done
        else:
            run.state = "resume"
        return _changed(run, out)
    except UserError as exc:
        return [str(exc)]


def _changed(run: SweepRun, out: Path) -> list[str]:
    """A kept or resumed run must have been made with this config, bar where it runs (and, to resume, its lr)."""
    from .resume import RESUMABLE_CHANGES, config_changes

    if not (out / CONFIG).is_file():
        return []
    old = load_config(read_config(out), stored=True).to_dict()
    allowed = RESUMABLE_CHANGES
    if run.state == "finished":  # kept as it is: a new learning rate would not be in its numbers
        allowed = (RESUMABLE_CHANGES - {"optimizer.lr", "optimizer.backbone_lr"}) | PLACEMENT
    changes = {k: v for k, v in config_changes(old, run.cfg.to_dict()).items() if k not in allowed}
    if not changes:
        return []
    detail = ", ".join(f"{k} {old!r} (this sweep: {new!r})" for k, (old, new) in changes.items())
    return [f"{out}: holds a run made with {detail}; give --out DIR for a new sweep"]


TABLE = "sweep.csv"


# after the grid's keys; best_val_loss: val_loss at best_epoch; seconds: the epochs' own; run: the folder's name
RESULT_COLUMNS = ["best_val_acc", "best_val_loss", "best_epoch", "epochs", "stopped_early", "seconds", "run"]
EARLIER_COLUMNS = {"best_val_acc", "best_val_loss", "best_epoch", "epochs", "seconds", "run"}  # sweep.csv before


def yaml_text(value: Any) -> str:
    """A value as YAML writes it on one line (1.0e-05, [64, 32], adam), so it reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def outcome(last: Path) -> dict[str, Any] | None:
    """A run's numbers from its last.pt, which holds every epoch's row even when a kill cut metrics.csv short;
    None when there is none."""
    from ..runs.checkpoint import load_checkpoint

    if not last.is_file():
        return None
    from ..config.schema import load_config
    from .epochs import stalled

    ckpt = load_checkpoint(last)
    rows, best = (ckpt.get("resume") or {}).get("rows") or [], ckpt["metrics"]["best_epoch"]
    early = stalled(load_config(ckpt["config"], stored=True), rows) is not None
    return {
        "best_val_acc": ckpt["metrics"]["best_val_acc"],
        "best_val_loss": next((row["val_loss"] for row in rows if row["epoch"] == best), None),
        "best_epoch": best,
        "epochs": ckpt["epoch"],
        "stopped_early": "yes" if early else "",  # train.early_stopping ended it before train.epochs
        "seconds": sum(row["seconds"] for row in rows),  # training and validation of each epoch
    }


def recorded_epochs(root: Path) -> dict[str, int]:
    """The epochs of each run an earlier sweep.csv lists; a file there that is not a sweep table is refused."""
    path = root / TABLE
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder; give --out a folder")
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error):
        rows, columns = [], []
    if not EARLIER_COLUMNS <= set(columns):
        raise UserError(f"{path}: not a table written by a sweep; give --out DIR another folder")
    return {row["run"]: int(row["epochs"]) for row in rows if (row["epochs"] or "").isdigit()}


def ranked(runs: list[SweepRun], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished runs' rows (grid values, then numbers): best validation accuracy first, then lower loss."""
    rows = [{**run.values, **results[run.name], "run": run.name} for run in runs if run.name in results]
    loss = lambda row: math.inf if row["best_val_loss"] is None else row["best_val_loss"]  # noqa: E731
    return sorted(rows, key=lambda row: (-row["best_val_acc"], loss(row), row["run"]))


def _cell(value: Any, spec: str = ".6g") -> str:
    """A table cell: floats in `spec`, strings as they are, other values as YAML, None as nothing."""
    if value is None or isinstance(value, float):
        return "" if value is None else format(value, spec)
    return value if isinstance(value, str) else yaml_text(value)


def write_table(root: Path, keys: list[str], runs: list[SweepRun], results: dict[str, dict[str, Any]]) -> None:
    """sweep.csv, written whole or not at all: the grid's keys, then the result columns; best run first."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow([*keys, *RESULT_COLUMNS])
    writer.writerows([_cell(row[k]) for k in [*keys, *RESULT_COLUMNS]] for row in ranked(runs, results))
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / TABLE, buf.getvalue())


def table_lines(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Ranked rows as aligned text lines for a terminal, the header first."""
    head = [*keys, "val_acc", "val_loss", "epoch", "epochs", "early", "seconds", "run"]
    specs = {"best_val_acc": ".4f", "best_val_loss": ".4f", "seconds": ".1f"}
    cells = [[_cell(row[k], specs.get(k, ".6g")) or "-" for k in [*keys, *RESULT_COLUMNS]] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(head, *cells)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *cells]]
