"""A seeded sample of mutants per engine module, for a survival rate with an interval.

``make mutate`` runs every mutant (about 1,250 of them in the five engine modules), which
takes hours on a small CPU machine. This script draws the same number of mutants from each
module with a fixed seed, runs each against the tests that exercise the module first
(``scripts/mutmut_config.py``) and, when those pass, against the whole fast list; a mutant
survives only if both pass. It writes one JSON record per mutant as it goes (a rerun skips
the done ones) and prints per module: mutants, sampled, killed, survived, the surviving
fraction with its Wilson 95% interval, and each survivor's line before and after.

Run it from the root of a copy of the repository (mutants are written in place), with the
fork server of ``scripts/mutate_forkserver.py`` listening on SOCKET::

    python scripts/mutate_sample.py SOCKET --per-module 25 --seed 0 --out sample.json

Mutants come from mutmut 2.x's own generator (``mutmut.list_mutations`` / ``mutate``), so
a sampled mutant is exactly one that ``make mutate`` would run.

Test selection by coverage: one run of the fast list under ``coverage`` with per-test
contexts maps every line of the engine modules to the tests that execute it. A mutant then
meets only those tests (a test that never executes the line cannot see the change); a line
run only at import time meets the module's whole list; a line that no test executes
survives without a run, recorded as ``not covered``. This takes a killed mutant from about
a minute to a few seconds on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate_forkserver  # noqa: E402
import mutmut_config  # noqa: E402

MODULES = ["step.py", "trainer.py", "estimators.py", "evaluation.py", "checkpoint.py"]
ALL_TESTS = ["tests/test_estimators.py", "tests/test_trainer_options.py",
             "tests/test_statistics.py", "tests/test_resume.py", "tests/test_evaluation.py",
             "tests/test_trainer.py", "tests/test_step_metrics.py",
             "tests/test_trainer_plumbing.py"]
SELECT = ["-m", "not slow", "-k", "not opd_learns"]
KILLED, SURVIVED, TIMEOUT = "killed", "survived", "timeout"
COVERAGE = Path(".coverage.mutate")


def coverage_map() -> dict[str, dict[int, list[str]]]:
    """{module file name: {line: [test node ids that execute it]}} from one covered run."""
    import subprocess

    import coverage

    if not COVERAGE.exists():
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--cov=opdplus",
               "--cov-context=test", "--cov-report=", *existing(ALL_TESTS), *SELECT]
        env = {**__import__("os").environ, "COVERAGE_FILE": str(COVERAGE)}
        subprocess.run(cmd, check=True, env=env)
    data = coverage.CoverageData(basename=str(COVERAGE))
    data.read()
    out: dict[str, dict[int, list[str]]] = {}
    for filename in data.measured_files():
        name = Path(filename).name
        if Path(filename).parent.name != "opdplus" or name not in MODULES:
            continue
        by_line = data.contexts_by_lineno(filename)
        out[name] = {line: sorted({c.rsplit("|", 1)[0] for c in ctxs if c})
                     for line, ctxs in by_line.items()}
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def existing(paths: list[str]) -> list[str]:
    return [p for p in paths if Path(p).exists()]


def pytest_args(tests: list[str]) -> list[str]:
    return ["-x", "-q", *tests, *SELECT]


def classify(code: int) -> str:
    """pytest's exit status for one mutant: 0 passed (survived), 124 the server's timeout."""
    if code == 0:
        return SURVIVED
    if code == 124:
        return TIMEOUT
    if code == 3:
        raise RuntimeError("the fork server died; restart it and rerun (done mutants are kept)")
    return KILLED  # 1 failed, 2 interrupted/collection error (a mutant that breaks the import)


def run_one(sock: str, path: Path, source: str, mutation_id, narrow: list[str],
            covering: dict[int, list[str]] | None) -> dict:
    from mutmut import Context, mutate

    mutated, count = mutate(Context(source=source, mutation_id=mutation_id, filename=str(path)))
    assert count == 1, f"{path}: mutation {mutation_id} applied {count} times"
    before = source.splitlines()
    after = mutated.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), None)
    tests, how = narrow, "module tests"
    if covering is not None and line is not None:
        lineno = line + 1
        if lineno not in covering:  # never executed, not even at import
            tests, how = [], "not covered"
        elif covering[lineno]:
            tests, how = covering[lineno], "covering tests"
        else:  # executed only at import time: no single test owns it
            tests, how = narrow, "module tests (import-time line)"
    start = time.monotonic()
    backup = path.with_name(path.name + ".orig")
    backup.write_text(source)  # restored at the next start if this process is killed
    path.write_text(mutated)
    try:
        status = SURVIVED if not tests else classify(
            mutate_forkserver.run(sock, pytest_args(tests)))
        full = existing(ALL_TESTS)
        if status == SURVIVED and tests and covering is None and full != narrow:
            status = classify(mutate_forkserver.run(sock, pytest_args(full)))
    finally:
        path.write_text(source)
        backup.unlink()
    return {"line": None if line is None else line + 1,
            "before": None if line is None else before[line].strip(),
            "after": None if line is None else after[line].strip(),
            "status": status, "tests": how, "n_tests": len(tests),
            "seconds": round(time.monotonic() - start, 1)}


def canary(sock: str) -> None:
    """Fail loudly unless the tests import ``opdplus`` from this copy (not an installed one)."""
    path = Path("opdplus") / "step.py"
    source = path.read_text()
    path.write_text('raise RuntimeError("mutation canary")\n' + source)
    try:
        code = mutate_forkserver.run(sock, pytest_args(["tests/test_trainer.py"]))
    finally:
        path.write_text(source)
    if code == 0:
        raise SystemExit("a broken opdplus/step.py passed the tests: they import another "
                         "opdplus than this copy's, so every mutant would survive")


def summarise(records: list[dict]) -> dict:
    out = {}
    for module in MODULES:
        rows = [r for r in records if r["module"] == module]
        if not rows:
            continue
        survived = [r for r in rows if r["status"] == SURVIVED]
        lo, hi = wilson(len(survived), len(rows))
        out[module] = {"mutants": rows[0]["mutants"], "sampled": len(rows),
                       "not_covered": sum(r.get("tests") == "not covered" for r in rows),
                       "killed": sum(r["status"] == KILLED for r in rows),
                       "timeout": sum(r["status"] == TIMEOUT for r in rows),
                       "survived": len(survived), "survived_fraction": len(survived) / len(rows),
                       "survived_ci95": [lo, hi]}
    return out


def main(argv=None) -> int:
    from mutmut import Context, list_mutations

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("socket")
    ap.add_argument("--per-module", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--out", type=Path, default=Path("mutate_sample.json"))
    ap.add_argument("--no-coverage", action="store_true",
                    help="run every mutant against its module's tests, then the whole list")
    args = ap.parse_args(argv)
    lines = None if args.no_coverage else coverage_map()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    for backup in Path("opdplus").glob("*.py.orig"):  # a mutant left by a killed run
        backup.replace(backup.with_name(backup.name[: -len(".orig")]))
    canary(args.socket)
    done = json.loads(args.out.read_text()) if args.out.exists() else []
    seen = {(r["module"], r["index"]) for r in done}
    plan = {}  # module -> (source, mutations, sampled indices)
    for module in args.modules.split(","):
        path = Path("opdplus") / module
        source = path.read_text()
        mutations = list_mutations(Context(source=source, filename=str(path)))
        picks = random.Random(f"{args.seed}:{module}").sample(
            range(len(mutations)), min(args.per_module, len(mutations)))
        plan[module] = (source, mutations, picks)
    # round robin over the modules, so an interrupted run has covered them all evenly
    order = [(m, picks[i]) for i in range(max(len(p[2]) for p in plan.values()))
             for m, (_, _, picks) in plan.items() if i < len(picks)]
    for module, index in order:
        if (module, index) in seen:
            continue
        source, mutations, _ = plan[module]
        path = Path("opdplus") / module
        narrow = existing(shlex.split(mutmut_config.TESTS[module]))
        record = {"module": module, "index": index, "mutants": len(mutations),
                  **run_one(args.socket, path, source, mutations[index], narrow,
                            None if lines is None else lines.get(module, {}))}
        done.append(record)
        args.out.write_text(json.dumps(done, indent=1))
        print(f"{module}:{record['line']} {record['status']} ({record['seconds']} s, "
              f"{record['n_tests']} {record['tests']})  "
              f"{record['before']!r} -> {record['after']!r}", flush=True)
    summary = summarise(done)
    for module, row in summary.items():
        lo, hi = row["survived_ci95"]
        print(f"{module:14s} mutants {row['mutants']:4d}  sampled {row['sampled']:3d}  "
              f"killed {row['killed']:3d}  timeout {row['timeout']:2d}  "
              f"survived {row['survived']:3d}  ({row['survived_fraction']:.0%}, 95% CI "
              f"{lo:.0%}-{hi:.0%})")
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
