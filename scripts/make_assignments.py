"""Write the student version of every notebook: ``make assignments``.

Each solution region (``### BEGIN SOLUTION`` ... ``### END SOLUTION``) of a code cell becomes
``raise NotImplementedError()`` at the same indentation, each one in markdown becomes
"YOUR ANSWER HERE", and cells get nbgrader's metadata (answer cells ``solution``, check cells
``grade``, locked, one point), so the folder can also be handed to nbgrader. The logic is
``opdplus.exercises.student_notebook``; this script only walks the folder.

    python scripts/make_assignments.py        # notebooks/*.ipynb -> notebooks/student/
    python scripts/make_assignments.py --notebooks DIR --out DIR

The output folder is git-ignored: it is derived from the full notebooks (the one source to
edit), and the notebook tests check, for every notebook, that its student version runs with
only the exercise checks failing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdplus.exercises import find_exercises, student_notebook  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    p.add_argument("--out", default=str(ROOT / "notebooks" / "student"))
    args = p.parse_args(argv)
    src, out = Path(args.notebooks), Path(args.out)
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print(f"no NN_title.ipynb notebooks in {src}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        ids = [ex.id for ex in find_exercises(nb, path.name)]
        nbformat.write(student_notebook(nb, path.name), out / path.name)
        print(f"{path.name}: {len(ids)} exercise{'s' if len(ids) != 1 else ''}"
              + (f" ({', '.join(ids)})" if ids else ""))
    print(f"student versions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
