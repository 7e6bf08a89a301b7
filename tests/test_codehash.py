"""Stored runs are reused while the code they ran is unchanged: ``opdplus.codehash``."""

import ast
import shutil
from pathlib import Path

import pytest

from opdplus import codehash, miniature, study, tool_miniature

PKG = Path(codehash.__file__).resolve().parent


def test_import_forms_are_all_followed(tmp_path, monkeypatch):
    pkg = tmp_path / "opdplus"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import h\n")
    (pkg / "a.py").write_text(
        "from . import b\nfrom .c import x\nimport opdplus.d\nfrom opdplus import e\n"
        "from opdplus.f import y\nimport json\nfrom . import not_a_module_name\n"
        "def later():\n    from .g import z\n")
    for m in "bcdefgh":
        (pkg / f"{m}.py").write_text("")
    (pkg / "unused.py").write_text("")
    monkeypatch.setattr(codehash, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(codehash, "PACKAGE", "opdplus")
    assert codehash.direct_imports("a") == set("bcdefg")
    assert codehash.closure(["a"]) == ["__init__", "a", "b", "c", "d", "e", "f", "g", "h"]
    with pytest.raises(ValueError, match="no module"):
        codehash.closure(["missing"])


def test_hash_moves_with_the_runs_code_only(tmp_path, monkeypatch):
    pkg = tmp_path / "opdplus"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PACKAGE_DIR", pkg)
    before = codehash.code_hash(["miniature"])
    assert "plots_explore" not in codehash.closure(["miniature"])
    with open(pkg / "plots_explore.py", "a") as f:  # a plotting helper no run imports
        f.write("\n# edited\n")
    assert codehash.code_hash(["miniature"]) == before
    with open(pkg / "preflight.py", "a") as f:  # imported by the trainer, two levels down
        f.write("\n# edited\n")
    assert codehash.code_hash(["miniature"]) != before
    assert codehash.code_hash(["miniature"], extra=[b"x"]) != codehash.code_hash(["miniature"])


def test_runs_depend_on_the_engine_and_not_on_the_teaching_modules():
    engine = {"trainer", "step", "sampler", "scoring", "divergences", "estimators", "preflight",
              "checkpoint", "evaluation", "config", "__init__"}
    for roots in (["miniature"], ["tool_miniature"], list(study.RUN_MODULES)):
        mods = set(codehash.closure(roots))
        assert engine <= mods, engine - mods
        assert not mods & {"plots_explore", "study_report", "exercises", "classroom"}
    assert len(miniature.fingerprint()) == len(tool_miniature.fingerprint()) == 16
    assert len(study.fingerprint()) == 16


def test_the_package_has_no_dynamic_imports():
    """``closure`` reads import statements; ``importlib.import_module`` would hide a module."""
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                assert name not in ("import_module", "__import__"), f"{path.name}:{node.lineno}"
