"""``python -m opdplus study`` (``make study``): beyond the paper, end to end.

1. Print what was fixed before running (``study_plan``): each row's f'(1), f''(1) and
   predicted collapse, and the collapse criterion.
2. Every run of the profile in the tiny math world (``study.run_all``: reuses finished runs,
   shows a bar over runs and one line per run).
3. The generator-shift question at one state, exactly (``study_report.toy_shift_check``;
   cheap, so it is recomputed each time rather than stored).
4. Write ``<out>/summary.json`` (one record per experiment and run), ``<out>/meta.json``
   (plan, references, exact-toy table, sizes, wall time, CPU load) and the self-contained
   ``<out>/report.html``; print the three tables.

``--profile smoke|default`` (or ``OPDPLUS_PROFILE``); ``--out`` defaults to ``results/study``
(``results/study_smoke`` for the smoke profile, which notebook 08 reads when it is there).
``--report-only`` rebuilds the summary and report from stored runs without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path


def pairs_specs(pairs):
    """(experiment, RunSpec) of each (experiment, record) pair."""
    from .study import RunSpec

    return [(e, RunSpec(r["divergence"], r["estimator"], r["seed"], r["shift"], r["gamma"],
                        r["baseline"])) for e, r in pairs]


def runs_span_s(pairs) -> float:
    """Wall time the stored runs took together: from the earliest start (record time minus
    its own wall time) to the last record written (what ``--report-only`` reports)."""
    starts, ends = [], []
    for _, r in pairs:
        ends.append(r["_mtime"])
        starts.append(r["_mtime"] - r["wall_s"])
    return round(max(ends) - min(starts), 1) if ends else 0.0


def shift_toy(profile, out: Path, stored_only: bool = False) -> list:
    """``study_report.toy_shift_check`` at the profile's steps, stored next to the runs and
    reused while the library code is unchanged (``study.fingerprint``); with ``stored_only``
    (``--report-only``) a stored table of the same steps is reused as it is, like the runs."""
    import torch

    from . import study, study_report as rep

    path = out / "runs" / "toy_shift.json"
    key = {"toy_steps": profile.toy_steps, "fingerprint": study.fingerprint()}
    if path.exists():
        old = json.loads(path.read_text())
        same_steps = old.get("settings", {}).get("toy_steps") == profile.toy_steps
        if old.get("settings") == key or (stored_only and same_steps):
            return old["rows"]
    torch.set_num_threads(1)
    rows = rep.toy_shift_check(steps=profile.toy_steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "settings": key}, indent=1))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opdplus study")
    ap.add_argument("--profile", default=None, help="smoke | default (env OPDPLUS_PROFILE)")
    ap.add_argument("--out", default=None,
                    help="output directory (default: results/study, results/study_smoke for smoke)")
    ap.add_argument("--workers", type=int, default=None, help="parallel run processes")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild summary and report from the stored runs (no training)")
    ap.add_argument("--partial", action="store_true",
                    help="with --report-only: report the finished runs, list the missing ones")
    ap.add_argument("--first", default="",
                    help="comma-separated run names to start before the others")
    args = ap.parse_args(argv)

    import torch

    from . import study, study_plan as plan, study_report as rep

    profile = plan.get_profile(args.profile)
    if args.workers is not None:
        profile = replace(profile, workers=args.workers)
    out = Path(args.out or ("results/study_smoke" if profile.name == "smoke" else "results/study"))
    out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()
    preds = plan.predictions()
    print(f"Study, profile {profile.name!r}. Written down before running:\n  {plan.criterion_text()}")
    print(rep._md(["divergence", "c", "design", "f'(1)", "f''(1)", "predicted"],
                  [[p["divergence"], f"{p['shift']:g}", p["estimator"], rep._num(p["f1"]),
                    rep._num(p["f2"]), rep._pred_text(p["predicted_collapse"])] for p in preds]))
    n_runs = len(set(s for _, s in study.plan_runs(profile)))
    print(f"\nTiny math world: {n_runs} runs of {profile.steps} steps "
          f"({profile.prompts_per_step} prompts x {profile.samples_per_prompt} samples), "
          f"{profile.workers} worker(s) x 1 thread ...", flush=True)
    if args.report_only:
        pairs, refs = study.load_finished(profile, out, partial=args.partial)
    else:
        pairs, refs = study.run_all(profile, out, first=[x for x in args.first.split(",") if x])
    records = study.summary_records(pairs, refs)
    toy = shift_toy(profile, out, stored_only=args.report_only)
    print("\nGenerator shift at one state (exact expected-gradient dynamics):")
    print(rep.format_toy(toy))
    load1 = os.getloadavg()
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile.name, "sizes": asdict(profile),
        "criterion": plan.criterion_text(), "target_fraction": plan.TARGET_FRACTION,
        "references": refs, "toy_shift": toy, "predictions": preds,
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, {profile.workers} worker "
                    f"process(es) x 1 thread",
        "torch": torch.__version__,
        "wall_s": round(time.time() - t0, 1) if not args.report_only else runs_span_s(pairs),
        "report_only": args.report_only,
        "runs_planned": n_runs, "runs_reported": len({s for _, s in pairs_specs(pairs)}),
        "missing_runs": sorted({s.name for _, s in study.plan_runs(profile)}
                               - {s.name for _, s in pairs_specs(pairs)}),
        "load_average_start": [round(x, 2) for x in load0],
        "load_average_end": [round(x, 2) for x in load1],
    }
    (out / "summary.json").write_text(json.dumps(records, indent=1))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    shown = {k: v for k, v in meta.items() if k not in ("sizes", "references", "toy_shift", "predictions")}
    shown["SFT / teacher validation accuracy"] = (
        f"{refs['sft-init']['validation']['accuracy']:.3f} / "
        f"{refs['teacher']['validation']['accuracy']:.3f}")
    rep.write_report(out / "report.html", records, toy, shown, preds)
    tables = rep.format_tables(records)
    ok, n = rep.agreement(records)
    print(f"\n1. Stability map (prediction held in {ok} of {n} predicted runs)\n{tables['stability']}")
    print(f"\n2. Generator shift\n{tables['shift']}")
    print(f"\n3. gamma x baseline (OPD+)\n{tables['gamma_baseline']}")
    print(f"\n({meta['wall_s']:.0f} s; load average {load0[0]:.1f} -> {load1[0]:.1f}; "
          f"{out / 'summary.json'}, {out / 'report.html'})")
    return 0
