"""Which of the package's modules a run depends on, and a hash of their code.

``make reproduce``, the tool world and ``make study`` reuse a stored run only while the code
that produced it is unchanged. Hashing every ``opdplus/*.py`` retrains after an edit to a
plotting helper or a notebook's exercise checker; a hand-kept list of modules can miss one
and reuse a stale run. ``closure`` follows the package's own imports instead (every
``from . import x``, ``from .x import y``, ``import opdplus.x`` and ``from opdplus import x``,
at module level or inside functions, read with ``ast`` without importing anything), always
with ``__init__`` (importing any submodule runs it), and ``code_hash`` hashes exactly those
files. The package has no dynamic imports (``importlib``), which this could not see; a test
keeps it that way.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Iterable, List, Set, Tuple

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def _exists(name: str) -> bool:
    return (PACKAGE_DIR / f"{name}.py").is_file()


def direct_imports(module: str) -> Set[str]:
    """The package's modules that ``module`` imports (by name, without ``.py``)."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(), filename=f"{module}.py")
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            own = node.level >= 1 or (node.module or "").split(".")[0] == PACKAGE
            if not own:
                continue
            base = node.module or ""
            if node.level == 0:  # from opdplus[.x] import ...
                base = base[len(PACKAGE):].lstrip(".")
            if base:
                found.add(base.split(".")[0])
            else:  # from . import a, b: a and b are modules when their files exist
                found.update(a.name for a in node.names if _exists(a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
    return {m for m in found if _exists(m)}


def closure(roots: Iterable[str]) -> List[str]:
    """``roots`` with every package module they import, directly or not, and ``__init__``."""
    todo = list(roots) + ["__init__"]
    seen: Set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        if not _exists(m):
            raise ValueError(f"no module {PACKAGE}.{m}")
        seen.add(m)
        todo.extend(direct_imports(m) - seen)
    return sorted(seen)


def code_hash(roots: Iterable[str], extra: Iterable[bytes] = ()) -> str:
    """sha256 (first 16 hex digits) of the closure's files, by name and content, then ``extra``
    (checkpoint bytes, a version string)."""
    h = hashlib.sha256()
    for m in closure(roots):
        h.update(m.encode())
        h.update((PACKAGE_DIR / f"{m}.py").read_bytes())
    for b in extra:
        h.update(b)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def run_fingerprint(roots: Tuple[str, ...], checkpoints_dir: str, tag: str = "") -> str:
    """What a stored run is keyed on: ``code_hash`` of ``roots`` with ``tag`` and the teacher's
    and student's ``model.safetensors`` under ``checkpoints_dir``.

    Computed once per process: the code a process runs is the code it imported when it
    started, so an edit made while it runs belongs to the next run, not to this one (and
    every stored run no longer costs a re-parse of the package)."""
    ckpts = [(Path(checkpoints_dir) / role / "model.safetensors").read_bytes()
             for role in ("teacher", "student")]
    return code_hash(roots, extra=[tag.encode()] + ckpts)


__all__ = ["closure", "code_hash", "direct_imports", "run_fingerprint"]
