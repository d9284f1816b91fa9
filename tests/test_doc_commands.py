"""The commands README and docs/ show, checked against the real CLI.

Every command they show (each line of a code block that starts mnistcli, and each inline command that names a file)
is parsed by mnistcli's own command line, so a renamed command or option, a missing argument or a bad value fails
here; each config under configs/ it names is resolved with its `--set` values, as `train` would before any work.
Shell pieces are read as a shell would: `#` comments, backslash continuations, everything from a pipe or redirection
on dropped, and the variables of a loop body (`$seed`, `${r:+...}`) taken as 1 and as nothing.

Then the quick start runs as written in a fresh clone's layout (configs/, data/samples, the MNIST .gz files git
holds, docs/img): README's `.venv/bin/mnistcli ...` lines in order (doctor, train, eval, predict), then every "Made
by:" command of README and docs/COMMANDS.md, which redraw the pictures in the clone's docs/img, and DEPLOY's marked
blocks, on the checkpoint the quick start made. Everything they write lands in the clone.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from forkserver import mnistcli as forked
from typer.main import get_command

from mnistcli.cli.app import app
from mnistcli.config.schema import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAUNCHER = re.compile(r"^(\$ )?(\.venv/bin/mnistcli|mnistcli|python -m mnistcli|torchrun .* -m mnistcli) ")
PLACEHOLDER = re.compile(r"\[|\||\.\.\.|\(|\b[A-Z][A-Z0-9_]+\b")  # a synopsis: [--opt], a|b, IMAGE..., CONFIG
SHELL_END = {"|", ">", "2>&1", "&&", ";"}
DEPLOY_MARKER = "<!-- deploy-commands -->"


def argv_of(line: str) -> list[str]:
    """The arguments after `mnistcli` (or `python -m mnistcli`, `torchrun ... -m mnistcli`) in a shell line."""
    line = re.sub(r"\$\{[^}]*\}", "", line)  # ${r:+--set "$r"}: empty, as when the variable is unset
    words = shlex.split(re.sub(r"\$\w+", "1", line), comments=True)
    words = words[: next((i for i, w in enumerate(words) if w in SHELL_END), len(words))]
    start = words.index("mnistcli") + 1 if "mnistcli" in words else 1  # -m mnistcli, or .venv/bin/mnistcli
    return words[start:]


def shown_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each command line in a code block and each inline command naming a file."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if LAUNCHER.match(line.strip()):
                    found.append((f"{doc.name}: {line.strip()}", argv_of(line.strip().removeprefix("$ "))))
        for span in re.findall(r"`(mnistcli [^`\n]+)`", text):
            if ("/" in span or ".yaml" in span) and not PLACEHOLDER.search(span):
                found.append((f"{doc.name}: {span}", argv_of(span)))
    return found


def parse(argv: list[str]) -> tuple[str, dict]:
    """The command's dotted name and its parsed parameters, by mnistcli's own click command (nothing runs)."""
    command, ctx, names = get_command(app), None, []
    while hasattr(command, "get_command"):  # a group: the next word names its command
        assert argv and not argv[0].startswith("-"), f"no command after {' '.join(names)!r}"
        ctx = command.context_class(command, info_name=names[-1] if names else "mnistcli", parent=ctx)
        name, argv = argv[0], argv[1:]
        command = command.get_command(ctx, name)
        assert command is not None, f"no command {name!r}"
        names.append(name)
    return " ".join(names), command.make_context(names[-1], list(argv), parent=ctx).params


def test_the_docs_show_many_commands() -> None:
    """The extraction finds what the docs hold (a format change that hid them all would pass the next test)."""
    shown = shown_commands()
    assert len(shown) >= 50
    docs = {where.split(":")[0] for where, _ in shown}
    assert {"README.md", "COMMANDS.md", "DEPLOY.md", "BENCHMARKS.md", "SCALING.md", "TRANSFER.md"} <= docs


def test_every_shown_command_parses_and_its_config_resolves() -> None:
    problems = []
    for where, argv in shown_commands():
        try:
            command, params = parse(argv)
            config = params.get("config")
            if config is not None and str(config).startswith("configs/"):  # bad.yaml and the like are examples
                load_config(REPO / config, list(params.get("set_") or params.get("overrides") or []))
        except Exception as exc:  # each problem said with the line it comes from, all at once
            problems.append(f"{where}\n    {type(exc).__name__}: {getattr(exc, 'message', exc)}")
    assert not problems, "\n".join(problems)


def test_a_wrong_option_in_a_doc_would_be_found() -> None:
    with pytest.raises(Exception, match="--ckpts"):
        parse(argv_of("mnistcli eval --ckpts checkpoints/mnist_fast/best.pt"))
    with pytest.raises(AssertionError, match="evaluate"):
        parse(argv_of("mnistcli evaluate --ckpt x.pt"))
    assert (
        parse(argv_of("torchrun --standalone --nproc_per_node=4 -m mnistcli train configs/mnist_cnn.yaml # x"))[0]
        == "train"
    )
    assert argv_of('mnistcli train c.yaml --set seed=$seed ${r:+--set "$r"} 2>&1 | cat') == [
        "train",
        "c.yaml",
        "--set",
        "seed=1",
    ]


def run(clone: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = forked(*argv, cwd=clone, timeout=600)
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc


def quick_start() -> list[list[str]]:
    """README's `.venv/bin/mnistcli ...` command lines (in its set-up block or after a `$ ` prompt), in order."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    return [argv_of(s) for line in lines if (s := line.removeprefix("$ ")).startswith(".venv/bin/mnistcli ")]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A fresh clone's layout after README's quick start ran in it; with the quick start's outputs."""
    folder = tmp_path_factory.mktemp("clone")
    for part in ("configs", "data/samples", "docs/img"):
        shutil.copytree(REPO / part, folder / part)
    (folder / "data" / "MNIST" / "raw").mkdir(parents=True)
    for gz in (REPO / "data" / "MNIST" / "raw").glob("*.gz"):  # what git holds: the first run unpacks them
        shutil.copy(gz, folder / "data" / "MNIST" / "raw")
    (folder / "checkpoints").mkdir()
    return folder, [run(folder, argv).stdout for argv in quick_start()]


def test_readme_quick_start_runs_as_written(clone: tuple[Path, list[str]]) -> None:
    assert [argv[0] for argv in quick_start()] == ["doctor", "train", "eval", "predict"]
    folder, outputs = clone
    assert outputs[3].startswith("data/samples/digit_7.png: 7 - seven (index 7, p=")
    assert (folder / "checkpoints" / "mnist_fast" / "best.pt").is_file()


def made_by(doc: Path) -> list[list[str]]:
    """The commands of each "Made by:" paragraph, in order."""
    paragraphs = re.findall(r"^Made by:(.*?)(?:\n\n|\Z)", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [argv_of(span) for text in paragraphs for span in re.findall(r"`(mnistcli [^`]+)`", text)]


def test_made_by_commands_redraw_the_pictures(clone: tuple[Path, list[str]]) -> None:
    folder, _ = clone
    commands = []
    for argv in made_by(REPO / "README.md") + made_by(REPO / "docs" / "COMMANDS.md"):
        if argv not in commands:
            commands.append(argv)
    assert [argv[:2] for argv in commands] == [
        ["plot", "checkpoints/mnist_fast"],
        ["eval", "checkpoints/mnist_fast/best.pt"],
        ["eval", "checkpoints/mnist_fast/best.pt"],
        ["data", "show"],
        ["lr-find", "configs/mnist_fast.yaml"],
    ]
    for argv in commands:
        run(folder, argv)
    drawn = ["curves", "confusion_matrix", "reliability", "mistakes", "mnist_train_samples", "lr_find"]
    for name in drawn:  # each picture was drawn again (the copies kept git's times), with mnistcli's mark in it
        picture = folder / "docs" / "img" / f"{name}.png"
        assert picture.stat().st_mtime_ns != (REPO / "docs" / "img" / f"{name}.png").stat().st_mtime_ns, name
        assert b"tEXtmnistcli" in picture.read_bytes(), name
    assert sorted(p.name for p in (folder / "docs" / "img").iterdir()) == sorted(
        p.name for p in (REPO / "docs" / "img").iterdir()
    )


def deploy_commands() -> list[list[str]]:
    """Each line of DEPLOY's ```bash blocks that directly follow a marker line."""
    text = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    blocks = re.findall(re.escape(DEPLOY_MARKER) + r"\n```bash\n(.*?)\n```\n", text, flags=re.DOTALL)
    assert len(blocks) == text.count(DEPLOY_MARKER) >= 1, "each marker must be followed by a ```bash block"
    return [argv_of(line) for block in blocks for line in block.splitlines() if line.strip()]


def test_deploy_commands_run_as_written(clone: tuple[Path, list[str]]) -> None:
    folder, _ = clone
    for argv in deploy_commands():
        run(folder, argv)
    assert [argv[0] for argv in deploy_commands()] == ["export", "export", "predict", "predict"]
    made = {p.name for p in (folder / "checkpoints" / "mnist_fast").iterdir()}
    assert {"best.onnx", "best.onnx.json", "mnist.pt", "mnist.pt.json"} <= made
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "configs", "data", "docs"]  # nothing else
