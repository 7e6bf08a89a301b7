"""Student versions (``make assignments``) and the single-execution exercise check.

The stripping is tested on hand-built notebooks (exact expected sources); the kernel pass of
``opdplus.nbrun.run_full_and_student`` on a tiny notebook whose exercise is right, and on
variants that break the convention in the ways a notebook author might, each of which must
fail with a message that names the cell.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

from opdplus import exercises as E
from opdplus import nbrun

ROOT = Path(__file__).resolve().parents[1]

ANSWER = '''def my_square(x):
    """Return x squared."""
    ### BEGIN SOLUTION
    y = x * x
    return y
    ### END SOLUTION
'''
CHECK = ('from opdplus.exercises import check\n'
         'check("09.1", lambda: my_square(3) == 9 or (_ for _ in ()).throw(AssertionError("9")),'
         ' hint="multiply")')
QUIZ = "**Q1.** Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION\n\nMore text."


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                else nbformat.v4.new_code_cell(src) for kind, src in cells]
    return nb


def test_code_region_becomes_raise_at_the_same_indentation():
    out = E.strip_solutions(ANSWER, "code")
    assert out == ('def my_square(x):\n    """Return x squared."""\n'
                   "    raise NotImplementedError()\n")
    top = "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3"
    assert E.strip_solutions(top) == "a = 1\nraise NotImplementedError()\nc = 3"


def test_markdown_region_becomes_your_answer_here():
    assert E.strip_solutions(QUIZ, "markdown") == \
        "**Q1.** Why?\n\nYOUR ANSWER HERE\n\nMore text."
    # the marker as jupytext reads it back from a percent file's "# ### BEGIN SOLUTION"
    assert E.solution_regions("x\n  ### BEGIN SOLUTION  \ny\n### END SOLUTION") == 1


@pytest.mark.parametrize("bad, match", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside an open region"),
])
def test_unpaired_markers_are_refused(bad, match):
    with pytest.raises(E.SolutionMarkerError, match=match):
        E.strip_solutions(bad, "code", where="nb cell 3")


def test_student_notebook_strips_and_marks_cells_for_nbgrader():
    nb = _nb(("md", "# Title"), ("code", "x = 1"), ("code", ANSWER), ("code", CHECK),
             ("md", QUIZ))
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old")]
    student = E.student_notebook(nb, "hand.ipynb")
    src = [c.source for c in student.cells]
    assert "x * x" not in src[2] and "raise NotImplementedError()" in src[2]
    assert src[3] == CHECK and "Because" not in src[4] and "YOUR ANSWER HERE" in src[4]
    assert student.cells[1].outputs == [] and nb.cells[1].outputs  # a copy; outputs cleared
    assert "x * x" in nb.cells[2].source  # the full version is untouched
    meta = [c.metadata.get("nbgrader") for c in student.cells]
    assert meta[0] is None and meta[1] is None
    assert meta[2]["solution"] and not meta[2]["grade"] and meta[2]["grade_id"] == "09.1-answer"
    assert meta[3]["grade"] and meta[3]["locked"] and meta[3]["points"] == 1
    assert meta[4]["solution"]
    ids = [m["grade_id"] for m in meta if m]
    assert len(ids) == len(set(ids)), "nbgrader needs unique grade ids"


def test_find_exercises_reads_the_convention_and_names_what_is_wrong():
    nb = _nb(("code", ANSWER), ("code", CHECK))
    [ex] = E.find_exercises(nb)
    assert (ex.id, ex.answer_cells, ex.check_cell) == ("09.1", [0], 1)
    with pytest.raises(ValueError, match="no answer cell"):
        E.find_exercises(_nb(("code", CHECK)))
    with pytest.raises(ValueError, match="no check cell"):
        E.find_exercises(_nb(("code", ANSWER)))
    with pytest.raises(ValueError, match="checked twice"):
        E.find_exercises(_nb(("code", ANSWER), ("code", CHECK), ("code", ANSWER), ("code", CHECK)))


def test_check_messages():
    with pytest.raises(E.ExerciseNotDone, match=r"Exercise 09.1 is not done.*Hint: h"):
        E.check("09.1", lambda: (_ for _ in ()).throw(NotImplementedError()), hint="h")
    with pytest.raises(E.ExerciseWrong, match=r"09.1: not yet. off by one. Hint: h"):
        E.check("09.1", lambda: (_ for _ in ()).throw(AssertionError("off by one")), hint="h")
    with pytest.raises(ValueError, match="hint"):
        E.check("09.1", lambda: None, hint="")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_assignments_writes_student_versions(tmp_path: Path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    nbformat.write(_nb(("code", ANSWER), ("code", CHECK)), src / "09_hand.ipynb")
    out = tmp_path / "student"
    assert _script("make_assignments").main(["--notebooks", str(src), "--out", str(out)]) == 0
    written = nbformat.read(out / "09_hand.ipynb", as_version=4)
    assert "raise NotImplementedError()" in written.cells[0].source
    assert "09_hand.ipynb: 1 exercise (09.1)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- in a kernel


def _write(tmp_path: Path, *cells) -> Path:
    path = tmp_path / "09_hand.ipynb"
    nbformat.write(_nb(*cells), path)
    return path


@pytest.mark.slow
def test_single_execution_checks_student_and_full_versions(tmp_path: Path):
    good = _write(tmp_path, ("code", "import os\nassert os.environ['OPDPLUS_PROFILE'] == 'smoke'"),
                  ("code", ANSWER), ("code", CHECK), ("code", "assert my_square(4) == 16"))
    report = nbrun.run_full_and_student(good)
    assert list(report.exercises) == ["09.1"]
    assert "not done yet" in report.exercises["09.1"] and "multiply" in report.exercises["09.1"]

    # a check that never calls the answer passes in the student version: refused
    lazy = CHECK.replace("my_square(3) == 9", "True")
    with pytest.raises(nbrun.NotebookFailed, match=r"cell 1: .*must raise ExerciseNotDone.*passed"):
        nbrun.run_full_and_student(_write(tmp_path, ("code", ANSWER), ("code", lazy)))
    # a solution region at top level: the student's answer cell itself raises
    top = "### BEGIN SOLUTION\ndef my_square(x):\n    return x * x\n### END SOLUTION"
    with pytest.raises(nbrun.NotebookFailed, match=r"cell 0.*inside a function body"):
        nbrun.run_full_and_student(_write(tmp_path, ("code", top), ("code", CHECK)))
    # a wrong reference solution: the full version's check does not pass
    wrong = ANSWER.replace("x * x", "x + x")
    with pytest.raises(nbrun.NotebookFailed, match=r"does not pass with the notebook's own"):
        nbrun.run_full_and_student(_write(tmp_path, ("code", wrong), ("code", CHECK)))
    # an ordinary cell that fails (a notebook's own assert) fails the run
    with pytest.raises(nbrun.NotebookFailed, match=r"cell 0 raised AssertionError"):
        nbrun.run_full_and_student(_write(tmp_path, ("code", "assert 1 == 2")))
