"""The exact-toy tables that ``make reproduce`` prints: gradient bias and one-state dynamics.

Both are computed from scratch on every run (nothing stored), from the enumerated
toys in ``opdplus.toy``:

- ``gradient_table``: for every divergence, the relative error and cosine of the
  expected OPD and OPD+ gradients against the exact gradient, at one categorical
  state (V = 8) and on the tabular sequence toy (V = 4, T = 3) with gamma = 1 and 0.
- ``dynamics_table``: expected-gradient descent on one state's logits from a uniform
  student; the final total variation to the teacher and the student's largest
  probability, for OPD and OPD+.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from . import toy


def gradient_table(seed: int = 0) -> List[Dict]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(8, generator=g, dtype=torch.float64)
    q = 1.5 * torch.randn(8, generator=g, dtype=torch.float64)
    seq = toy.TabularToy.random(vocab=4, horizon=3, seed=seed + 1)
    rows = []
    for d in toy.family():
        exact1 = toy.one_state_true_gradient(z, q, d)
        exactS = seq.true_gradient(d)
        row = {"divergence": d.name, "params": d.params}
        for est in ("opd", "opd+"):
            a = toy.gradient_agreement(toy.one_state_expected_gradient(z, q, d, est), exact1)
            row[f"state_{est}_rel"], row[f"state_{est}_cos"] = a["rel_error"], a["cosine"]
            for gamma in (1.0, 0.0):
                a = toy.gradient_agreement(seq.expected_gradient(d, est, gamma=gamma), exactS)
                row[f"seq_g{gamma:g}_{est}_rel"] = a["rel_error"]
                row[f"seq_g{gamma:g}_{est}_cos"] = a["cosine"]
        rows.append(row)
    return rows


def dynamics_table(seed: int = 0, steps: int = 2000, lr: float = 0.5) -> List[Dict]:
    g = torch.Generator().manual_seed(seed + 100)
    q_logits = 1.5 * torch.randn(8, generator=g, dtype=torch.float64)
    rows = []
    for d in toy.family():
        row = {"divergence": d.name}
        for est in ("opd", "opd+"):
            r = toy.one_state_dynamics(q_logits, d, est, steps=steps, lr=lr, record_every=steps)
            row[f"{est}_tv"] = float(r["tv"][-1])
            row[f"{est}_max_prob"] = float(r["max_prob"][-1])
        row["teacher_max_prob"] = float(torch.softmax(q_logits, -1).max())
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return f"{x:.1e}" if abs(x) < 1e-3 else f"{x:.3f}"


def format_gradient_table(rows: List[Dict]) -> str:
    head = ("| divergence | one state: OPD rel.err / cos | OPD+ rel.err / cos | "
            "sequences γ=1: OPD rel.err / cos | OPD+ rel.err / cos | γ=0: OPD+ rel.err / cos |")
    lines = [head, "|" + "---|" * 6]
    for r in rows:
        cells = [
            (r["state_opd_rel"], r["state_opd_cos"]), (r["state_opd+_rel"], r["state_opd+_cos"]),
            (r["seq_g1_opd_rel"], r["seq_g1_opd_cos"]), (r["seq_g1_opd+_rel"], r["seq_g1_opd+_cos"]),
            (r["seq_g0_opd+_rel"], r["seq_g0_opd+_cos"]),
        ]
        lines.append(f"| {r['divergence']} | " + " | ".join(f"{_fmt(a)} / {b:+.3f}" for a, b in cells)
                     + " |")
    return "\n".join(lines)


def format_dynamics_table(rows: List[Dict], steps: int) -> str:
    lines = ["| divergence | OPD: TV to teacher | OPD: max prob | OPD+: TV to teacher | "
             "OPD+: max prob | teacher max prob |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['divergence']} | {_fmt(r['opd_tv'])} | {r['opd_max_prob']:.3f} | "
                     f"{_fmt(r['opd+_tv'])} | {r['opd+_max_prob']:.3f} | {r['teacher_max_prob']:.3f} |")
    return "\n".join(lines)


def print_exact_tables(steps: int = 2000) -> Dict[str, List[Dict]]:
    grad = gradient_table()
    print("Exact gradients (float64, by enumeration): expected estimator vs exact gradient\n")
    print(format_gradient_table(grad))
    dyn = dynamics_table(steps=steps)
    print(f"\nOne-state dynamics: {steps} steps of expected-gradient descent on the logits "
          "(lr 0.5, V = 8, uniform start)\n")
    print(format_dynamics_table(dyn, steps))
    return {"gradients": grad, "dynamics": dyn}
