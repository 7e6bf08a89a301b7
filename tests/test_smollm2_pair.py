"""scripts/smollm2_opd_pair.py and the OPD vs OPD+ pair it shipped in data/reference/smollm2_pair/.

The shipped files are what notebook 05 plots in its smoke profile, so their provenance must
say exactly how to remake them: the recorded command, parsed by the script's own argument
parser, must give the recorded configuration. The slow test runs the script itself on
SmolLM2 (tiny sizes, a clean time-limit stop) and checks the two arms' files.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "data" / "reference" / "smollm2_pair"


def _script():
    name = "smollm2_opd_pair"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_shipped_pair_provenance_remakes_its_config():
    s = _script()
    pair = s.load_pair(PAIR)
    assert set(pair) == set(s.ARMS)
    for arm, d in pair.items():
        prov, hist = d["provenance"], d["history"]
        argv = shlex.split(prov["command"])
        assert argv[:2] == ["python", "scripts/smollm2_opd_pair.py"], prov["command"]
        args = s.parse_args(argv[2:])
        assert arm in args.arms
        assert s.config_for(args, arm).to_dict() == {
            **prov["config"], "adam_betas": list(prov["config"]["adam_betas"])}
        assert prov["config"]["estimator"] == arm and prov["config"]["loss"] == "pg"
        assert prov["seed"] == args.seed == prov["config"]["seed"]
        assert len(hist) == prov["steps_done"] and [r["step"] for r in hist] == \
            list(range(len(hist)))
        # a run either finished all its steps or says why it stopped
        assert prov["finished"] == (len(hist) == prov["config"]["steps"]) or "stopped" in prov
        assert prov["machine"]["torch_threads"] == 1 and prov["wall_s"] > 0
        for key in ("teacher_kl", "completion_len", "grad_norm", "sample"):
            assert all(r.get(key) is not None for r in hist), key


def test_load_pair_names_the_fix(tmp_path):
    s = _script()
    with pytest.raises(FileNotFoundError, match="smollm2_opd_pair.py"):
        s.load_pair(tmp_path)
    for arm in s.ARMS:
        s.arm_path(tmp_path, "forward_kl", arm).write_text(json.dumps([{"step": 0}]))
    with pytest.raises(ValueError, match="provenance"):
        s.load_pair(tmp_path)


@pytest.mark.slow
def test_script_runs_both_arms_and_stops_cleanly(tmp_path):
    """Two arms of one step each on SmolLM2 (1 prompt x 2 samples x 2 tokens); the time limit
    stops each arm after its first step and the file records the stop."""
    s = _script()
    paths = s.main(["--steps", "3", "--prompts", "1", "--samples", "2", "--max-new-tokens", "2",
                    "--max-minutes", "1e-9", "--out", str(tmp_path)])
    assert [p.name for p in paths] == ["forward_kl_opd.json", "forward_kl_opd+.json"]
    pair = s.load_pair(tmp_path)
    for d in pair.values():
        prov = d["provenance"]
        assert len(d["history"]) == prov["steps_done"] == 1
        assert prov["finished"] is False and "after step 0" in prov["stopped"]
        assert prov["command"].split()[1].endswith("smollm2_opd_pair.py")
    # same seed, estimator aside the same config: the same first rollout, so the same KL
    kl = [d["history"][0]["teacher_kl"] for d in pair.values()]
    assert kl[0] == kl[1]
    configs = [{k: v for k, v in d["provenance"]["config"].items() if k != "estimator"}
               for d in pair.values()]
    assert configs[0] == configs[1]
