"""mutmut's per-mutant hook for ``make mutate``: each engine module meets the fast tests that
exercise it first (the whole fast list runs only for survivors, with ``--rerun-all``).

``make mutate`` copies this file to the root of the mutation copy, where mutmut 2.x looks
for ``mutmut_config``. Narrowing the first run makes a killed mutant cost a few seconds;
a mutant survives only if the whole fast list (the Makefile's MUTATE_TESTS) misses it.
"""

from pathlib import Path

SELECT = '-m "not slow" -k "not opd_learns"'
TESTS = {
    "estimators.py": "tests/test_estimators.py tests/test_trainer_options.py",
    "evaluation.py": "tests/test_evaluation.py tests/test_statistics.py "
                     "tests/test_trainer_plumbing.py",
    "checkpoint.py": "tests/test_resume.py tests/test_trainer.py",
    "step.py": "tests/test_trainer_options.py tests/test_step_metrics.py "
               "tests/test_statistics.py tests/test_trainer.py",
    "trainer.py": "tests/test_trainer_options.py tests/test_trainer.py tests/test_resume.py "
                  "tests/test_statistics.py tests/test_trainer_plumbing.py",
}


def pre_mutation(context):
    tests = TESTS.get(Path(context.filename).name)
    if tests is None:
        return
    runner, _, _ = context.config.test_command.partition(" -- ")
    context.config.test_command = f"{runner} -- -x -q {tests} {SELECT}"
