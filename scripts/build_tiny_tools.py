"""Regenerate everything in data/tiny_tools/: task splits, tokenizer, teacher and student.

    python scripts/build_tiny_tools.py             # the shipped files (1 thread)
    python scripts/build_tiny_tools.py --quick     # a short smoke version into runs/
    python scripts/build_tiny_tools.py --stage models --max-minutes 30   # retrain only

Steps (all seeded):
1. ``opdplus.tinytools.write_splits``: test, validation and train JSONL with a chat
   ``messages`` column (byte-for-byte reproducible), ``tools.json`` and ``task_config.json``.
2. The ChatML tokenizer (word level, single digits, whitespace inside the pieces), saved
   with ``save_pretrained`` into ``tokenizer/`` and beside each model.
3. One SFT run of a 4-layer width-128 Llama on worked transcripts of fresh tasks (never a
   validation or test question), loss on the assistant's tokens only. The teacher is its
   best validation checkpoint; the student is its first checkpoint with validation accuracy
   in ``STUDENT_WINDOW``: the same size, less trained (as in the paper, where student and
   teacher share an architecture), clearly weaker and still learning.
Each checkpoint gets ``provenance.json`` (recipe, seeds, time, threads, hardware, and the
greedy test results: accuracy with its Wilson interval, call parse and validity rates) and
``history.json`` (the per-step log).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tiny_world import hardware  # noqa: E402

from opdplus import tinytools as tt  # noqa: E402
from opdplus import tinytools_train as ttt  # noqa: E402

VAL_ROWS = 50
"""Validation tasks checked during SFT (the first of the split)."""
STUDENT_WINDOW = (0.2, 0.4)
"""The student is the run's first checkpoint whose validation accuracy falls in this range."""


def build_data(out: Path, seed: int) -> None:
    paths = tt.write_splits(out, seed=seed)
    tok = tt.build_tokenizer()
    tok.save_pretrained(str(out / "tokenizer"))
    print(f"data: {', '.join(str(p) for p in paths.values())}; tokenizer: {len(tok)} tokens")


def _provenance(role, model, run, res, cfg, args_used, extra) -> dict:
    seed, profile, device, threads, argv = args_used
    return {
        "role": role,
        "script": "scripts/build_tiny_tools.py",
        "command": " ".join(["python", "scripts/build_tiny_tools.py"] + argv),
        "profile": profile,
        "seed": seed,
        "init_seed": seed,
        "data_stream_seed": seed + 1,
        "model": dataclasses.asdict(ttt.TEACHER),
        "n_params": ttt.n_params(model),
        "sft_config": dataclasses.asdict(cfg),
        "loss": "next-token cross-entropy on the assistant's tokens only",
        "steps": run.steps_done,
        "best_val_accuracy": run.best_val_accuracy,
        "train_wall_s": round(run.wall_s, 1),
        "threads": threads,
        "wall_time_note": "the machine's cores were shared with other jobs: treat wall times "
                          "as upper bounds",
        "test": {**res.summary(), "split": "test", "decoding": "greedy",
                 "metric": "final-answer accuracy", "ci_method": "Wilson score interval, 95%",
                 "max_new_tokens": ttt.MAX_NEW_TOKENS, "max_turns": ttt.MAX_TURNS},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(device, threads),
        **extra,
    }


def _save(role: str, model, tok, out: Path, run, res, cfg, args_used, extra) -> dict:
    dest = out / role
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    (dest / "history.json").write_text(json.dumps(run.history) + "\n")
    prov = _provenance(role, model, run, res, cfg, args_used, extra)
    prov["checkpoint_bytes"] = (dest / "model.safetensors").stat().st_size
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"{role}: step {extra['kept_step']}, test accuracy {res.accuracy:.3f} "
          f"[{res.ci_low:.3f}, {res.ci_high:.3f}] n={res.n}, parse {res.parse_rate}, "
          f"validity {res.call_validity}, match {res.call_match}", flush=True)
    return prov


def train_models(out: Path, seed: int, profile: str, device: str, threads: int, argv: list,
                 max_minutes=None) -> None:
    """One SFT run: the teacher is its best validation checkpoint, the student its first
    checkpoint with validation accuracy in ``STUDENT_WINDOW`` (same size, less trained)."""
    tok = tt.load_tokenizer(out / "tokenizer")
    val = tt.load_split("validation", out)[:VAL_ROWS]
    test = tt.load_split("test", out)
    held = tt.heldout_questions(out)
    cfg = ttt.preset("teacher", profile)
    model = ttt.build_model(ttt.TEACHER, tok, seed=seed)
    stream = ttt.rows_from_tasks(tt.task_stream(seed + 1, exclude=held))
    print(f"{ttt.n_params(model):,} parameters, {cfg.steps} steps max", flush=True)
    student, checks = {}, []  # checks: every evaluation's snapshot (~4 MB each), a fallback
    t_start = time.time()

    def on_eval(row, is_best):
        print(f"  step {row['step']}: loss {row['loss']:.3f}, val acc {row['val_accuracy']:.2f}, "
              f"call validity {row['val_call_validity']}, match {row['val_call_match']}, "
              f"{time.time() - t_start:.0f}s", flush=True)
        snap = {"step": row["step"], "val": row["val_accuracy"],
                "state": {k: v.clone() for k, v in model.state_dict().items()}}
        checks.append(snap)
        lo, hi = STUDENT_WINDOW
        if not student and lo <= row["val_accuracy"] <= hi:
            student.update(snap, rule=f"first validation check with accuracy in "
                                      f"{list(STUDENT_WINDOW)}")
            print(f"  student snapshot at step {row['step']}", flush=True)

    run = ttt.sft(model, tok, stream, cfg, eval_rows=val, device=device, progress=False,
                  on_eval=on_eval,
                  max_seconds=None if max_minutes is None else 60 * max_minutes)
    args_used = (seed, profile, device, threads, argv)
    res = ttt.evaluate(model, tok, test)
    _save("teacher", model, tok, out, run, res, cfg, args_used,
          {"kept_step": run.best_step, "time_budget_min": max_minutes})
    if not student and len(checks) >= 2:
        # No check fell in the window (a short, time-budgeted run): the middle snapshot.
        student.update(checks[len(checks) // 2], rule=f"no validation check fell in {list(STUDENT_WINDOW)}: "
                                       f"the snapshot from the middle of the run")
    if not student:
        print(f"no validation check fell in {STUDENT_WINDOW}: no student written", flush=True)
        return
    model.load_state_dict(student["state"])
    res = ttt.evaluate(model, tok, test)
    _save("student", model, tok, out, run, res, cfg, args_used,
          {"kept_step": student["step"], "student_rule": f"{student['rule']} "
           f"(validation accuracy {student['val']:.2f} on {VAL_ROWS} tasks)",
           "time_budget_min": max_minutes})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke recipes (tens of steps), written to runs/tiny_tools_quick")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default data/tiny_tools, or runs/ with --quick)")
    ap.add_argument("--stage", choices=["all", "data", "models"], default="all")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop SFT at the first validation check after this many minutes")
    ap.add_argument("--seed", type=int, default=tt.DEFAULT_SEED)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable on a shared 2-core machine)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parent.parent
    out = args.out or (root / "runs" / "tiny_tools_quick" if args.quick
                       else tt.default_data_dir())
    profile = "smoke" if args.quick else "full"
    if args.stage in ("all", "data"):
        build_data(out, args.seed)
    if args.stage in ("all", "models"):
        train_models(out, args.seed, profile, args.device, args.threads, argv, args.max_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
