"""Notebook checks: every notebooks/*.ipynb is stripped, paired with its .py, follows the
house and classroom conventions, and runs top to bottom, full and student version at once.

**One execution per notebook.** Each notebook has a full version (solutions in place) and a
student version (``make assignments``). Running the full versions under nbval and then the
student versions would execute every notebook twice, and the suite has to stay within its
budget on a 2-core machine. ``opdplus.nbrun.run_full_and_student`` checks both in one kernel:
every ordinary cell runs once and must succeed (the notebooks assert the facts they teach, so
this checks that they still *learn*, as nbval did); each exercise's student answer cell must
run, its check must then fail with ``ExerciseNotDone`` naming the exercise; the full answer
runs next and the same check must print ``correct``. Every cell of the full version has then
run, in order. One test per notebook, so pytest-xdist spreads them over its workers.

The kernel sees ``OPDPLUS_PROFILE=smoke``, ``HF_HUB_OFFLINE=1`` and plotly's small ``json``
renderer (the real-browser checks use the default renderer instead). nbval stays available by
hand: ``make nbval`` runs the full versions under ``pytest --nbval-lax``.

While notebooks are being converted to the classroom conventions,
``test_notebook_classroom_conventions`` lists everything a notebook still lacks in one message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from opdplus.exercises import find_exercises, solution_regions
from opdplus.nbrun import run_full_and_student, smoke_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]


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


# ----------------------------------------------------------------------------- the classroom


def classroom_gaps(nb, stem: str) -> list:
    """Everything ``nb`` lacks of the classroom conventions (empty when it has them all)."""
    gaps = []
    md = [c for c in nb.cells if c.cell_type == "markdown"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    first_md = re.sub(r"[*_]", "", md[0].source.lower()) if md else ""
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        gaps.append("the first cell must be markdown (title, goals, prerequisites, runtime)")
    for what, pattern in (("learning goals", r"learning goals|you will learn|goals"),
                          ("prerequisites", r"prerequisite"),
                          ("the line 'Runtime: printed by the first code cell'",
                           r"runtime: printed by the first code cell")):
        if not re.search(pattern, first_md):
            gaps.append(f"the first markdown cell does not give {what}")
    first = code[0].source if code else ""
    if "from opdplus.classroom import runtime_note" not in first \
            or f'runtime_note("{stem}")' not in first:
        gaps.append(f'the first code cell must call `from opdplus.classroom import runtime_note` '
                    f'then `runtime_note("{stem}")`')
    try:
        found = find_exercises(nb, stem)
    except ValueError as err:
        gaps.append(f"exercise markers: {err}")
        found = []
    ids = [ex.id for ex in found]
    if not 2 <= len(ids) <= 4:
        gaps.append(f"2-4 exercises with check cells, found {len(ids)} {ids}")
    bad = [i for i in ids if not i.startswith(stem[:2] + ".")]
    if bad:
        gaps.append(f"exercise ids must start with the notebook number {stem[:2]}: {bad}")
    tail = "\n".join(c.source for c in nb.cells[-4:] if c.cell_type == "markdown")
    if not re.search(r"what to try next", tail, re.I):
        gaps.append("a final markdown section 'What to try next'")
    quiz = [c for c in md if re.search(r"quiz", c.source, re.I) and solution_regions(c.source)]
    if not quiz:
        gaps.append("a quiz whose answers sit between the solution markers in markdown")
    elif sum(solution_regions(c.source) for c in quiz) < 2:
        gaps.append("2-4 quiz questions, each answer in its own solution region")
    return gaps


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_classroom_conventions(path: Path):
    gaps = classroom_gaps(jupytext.read(path), path.stem)
    assert not gaps, f"{path.name} lacks:\n- " + "\n- ".join(gaps)


def test_classroom_gaps_sees_a_complete_notebook_and_a_bare_one():
    """The convention checker itself: silent on a complete notebook, specific on a bare one."""
    answer = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
    q = "## Quiz\n1. Why?\n### BEGIN SOLUTION\nA.\n### END SOLUTION\n" \
        "2. How?\n### BEGIN SOLUTION\nB.\n### END SOLUTION"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# T\nLearning goals: x.\nPrerequisites: 01.\n"
                                      "Runtime: printed by the first code cell."),
        nbformat.v4.new_code_cell('from opdplus.classroom import runtime_note\n'
                                  'runtime_note("09_t")'),
        nbformat.v4.new_code_cell(answer), nbformat.v4.new_code_cell('check("09.1", f, hint="h")'),
        nbformat.v4.new_code_cell(answer), nbformat.v4.new_code_cell('check("09.2", f, hint="h")'),
        nbformat.v4.new_markdown_cell("## What to try next\n- more"),
        nbformat.v4.new_markdown_cell(q),
    ]
    assert classroom_gaps(nb, "09_t") == []
    bare = nbformat.v4.new_notebook()
    bare.cells = [nbformat.v4.new_code_cell("import opdplus")]
    gaps = "\n".join(classroom_gaps(bare, "09_t"))
    for lack in ("first cell must be markdown", "prerequisites", "runtime_note",
                 "found 0", "What to try next", "quiz"):
        assert lack in gaps, lack


# ----------------------------------------------------------------------------- execution


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_full_and_student_versions(path: Path, tmp_path: Path):
    env = smoke_env("json", {"IPYTHONDIR": str(tmp_path / "ipython")})
    report = run_full_and_student(path, env=env)
    print(f"{path.stem}: {report.seconds:.0f} s, exercises {report.exercises}")
