"""Generated docs: the config reference matches the schema, and the benchmark page keeps what a run did not measure."""

from __future__ import annotations

import importlib.util
import typing
from pathlib import Path
from types import ModuleType

import pytest

from mnistcli.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from mnistcli.config.validate import RANGES
from mnistcli.models.families import MODELS

REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    """Import scripts/<name>.py (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_rows() -> dict[str, str]:
    """Dotted key -> its row of docs/CONFIG.md."""
    lines = (REPO / "docs" / "CONFIG.md").read_text().splitlines()
    return {line.split("`")[1]: line for line in lines if line.startswith("| `")}


def test_config_reference_is_what_the_script_generates_now() -> None:
    assert (REPO / "docs" / "CONFIG.md").read_text() == script("config_doc").render(), (
        "docs/CONFIG.md is stale: run `python scripts/config_doc.py`"
    )


def test_config_reference_lists_choices_names_and_ranges() -> None:
    rows = config_rows()
    assert "| `data.loader` | `auto` | `auto` \\| `memory` \\| `torch` |" in rows["data.loader"]
    assert "`backbone` \\| `none` \\| `null`" in rows["model.freeze"]  # Literal[...] | None
    assert "| `data.batch_size` | `128` | an integer >= 1 |" in rows["data.batch_size"]
    assert all(f"`{name}`" in rows["model.name"] for name in MODELS)
    for cls, section in ((DataConfig, "data"), (ModelConfig, "model"), (TrainConfig, "train")):
        for field, hint in typing.get_type_hints(cls).items():
            for value in typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else []:
                assert f"`{value}`" in rows[f"{section}.{field}"]
    cell = script("config_doc").cell  # a table cell escapes |, \\ and tags such as <name>
    for key, (_, allowed) in RANGES.items():
        assert cell(allowed) in rows[key], key
    assert Config().train.on_nan == "stop" and "`stop` \\| `skip`" in rows["train.on_nan"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return script("bench_page")


@pytest.fixture
def page(tmp_path: Path) -> Path:
    """A copy of the committed benchmark page."""
    path = tmp_path / "BENCHMARKS.md"
    path.write_text((REPO / "docs" / "BENCHMARKS.md").read_text())
    return path


def between(text: str, key: str, bench: ModuleType) -> str:
    """The text of a page between a section's markers."""
    start, end = bench.markers(key)
    return text.split(start, 1)[1].split(end, 1)[0]


def test_committed_page_has_one_marked_block_per_section(bench: ModuleType) -> None:
    text = (REPO / "docs" / "BENCHMARKS.md").read_text()
    for key, title in bench.SECTIONS.items():
        start, end = bench.markers(key)
        assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end), key
        assert between(text, key, bench).startswith(f"\n### {title}\n"), key


def test_write_replaces_only_the_measured_section(bench: ModuleType, page: Path) -> None:
    before = page.read_text()
    body = bench.section("cold", bench.table([{"import torch s": 0.5, "mnistcli predict s": 0.75, "ratio": 1.5}]), "x")
    bench.write_sections(page, {"cold": body})
    after = page.read_text()
    assert between(after, "cold", bench) == f"\n{body}"
    assert "| 0.5 | 0.75 | 1.5 |" in after and "| 1.34 | 1.56 | 1.16 |" not in after
    old = between(before, "cold", bench)
    assert after.replace(f"\n{body}", old, 1) == before  # every other byte of the page is as it was
    bench.write_sections(page, {"cold": body})
    assert page.read_text() == after  # writing the same again changes nothing
    assert [p.name for p in page.parent.iterdir()] == ["BENCHMARKS.md"]  # no temporary file left


def test_write_adds_a_section_the_page_lacks_and_creates_a_new_page(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "out" / "tp.md"
    body = bench.section("throughput", bench.table([{"network": "n", "ratio": 2.0}]), "x")
    bench.write_sections(path, {"throughput": body})
    start, end = bench.markers("throughput")
    assert path.read_text() == f"# Benchmarks\n\n{start}\n{body}{end}\n"
    design = bench.section("design", bench.table([{"variant": "v", "img/s (median)": 1}]), "x")
    bench.write_sections(path, {"design": design})
    assert path.read_text().startswith(f"# Benchmarks\n\n{start}\n{body}{end}\n")
    assert between(path.read_text(), "design", bench) == f"\n{design}"


def test_a_page_with_broken_markers_is_left_alone(bench: ModuleType, page: Path) -> None:
    start, end = bench.markers("eval")
    page.write_text(page.read_text().replace(end, ""))
    before = page.read_text()
    with pytest.raises(ValueError, match="expected one '<!-- bench.py eval: start -->'"):
        bench.write_sections(page, {"throughput": "t\n", "eval": "e\n"})
    assert page.read_text() == before  # nothing written, not even the section that was fine


def test_section_names_its_date_machine_and_command(bench: ModuleType) -> None:
    text = bench.section("design", "| a |\n|---|\n| 1 |", "python scripts/bench.py --design --write")
    title, when, body = text.split("\n\n")
    assert title == f"### {bench.SECTIONS['design']}"
    assert when.startswith("Measured 2") and "CPU cores, torch" in when
    assert when.endswith(", by `python scripts/bench.py --design --write`.")
    assert body == "| a |\n|---|\n| 1 |\n"
