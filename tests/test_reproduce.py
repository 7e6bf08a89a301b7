"""`make reproduce` in the smoke profile, and the report it writes."""

import json
import re
import subprocess
import sys
import time

import pytest

from opdplus import miniature
from opdplus.report import check_records, format_table, write_results


def _rec(div, est, seed, acc, **kw):
    return {"task": "tiny_math", "divergence": div, "estimator": est, "seed": seed,
            "accuracy": acc, "ci_low": acc - 0.05, "ci_high": acc + 0.05, **kw}


def test_table_has_one_row_per_arm_with_seeds_side_by_side(tmp_path):
    recs = [_rec("-", "sft-init", 0, 0.25), _rec("jsd", "opd", 0, 0.1, final_teacher_kl=2.0),
            _rec("jsd", "opd", 1, 0.2, final_teacher_kl=3.0)]
    table = format_table(recs)
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    assert "| jsd/opd | s0: 0.100 [0.050, 0.150]; s1: 0.200 [0.150, 0.250] | 0.150 | – | 2.50 |" in table
    hist = {"jsd/opd/s0": [{"step": 0, "teacher_kl": 1.0, "grad_norm": 2.0, "completion_len": 9,
                            "accuracy": 0.1}]}
    path = write_results(tmp_path, recs, hist, {"profile": "test"})
    html = path.read_text()
    assert "plotly" in html and "jsd/opd" in html and "<table>" in html
    assert json.loads((tmp_path / "summary.json").read_text()) == recs


def test_records_missing_required_fields_are_rejected():
    with pytest.raises(ValueError, match=r"lacks \['ci_low', 'ci_high'\]"):
        check_records([{"task": "t", "divergence": "d", "estimator": "e", "seed": 0,
                        "accuracy": 0.5}])


def test_arm_line_names_arm_seed_accuracy_interval_teacher_kl_and_seconds():
    rec = _rec("forward_kl", "opd+", 1, 0.29, final_teacher_kl=0.7134)
    assert miniature.arm_line(rec, 95.4) == (
        "forward_kl/opd+ s1: accuracy 0.290 [0.240, 0.340], teacher KL 0.713, 95 s")
    ref = _rec("-", "teacher", 0, 0.9)
    assert miniature.arm_line(ref, 12.0) == "teacher: accuracy 0.900 [0.850, 0.950], 12 s"
    no_kl = miniature.arm_line(_rec("jsd", "opd", 0, 0.1), 0.2, reused=True)
    assert no_kl == ("jsd/opd s0: accuracy 0.100 [0.050, 0.150], teacher KL –, 0 s "
                     "(finished earlier: reused)")


def test_run_all_reports_each_arm_when_watched_and_nothing_when_quiet(tmp_path, capsys):
    """A two-step arm in-process: a bar over arms x seeds and one line per finished job with
    progress=True; the same call again (the arm reused) prints nothing with progress=False."""
    tiny = miniature.Profile("test", steps=2, seeds=(0,), prompts_per_step=2,
                             samples_per_prompt=2, max_new_tokens=12, eval_every=0,
                             val_problems=4, test_problems=6, avg_k=0, workers=1,
                             checkpoint_every=0)
    arms = [("reverse_kl", "opd+")]
    recs = miniature.run_all(tiny, tmp_path, arms=arms, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert [r["estimator"] for r in recs] == ["sft-init", "teacher", "opd+"]  # job order
    arm = recs[2]
    assert re.search(
        rf"reverse_kl/opd\+ s0: accuracy {arm['accuracy']:.3f} \[{arm['ci_low']:.3f}, "
        rf"{arm['ci_high']:.3f}\], teacher KL {arm['final_teacher_kl']:.3g}, \d+ s\n", err), err
    for ref in recs[:2]:
        assert f"{ref['estimator']}: accuracy {ref['accuracy']:.3f}" in err, err
    assert "arms x seeds" in err and "1/1" in err  # the bar, finished
    assert "reused" not in err
    again = miniature.run_all(tiny, tmp_path, arms=arms, progress=False)
    assert capsys.readouterr() == ("", "")
    assert again[2] == json.loads(json.dumps(arm))  # reused from its record, not retrained
    miniature.run_all(tiny, tmp_path, arms=arms, progress=True)
    assert "reverse_kl/opd+ s0: accuracy" in capsys.readouterr().err.split("reused")[0]


@pytest.mark.slow
def test_smoke_reproduction_shows_the_collapse_and_reuses_finished_arms(tmp_path):
    cmd = [sys.executable, "-m", "opdplus", "reproduce", "--profile", "smoke", "--skip-exact",
           "--out", str(tmp_path)]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    first_s = time.time() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    check_records(summary)
    summary = [r for r in summary if r["task"] == "tiny_math"]  # the tool arms: test_tool_miniature
    arms = {(r["divergence"], r["estimator"]): r for r in summary}
    assert set(arms) == {("-", "sft-init"), ("-", "teacher")} | {
        (d, e) for d in ("reverse_kl", "forward_kl", "jsd") for e in ("opd", "opd+")}
    for r in summary:
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0
        if r["divergence"] != "-":
            hist = json.loads((tmp_path / r["history"]).read_text())
            assert len(hist) == 16
            assert [h["step"] for h in hist if h.get("accuracy") is not None] == [7, 15]
    assert arms[("-", "teacher")]["accuracy"] > arms[("-", "sft-init")]["accuracy"] + 0.3
    # The collapse signature of forward-KL OPD (method.md §6), against its OPD+ twin:
    # teacher KL per token rises instead of falling (calibration: 3.9 vs 0.7 after 16 steps).
    fo, fp = arms[("forward_kl", "opd")], arms[("forward_kl", "opd+")]
    assert fo["final_teacher_kl"] > 2 * fp["final_teacher_kl"]
    assert fo["accuracy"] < fp["accuracy"]
    report = (tmp_path / "report.html").read_text()
    assert len(report) > 100_000  # plotly.js inlined: the report is self-contained
    # a learning-curve trace per arm (plotly's JSON writes "/" as \u002f)
    assert re.search(r'"name":\s*"forward_kl(/|\\u002f)opd\+"', report)
    assert "| forward_kl/opd+ |" in out.stdout
    # quiet under tests (stderr is a pipe and conftest sets OPDPLUS_QUIET): no bar, no lines
    assert "arms x seeds" not in out.stderr and "forward_kl/opd+ s0:" not in out.stderr
    # A second run reuses every finished arm (nothing retrained) and gives the same table.
    t0 = time.time()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    second = [r for r in json.loads((tmp_path / "summary.json").read_text())
              if r["task"] == "tiny_math"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(second) == strip(summary)
    assert time.time() - t0 < first_s
