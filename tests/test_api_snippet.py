"""docs/PYTHON_API.md's session runs as written: its marked code blocks, in order, in a fresh working folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- api-snippet -->"


def api_snippet() -> str:
    """The ```python blocks that directly follow a marker line in docs/PYTHON_API.md, joined as one session."""
    text = (REPO / "docs" / "PYTHON_API.md").read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARKER) + r"\n```python\n(.*?)\n```\n", text, flags=re.DOTALL)
    assert len(blocks) == text.count(MARKER) >= 1, "each marker must be followed by a ```python block"
    return "\n\n".join(blocks)


def test_python_api_snippet_runs(tmp_path: Path) -> None:
    """What the snippet reads (configs/smoke.yaml, data/samples) is copied in; all it writes lands in tmp_path."""
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "smoke.yaml", tmp_path / "configs")
    shutil.copytree(REPO / "data" / "samples", tmp_path / "data" / "samples")
    code = api_snippet()
    check = "\nimport json\nprint('RESULTS', json.dumps({'report': report, 'pred': pred, 'n': len(probs[0])}))\n"
    for _ in range(2):  # a notebook cell runs again: the second time replaces the first run (overwrite=True)
        proc = subprocess.run(
            [sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.rsplit("RESULTS ", 1)[1])
    report, pred = results["report"], results["pred"]
    assert report["split"] == "test" and report["n"] > 0 and 0 <= report["accuracy"] <= 1
    assert report["checkpoint"] == "runs/smoke/best.pt" and len(report["per_class"]) == 10
    assert pred["path"] == "data/samples/digit_7.png" and len(pred["topk"]) == 3
    assert pred["topk"][0] == {"label": pred["label"], "index": pred["index"], "probability": pred["probability"]}
    assert results["n"] == 10
    assert {p.name for p in (tmp_path / "runs" / "smoke").iterdir()} >= {"best.pt", "last.pt", "metrics.csv"}
    assert not (tmp_path / "runs" / "smoke" / "best.eval.json").exists()  # the API writes no report
