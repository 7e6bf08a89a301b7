"""Exercise checks for the notebooks, in nbgrader's conventions.

Every exercise is two code cells:

1. **the answer cell** defines a function (``my_future_sum``, ``my_prediction``...). Its
   body holds the reference solution between nbgrader's markers::

       def my_w_chi2(u):
           ### BEGIN SOLUTION
           return (u - 1.0) ** 2 - ...
           ### END SOLUTION

   ``make assignments`` writes the student version, in which each marked region becomes
   ``raise NotImplementedError()`` at the same indentation (what nbgrader writes). The
   answer cell therefore still runs in the student version: it only defines the function.
   No later cell may use a name defined inside a solution region.
2. **the check cell** calls :func:`check` with the exercise's id, a test and a hint::

       check("02.1", lambda: assert_close(my_w_chi2(u), library_w), hint="...")

   In the student version the test meets ``NotImplementedError`` and the check raises
   :class:`ExerciseNotDone`, whose message names the exercise and gives the hint; a wrong
   answer raises :class:`ExerciseWrong` with the test's own message and the hint; a right
   one prints a line saying so.

The same module writes the student versions (:func:`student_notebook`, used by
``make assignments``) and finds a notebook's exercises (:func:`find_exercises`, used by the
notebook tests, which run the student and the full version in one kernel).

Markdown answers (quiz answers, "explain why") sit between the same markers on lines of
their own; the student version shows "YOUR ANSWER HERE" instead.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"


class ExerciseNotDone(AssertionError):
    """The answer cell still raises ``NotImplementedError``: nothing written yet."""


class ExerciseWrong(AssertionError):
    """The answer ran but the check's test failed."""


def check(exercise: str, test: Callable[[], object], hint: str) -> None:
    """Run ``test()`` for ``exercise`` and turn the outcome into a message for a student."""
    if not exercise or not hint:
        raise ValueError("check() needs the exercise id (e.g. '02.1') and a non-empty hint")
    try:
        test()
    except NotImplementedError as exc:
        raise ExerciseNotDone(
            f"Exercise {exercise} is not done yet: write your answer in the cell above "
            f"(replace `raise NotImplementedError()`). Hint: {hint}") from exc
    except AssertionError as exc:
        detail = str(exc) or "the check's comparison failed"
        raise ExerciseWrong(f"Exercise {exercise}: not yet. {detail}. Hint: {hint}") from exc
    print(f"Exercise {exercise}: correct.")


# ----------------------------------------------------------------------------- student versions
#
# What ``make assignments`` (scripts/make_assignments.py) and the notebook tests share: find
# the exercises of a notebook and write its student version. Pure functions of the cell
# sources, so a hand-built notebook tests them without a kernel.

CODE_STUB = "raise NotImplementedError()"
MARKDOWN_STUB = "YOUR ANSWER HERE"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")
"""A check cell: ``check("NN.k", ...)``; group 1 is the exercise id."""


class SolutionMarkerError(ValueError):
    """A solution region whose markers do not pair up (unclosed, nested or stray END)."""


def _marker(line: str) -> Optional[str]:
    """``"begin"``/``"end"`` when the line is one of the markers on a line of its own.

    In a code cell the marker is a comment (``### BEGIN SOLUTION``); jupytext's percent
    format writes markdown lines with a leading ``# ``, so ``# ### BEGIN SOLUTION`` in a
    .py file is the same marker once the notebook is read.
    """
    s = line.strip()
    if s == BEGIN:
        return "begin"
    if s == END:
        return "end"
    return None


def solution_regions(source: str, where: str = "cell") -> int:
    """How many solution regions ``source`` holds; raises on markers that do not pair up."""
    count, inside = 0, False
    for n, line in enumerate(source.splitlines(), 1):
        kind = _marker(line)
        if kind == "begin":
            if inside:
                raise SolutionMarkerError(f"{where}, line {n}: {BEGIN!r} inside an open region "
                                          f"(close the first one with {END!r})")
            inside, count = True, count + 1
        elif kind == "end":
            if not inside:
                raise SolutionMarkerError(f"{where}, line {n}: {END!r} without a {BEGIN!r}")
            inside = False
    if inside:
        raise SolutionMarkerError(f"{where}: {BEGIN!r} is never closed: add a line {END!r}")
    return count


def strip_solutions(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """The student version of one cell's source: each region replaced by its stub.

    Code: ``raise NotImplementedError()`` at the indentation of the BEGIN marker (what
    nbgrader writes). Markdown: ``YOUR ANSWER HERE``. Text outside the regions is kept
    byte for byte, trailing newline included.
    """
    if cell_type not in ("code", "markdown"):
        raise ValueError(f"{where}: solution regions belong in code or markdown cells, "
                         f"not {cell_type!r}")
    solution_regions(source, where)  # validate first: never emit half a solution
    out: List[str] = []
    inside = False
    for line in source.splitlines(keepends=True):
        kind = _marker(line)
        if kind == "begin":
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            stub = CODE_STUB if cell_type == "code" else MARKDOWN_STUB
            newline = "\n" if line.endswith("\n") else ""
            out.append(f"{indent}{stub}{newline}")
        elif kind == "end":
            inside = False
            if not out[-1].endswith("\n") and line.endswith("\n"):
                out[-1] += "\n"
        elif not inside:
            out.append(line)
    return "".join(out)


@dataclass
class Exercise:
    """One exercise of a notebook: its id, its answer cells and its check cell (indices)."""

    id: str
    check_cell: int
    answer_cells: List[int] = field(default_factory=list)


def check_ids(source: str) -> List[str]:
    """The exercise ids that a code cell checks (``check("NN.k", ...)`` calls)."""
    return CHECK_CALL.findall(source)


def find_exercises(nb, name: str = "notebook") -> List[Exercise]:
    """The exercises of ``nb`` (an nbformat notebook), in order.

    An exercise's answer cells are the code cells with solution regions after the previous
    check cell; a check cell checks exactly one exercise, and ids are unique. Raises with
    the cell and the fix when the notebook breaks the convention.
    """
    found: List[Exercise] = []
    pending: List[int] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        regions = solution_regions(cell.source, f"{name} cell {i}")
        ids = check_ids(cell.source)
        if len(ids) > 1:
            raise ValueError(f"{name} cell {i} checks {ids}: give each exercise its own check cell")
        if ids and regions:
            raise ValueError(f"{name} cell {i} holds both a solution region and check({ids[0]!r}): "
                             "put the check in the next cell")
        if regions:
            pending.append(i)
        elif ids:
            if not pending:
                raise ValueError(f"{name} cell {i}: check({ids[0]!r}) has no answer cell before it "
                                 f"(a code cell with {BEGIN!r} ... {END!r})")
            if any(e.id == ids[0] for e in found):
                raise ValueError(f"{name}: exercise {ids[0]} is checked twice (cell {i})")
            found.append(Exercise(ids[0], i, pending))
            pending = []
    if pending:
        raise ValueError(f"{name} cells {pending}: solution regions with no check cell after them")
    return found


def _nbgrader(grade_id: str, solution: bool, grade: bool, points: int = 0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def student_notebook(nb, name: str = "notebook"):
    """A deep copy of ``nb`` with every solution stripped and nbgrader's cell metadata.

    Answer cells are marked ``solution`` (the student edits them), check cells ``grade``
    with one point and locked, markdown cells with an answer ``solution`` too; outputs and
    execution counts are cleared.
    """
    exercises = {}
    for ex in find_exercises(nb, name):
        for j in ex.answer_cells:
            exercises[j] = (f"{ex.id}-answer" if len(ex.answer_cells) == 1
                            else f"{ex.id}-answer-{ex.answer_cells.index(j) + 1}", True, False)
        exercises[ex.check_cell] = (f"{ex.id}-check", False, True)
    out = copy.deepcopy(nb)
    for i, cell in enumerate(out.cells):
        if cell.cell_type in ("code", "markdown") and solution_regions(cell.source):
            cell.source = strip_solutions(cell.source, cell.cell_type, f"{name} cell {i}")
            if cell.cell_type == "markdown":
                cell.metadata["nbgrader"] = _nbgrader(f"answer-md-{i}", True, False)
        if i in exercises:
            grade_id, solution, grade = exercises[i]
            cell.metadata["nbgrader"] = _nbgrader(grade_id, solution, grade, points=1)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return out
