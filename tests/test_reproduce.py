"""`make reproduce` in the smoke profile, and the report it writes."""

import json
import re
import subprocess
import sys
import time

import pytest

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
    # A second run reuses every finished arm (nothing retrained) and gives the same table.
    t0 = time.time()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "summary.json").read_text())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(second) == strip(summary)
    assert time.time() - t0 < first_s
