"""The tool-use arms of ``make reproduce``: profiles, records, the report, the README blocks."""

import json
import shutil
from pathlib import Path

import pytest

from opdplus import miniature, report
from opdplus import tool_miniature as tm

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / tm.REFERENCE


def test_profiles_use_the_math_arms_seeds():
    for name, prof in tm.profiles().items():
        assert prof.seeds == miniature.PROFILES[name].seeds, name
    assert tm.get_profile("smoke").name == "smoke"
    with pytest.raises(ValueError, match="unknown profile"):
        tm.get_profile("huge")


def test_reference_summary_has_every_arm_and_seed_in_the_math_schema():
    summary = json.loads((REF / "summary.json").read_text())
    report.check_records(summary)
    prof = tm.get_profile("default")
    arms = {(r["divergence"], r["estimator"], r["seed"]) for r in summary if r["divergence"] != "-"}
    assert arms == {(d, e, s) for d, e in tm.ARMS for s in prof.seeds}
    refs = {r["estimator"] for r in summary if r["divergence"] == "-"}
    assert refs == {"sft-init", "teacher"}
    for r in summary:
        assert r["task"] == "tiny_tools"
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert r["call_validity"] is None or 0 <= r["call_validity"] <= 1
        if r["divergence"] != "-":
            for key in ("final_teacher_kl", "final_completion_len", "max_grad_norm",
                        "final_tool_call_valid_frac", "history"):
                assert key in r, key
    # The shipped seed-0 Histories are the ones the summary was made from.
    for d, e in tm.ARMS:
        h = json.loads((REF / "histories" / f"{d}__{e.replace('+', 'plus')}_s0.json")
                       .read_text())
        rec = next(r for r in summary if (r["divergence"], r["estimator"], r["seed"]) == (d, e, 0))
        tail = [x["teacher_kl"] for x in h if x.get("teacher_kl") is not None][-5:]
        assert sum(tail) / len(tail) == pytest.approx(rec["final_teacher_kl"], abs=1e-12)


def test_report_keeps_the_tasks_apart():
    base = {"divergence": "jsd", "estimator": "opd", "seed": 0, "accuracy": 0.5,
            "ci_low": 0.4, "ci_high": 0.6}
    rows = report.aggregate([{**base, "task": "tiny_math"},
                             {**base, "task": "tiny_tools", "accuracy": 0.1}])
    assert [(r["arm"], r["mean"]) for r in rows] == [("jsd/opd", 0.5),
                                                      ("tiny_tools: jsd/opd", 0.1)]


def test_readme_tool_blocks_match_the_reference_files():
    assert tm.sync_readme(ROOT / "README.md", check=True), \
        "README tool-use blocks are stale: run tool_miniature.sync_readme(Path('README.md'))"


def test_readme_tool_blocks_follow_a_changed_source(tmp_path):
    (tmp_path / tm.REFERENCE).mkdir(parents=True)
    summary = json.loads((REF / "summary.json").read_text())
    for r in summary:
        if (r["divergence"], r["estimator"]) == ("reverse_kl", "opd+"):
            r["accuracy"] = 0.5
    (tmp_path / tm.REFERENCE / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(ROOT / "data" / "tiny_tools", tmp_path / "data" / "tiny_tools",
                    ignore=shutil.ignore_patterns("*.safetensors", "*.jsonl"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert not tm.sync_readme(tmp_path / "README.md", check=True)
    tm.sync_readme(tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    assert "| this miniature (tiny tool world, final-answer accuracy, mean of" in text
    assert "| 50.00% |" in text and "61.44%" in text
    assert tm.sync_readme(tmp_path / "README.md", check=True)


@pytest.mark.slow
def test_a_tool_arm_trains_and_records(tmp_path, one_thread):
    prof = tm.ToolProfile("t", steps=2, seeds=(0,), prompts_per_step=2, samples_per_prompt=2,
                          eval_every=2, val_problems=4, test_problems=6, workers=1)
    rec = tm.run_arm("forward_kl", "opd+", 0, prof, tmp_path)
    assert rec["task"] == "tiny_tools" and rec["n_test"] == 6 and rec["steps"] == 2
    hist = json.loads((tmp_path / rec["history"]).read_text())
    assert len(hist) == 2 and all("tool_call_valid_frac" in h for h in hist)
    assert hist[-1]["accuracy"] is not None and rec["max_grad_norm"] > 0
    # Asked again with the same settings, the finished arm is reused, not retrained.
    again = tm.run_arm("forward_kl", "opd+", 0, prof, tmp_path)
    assert again["train_wall_s"] == rec["train_wall_s"]
