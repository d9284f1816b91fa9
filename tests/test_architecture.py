"""The tree is the map: imports run one way between the units of docs/ARCHITECTURE.md, with no cycle between any
two modules, counting imports inside functions (only `if TYPE_CHECKING:` blocks are exempt)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mnistcli"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
HEAVY = ("torch", "torchvision", "matplotlib", "tensorboard")  # seconds to import: never for --help or a light tool


def module_name(path: Path) -> str:
    """src/mnistcli/data/loaders.py -> 'data.loaders'; a package's __init__ is the package itself ('' for the root)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child)

    walk(tree)
    return found


def _resolve(modules: set[str], dotted: str) -> str | None:
    """The longest known module a dotted name (within mnistcli) starts with."""
    parts = dotted.split(".") if dotted else []
    for n in range(len(parts), -1, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


def import_graph() -> dict[str, set[str]]:
    """Module ('data.loaders') -> the package's modules it imports, wherever the import statement stands."""
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets = [f"{stem}.{a.name}".strip(".") for a in node.names] + [stem]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mnistcli":
                stem = node.module.partition(".")[2]
                targets = [f"{stem}.{a.name}".strip(".") for a in node.names] + [stem]
            elif isinstance(node, ast.Import):
                targets = [a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "mnistcli"]
            for target in targets:
                found = _resolve(modules, target)
                if found is not None and found != name:
                    edges.add(found)
                    break  # `from .x import y`: y itself when it is a module, else x
        graph[name] = edges
    return graph


def unit_of(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module itself ('' is the package root)."""
    return module.split(".")[0]


def declared_layers() -> list[list[str]]:
    """docs/ARCHITECTURE.md's layer table, lowest first: each row's units (`utils`, `engine.py` -> 'engine')."""
    rows = re.findall(r"^\| (\d+) \| ([^|]+)\|", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M)
    ordered = sorted(rows, key=lambda row: int(row[0]))
    return [[unit.strip(" `/").removesuffix(".py") for unit in units.split(",")] for _, units in ordered]


def test_the_parser_sees_function_level_and_relative_imports() -> None:
    """Known edges, one of each kind: a relative import at the top, one two levels up, one inside a function."""
    graph = import_graph()
    assert "utils.errors" in graph["utils.files"]  # from .errors import ...
    assert "data.datasets" in graph["config.validate"]  # from ..data.datasets import ...
    assert "training.train" in graph[""]  # inside mnistcli.train(): from .training.train import train
    assert "cli.app" in graph["cli"]


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        """Depth-first search; a module met again while still on the path closes a cycle."""
        state[module] = "open"
        for dep in sorted(graph[module]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_run_down_the_declared_layers() -> None:
    """A unit imports only units of lower layers in docs/ARCHITECTURE.md; none imports one of its own layer."""
    layers = declared_layers()
    rank = {unit: i for i, units in enumerate(layers) for unit in units}
    units = {unit_of(m) for m in import_graph()} - {""}
    assert units == set(rank) - {"mnistcli"}, "ARCHITECTURE.md's layer table and src/mnistcli/ name other units"
    rank[""] = rank["mnistcli"]  # the package root: the Python API
    wrong = [
        f"{module} ({unit_of(module) or 'mnistcli'}, layer {rank[unit_of(module)]}) imports {dep} "
        f"({unit_of(dep) or 'mnistcli'}, layer {rank[unit_of(dep)]})"
        for module, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if unit_of(dep) != unit_of(module) and rank[unit_of(dep)] >= rank[unit_of(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_top_level_holds_at_most_sixteen_entries() -> None:
    entries = [p.name for p in SRC.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 16, sorted(entries)


@pytest.mark.parametrize(
    "modules",
    [
        ["mnistcli.cli", "mnistcli.utils", "mnistcli.models", "mnistcli.data", "mnistcli.config", "mnistcli.runs",
         "mnistcli.training", "mnistcli.evaluation", "mnistcli.deploy", "mnistcli.tools"],
        ["mnistcli.config.schema", "mnistcli.config.json_schema", "mnistcli.models.families", "mnistcli.data.datasets",
         "mnistcli.data.input_spec", "mnistcli.data.store", "mnistcli.runs.folder"],
    ],
    ids=["packages-and-cli", "light-modules"],
)  # fmt: skip
def test_packages_and_light_modules_import_no_torch(modules: list[str]) -> None:
    """Every subpackage's __init__, the CLI and the torch-free modules (config tools, registries, data status)."""
    code = f"import sys\nimport {', '.join(modules)}\n"
    code += f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_python_api_is_not_shadowed() -> None:
    """mnistcli.train, evaluate, predict, export and load_model are the API's functions, not modules."""
    import mnistcli

    for name in ("train", "evaluate", "predict", "export", "load_model"):
        assert callable(getattr(mnistcli, name)) and not (SRC / name).exists() and not (SRC / f"{name}.py").exists()


def test_the_path_of_a_train_call_is_the_one_the_architecture_lists(mnist_root: Path, tmp_path: Path) -> None:
    """The package's frames at the first optimizer step of `mnistcli train` (the console command itself, through
    scripts/train_path.py) are the ones docs/ARCHITECTURE.md's "path of a train call" shows, at most eight."""
    shown = re.search(r"## The path of a train call.*?```\n(.*?)```", ARCHITECTURE.read_text(), flags=re.DOTALL)
    assert shown is not None
    expected = " ".join(shown.group(1).split())
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_path.py"), str(REPO / "configs" / "mnist_fast.yaml")]
        + ["--out", str(tmp_path / "run"), "--quiet", "--set", f"data.root={mnist_root}", "--set", "data.limit=64"]
        + ["--set", "data.val_split=16", "--set", "train.max_steps=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[-1]
    assert line == f"{len(expected.split(' > '))} frames: {expected}"
    assert len(expected.split(" > ")) <= 8
