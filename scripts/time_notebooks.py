"""Measure each notebook's smoke-profile runtime: ``data/reference/notebook_times.json``.

    python scripts/time_notebooks.py                     # every notebooks/NN_*.ipynb
    python scripts/time_notebooks.py 01_f_divergences    # only these (others kept as they are)

Each notebook is executed once, top to bottom, in a fresh kernel (``opdplus.nbrun.execute``,
the smoke profile, offline, plotly's small ``json`` renderer), and its wall time from kernel
start to the last cell is stored with the number of code cells. A notebook that fails is
reported and keeps its previous entry. The file also records the machine and its load
average when the run started, since a shared machine runs slower.

``opdplus.classroom.runtime_note`` prints a notebook's entry in its first code cell, and
``scripts/sync_readme.py`` writes the README's runtime table from the same file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdplus.classroom import TIMES, load_times  # noqa: E402
from opdplus.nbrun import NotebookFailed, execute, smoke_env  # noqa: E402


def machine() -> str:
    import torch

    return (f"{os.cpu_count()}-core {platform.machine()} CPU, Python "
            f"{platform.python_version()}, torch {torch.__version__.split('+')[0]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stems", nargs="*", help="notebook stems (default: all)")
    p.add_argument("--out", default=str(TIMES))
    args = p.parse_args(argv)
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.stems:
        unknown = set(args.stems) - {q.stem for q in paths}
        if unknown:
            print(f"no such notebooks: {sorted(unknown)}", file=sys.stderr)
            return 2
        paths = [q for q in paths if q.stem in args.stems]
    out = Path(args.out)
    times = load_times(out)
    entries = times.get("notebooks", {})
    failed = []
    today = dt.date.today().isoformat()
    for path in paths:
        load = os.getloadavg()[0]
        try:
            report = execute(path, env=smoke_env("json"))
        except NotebookFailed as err:
            failed.append(path.stem)
            print(f"{path.stem}: FAILED, entry kept: {str(err)[:300]}", file=sys.stderr)
            continue
        entries[path.stem] = {"smoke_s": round(report.seconds, 1),
                              "code_cells": len(report.cell_seconds),
                              "load_avg_1min": round(load, 1), "measured": today}
        print(f"{path.stem}: {report.seconds:.1f} s")
    times.update({"machine": machine(), "measured": today,
                  "notebooks": dict(sorted(entries.items()))})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(times, indent=1) + "\n")
    print(f"wrote {out}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
