"""What a notebook says about itself to a class: its measured runtime.

A notebook's runtime is a number, so it is never typed into its text: it is measured by
``scripts/time_notebooks.py`` (each notebook executed in the smoke profile) and stored in
``data/reference/notebook_times.json``; the first code cell of every notebook calls
:func:`runtime_note`, which prints it, and the README's notebook table is generated from
the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

TIMES = Path(__file__).resolve().parents[1] / "data" / "reference" / "notebook_times.json"


def load_times(path: Path = TIMES) -> dict:
    """The measured runtimes: ``{"machine": ..., "measured": ..., "notebooks": {stem: {...}}}``."""
    if not path.exists():
        return {"notebooks": {}}
    return json.loads(path.read_text())


def runtime_note(stem: str, path: Path = TIMES) -> str:
    """Print and return one line with the notebook's measured smoke-profile runtime."""
    times = load_times(path)
    entry = times.get("notebooks", {}).get(stem)
    if entry is None:
        line = f"{stem}: runtime not measured yet (run scripts/time_notebooks.py)."
    else:
        line = (f"{stem}: about {entry['smoke_s']:.0f} s in the smoke profile on "
                f"{times.get('machine', 'the reference machine')} "
                f"(measured {entry.get('measured', times.get('measured', '?'))}).")
    print(line)
    return line
