"""The exact-toy tables of ``make reproduce``: what each cell must say, and how it is printed.

The facts the tables exist to show (method.md): OPD+ is unbiased at one state and, with
gamma = 1, on sequences, for every divergence; OPD is unbiased only for reverse KL; gamma
= 0 drops the future term (biased for all); and under expected-gradient descent
forward-KL OPD collapses onto one token while OPD+ converges to the teacher.
"""

import re

import pytest
import torch

from opdplus import exact_tables, toy
from opdplus.divergences import get


@pytest.fixture(scope="module")
def grad_rows():
    return exact_tables.gradient_table()


def test_gradient_table_has_one_row_per_divergence(grad_rows):
    assert [r["divergence"] for r in grad_rows] == [d.name for d in toy.family()]


def test_opd_plus_is_exact_and_opd_only_for_reverse_kl(grad_rows):
    for r in grad_rows:
        name = r["divergence"]
        for cell in ("state_opd+", "seq_g1_opd+"):
            assert r[f"{cell}_rel"] < 1e-9 and r[f"{cell}_cos"] == pytest.approx(1.0), (name, cell)
        # gamma = 0 holds the visited states fixed: the future term is missing
        assert r["seq_g0_opd+_rel"] > 0.1 and r["seq_g0_opd_rel"] > 0.1, name
        if name == "reverse_kl":  # -f(u) and w_f(u) differ by a constant: same expectation
            assert r["state_opd_rel"] < 1e-9 and r["seq_g1_opd_rel"] < 1e-9
        else:
            assert r["state_opd_rel"] > 0.1 and r["seq_g1_opd_rel"] > 0.1, name
        for k, v in r.items():
            if k.endswith("_cos"):
                assert -1.0 - 1e-12 <= v <= 1.0 + 1e-12
    fwd = next(r for r in grad_rows if r["divergence"] == "forward_kl")
    assert fwd["state_opd_cos"] < 0  # forward-KL OPD points the wrong way at this state


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_gradient_table_prints_every_cell_in_its_column(grad_rows):
    text = exact_tables.format_gradient_table(grad_rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(grad_rows)
    columns = ["state_opd", "state_opd+", "seq_g1_opd", "seq_g1_opd+", "seq_g0_opd+"]
    for r, line in zip(grad_rows, lines[2:]):
        name, *cells = _cells(line)
        assert name == r["divergence"] and len(cells) == len(columns)
        for col, cell in zip(columns, cells):
            rel, cos = (float(x) for x in cell.split(" / "))
            assert rel == pytest.approx(r[f"{col}_rel"], rel=5e-2, abs=6e-4), (name, col)
            assert cos == pytest.approx(r[f"{col}_cos"], abs=6e-4), (name, col)


@pytest.fixture(scope="module")
def dyn_rows():
    # two divergences are enough to see both behaviours (the whole family is slow here)
    real = toy.family
    toy.family = lambda: [get("reverse_kl"), get("forward_kl")]
    try:
        return exact_tables.dynamics_table(steps=150)
    finally:
        toy.family = real


def test_dynamics_table_shows_the_forward_kl_opd_collapse(dyn_rows):
    rev, fwd = dyn_rows
    assert (rev["divergence"], fwd["divergence"]) == ("reverse_kl", "forward_kl")
    g = torch.Generator().manual_seed(100)
    q_logits = 1.5 * torch.randn(8, generator=g, dtype=torch.float64)
    teacher_max = float(torch.softmax(q_logits, -1).max())
    for r in dyn_rows:
        assert r["teacher_max_prob"] == pytest.approx(teacher_max, rel=1e-12)
        assert r["opd+_tv"] < 0.05 and r["opd+_max_prob"] == pytest.approx(teacher_max, abs=0.02)
    assert rev["opd_tv"] < 0.05  # reverse-KL OPD is OPD+ up to a constant
    assert fwd["opd_tv"] > 0.5 and fwd["opd_max_prob"] > 0.95  # collapsed onto one token
    text = exact_tables.format_dynamics_table(dyn_rows, 150)
    lines = text.splitlines()
    assert len(lines) == 4
    name, opd_tv, opd_max, plus_tv, plus_max, t_max = _cells(lines[3])
    assert name == "forward_kl"
    assert float(opd_tv) == pytest.approx(fwd["opd_tv"], abs=6e-4)
    assert float(opd_max) == pytest.approx(fwd["opd_max_prob"], abs=6e-4)
    assert float(plus_tv) == pytest.approx(fwd["opd+_tv"], rel=5e-2, abs=6e-4)
    assert float(plus_max) == pytest.approx(fwd["opd+_max_prob"], abs=6e-4)
    assert float(t_max) == pytest.approx(teacher_max, abs=6e-4)


def test_print_exact_tables_prints_and_returns_both(monkeypatch, capsys):
    monkeypatch.setattr(toy, "family", lambda: [get("forward_kl")])
    out = exact_tables.print_exact_tables(steps=20)
    text = capsys.readouterr().out
    assert set(out) == {"gradients", "dynamics"}
    assert len(out["gradients"]) == len(out["dynamics"]) == 1
    assert re.search(r"20 steps of expected-gradient descent", text)
    assert text.count("| forward_kl |") == 2
