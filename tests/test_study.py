"""The study (`python -m opdplus study`): its plan, its measurements, its tables, its smoke run."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from opdplus import study, study_plan as plan, study_report as rep
from opdplus.divergences import get, names

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the plan


def test_predictions_are_the_ones_committed_before_the_runs():
    """The predictions and criterion printed by the report are the ones shipped with the code."""
    shipped = json.loads((ROOT / "data/reference/study/predictions.json").read_text())
    assert shipped["rows"] == json.loads(json.dumps(plan.predictions()))
    assert shipped["criterion"] == plan.criterion_text()
    assert (shipped["collapse_accuracy"], shipped["collapse_kl_factor"]) == (0.05, 3.0)


@pytest.mark.parametrize("name, f1, f2", [
    ("reverse_kl", -1.0, 1.0),  # f = -log u
    ("forward_kl", 1.0, 1.0),  # f = u log u
    ("jsd", 0.0, 0.25),  # beta = 1/2: f'' = (1/u - 1/(1+u)) / 2
    ("hellinger", 0.0, 0.5),  # (sqrt u - 1)^2
    ("pearson_chi2", 0.0, 2.0),  # (u - 1)^2
    ("skew_reverse_kl", -0.9, 0.81),  # -log(a + (1-a) u), a = 0.1
    ("skew_kl", 0.9, 0.81),  # u log(u / (a u + 1 - a)), a = 0.1
    ("jeffreys", 0.0, 2.0),  # (u - 1) log u
])
def test_derivatives_at_one_match_the_closed_forms(name, f1, f2):
    got1, got2 = plan.derivatives_at_one(plan.divergence(name))
    assert got1 == pytest.approx(f1, abs=1e-9) and got2 == pytest.approx(f2, rel=1e-7)


def test_total_variation_has_no_derivative_at_one_and_gets_no_prediction():
    assert plan.derivatives_at_one(get("tv")) == (None, None)
    for est in ("opd", "opd+"):
        pred, why = plan.predict(get("tv"), est)
        assert pred is None and "not predicted" in why


def test_predictions_follow_the_sign_of_f_prime_for_opd_and_f_second_for_opd_plus():
    rows = {(r["divergence"], r["shift"], r["estimator"]): r for r in plan.predictions()}
    assert {n for n in names()} == {d for d, c, e in rows if c == 0}
    for (d, c, e), r in rows.items():
        if r["f1"] is None:
            continue
        if e == "opd+":
            assert r["predicted_collapse"] is False
        else:
            assert r["predicted_collapse"] is (r["f1"] >= -1e-9), (d, c)
    assert rows[("forward_kl", 0.0, "opd")]["predicted_collapse"] is True
    assert rows[("reverse_kl", 0.0, "opd")]["predicted_collapse"] is False
    assert rows[("jsd", 0.0, "opd")]["predicted_collapse"] is True  # f'(1) = 0: no restoring force
    assert rows[("forward_kl", -2.0, "opd")]["predicted_collapse"] is False  # shifted to f'(1) = -1


@pytest.mark.parametrize("name", plan.SHIFT_DIVERGENCES)
@pytest.mark.parametrize("slope", plan.SHIFT_SLOPES)
def test_shift_gives_the_asked_slope_and_leaves_the_divergence_unchanged(name, slope):
    c = plan.shift_for_slope(name, slope)
    d = plan.divergence(name, c)
    assert plan.derivatives_at_one(d)[0] == pytest.approx(slope, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(d.full_vocab(zs, zt), plan.divergence(name).full_vocab(zs, zt), atol=1e-12)


def test_shift_for_a_kinked_generator_is_refused():
    with pytest.raises(ValueError, match="no derivative at 1"):
        plan.shift_for_slope("tv", 0.0)


def test_collapse_criterion():
    assert plan.collapsed(0.04, 0.7, 0.7)  # accuracy below 0.05
    assert not plan.collapsed(0.05, 0.7, 2.0)
    assert plan.collapsed(0.3, 0.7, 2.11)  # > 3x the start
    assert not plan.collapsed(0.3, 0.7, 2.09)
    assert plan.collapsed(0.3, 0.7, float("inf"))


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="unknown study profile 'huge'.*default"):
        plan.get_profile("huge")


# ----------------------------------------------------------------------------- the runs


def test_plan_shares_runs_between_experiments_and_has_every_cell():
    prof = plan.get_profile("default")
    pairs = study.plan_runs(prof)
    count = {e: sum(x == e for x, _ in pairs) for e in study.EXPERIMENTS}
    assert count == {"stability": 11 * 2 * 3, "shift": 2 * 3 * 2 * 3, "gamma_baseline": 3 * 2 * 3 * 3}
    unique = set(s for _, s in pairs)
    # the shift experiment's unshifted rows and gamma = 0 / no baseline are the map's runs
    assert len(unique) == 66 + 2 * 2 * 2 * 3 + 3 * 5 * 3
    for d in plan.GB_DIVERGENCES:
        s = study.RunSpec(d, "opd+", 1, measure=True)
        assert ("stability", s) in pairs and ("gamma_baseline", s) in pairs
    assert ("shift", study.RunSpec("forward_kl", "opd", 2, 0.0)) in pairs  # c = 0 is f'(1) = +1
    assert all(s.measure == (s.estimator == "opd+" and s.divergence in plan.GB_DIVERGENCES
                             and s.shift == 0) for s in unique)


def test_shifted_config_trains_with_the_shifted_generator():
    cfg = study.train_config(plan.get_profile("smoke"),
                             study.RunSpec("forward_kl", "opd", 0, shift=-2.0))
    t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    u = t.exp()
    f_shifted = u * t - 2.0 * (u - 1)
    assert torch.allclose(cfg.divergence_obj.advantage(t, "opd"), -f_shifted)
    assert torch.allclose(cfg.divergence_obj.advantage(t, "opd+"), u - 2.0)  # w_f + c
    assert cfg.to_dict()["shift"] == -2.0 and cfg.replace(shift=0.0).divergence_obj == get("forward_kl")


def test_steps_to_target_is_the_first_evaluation_that_reaches_it():
    curve = [[5, 0.30], [10, 0.41], [15, 0.39], [20, 0.45]]
    assert study.steps_to_target(curve, 0.40) == 10
    assert study.steps_to_target(curve, 0.50) is None


def _fake(exp, d, e, seed, acc, kl0, kl1, c=0.0, g=0.0, b="none", **kw):
    return {"experiment": exp, "divergence": d, "estimator": e, "seed": seed, "shift": c,
            "gamma": g, "baseline": b, "accuracy": acc, "ci_low": acc / 2, "ci_high": acc * 1.5,
            "teacher_kl_start": kl0, "teacher_kl_final": kl1, "n_test": 100, **kw}


def test_summary_judges_each_run_by_the_fixed_criterion_and_prediction():
    runs = [("stability", _fake("", "forward_kl", "opd", 0, 0.01, 0.7, 9.0)),
            ("stability", _fake("", "reverse_kl", "opd", 0, 0.35, 0.7, 0.6)),
            ("stability", _fake("", "tv", "opd", 0, 0.30, 0.7, 0.6)),
            ("gamma_baseline", _fake("", "jsd", "opd+", 0, 0.3, 0.7, 0.6,
                                     val_curve=[[5, 0.30], [10, 0.50]]))]
    refs = {"sft-init": {"validation": {"accuracy": 0.3}}, "teacher": {"validation": {"accuracy": 0.9}}}
    recs = study.summary_records(runs, refs)
    assert [r["collapsed"] for r in recs] == [True, False, False, False]
    assert [r["predicted_collapse"] for r in recs] == [True, False, None, False]
    assert list(recs[0])[: len(study.SUMMARY_FIELDS)] == list(study.SUMMARY_FIELDS)
    assert recs[3]["steps_to_target"] == 10  # target 0.3 + 0.15 * 0.6 = 0.39
    assert recs[0]["steps_to_target"] is None
    assert rep.agreement(recs) == (2, 2)


# ----------------------------------------------------------------------------- the tables


def test_mean_ci_is_the_t_interval_over_seeds():
    m, lo, hi = rep.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.303 / math.sqrt(3))
    assert rep.mean_ci([0.5]) == (0.5, None, None) and rep.mean_ci([None]) == (None, None, None)


def test_intervals_stay_inside_the_quantitys_range():
    # three seeds of an accuracy near 0: the t interval reaches below 0, the cut one does not
    m, lo, hi = rep.mean_ci([0.0, 0.0, 0.09])
    assert lo < 0
    m2, lo2, hi2 = rep.mean_ci([0.0, 0.0, 0.09], 0.0, 1.0)
    assert (m2, hi2) == (m, hi) and lo2 == 0.0
    assert rep.mean_ci([0.98, 1.0, 0.9], 0.0, 1.0)[2] == 1.0


def test_ratios_average_geometrically():
    g, lo, hi = rep.ratio_ci([2.0, 0.5])
    assert g == pytest.approx(1.0) and 0 < lo < 1 < hi
    assert lo * hi == pytest.approx(1.0)  # symmetric on the log scale
    g, lo, hi = rep.ratio_ci([700.0, 0.3, 2.0])  # one wild seed: positive, not [-2218, 3639]
    assert g == pytest.approx((700 * 0.3 * 2.0) ** (1 / 3)) and lo > 0
    assert rep.ratio_ci([None, 4.0]) == (pytest.approx(4.0), None, None)


def _records():
    refs = {"sft-init": {"validation": {"accuracy": 0.3}}, "teacher": {"validation": {"accuracy": 0.9}}}
    runs = []
    for s in range(3):
        runs += [("stability", _fake("", "forward_kl", "opd", s, 0.0, 0.7, 8.0 + s)),
                 ("stability", _fake("", "forward_kl", "opd+", s, 0.3 + s / 100, 0.7, 0.5)),
                 ("shift", _fake("", "forward_kl", "opd", s, 0.2, 0.7, 1.5, c=-2.0))]
        for g in (0.0, 1.0):
            for b in ("none", "analytic", "loo"):
                var = 10.0 * (1 + g) / (1 if b == "none" else 4)
                runs.append(("gamma_baseline", _fake(
                    "", "jsd", "opd+", s, 0.35, 0.7, 0.5, g=g, b=b, grad_var_init=var + s,
                    grad_var_final=var, val_curve=[[5, 0.3], [10, 0.4 if b != "none" else 0.3]])))
    return study.summary_records(runs, refs)


def test_tables_report_agreement_intervals_and_variance_ratios():
    recs = _records()
    st = {(r["divergence"], r["estimator"]): r for r in rep.stability_table(recs)}
    assert st[("forward_kl", "opd")]["observed"] == "3/3 collapsed"
    assert st[("forward_kl", "opd")]["agree"] == 3 and st[("forward_kl", "opd+")]["agree"] == 3
    gb = {(r["gamma"], r["baseline"]): r for r in rep.gamma_baseline_table(recs)}
    assert gb[(0.0, "none")]["var_ratio_final"][0] == pytest.approx(1.0)
    assert gb[(0.0, "loo")]["var_ratio_final"][0] == pytest.approx(0.25)
    assert gb[(1.0, "none")]["var_ratio_final"][0] == pytest.approx(2.0)
    assert gb[(0.0, "loo")]["reached"] == "3/3" and gb[(0.0, "none")]["reached"] == "0/3"
    tables = rep.format_tables(recs)
    assert "| forward_kl | opd | 1 | 1 | collapse | 3/3 collapsed | 3/3 |" in tables["stability"]
    assert "| forward_kl | -2 | -1 | opd | stable | 0/3 collapsed |" in tables["shift"]
    assert "| jsd | 0 | loo | 3/3 | 10 [10, 10] | 0.350 [0.350, 0.350] |" in tables["gamma_baseline"]


def test_reading_counts_collapses_by_the_sign_of_the_slope_and_states_gammas_cost():
    recs = _records()
    meta = {"profile": "test", "date": "d", "wall_s": 60.0, "hardware": "x86_64, 2 CPUs, 1 worker",
            "load_average_start": [0.5], "load_average_end": [1.0]}
    text = rep.reading(recs, meta)
    # forward KL OPD (f'(1) = 1) collapsed in 3 of 3 seeds; the c = -2 shift (f'(1) = -1) in none
    assert "f′(1) > 0: 3 of 3; f′(1) < 0: 0 of 3." in text
    assert "decided every run" in text
    # gamma = 1 at the same baseline: seed s has variance (20 + s) / (10 + s) times gamma = 0's
    # without baseline, (5 + s) / (2.5 + s) with one: geometric means 1.91 and 1.75
    assert "γ = 1 multiplies it by 1.7 to 1.9 (3 divergence × baseline cells)" in text
    assert "6 of 9 γ = 1 runs reached the target accuracy, against 6 of 9 at γ = 0." in text
    assert "costs more than it brings" not in text  # it reached the target as often
    slower = [{**r, "steps_to_target": None} if r.get("gamma") == 1.0 else r for r in recs]
    assert "0 of 9 γ = 1 runs" in rep.reading(slower, meta)
    assert "costs more than it brings" in rep.reading(slower, meta)
    # with a collapse where f'(1) < 0, the argument did not decide every run: no such claim
    flipped = [{**r, "collapsed": True} if r["experiment"] == "shift" else r for r in recs]
    assert "decided every run" not in rep.reading(flipped, meta)


def test_report_is_self_contained_with_interactive_map(tmp_path):
    recs = _records()
    toy = rep.toy_shift_check(steps=30)
    rep.write_report(tmp_path / "r.html", recs, toy, {"profile": "test"}, plan.predictions())
    page = (tmp_path / "r.html").read_text()
    assert len(page) > 1_000_000 and page.count("plotly.js v") == 1  # plotly.js inlined once
    assert "Stability map" in page and "not predicted" in page and "collapsed = final" in page
    fig = rep.fig_stability_map(recs)
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["collapsed fraction", "final accuracy", "teacher KL end / start"]
    opd_marker = rep.EST_STYLE["opd"]["symbol"]
    assert {t.marker.symbol for t in rep.fig_shift_sweep(recs).data} == {opd_marker}


@pytest.mark.slow
def test_exact_toy_answers_the_shift_question_at_one_state():
    rows = {(r["divergence"], r["f1"], r["estimator"]): r for r in rep.toy_shift_check(steps=1500)}
    for (d, f1, e), r in rows.items():
        if e == "opd+":  # invariant to c: converges to the teacher whatever the generator
            assert r["tv_final"] < 1e-2, (d, f1)
        elif f1 >= 0:  # no restoring force or a repelling teacher: one-hot student
            assert r["max_prob"] > 0.999, (d, f1)
    # f'(1) < 0 makes the teacher attracting for JSD ...
    assert rows[("jsd", -1.0, "opd")]["tv_final"] < 1e-3
    # ... but the basin is local: from this start, forward KL with f'(1) = -1 still collapses
    assert rows[("forward_kl", -1.0, "opd")]["max_prob"] > 0.999


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_study_writes_every_output_and_shows_the_forward_kl_collapse(tmp_path):
    cmd = [sys.executable, "-m", "opdplus", "study", "--profile", "smoke", "--out", str(tmp_path)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    prof = plan.get_profile("smoke")
    assert len(summary) == len(study.plan_runs(prof))
    for r in summary:
        assert list(r)[: len(study.SUMMARY_FIELDS)] == list(study.SUMMARY_FIELDS)
        assert r["experiment"] in study.EXPERIMENTS
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0
        assert isinstance(r["collapsed"], bool) and r["predicted_collapse"] in (True, False, None)
        hist = json.loads((tmp_path / r["history"]).read_text())
        assert len(hist) == prof.steps
    gb = [r for r in summary if r["experiment"] == "gamma_baseline"]
    assert all(r["grad_var_init"] > 0 and r["grad_var_final"] > 0 for r in gb)
    # the claim that holds even at smoke size: forward-KL OPD's teacher KL runs away
    arms = {(r["divergence"], r["estimator"]): r for r in summary if r["experiment"] == "stability"}
    fo, fp = arms[("forward_kl", "opd")], arms[("forward_kl", "opd+")]
    assert fo["teacher_kl_final"] > 2 * fp["teacher_kl_final"]
    assert fo["collapsed"] and fo["predicted_collapse"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("plotly.js v") == 1 and "Stability map" in page
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["profile"] == "smoke" and len(meta["toy_shift"]) == 12
    assert "1. Stability map (prediction held in" in out.stdout
    # every run is stored with its settings: a second study reuses all of them
    assert all(study.stored_record(s, prof, tmp_path) is not None for _, s in study.plan_runs(prof))
    t0 = time.time()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert time.time() - t0 < out_s_bound(meta)


def out_s_bound(meta) -> float:
    """A rerun that trains nothing takes well under the first run's wall time."""
    return max(60.0, 0.8 * meta["wall_s"])


def test_command_line_lists_the_study(capsys):
    from opdplus.__main__ import main

    assert main(["--help"]) == 0
    assert re.search(r"study\s+beyond the paper", capsys.readouterr().out)
