"""Claims that notebooks 03 and 04 and the README make, checked outside the notebooks.

- the README's step count for the default profile is the profile's (it once said 120);
- the markdown of 03 and 04 quotes no measured number (those are printed by code cells);
- ``opdplus.run_signals``, the criterion behind 04's "which signal shows JSD's collapse
  first" exercise, on synthetic Histories whose answer is known by construction;
- the shipped JSD reference Histories are the default profile's;
- the learning curves tell OPD from OPD+ by marker, not by dash alone.
"""

import json
import re
from pathlib import Path

import pytest

from opdplus import miniature, run_signals
from opdplus.plots_runs import fig_learning_curves
from opdplus.plots_sequences import ESTIMATOR_SYMBOLS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {stem: ROOT / "notebooks" / f"{stem}.py"
             for stem in ("03_sequences_and_the_future_term", "04_tiny_lm_learns_math")}
JSD_DIR = ROOT / "data" / "reference" / "tiny_world_jsd"


def _markdown(py_path: Path) -> str:
    """The markdown cells of a percent-format notebook, comment markers stripped."""
    cells, current, in_md = [], [], False
    for line in py_path.read_text().splitlines():
        if line.startswith("# %%"):
            if in_md:
                cells.append("\n".join(current))
            current, in_md = [], "[markdown]" in line
        elif in_md:
            current.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    if in_md:
        cells.append("\n".join(current))
    return "\n".join(cells)


def test_readme_quotes_the_default_profile_steps():
    steps = miniature.PROFILES["default"].steps
    readme = (ROOT / "README.md").read_text()
    quoted = [int(n) for n in re.findall(r"all six arms × (\d+) steps", readme)]
    assert quoted, "the README's notebook table no longer says 'all six arms × N steps'"
    assert all(n == steps for n in quoted), (quoted, steps)


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_notebook_markdown_quotes_no_measured_numbers(stem):
    md = _markdown(NOTEBOOKS[stem])
    assert md.strip(), "no markdown found: the parser is wrong"
    assert re.search(r"\d+\.\d+", md), "the notebook quotes no decimal at all: parser check"
    md = re.sub(r"`[^`]*`", "", md)  # inline code: parameters and expressions, not results
    md = re.sub(r"Exercise \d\d\.\d", "", md)  # exercise ids
    decimals = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", md)
    assert not decimals, f"{stem} markdown types numbers {decimals}: print them from a code cell"
    percents = re.findall(r"\d+\s?%(?! interval)", md)  # "a 95% interval" is a setting
    assert not percents, f"{stem} markdown types {percents}"


def test_notebook_04_reads_its_numbers_from_the_reference_file():
    src = NOTEBOOKS["04_tiny_lm_learns_math"].read_text()
    assert "tiny_world_default" in src and "summary.json" in src
    assert "120" not in src


def test_notebook_03_states_the_ascent_sign():
    md = _markdown(NOTEBOOKS["03_sequences_and_the_future_term"])
    assert r"$$-\nabla J_f = \mathbb{E}" in md  # the bracket is the ascent advantage
    assert r"$$\nabla J_f = \mathbb{E}" not in md


# ----------------------------------------------------------------------------- run_signals


def _history(n=40, **series):
    return [{"step": i, **{k: f(i) for k, f in series.items() if f(i) is not None}}
            for i in range(n)]


def test_first_departure_finds_the_step_a_rising_signal_doubles():
    h = _history(teacher_kl=lambda i: 1.0 if i < 20 else 3.0, grad_norm=lambda i: 1.0)
    # start level 1 (first 5 values); the 5-value mean reaches 2 once 3 of the last 5 are 3
    assert run_signals.first_departure(h, "teacher_kl") == 22
    assert run_signals.first_departure(h, "grad_norm") is None
    assert run_signals.first_departure(h, "teacher_kl", factor=3.0) == 24
    assert run_signals.first_departure(h, "teacher_kl", window=1) == 20


def test_direction_matters():
    falling = _history(completion_len=lambda i: 20.0 if i < 10 else 5.0,
                       accuracy=lambda i: 0.3 if i < 10 else 0.6)
    assert run_signals.first_departure(falling, "completion_len") is not None  # either way
    assert run_signals.first_departure(falling, "completion_len", direction="up") is None
    assert run_signals.first_departure(falling, "accuracy") is None  # accuracy rose: fine
    assert run_signals.first_departure(falling, "accuracy", direction="up") is not None


def test_sparse_signals_are_judged_where_they_were_measured():
    h = _history(accuracy=lambda i: None if i % 10 != 9 else (0.3 if i < 20 else 0.0),
                 teacher_kl=lambda i: 1.0 + i / 4)
    assert run_signals.first_departure(h, "accuracy") == 29
    # the teacher KL doubles from its start (mean 1.5 over steps 0-4) once its 5-step mean is 3
    assert run_signals.first_departure(h, "teacher_kl") == 10
    assert run_signals.first_signal(h, ("accuracy", "teacher_kl")) == "teacher_kl"
    assert run_signals.first_signal(h, ("accuracy",)) == "accuracy"


def test_run_signals_bad_input():
    h = _history(teacher_kl=lambda i: 1.0)
    with pytest.raises(ValueError, match="no logged values of 'grad_norm'"):
        run_signals.first_departure(h, "grad_norm")
    with pytest.raises(ValueError, match="factor"):
        run_signals.first_departure(h, "teacher_kl", factor=1.0)
    with pytest.raises(ValueError, match="direction"):
        run_signals.first_departure(h, "teacher_kl", direction="sideways")
    with pytest.raises(ValueError, match="DIRECTIONS"):
        run_signals.first_departure(_history(loss=lambda i: 1.0), "loss")


def test_jsd_reference_histories_are_the_default_profile():
    meta = json.loads((JSD_DIR / "meta.json").read_text())
    steps = miniature.PROFILES["default"].steps
    assert meta["steps"] == steps
    for arm, entry in meta["arms"].items():
        div, est = arm.split("/")
        want = miniature.train_config(miniature.PROFILES["default"], div, est, meta["seed"])
        assert entry["config"] == json.loads(json.dumps(want.to_dict(), default=str)), arm
        rows = json.loads((JSD_DIR / entry["history"]).read_text())
        assert [r["step"] for r in rows] == list(range(steps)), arm
        assert all(r.get(k) is not None for r in rows for k in ("teacher_kl", "grad_norm",
                                                                "completion_len")), arm


# ----------------------------------------------------------------------------- figures


def test_learning_curves_mark_opd_and_opd_plus_differently():
    h = _history(n=5, teacher_kl=lambda i: 1.0 + i, grad_norm=lambda i: 2.0)
    fig = fig_learning_curves({"forward_kl/opd": h, "forward_kl/opd+": h},
                              metrics=["teacher_kl", "grad_norm"])
    symbols = {t.name: {u.marker.symbol for u in fig.data if u.name == t.name} for t in fig.data}
    assert symbols["forward_kl/opd"] == {ESTIMATOR_SYMBOLS["opd"]}
    assert symbols["forward_kl/opd+"] == {ESTIMATOR_SYMBOLS["opd+"]}
