"""Notebook checks: every notebooks/*.ipynb is stripped, paired with its .py, follows the
house conventions, and runs top to bottom under nbval.

The notebooks assert the facts they teach, so the nbval run (``--nbval-lax``: cells
must not raise, outputs are not compared) checks that they still *learn*, not only
that they execute. It runs in a subprocess so that:

- plotly uses the small ``json`` renderer (``PLOTLY_RENDERER=json``), keeping outputs
  tiny; the real-browser check (test_browser.py) uses the default renderer instead;
- the kernel sees ``OPDPLUS_PROFILE=smoke`` and ``HF_HUB_OFFLINE=1``;
- plain ``python -m pytest`` (what ``make test`` and CI run, testpaths = tests) executes
  it, and a failing cell fails this test with nbval's report attached.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]
NBVAL_TIMEOUT_S = 900  # all notebooks together; each takes well under 90 s in smoke


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"
    for nb in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", nb.stem), f"{nb.name}: expected NN_title.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stripped(path: Path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", \
        f"{path.name}: set the python3 kernelspec so no kernel dialog appears"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_in_sync_with_its_py_pair(path: Path):
    py = path.with_suffix(".py")
    assert py.exists(), f"{py.name} missing: run `jupytext --sync {path}`"
    from_ipynb = jupytext.read(path)
    from_py = jupytext.read(py)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(from_ipynb) == cells(from_py), \
        f"{path.name} and {py.name} differ: edit one and run `jupytext --sync {path}`"
    tags = lambda nb: [c.metadata.get("tags", []) for c in nb.cells]  # noqa: E731
    assert tags(from_ipynb) == tags(from_py)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_conventions(path: Path):
    nb = jupytext.read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0].source
    offline = 'os.environ.setdefault("HF_HUB_OFFLINE", "1")'
    if path.stem == "06_gpu_math_reasoning":  # its full profile downloads Qwen3 and GSM8K
        assert offline not in first, "06: only the smoke profile may go offline"
        third = code[2].source  # after the parameters, before the hub libraries are imported
        assert re.search(r'^if PROFILE == "smoke":[^\n]*\n\s+' + re.escape(offline), third, re.M)
        assert third.index(offline) < third.index("from opdplus import")
        assert not re.search(r"^(import|from) (torch|transformers|datasets)", first, re.M)
    else:
        assert offline in first, "first code cell: default HF_HUB_OFFLINE to 1"
    assert re.search(r"^(import opdplus|from opdplus import)", first, re.M), "import opdplus first"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    assert 'PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")' in params[0].source
    assert code.index(params[0]) == 1, "the parameters cell follows the imports"
    for c in code:
        assert not re.search(r"^\s*[!%]\s*pip", c.source, re.M), "no pip cells"
    assert sum(c.source.count("assert ") for c in code) >= 5, "notebooks assert what they teach"


@pytest.mark.slow
def test_notebooks_execute_under_nbval(tmp_path: Path):
    env = {**os.environ, "PLOTLY_RENDERER": "json", "OPDPLUS_PROFILE": "smoke",
           "HF_HUB_OFFLINE": "1", "IPYTHONDIR": str(tmp_path / "ipython")}
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           "--nbval-cell-timeout=300", "-p", "no:cacheprovider", "-q", "-rf",
           *[str(nb.relative_to(ROOT)) for nb in NOTEBOOKS]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=NBVAL_TIMEOUT_S)
    report = (proc.stdout + proc.stderr)[-15000:]
    print(report)
    assert proc.returncode == 0, f"nbval failed (exit {proc.returncode}):\n{report}"
    assert re.search(r"\d+ passed", proc.stdout), report
