"""The study's tables, figures, exact-toy check and report (``python -m opdplus study``).

Reads the records of ``opdplus.study`` and turns them into the three tables of the
"Beyond the paper" section, each with 95% intervals over seeds (mean +- t sd / sqrt(n), cut to
the quantity's range; ratios as geometric means with the t interval of their logarithms):

1. ``stability_table``: every divergence x {OPD, OPD+}: f'(1), f''(1), the prediction written
   down before running (``study_plan``), the outcome per seed and their agreement.
2. ``shift_table``: forward KL and JSD written as f + c(u - 1) with f'(1) = -1, 0, +1, under
   OPD and OPD+: final accuracy and teacher KL (does OPD converge to the teacher, or elsewhere?).
   ``toy_shift_check`` first answers the same question exactly at one state (``opdplus.toy``).
3. ``gamma_baseline_table``: OPD+ with gamma in {0, 1} x baseline in {none, analytic, loo}:
   steps to the target accuracy, final accuracy and teacher KL, and the gradient covariance
   trace as a ratio to gamma = 0 without baseline (same seed, same weights, same rollouts).

Figures are pure builders in ``study_figures`` (re-exported here); ``write_report`` puts the
tables and figures in one self-contained HTML file with plotly.js inlined once.
"""

from __future__ import annotations

import html
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import study_plan as plan
from .plot_style import ESTIMATOR_COLORS, ESTIMATOR_MARKER, OTHER_COLORS

EST_STYLE = {e: {"color": ESTIMATOR_COLORS[e], "symbol": ESTIMATOR_MARKER[e], "name": name}
             for e, name in (("opd", "OPD"), ("opd+", "OPD+"))}
"""OPD and OPD+ differ in colour AND marker, as in every figure (``plot_style``)."""
BASELINE_COLORS = {"none": "#7f7f7f", "analytic": OTHER_COLORS[2], "loo": OTHER_COLORS[3]}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(xs: Iterable[Optional[float]], lower: Optional[float] = None,
            upper: Optional[float] = None
            ) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(mean, low, high): a t interval over seeds (no interval from a single value).

    ``lower``/``upper``: the quantity's range (0 and 1 for an accuracy, 0 for a KL or a step
    count). The interval is cut to it: the true value lies in the range, so the cut interval
    covers it exactly as often, and three seeds no longer print an accuracy of -0.04."""
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None, None
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    half = T975.get(len(v) - 1, 1.96) * sd / math.sqrt(len(v))
    lo, hi = m - half, m + half
    if lower is not None:
        lo = max(lo, lower)
    if upper is not None:
        hi = min(hi, upper)
    return m, lo, hi


def ratio_ci(xs: Iterable[Optional[float]]
             ) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(geometric mean, low, high) of positive ratios: the t interval of their logarithms,
    mapped back. The natural average of ratios (2 and 1/2 average to 1) and always positive."""
    logs = [math.log(x) for x in xs if x is not None and x > 0]
    m, lo, hi = mean_ci(logs)
    if m is None:
        return None, None, None
    return math.exp(m), (None if lo is None else math.exp(lo)), (None if hi is None else math.exp(hi))


def fmt_ci(m, lo, hi, spec=".3f") -> str:
    if m is None:
        return "–"
    if lo is None:
        return format(m, spec)
    return f"{m:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def _group(records, exp: str, keys: Sequence[str]) -> Dict[tuple, List[dict]]:
    out: Dict[tuple, List[dict]] = {}
    for r in records:
        if r["experiment"] == exp:
            out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _pred_text(p) -> str:
    return "not predicted" if p is None else ("collapse" if p else "stable")


# ----------------------------------------------------------------------------- tables


def stability_table(records: Sequence[Mapping]) -> List[dict]:
    rows = []
    for (d, e), rs in _group(records, "stability", ("divergence", "estimator")).items():
        rs = sorted(rs, key=lambda r: r["seed"])
        pred = rs[0]["predicted_collapse"]
        obs = [bool(r["collapsed"]) for r in rs]
        rows.append({
            "divergence": d, "estimator": e, "f1": rs[0]["f1"], "f2": rs[0]["f2"],
            "predicted": _pred_text(pred), "predicted_collapse": pred,
            "observed": f"{sum(obs)}/{len(obs)} collapsed",
            "collapsed_frac": sum(obs) / len(obs),
            "agree": None if pred is None else sum(o == pred for o in obs),
            "n": len(obs),
            "accuracy": mean_ci((r["accuracy"] for r in rs), 0.0, 1.0),
            "kl_start": mean_ci((r["teacher_kl_start"] for r in rs), 0.0),
            "kl_final": mean_ci((r["teacher_kl_final"] for r in rs), 0.0),
        })
    return rows


def shift_table(records: Sequence[Mapping]) -> List[dict]:
    rows = []
    for (d, c, e), rs in _group(records, "shift", ("divergence", "shift", "estimator")).items():
        obs = [bool(r["collapsed"]) for r in rs]
        rows.append({
            "divergence": d, "shift": c, "f1": rs[0]["f1"], "estimator": e,
            "predicted": _pred_text(rs[0]["predicted_collapse"]),
            "predicted_collapse": rs[0]["predicted_collapse"],
            "observed": f"{sum(obs)}/{len(obs)} collapsed", "collapsed_frac": sum(obs) / len(obs),
            "agree": (None if rs[0]["predicted_collapse"] is None
                      else sum(o == rs[0]["predicted_collapse"] for o in obs)), "n": len(obs),
            "accuracy": mean_ci((r["accuracy"] for r in rs), 0.0, 1.0),
            "kl_start": mean_ci((r["teacher_kl_start"] for r in rs), 0.0),
            "kl_final": mean_ci((r["teacher_kl_final"] for r in rs), 0.0),
        })
    return sorted(rows, key=lambda r: (r["divergence"], r["f1"], r["estimator"]))


def gamma_baseline_table(records: Sequence[Mapping]) -> List[dict]:
    groups = _group(records, "gamma_baseline", ("divergence", "gamma", "baseline"))
    ref = {(r["divergence"], r["seed"]): r for r in records
           if r["experiment"] == "gamma_baseline" and r["gamma"] == 0.0 and r["baseline"] == "none"}
    rows = []
    for (d, g, b), rs in groups.items():
        def ratio(r, key):
            base = ref.get((d, r["seed"]), {}).get(key)
            return None if not base or r.get(key) is None else r[key] / base

        reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        rows.append({
            "divergence": d, "gamma": g, "baseline": b, "n": len(rs),
            "reached": f"{len(reached)}/{len(rs)}", "n_reached": len(reached),
            "steps_to_target": mean_ci(reached, 0.0),
            "accuracy": mean_ci((r["accuracy"] for r in rs), 0.0, 1.0),
            "kl_final": mean_ci((r["teacher_kl_final"] for r in rs), 0.0),
            "var_ratio_init": ratio_ci(ratio(r, "grad_var_init") for r in rs),
            "var_ratio_final": ratio_ci(ratio(r, "grad_var_final") for r in rs),
        })
    order = {b: i for i, b in enumerate(plan.BASELINES)}
    return sorted(rows, key=lambda r: (r["divergence"], r["gamma"], order.get(r["baseline"], 9)))


def _md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x, spec=".3g"):
    return "none" if x is None else format(x, spec)


def format_tables(records: Sequence[Mapping]) -> Dict[str, str]:
    """The three tables as markdown (what the report, the README and ``study`` print)."""
    st = stability_table(records)
    t1 = _md(["divergence", "design", "f'(1)", "f''(1)", "predicted", "observed", "agree",
              "accuracy", "teacher KL start → end"],
             [[r["divergence"], r["estimator"], _num(r["f1"]), _num(r["f2"]), r["predicted"],
               r["observed"], "–" if r["agree"] is None else f"{r['agree']}/{r['n']}",
               fmt_ci(*r["accuracy"]), f"{fmt_ci(*r['kl_start'], '.2f')} → {fmt_ci(*r['kl_final'], '.2f')}"]
              for r in st])
    sh = shift_table(records)
    t2 = _md(["divergence", "c", "f'(1) after shift", "design", "predicted", "observed",
              "accuracy", "teacher KL end"],
             [[r["divergence"], f"{r['shift']:g}", _num(r["f1"]), r["estimator"], r["predicted"],
               r["observed"], fmt_ci(*r["accuracy"]), fmt_ci(*r["kl_final"], ".2f")] for r in sh])
    gb = gamma_baseline_table(records)
    t3 = _md(["divergence", "γ", "baseline", "reached target", "steps to target", "accuracy",
              "teacher KL end", "grad variance ratio (SFT init), geometric mean",
              "ratio (final weights)"],
             [[r["divergence"], f"{r['gamma']:g}", r["baseline"], r["reached"],
               fmt_ci(*r["steps_to_target"], ".0f"), fmt_ci(*r["accuracy"]),
               fmt_ci(*r["kl_final"], ".2f"), fmt_ci(*r["var_ratio_init"], ".2f"),
               fmt_ci(*r["var_ratio_final"], ".2f")] for r in gb])
    return {"stability": t1, "shift": t2, "gamma_baseline": t3}


def agreement(records: Sequence[Mapping], experiment: str = "stability") -> Tuple[int, int]:
    """(runs whose outcome matched the prediction, runs with a prediction)."""
    rs = [r for r in records if r["experiment"] == experiment and r["predicted_collapse"] is not None]
    return sum(bool(r["collapsed"]) == r["predicted_collapse"] for r in rs), len(rs)


# ----------------------------------------------------------------------------- exact toy


def toy_shift_check(steps: int = 1500, lr: float = 0.5, vocab: int = 8, seed: int = 0) -> List[dict]:
    """The generator-shift question answered exactly at one state, before the tiny world.

    Teacher and student logits are drawn once (float64, ``seed``); each shifted generator
    (f'(1) = -1, 0, +1) of forward KL and JSD runs expected-gradient descent on the logits
    (``toy.one_state_expected_gradient``, as in ``toy.one_state_dynamics``) under OPD and OPD+,
    stopping early if the student becomes one-hot. Returns the final total variation to the
    teacher, the largest student probability and the reverse KL, KL(student || teacher).
    """
    import torch

    from .toy import one_state_expected_gradient

    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(vocab, generator=g, dtype=torch.float64)
    zs = torch.randn(vocab, generator=g, dtype=torch.float64)
    q = torch.softmax(zt, -1)

    def tv(z):
        return float(0.5 * (torch.softmax(z, -1) - q).abs().sum())

    out = []
    for name in plan.SHIFT_DIVERGENCES:
        for slope in plan.SHIFT_SLOPES:
            c = plan.shift_for_slope(name, slope)
            d = plan.divergence(name, c)
            for est in ("opd", "opd+"):
                z, done = zs.clone(), 0
                for done in range(1, steps + 1):
                    step = lr * one_state_expected_gradient(z, zt, d, est)
                    z_new = z - step
                    # a logit running off to infinity (one-hot student) ends the run early
                    if not torch.isfinite(z_new).all() or torch.softmax(z_new, -1).max() > 1 - 1e-12:
                        z = z_new if torch.isfinite(z_new).all() else z
                        break
                    z = z_new
                p = torch.softmax(z, -1)
                out.append({"divergence": name, "shift": c, "f1": slope, "estimator": est,
                            "tv_start": tv(zs), "tv_final": tv(z), "max_prob": float(p.max()),
                            "reverse_kl_final": float((p * (p.log() - q.log())).sum()),
                            "steps": done, "predicted_collapse": plan.predict(d, est)[0]})
    return out


def format_toy(rows: Sequence[Mapping]) -> str:
    return _md(["divergence", "c", "f'(1)", "design", "predicted", "TV to teacher start → end",
                "largest probability", "KL(student‖teacher) end", "steps"],
               [[r["divergence"], f"{r['shift']:g}", f"{r['f1']:g}", r["estimator"],
                 _pred_text(r["predicted_collapse"]), f"{r['tv_start']:.3f} → {r['tv_final']:.3g}",
                 f"{r['max_prob']:.3f}", f"{r['reverse_kl_final']:.3g}", r["steps"]] for r in rows])


def _by_slope(records: Sequence[Mapping]) -> Dict[str, Tuple[int, int]]:
    """OPD runs of the stability and shift experiments by the sign of f'(1):
    {"> 0" | "= 0" | "< 0": (collapsed, runs)}."""
    out: Dict[str, List[int]] = {}
    seen = set()
    for r in records:
        if r["estimator"] != "opd" or r["f1"] is None or r["experiment"] == "gamma_baseline":
            continue
        key = (r["divergence"], r["shift"], r["seed"])
        if key in seen:  # a run that is in both experiments counts once
            continue
        seen.add(key)
        sign = "> 0" if r["f1"] > 1e-9 else ("< 0" if r["f1"] < -1e-9 else "= 0")
        c = out.setdefault(sign, [0, 0])
        c[0] += bool(r["collapsed"])
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _geo(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _read_stability(records: Sequence[Mapping], meta: Mapping) -> str:
    ok, n = agreement(records)
    st = stability_table(records)
    wrong = [f"{r['divergence']}/{r['estimator']} ({r['observed']}, predicted {r['predicted']}; "
             f"accuracy {fmt_ci(*r['accuracy'])}, teacher KL {r['kl_start'][0]:.2f} → "
             f"{r['kl_final'][0]:.2f})"
             for r in st if r["agree"] is not None and r["agree"] < r["n"]]
    unpred = [f"{r['divergence']}/{r['estimator']}: {r['observed']}" for r in st if r["agree"] is None]
    plus = [r for r in st if r["estimator"] == "opd+" and r["agree"] is not None]
    refs = meta.get("references") or {}
    start = ""
    if "sft-init" in refs and "teacher" in refs:
        start = (f" (test accuracy at the start, the SFT student: "
                 f"{refs['sft-init']['test']['accuracy']:.2f}; the teacher: "
                 f"{refs['teacher']['test']['accuracy']:.2f})")
    para = (f"**Stability map**{start}. The prediction held in {ok} of {n} predicted runs. "
            + ("Where it failed: " + "; ".join(wrong) + "." if wrong else "It failed nowhere.")
            + (" Not predicted: " + "; ".join(unpred) + "." if unpred else ""))
    if plus:
        para += (f" OPD+ stayed in {sum(r['agree'] for r in plus)} of "
                 f"{sum(r['n'] for r in plus)} runs over {len(plus)} divergences.")
    slopes = _by_slope(records)
    if slopes:
        para += (" OPD runs collapsed, by the sign of f′(1) (stability and shift runs): "
                 + "; ".join(f"f′(1) {k}: {c} of {m}" for k, (c, m) in
                             sorted(slopes.items(), key=lambda kv: "><=".index(kv[0][0])))
                 + ".")
        pos, neg = slopes.get("> 0", (0, 0)), slopes.get("< 0", (0, 0))
        if pos[0] == pos[1] and neg[0] == 0 and pos[1] and neg[1]:
            para += (" Where f′(1) ≠ 0 the linear argument decided every run; at f′(1) = 0 it "
                     "only says that nothing pulls back to first order, and what happens is "
                     "left to higher-order terms.")
    return para


def _read_shift(records: Sequence[Mapping]) -> Optional[str]:
    sh_all = shift_table(records)
    sh = [r for r in sh_all if r["estimator"] == "opd"]
    if sh:
        parts = [f"{r['divergence']} with f′(1) = {r['f1']:g}: {r['observed']}, final teacher KL "
                 f"{fmt_ci(*r['kl_final'], '.2f')}" for r in sh]
        ok_s, n_s = agreement(records, "shift")
        text = ("**Generator shift (OPD).** " + "; ".join(parts) + f". Prediction held in "
                f"{ok_s} of {n_s} predicted runs.")
        plus_sh, higher, apart = [], [], []
        for d in sorted({r["divergence"] for r in sh_all}):
            rows = {r["shift"]: r for r in sh_all if r["divergence"] == d and r["estimator"] == "opd+"}
            if 0.0 in rows and len(rows) > 1 and rows[0.0]["kl_final"][0] is not None:
                others = [rows[c]["kl_final"][0] for c in sorted(rows) if c != 0.0
                          and rows[c]["kl_final"][0] is not None]
                if others:
                    base = rows[0.0]["kl_final"]
                    higher += [x > base[0] for x in others]
                    apart += [rows[c]["kl_final"][1] is not None and base[2] is not None
                              and rows[c]["kl_final"][1] > base[2] for c in rows if c != 0.0]
                    plus_sh.append(f"{d} {rows[0.0]['kl_final'][0]:.2f} at c = 0 against "
                                   + " and ".join(f"{x:.2f}" for x in others)
                                   + " at the shifted generators")
        if plus_sh:
            text += (" OPD+ is invariant to c in expectation only: c adds a constant to its "
                     "advantage, which has zero mean gradient but adds variance when there is "
                     "no baseline. Its final teacher KL: " + "; ".join(plus_sh) + ".")
            if all(higher):
                text += (" Every shifted generator ended further from the teacher under OPD+; "
                         f"the intervals separate from c = 0 in {sum(apart)} of {len(apart)}.")
        return text
    return None


def _read_gamma(records: Sequence[Mapping]) -> Optional[str]:
    gb_all = gamma_baseline_table(records)
    gb = [r for r in gb_all
          if r["var_ratio_init"][0] is not None and (r["gamma"], r["baseline"]) != (0.0, "none")]
    if gb:
        best = min(gb, key=lambda r: r["var_ratio_init"][0])
        worst = max(gb, key=lambda r: r["var_ratio_init"][0])
        text = (f"**γ and baselines (OPD+).** Lowest gradient variance at the SFT weights: "
                f"{best['divergence']} γ={best['gamma']:g} with baseline {best['baseline']}, "
                f"{fmt_ci(*best['var_ratio_init'], '.2f')} of γ=0 without baseline; highest: "
                f"{worst['divergence']} γ={worst['gamma']:g} with baseline {worst['baseline']}, "
                f"{fmt_ci(*worst['var_ratio_init'], '.2f')}.")
        g0_of = {(r["divergence"], r["baseline"]): r["var_ratio_init"][0] for r in gb_all
                 if r["gamma"] == 0.0}
        g1 = [r for r in gb if r["gamma"] == 1.0
              and g0_of.get((r["divergence"], r["baseline"])) is not None]
        if g1:
            v = [r["var_ratio_init"][0] / g0_of[(r["divergence"], r["baseline"])] for r in g1]
            reach = {g: (sum(r["n_reached"] for r in gb_all if r["gamma"] == g),
                         sum(r["n"] for r in gb_all if r["gamma"] == g)) for g in (0.0, 1.0)}
            text += (f" At the same baseline, γ = 1 multiplies it by {min(v):.1f} to "
                     f"{max(v):.1f} ({len(g1)} divergence × baseline cells), and "
                     f"{reach[1.0][0]} of {reach[1.0][1]} γ = 1 runs reached the target "
                     f"accuracy, against {reach[0.0][0]} of {reach[0.0][1]} at γ = 0")
            if min(v) > 1 and reach[1.0][0] / reach[1.0][1] < reach[0.0][0] / reach[0.0][1]:
                text += (": the exact future term is unbiased, but at this batch size its "
                         "extra variance costs more than it brings")
            text += "."
        g0 = [r for r in gb if r["gamma"] == 0.0]
        if g0:
            text += (" At γ = 0 the baselines' variance ratios (SFT weights): "
                     + "; ".join(f"{r['divergence']} {r['baseline']} "
                                 f"{fmt_ci(*r['var_ratio_init'], '.2f')}" for r in g0)
                     + ". A ratio whose interval contains 1 is no measured change.")
        return text
    return None


def reading(records: Sequence[Mapping], meta: Mapping) -> str:
    """The paragraphs that read the three tables; every number comes from ``records``/``meta``."""
    out = [_read_stability(records, meta)]
    out += [t for t in (_read_shift(records), _read_gamma(records)) if t]
    if meta.get("missing_runs"):
        out.append(f"**Incomplete.** {meta['runs_reported']} of {meta['runs_planned']} planned "
                   f"runs finished; the tables hold only those (missing: "
                   f"{len(meta['missing_runs'])} runs, listed in meta.json).")
    if meta.get("report_only"):
        out.append(f"Profile {meta['profile']!r}, report built {meta['date']} from the stored runs, "
                   f"which spanned {meta['wall_s'] / 60:.0f} min of wall time on a shared "
                   f"{meta['hardware'].split(',')[0]} machine with "
                   f"{meta['hardware'].split(',')[1].strip()}; load average "
                   f"{meta['load_average_end'][0]:.1f} when the report was built.")
    else:
        out.append(f"Profile {meta['profile']!r}, {meta['date']}: {meta['wall_s'] / 60:.0f} min "
                   f"wall on {meta['hardware']}; load average {meta['load_average_start'][0]:.1f} "
                   f"at the start and {meta['load_average_end'][0]:.1f} at the end.")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------- report


def _md_to_html(table: str) -> str:
    lines = table.splitlines()
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in lines[0].strip("|").split("|"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>"
                                    for c in ln.strip("|").split("|")) + "</tr>" for ln in lines[2:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(path, records: Sequence[Mapping], toy: Sequence[Mapping], meta: Mapping,
                 predictions: Sequence[Mapping]) -> None:
    """One self-contained HTML page: plan, tables, figures (plotly.js inlined once)."""
    from pathlib import Path

    tables = format_tables(records)
    figs = [fig_stability_map(records), fig_shift_sweep(records), fig_gamma_baseline(records),
            fig_criterion_slider(records)]
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    pred_tab = _md(["divergence", "c", "design", "f'(1)", "f''(1)", "predicted", "why"],
                   [[p["divergence"], f"{p['shift']:g}", p["estimator"], _num(p["f1"]),
                     _num(p["f2"]), _pred_text(p["predicted_collapse"]), p["reason"]]
                    for p in predictions])
    meta_html = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                        for k, v in meta.items())
    ok, n = agreement(records)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>opdplus study</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left;font-size:90%}}</style></head><body>
<h1>Beyond the paper: stability, generator shift, γ and baselines</h1><ul>{meta_html}</ul>
<h2>Written down before running</h2><p>{html.escape(plan.criterion_text())}.</p>
{_md_to_html(pred_tab)}
<h2>1. Stability map</h2><p>Prediction and outcome agreed in {ok} of {n} predicted runs.</p>
{_md_to_html(tables['stability'])}{parts[0]}
<p>How much the map depends on the criterion's factor (the study's is fixed at
{plan.COLLAPSE_KL_FACTOR:g}x):</p>{parts[3]}
<h2>2. Generator shift</h2><h3>Exact check at one state</h3>{_md_to_html(format_toy(toy))}
<h3>Tiny world</h3>{_md_to_html(tables['shift'])}{parts[1]}
<h2>3. What γ and the baselines buy</h2>{_md_to_html(tables['gamma_baseline'])}{parts[2]}
</body></html>"""
    Path(path).write_text(doc)


from .study_figures import (  # noqa: E402, F401  (re-exported; they build on the tables above)
    fig_criterion_slider, fig_gamma_baseline, fig_shift_sweep, fig_stability_map)
