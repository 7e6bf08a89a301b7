"""What periodic checkpoints cost: seconds per save against seconds per training step.

For each setting the script trains a few steps with a checkpoint after every step (in a
subprocess of its own, one torch thread), times every ``save_checkpoint`` call and every
step, and reports the overhead of the default intervals as a fraction of run time::

    overhead = save_s / min(checkpoint_every * step_s, 60 * checkpoint_minutes)

(a save every ``checkpoint_every`` steps, or sooner when ``checkpoint_minutes`` pass
first). Settings: the tiny world (the shipped 0.3M student, 16 prompts x 4 samples,
48 tokens, the reproduction's batch) and SmolLM2-135M-Instruct as the teacher with its
first 12 layers as the student (the README's CLI example; 8 prompts x 4 samples, 32
tokens). The numbers go to ``data/reference/checkpoint_cost.json``; the README quotes
them from there.

    .venv/bin/python benchmarks/checkpoint_cost.py            # both (minutes; far more under load)
    .venv/bin/python benchmarks/checkpoint_cost.py --only tiny_world
    .venv/bin/python benchmarks/checkpoint_cost.py --recompute   # new defaults, stored timings
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "reference" / "checkpoint_cost.json"


def run_one(setting: str, steps: int) -> dict:
    import torch

    from opdplus import models, tasks, tinyworld, trainer
    from opdplus.config import TrainConfig

    torch.set_num_threads(1)
    if setting == "tiny_world":
        tok, teacher, student = (
            tinyworld.load_tokenizer(),
            tinyworld.load_teacher(),
            tinyworld.load_student(),
        )
        prompts = [{"prompt": r["question"]} for r in tasks.load_split("train")[:256]]
        sizes = dict(prompts_per_step=16, samples_per_prompt=4, max_new_tokens=48)
    else:
        teacher, tok = models.load_smollm2()
        student = models.truncated_student(teacher, 12)
        prompts = [f"Question {i}: what is {i} plus {2 * i}?" for i in range(64)]
        sizes = dict(prompts_per_step=8, samples_per_prompt=4, max_new_tokens=32)
    cfg = TrainConfig(
        steps=steps, lr=1e-4, use_chat_template=True, checkpoint_every=1, progress=False, **sizes
    )
    saves = []
    real_save = trainer.save_checkpoint

    def timed_save(*a, **kw):
        t0 = time.perf_counter()
        out = real_save(*a, **kw)
        saves.append(time.perf_counter() - t0)
        return out

    trainer.save_checkpoint = timed_save
    with tempfile.TemporaryDirectory(prefix="opdplus-ckpt-") as out:
        h = trainer.train(student, teacher, tok, prompts, cfg, out_dir=out)
        ckpt = Path(out) / "checkpoint"
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        n_kept = len(list(ckpt.glob("step-*")))
    step_s = [r["t_step"] for r in h[1:]]  # step 0 includes one-off warm-up
    return {
        "setting": setting,
        "student_params": sum(p.numel() for p in student.parameters()),
        "batch": sizes,
        "steps_timed": len(step_s),
        "step_s_median": statistics.median(step_s),
        "saves_timed": len(saves),
        "save_s_median": statistics.median(saves),
        "save_s_max": max(saves),
        "checkpoint_mb": size / n_kept / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["tiny_world", "smollm2"], default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--recompute", action="store_true",
                    help="no new measurement: re-derive the overhead of the current defaults "
                    "from the stored save and step times")
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(run_one(a.child, a.steps)), flush=True)
        return
    import dataclasses

    from opdplus.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    every, minutes = defaults["checkpoint_every"], defaults["checkpoint_minutes"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for setting in [a.only] if a.only else ["tiny_world", "smollm2"]:
        if a.recompute:
            r = results[setting]
        else:
            r = measure(setting, a.steps, env)
        interval_s = min(every * r["step_s_median"], 60.0 * minutes)
        r.update(
            checkpoint_every=every,
            checkpoint_minutes=minutes,
            overhead_at_defaults=r["save_s_median"] / interval_s,
        )
        results[setting] = r
        print(
            f"{setting}: {r['student_params'] / 1e6:.1f}M-parameter student, "
            f"{r['checkpoint_mb']:.0f} MB per checkpoint; save {r['save_s_median']:.2f} s "
            f"(max {r['save_s_max']:.2f}), step {r['step_s_median']:.2f} s; overhead at "
            f"checkpoint_every={every}, checkpoint_minutes={minutes:g}: "
            f"{100 * r['overhead_at_defaults']:.2f}% of run time"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


def measure(setting: str, steps: int, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", setting, "--steps", str(steps)],
        capture_output=True, text=True, env=env, check=False,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


if __name__ == "__main__":
    main()
