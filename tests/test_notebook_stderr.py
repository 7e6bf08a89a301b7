"""Notebook cells whose output a class sees must not print to stderr.

JupyterLab shows whatever reaches a kernel's standard error in red, like an error. Two
cells did: notebook 05's memory measurement (the torch profiler's C++ layer writes
``profiler_start`` / ``profiler_stop`` straight to file descriptor 2 on every run) and
notebook 06's command-line run (the child process's progress bars). Each test here runs
the notebook's own code (read from the notebook, not copied) in a fresh process whose
file descriptor 2 is captured, so output from C/C++ is seen too.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cell(notebook: str, marker: str) -> str:
    """The source of the one code cell of ``notebook`` that contains ``marker``."""
    nb = jupytext.read(ROOT / "notebooks" / notebook)
    found = [c.source for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{notebook}: expected one code cell with {marker!r}, found {len(found)}"
    return found[0]


def _run(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240, check=False)


@pytest.mark.slow  # a fresh interpreter that imports torch: ~20 s on a busy 2-core machine
def test_05_peak_memory_measurement_prints_nothing_to_stderr():
    cell = _cell("05_real_lm_on_cpu.py", "def peak_mib")
    code = textwrap.dedent("""
        import contextlib, os, sys, time
        import torch
        from torch.profiler import ProfilerActivity, profile
        torch.set_num_threads(1)
        DEVICE = torch.device("cpu")
    """) + cell + textwrap.dedent("""

        def work():
            x = torch.randn(256, 256, requires_grad=True)
            (x @ x).sum().backward()

        mib = peak_mib(work)
        print("peak", mib)
        # the measurement saw the allocations: at least the 256 x 256 float32 gradient
        assert mib >= 256 * 256 * 4 / 2**20, mib
        print("after", file=sys.stderr)  # descriptor 2 works again afterwards
    """)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^peak \d", proc.stdout, re.MULTILINE), proc.stdout
    assert proc.stderr == "after\n", f"the measurement wrote to stderr:\n{proc.stderr}"


@pytest.mark.slow  # two fresh interpreters: ~30 s on a busy 2-core machine
def test_06_command_line_run_environment_silences_progress_bars():
    """06 runs the CLI in a child process with the env of its cell; loading a model there
    (the CLI's first step) must not send transformers' "Loading weights" bar back."""
    cell = _cell("06_gpu_math_reasoning.py", "launcher = [sys.executable")
    assign = [n for n in ast.parse(cell).body if isinstance(n, ast.Assign)
              and [getattr(t, "id", None) for t in n.targets] == ["env"]]
    assert len(assign) == 1, "06: expected one `env = ...` for the command-line run"
    line = ast.get_source_segment(cell, assign[0])
    child = ("from opdplus import tasks\n"
             "from opdplus.models import load_causal_lm\n"
             "load_causal_lm(tasks.default_data_dir() / 'student', device='cpu')\n"
             "print('loaded')\n")
    code = "import os, subprocess, sys\n" + line + f"""
proc = subprocess.run([sys.executable, "-c", {child!r}], env=env, capture_output=True,
                      text=True, timeout=120)
sys.stdout.write(proc.stdout)
sys.stderr.write(proc.stderr)
sys.exit(proc.returncode)
"""
    # the notebook's own environment may be quiet already; the cell must not rely on it
    proc = _run(code, env_extra={"OPDPLUS_QUIET": "", "HF_HUB_DISABLE_PROGRESS_BARS": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("loaded"), proc.stdout
    assert proc.stderr == "", f"the child process printed to stderr:\n{proc.stderr}"
