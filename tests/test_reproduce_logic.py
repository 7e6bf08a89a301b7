"""The reproduction's bookkeeping: a finished arm is reused only while nothing changed.

``miniature.run_arm`` on a two-step profile: a second call with the same settings
reuses the stored record; a changed code fingerprint or config retrains from scratch
(not from the old run's final checkpoint); an arm killed midway resumes from its last
checkpoint and ends with the History of an uninterrupted run.
"""

import json
from pathlib import Path

import pytest

import opdplus.trainer as trainer_module
from opdplus import miniature
from opdplus.trainer import VOLATILE_KEYS

TINY = miniature.Profile(
    "test",
    steps=2,
    seeds=(0,),
    prompts_per_step=2,
    samples_per_prompt=2,
    max_new_tokens=8,
    eval_every=1,
    val_problems=2,
    test_problems=2,
    avg_k=0,
    workers=1,
    checkpoint_every=1,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    pass


@pytest.fixture
def steps_run(monkeypatch):
    """Counts the optimizer steps each ``train`` call runs; ``stop_at`` kills a run."""
    real = trainer_module.train
    log = {"calls": [], "stop_at": None}

    def counting_train(*a, **kw):
        done = []
        log["calls"].append(done)

        def cb(step, rec, history):
            if step == log["stop_at"]:
                raise Interrupted(step)
            done.append(step)

        return real(*a, callbacks=[cb], **kw)

    monkeypatch.setattr(trainer_module, "train", counting_train)
    return log


def _history(root: Path):
    rows = json.loads((root / "runs" / "reverse_kl_opdplus_s0" / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in rows]


def test_finished_arm_is_reused_and_rerun_when_code_or_config_change(
    tmp_path, steps_run, monkeypatch
):
    first = miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path)
    assert steps_run["calls"] == [[0, 1]] and not first["resumed"]
    assert 0.0 <= first["ci_low"] <= first["accuracy"] <= first["ci_high"] <= 1.0
    again = miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path)
    assert len(steps_run["calls"]) == 1  # reused, nothing trained
    assert again == json.loads(json.dumps(first))

    monkeypatch.setattr(miniature, "fingerprint", lambda: "changed-code")
    fresh = miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path)
    assert steps_run["calls"][-1] == [0, 1], "a code change retrains every step"
    assert fresh["fingerprint"] == "changed-code" and not fresh["resumed"]

    lower = miniature.Profile(**{**TINY.__dict__, "lr": TINY.lr / 2})
    rerun = miniature.run_arm("reverse_kl", "opd+", 0, lower, tmp_path)
    assert steps_run["calls"][-1] == [0, 1], "a config change retrains every step"
    assert rerun["config"]["lr"] == TINY.lr / 2


def test_interrupted_arm_resumes_to_the_uninterrupted_history(tmp_path, steps_run):
    miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path / "ref")
    steps_run["stop_at"] = 1  # killed during step 1, after the checkpoint of step 0
    with pytest.raises(Interrupted):
        miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path / "run")
    assert not (tmp_path / "run" / "runs" / "reverse_kl_opdplus_s0" / "record.json").exists()
    steps_run["stop_at"] = None
    rec = miniature.run_arm("reverse_kl", "opd+", 0, TINY, tmp_path / "run")
    assert steps_run["calls"][-1] == [1] and rec["resumed"]
    assert _history(tmp_path / "run") == _history(tmp_path / "ref")
