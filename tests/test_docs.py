"""docs/: the cheat sheet's tables are generated from the library, and the docs link up.

``scripts/make_cheatsheet.py --check`` regenerates the tables (every formula first checked
against ``opdplus.divergences`` on a grid of u) and fails on any drift; a wrong formula in the
script must stop it, and a changed reference file must change a block.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mod():
    spec = importlib.util.spec_from_file_location("make_cheatsheet",
                                                  ROOT / "scripts" / "make_cheatsheet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cheatsheet_tables_match_the_library():
    assert _mod().main(["--check"]) == 0, "run `python scripts/make_cheatsheet.py`"


def test_cheatsheet_has_a_row_for_every_divergence():
    from opdplus import divergences as D

    text = (ROOT / "docs" / "cheatsheet.md").read_text()
    for name in D.names():
        assert re.search(rf"^\| `{name}` \|", text, re.M), name
    assert "collapse-signals" in text and "glossary.md" in text


def test_a_wrong_formula_stops_the_generator(monkeypatch):
    mod = _mod()
    f_text, f_code, w_text, _ = mod.FORMULAS["forward_kl"]
    monkeypatch.setitem(mod.FORMULAS, "forward_kl", (f_text, f_code, "−u", lambda u, p: -u))
    with pytest.raises(SystemExit, match="w_f for forward_kl differs"):
        mod.block_divergences()


def test_derivatives_at_one_are_the_closed_forms():
    mod = _mod()
    left, right, second = mod.derivatives("forward_kl")  # f = u log u: f'(1) = 1, f''(1) = 1
    assert left == pytest.approx(1, abs=1e-4) and right == pytest.approx(1, abs=1e-4)
    assert second == pytest.approx(1, abs=1e-3)
    left, right, _ = mod.derivatives("tv")  # |u - 1| / 2: a kink at 1
    assert (left, right) == (pytest.approx(-0.5), pytest.approx(0.5))


def test_a_changed_reference_changes_the_collapse_block(monkeypatch, tmp_path):
    mod = _mod()
    recs = json.loads((mod.REFERENCE / "summary.json").read_text())
    for r in recs:
        if (r["divergence"], r["estimator"]) == ("jsd", "opd"):
            r["final_teacher_kl"] = 99.0
    (tmp_path / "summary.json").write_text(json.dumps(recs))
    monkeypatch.setattr(mod, "REFERENCE", tmp_path)
    assert "| jsd/opd | 0.000 | 99.00 |" in mod.block_collapse_signals()


def test_docs_links_resolve():
    for md in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", md.read_text()):
            assert (md.parent / target).exists(), f"{md.name} links to missing {target}"


def test_glossary_defines_the_terms_the_notebooks_send_readers_to():
    text = (ROOT / "docs" / "glossary.md").read_text().lower()
    for term in ("score function", "divergence-to-go", "gkd", "sequence kd", "avg@k",
                 "wilson interval", "stop-gradient", "mode-seeking", "mass-covering",
                 "teacher kl", "loss mask", "tool turn", "bfcl", "lm head", "advantage",
                 "generator", "pass@1", "logit"):
        assert f"**{term}" in text or re.search(rf"\*\*[^*\n]*{re.escape(term)}[^*\n]*\*\*",
                                                 text), f"glossary lacks {term!r}"
