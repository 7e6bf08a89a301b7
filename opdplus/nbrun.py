"""Executing the notebooks outside Jupyter: one kernel per notebook, cell by cell.

Three tools need it: the notebook tests, ``make site`` and ``scripts/time_notebooks.py``.

**The single-execution check** (:func:`run_full_and_student`). A notebook has two versions,
the full one (solutions in place) and the student one (``make assignments``: each solution
region replaced by ``raise NotImplementedError()``). Executing both would run every notebook
twice, which the test budget of a 2-core machine cannot afford. Outside the answer cells the
two versions are the same code, so one kernel can check both in one pass:

1. every cell that is not part of an exercise runs once and must succeed (the notebook's own
   asserts included), exactly as under nbval;
2. an answer cell runs in its student version and must succeed (it only defines a function);
3. its check cell then runs and must fail with ``ExerciseNotDone`` naming its exercise: what
   a student sees before writing anything;
4. the full version's answer cell runs, and the check cell runs again and must print
   ``Exercise NN.k: correct.``; later cells see the full solution, as in the full notebook.

So every cell of the full version runs once, in order, and every check is seen failing for
the student and passing for the solution. ``make nbval`` still runs the full versions under
nbval by hand.

The kernel is the ``python3`` kernel of this interpreter (jupyter_client starts it with
``sys.executable``), its working directory the notebook's folder, and its environment the
smoke profile (:func:`smoke_env`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import nbformat

from .exercises import find_exercises, student_notebook

CELL_TIMEOUT_S = 300


def smoke_env(plotly_renderer: str = "json", extra: Optional[Mapping[str, str]] = None) -> dict:
    """The environment of a notebook kernel in the smoke profile, offline and quiet."""
    env = {**os.environ, "OPDPLUS_PROFILE": "smoke", "HF_HUB_OFFLINE": "1",
           "OPDPLUS_QUIET": "1", "PLOTLY_RENDERER": plotly_renderer,
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTEST_XDIST_WORKER", None)  # a kernel is not a test worker
    env.update(extra or {})
    return env


class NotebookFailed(AssertionError):
    """A notebook did not behave: which cell, what happened, and what to fix."""


@dataclass
class RunReport:
    """What one execution of a notebook measured."""

    notebook: str
    seconds: float
    cell_seconds: List[float] = field(default_factory=list)
    exercises: Dict[str, str] = field(default_factory=dict)  # id -> message seen by a student


def _client(nb, cwd: Path, timeout: int):
    from nbclient import NotebookClient

    return NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                          resources={"metadata": {"path": str(cwd)}})


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def _run(client, cell, index: int):
    """Execute one cell; None when it succeeded, else the CellExecutionError."""
    from nbclient.exceptions import CellExecutionError

    try:
        client.execute_cell(cell, index)
    except CellExecutionError as err:
        return err
    return None


def execute(path: Path, env: Optional[Mapping[str, str]] = None, timeout: int = CELL_TIMEOUT_S,
            store: Optional[Path] = None) -> RunReport:
    """Execute the full version of ``path`` top to bottom; optionally write it with outputs."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = _client(nb, path.parent, timeout)
    report = RunReport(path.stem, 0.0)
    t0 = time.perf_counter()
    with client.setup_kernel(env=dict(env or smoke_env())):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            t = time.perf_counter()
            err = _run(client, cell, i)
            report.cell_seconds.append(time.perf_counter() - t)
            if err is not None:
                raise NotebookFailed(f"{path.name} cell {i} raised {err.ename}: "
                                     f"{str(err)[-3000:]}")
    report.seconds = time.perf_counter() - t0
    if store is not None:
        nbformat.write(nb, store)
    return report


def run_full_and_student(path: Path, env: Optional[Mapping[str, str]] = None,
                         timeout: int = CELL_TIMEOUT_S) -> RunReport:
    """The single-execution check of the module docstring; raises NotebookFailed."""
    path = Path(path)
    name = path.name
    full = nbformat.read(path, as_version=4)
    exercises = find_exercises(full, name)
    student = student_notebook(full, name)
    check_of = {ex.check_cell: ex for ex in exercises}
    answer_of = {j: ex for ex in exercises for j in ex.answer_cells}
    report = RunReport(path.stem, 0.0)
    client = _client(student, path.parent, timeout)
    t0 = time.perf_counter()
    with client.setup_kernel(env=dict(env or smoke_env())):
        for i, cell in enumerate(student.cells):
            if cell.cell_type != "code":
                continue
            t = time.perf_counter()
            err = _run(client, cell, i)
            if i in answer_of:
                if err is not None:
                    raise NotebookFailed(
                        f"{name} cell {i}, the student version of exercise "
                        f"{answer_of[i].id}'s answer cell, raised {err.ename}: the solution "
                        "region must sit inside a function body so the cell still runs "
                        f"once stripped.\n{str(err)[-1500:]}")
            elif i in check_of:
                ex = check_of[i]
                if err is None or err.ename != "ExerciseNotDone" or ex.id not in str(err):
                    seen = "it passed" if err is None else f"it raised {err.ename}"
                    raise NotebookFailed(
                        f"{name} cell {i}: in the student version check({ex.id!r}) must raise "
                        f"ExerciseNotDone naming {ex.id}, but {seen}. Does the check call "
                        f"the answer cell's function?\n{'' if err is None else str(err)[-1500:]}")
                report.exercises[ex.id] = err.evalue
                for j in ex.answer_cells:  # now the solution, in the same kernel
                    err = _run(client, full.cells[j], j)
                    if err is not None:
                        raise NotebookFailed(f"{name} cell {j}: the full answer of exercise "
                                             f"{ex.id} raised {err.ename}: {str(err)[-1500:]}")
                cell.outputs = []
                err = _run(client, cell, i)
                if err is not None or f"Exercise {ex.id}: correct." not in _text(cell):
                    detail = (f"{err.ename}: {str(err)[-1500:]}" if err is not None
                              else repr(_text(cell)[-500:]))
                    raise NotebookFailed(f"{name} cell {i}: check({ex.id!r}) does not pass with "
                                         f"the notebook's own solution: {detail}")
            elif err is not None:
                why = (" (in the student version: it uses an answer before that exercise's "
                       "check cell; move it after the check)"
                       if err.ename == "NotImplementedError" else "")
                raise NotebookFailed(f"{name} cell {i} raised {err.ename}{why}: "
                                     f"{str(err)[-3000:]}")
            report.cell_seconds.append(time.perf_counter() - t)
    report.seconds = time.perf_counter() - t0
    return report

