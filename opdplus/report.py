"""Results of a reproduction: ``summary.json``, a terminal table and a self-contained HTML report.

A *record* is one row of ``summary.json``: one arm and seed (or a reference row such as
the SFT initialisation or the teacher), with at least ``task``, ``divergence``,
``estimator``, ``seed``, ``accuracy``, ``ci_low`` and ``ci_high``. Histories are the
per-step lists written by the trainer; the report draws them with the shared
``plots_runs.fig_learning_curves`` so colours and dashes match the notebooks.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from .plots_runs import fig_learning_curves

REQUIRED = ("task", "divergence", "estimator", "seed", "accuracy", "ci_low", "ci_high")
CURVE_METRICS = ("accuracy", "teacher_kl", "grad_norm", "completion_len")


def check_records(records: Sequence[Mapping]) -> None:
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"summary record {i} lacks {missing}: {dict(r)}")


def arm_name(r: Mapping) -> str:
    name = f"{r['divergence']}/{r['estimator']}" if r["divergence"] != "-" else r["estimator"]
    # Arms of another task (the tool world) keep their own rows.
    return name if r.get("task", "tiny_math") == "tiny_math" else f"{r['task']}: {name}"


def aggregate(records: Sequence[Mapping]) -> List[Dict]:
    """One row per arm: accuracy per seed, the mean over seeds, and the final training signals."""
    by_arm: Dict[str, List[Mapping]] = defaultdict(list)
    for r in records:
        by_arm[arm_name(r)].append(r)
    rows = []
    for arm, rs in by_arm.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in rs]
        rows.append({
            "arm": arm,
            "per_seed": [(r["seed"], r["accuracy"], r["ci_low"], r["ci_high"]) for r in rs],
            "mean": sum(accs) / len(accs),
            "teacher_kl": _mean([r.get("final_teacher_kl") for r in rs]),
            "completion_len": _mean([r.get("final_completion_len") for r in rs]),
            "grad_norm": _mean([r.get("max_grad_norm") for r in rs]),
            "avg4": _mean([r.get("avg4") for r in rs]),
        })
    return rows


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def _f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)


def format_table(records: Sequence[Mapping]) -> str:
    """Markdown table: one row per arm, seeds side by side with their 95% intervals."""
    check_records(records)
    lines = ["| arm | greedy pass@1 on test, per seed [95% Wilson CI] | mean | avg@4 (T = 1), mean | "
             "final teacher KL (nats/token) | final completion length | max grad norm |",
             "|---|---|---|---|---|---|---|"]
    for row in aggregate(records):
        seeds = "; ".join(f"s{s}: {a:.3f} [{lo:.3f}, {hi:.3f}]" for s, a, lo, hi in row["per_seed"])
        lines.append(f"| {row['arm']} | {seeds} | {row['mean']:.3f} | {_f(row['avg4'], '{:.3f}')} | "
                     f"{_f(row['teacher_kl'])} | "
                     f"{_f(row['completion_len'], '{:.1f}')} | {_f(row['grad_norm'], '{:.1f}')} |")
    return "\n".join(lines)


def write_results(out_dir, records: Sequence[Mapping], histories: Mapping[str, Sequence[Mapping]],
                  meta: Mapping) -> Path:
    """Write ``summary.json`` and ``report.html`` under ``out_dir``; returns the report path.

    ``histories`` maps a run name (``"forward_kl/opd+/s0"``) to its per-step records.
    """
    check_records(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(list(records), indent=1))
    # one curve per arm: the first seed's history (all seeds are in results/histories/)
    first: Dict[str, Sequence[Mapping]] = {}
    for name in sorted(histories):
        arm = name.rsplit("/", 1)[0]
        first.setdefault(arm, histories[name])
    parts = []
    if first:
        fig = fig_learning_curves(first, metrics=[m for m in CURVE_METRICS], cols=2,
                                  title="Learning curves (first seed of each arm)")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True))
    table = format_table(records)
    rows_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
        + "</tr>" for line in table.splitlines()[2:]
    )
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in table.splitlines()[0].strip("|").split("|"))
    meta_html = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                        for k, v in meta.items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>opdplus reproduction</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>OPD vs OPD+ in the tiny math world</h1><ul>{meta_html}</ul>
<h2>Final table</h2><table><tr>{head}</tr>{rows_html}</table>
<h2>Curves</h2>{''.join(parts)}</body></html>"""
    path = out / "report.html"
    path.write_text(doc)
    return path
