"""``make reproduce``: the CPU reproduction, end to end.

1. The exact-toy tables (``opdplus.exact_tables``): gradient bias of OPD vs OPD+ and the
   one-state dynamics, computed afresh.
2. The tiny math world (``opdplus.miniature``): {reverse KL, forward KL, JSD} x {OPD, OPD+}
   from the shipped SFT student, with the SFT initialisation and the teacher as reference
   rows. Writes ``results/``: every History, ``summary.json`` (one record per arm and seed)
   and a self-contained ``report.html``; prints the final table.
3. The tiny tool world (``opdplus.tool_miniature``): the same arms and seeds on multi-turn
   tool use, records with ``task = "tiny_tools"`` in the same ``summary.json`` and report
   (``--skip-tools`` leaves them out).

``OPDPLUS_PROFILE=smoke|default|full`` (or ``--profile``) picks the sizes. While the arms
run, a bar over arms x seeds shows the ETA and one line per finished arm gives its seed,
accuracy with interval, teacher KL and seconds (on stderr, when it is a terminal;
``OPDPLUS_QUIET=1`` silences them).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import miniature
from .exact_tables import print_exact_tables
from .report import format_table, write_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opdplus reproduce")
    ap.add_argument("--profile", default=None, help="smoke | default | full (env OPDPLUS_PROFILE)")
    ap.add_argument("--out", default="results", help="output directory (default: results/)")
    ap.add_argument("--skip-exact", action="store_true", help="skip the exact-toy tables")
    ap.add_argument("--workers", type=int, default=None, help="parallel arm processes")
    ap.add_argument("--skip-tools", action="store_true", help="skip the tool-use arms")
    args = ap.parse_args(argv)
    profile = miniature.get_profile(args.profile)
    if args.workers is not None:
        from dataclasses import replace

        profile = replace(profile, workers=args.workers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    exact = None
    if not args.skip_exact:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        exact = print_exact_tables(steps=500 if profile.name == "smoke" else 2000)
        print(f"\n(exact tables: {time.time() - t_start:.1f} s)\n")
        (out / "exact_tables.json").write_text(json.dumps(exact, indent=1))
    t0 = time.time()
    print(f"Tiny math world, profile {profile.name!r}: {len(miniature.ARMS)} arms x "
          f"{len(profile.seeds)} seed(s), {profile.steps} steps, {profile.workers} worker(s) ...",
          flush=True)
    records = miniature.run_all(profile, out)
    hist = miniature.histories_of(records, out)
    public = [miniature.public_record(r) for r in records]
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile.name, "steps": profile.steps, "seeds": list(profile.seeds),
        "prompts x samples per step": f"{profile.prompts_per_step} x {profile.samples_per_prompt}",
        "lr": profile.lr, "clip log u": profile.clip_log_u, "gamma": 0.0,
        "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads available, "
                    f"{profile.workers} worker process(es) x 1 thread",
        "torch": torch.__version__, "wall time (tiny world)": f"{time.time() - t0:.0f} s",
    }
    tool_public = []
    from . import tool_miniature

    if not args.skip_tools and not tool_miniature.checkpoints_present():
        print(f"(tool arms skipped: no checkpoints in {tool_miniature.data_dir()}; "
              f"regenerate them with `python scripts/build_tiny_tools.py`)")
    elif not args.skip_tools:
        tprof = tool_miniature.get_profile(profile.name)
        if args.workers is not None:
            from dataclasses import replace

            tprof = replace(tprof, workers=args.workers)
        t1 = time.time()
        print(f"Tiny tool world: {len(tool_miniature.ARMS)} arms x {len(tprof.seeds)} seed(s), "
              f"{tprof.steps} steps, {tprof.workers} worker(s) ...", flush=True)
        trecs = tool_miniature.run_all(tprof, out)
        hist.update(tool_miniature.histories_of(trecs, out))
        tool_public = [tool_miniature.public_record(r) for r in trecs]
        meta["tool arms"] = (f"{tprof.steps} steps x {tprof.prompts_per_step} prompts x "
                             f"{tprof.samples_per_prompt} samples, lr {tprof.lr}; "
                             f"{time.time() - t1:.0f} s")
    report = write_results(out, public + tool_public, hist, meta)
    print()
    print(format_table(public))
    if tool_public:
        print("\nTiny tool world:\n" + tool_miniature.format_table(tool_public))
    print(f"\n(tiny world: {time.time() - t0:.0f} s; total {time.time() - t_start:.0f} s; "
          f"{out / 'summary.json'}, {report})")
    return 0
