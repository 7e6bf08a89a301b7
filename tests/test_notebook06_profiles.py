"""Notebook 06: only its smoke profile forces the hub offline; the full profile can download.

The hub libraries read ``HF_HUB_OFFLINE`` once, at import, so the test runs the notebook's
opening cells (imports, parameters, the profile-dependent set-up) in a fresh interpreter per
profile, with ``HF_HUB_OFFLINE`` unset, and reads what ``huggingface_hub`` then believes.
Nothing is downloaded: those cells only import.
"""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_gpu_math_reasoning.py"


def opening_cells() -> str:
    code = [c.source for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    return "\n\n".join(code[:3])  # imports, parameters, profile set-up (+ library imports)


@pytest.mark.slow  # two fresh interpreters importing torch, transformers and plotly
def test_only_the_smoke_profile_sets_hf_hub_offline():
    script = opening_cells() + (
        "\nimport huggingface_hub.constants as hub_constants\n"
        "print('OFFLINE', hub_constants.HF_HUB_OFFLINE, os.environ.get('HF_HUB_OFFLINE'))\n"
    )
    runs = {}
    for profile in ("smoke", "full"):  # in parallel
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(OPDPLUS_PROFILE=profile, OMP_NUM_THREADS="1", PLOTLY_RENDERER="json")
        runs[profile] = subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT / "notebooks", env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    seen = {}
    for profile, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        seen[profile] = [x for x in out.splitlines() if x.startswith("OFFLINE")][-1].split()[1]
    assert seen == {"smoke": "True", "full": "False"}
