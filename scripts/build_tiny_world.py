"""Regenerate everything in data/tiny_world/: task splits, tokenizer, teacher and student.

    python scripts/build_tiny_world.py             # the shipped files (~10-15 min, 1 thread)
    python scripts/build_tiny_world.py --quick     # a short smoke version into runs/
    python scripts/build_tiny_world.py --stage student   # redo one stage on existing data

Steps (all seeded):
1. ``opdplus.tasks.write_splits``: test, validation and train JSONL (byte-for-byte
   reproducible) and ``task_config.json``.
2. The word-level tokenizer with single-digit tokens, saved with ``save_pretrained`` (and
   copied beside each model, so that a model directory loads on its own).
3. Teacher: a 4-layer width-128 Llama, SFT on fresh problems (never a validation or test
   question), LR decay over the last 30%, the best validation checkpoint kept.
4. Student: a 2-layer width-96 Llama, the same recipe at constant LR, stopped at the first
   validation check reaching 35% greedy accuracy: clearly weaker, and still learning.
Progress: a bar over each role's SFT steps with an ETA, and one line per validation check,
when stderr is a terminal (``OPDPLUS_QUIET=1`` silences them; see ``opdplus.progress``).
Each checkpoint gets ``provenance.json`` (how and how well it was trained: greedy pass@1
on the test split with its Wilson interval) and ``history.json`` (the per-step log).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from opdplus import evaluation, tasks, tinyworld  # noqa: E402

ROLES = {"teacher": tinyworld.TEACHER, "student": tinyworld.STUDENT}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str, threads: int) -> dict:
    info = {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": threads,
            "device": device, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_data(out: Path, seed: int) -> None:
    paths = tasks.write_splits(out, seed=seed)
    tok = tinyworld.tiny_world_tokenizer()
    tok.save_pretrained(str(out / "tokenizer"))
    print(f"data: {', '.join(str(p) for p in paths.values())}; tokenizer: {len(tok)} tokens")


def train_role(role: str, out: Path, seed: int, profile: str, device: str, threads: int,
               argv: list) -> dict:
    tok = tinyworld.load_tokenizer(out / "tokenizer")
    splits = {s: tasks.load_split(s, out) for s in ("validation", "test")}
    held = {r["question"] for rows in splits.values() for r in rows}
    offset = 0 if role == "teacher" else 10
    spec, cfg = ROLES[role], tinyworld.SFTConfig.preset(role, profile)
    model = tinyworld.build_model(spec, tok, seed=seed + offset)
    # Fresh problems every step; the held-out check keeps validation and test unseen.
    stream = tasks.problem_stream(seed + offset + 1, exclude=held)
    print(f"{role}: {tinyworld.n_params(model):,} parameters, {cfg.steps} steps max")
    run = tinyworld.sft(model, tok, stream, cfg, eval_problems=splits["validation"],
                        device=device, label=role)  # a bar and a line per validation check
    t0 = time.perf_counter()
    res = evaluation.evaluate(model, tok, splits["test"], max_new_tokens=48, batch_size=100,
                              device=device)
    eval_s = time.perf_counter() - t0
    dest = out / role
    model.save_pretrained(str(dest))
    (dest / "history.json").write_text(json.dumps(run.history) + "\n")
    size = sum(f.stat().st_size for f in dest.iterdir() if f.name != "history.json")
    for f in (out / "tokenizer").iterdir():  # beside the weights: the directory loads alone
        (dest / f.name).write_bytes(f.read_bytes())
    prov = {
        "role": role,
        "script": "scripts/build_tiny_world.py",
        "command": " ".join(["python", "scripts/build_tiny_world.py"] + argv),
        "profile": profile,
        "seed": seed,
        "init_seed": seed + offset,
        "data_stream_seed": seed + offset + 1,
        "model": dataclasses.asdict(spec),
        "n_params": tinyworld.n_params(model),
        "sft_config": dataclasses.asdict(cfg),
        "steps": run.steps_done,
        "kept_step": run.best_step if cfg.keep_best else run.steps_done,
        "best_val_accuracy": run.best_val_accuracy,
        "train_wall_s": round(run.wall_s, 1),
        "test_eval_wall_s": round(eval_s, 1),
        "threads": threads,
        "wall_time_note": "the machine's cores may have been shared with other jobs: "
                          "treat wall times as upper bounds",
        "test": {**res.summary(), "split": "test", "decoding": "greedy",
                 "max_new_tokens": 48},
        "checkpoint_bytes": size,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(device, threads),
    }
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"{role}: steps {run.steps_done} (kept {prov['kept_step']}), "
          f"train {run.wall_s:.0f}s, test pass@1 {res.accuracy:.3f} "
          f"[{res.ci_low:.3f}, {res.ci_high:.3f}] n={res.n}, {size / 1e6:.2f} MB")
    return prov


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke recipes (tens of steps), written to runs/tiny_world_quick")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default data/tiny_world, or runs/ with --quick)")
    ap.add_argument("--stage", choices=["all", "data", "teacher", "student"], default="all")
    ap.add_argument("--seed", type=int, default=tasks.DEFAULT_SEED)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable on a shared 2-core machine)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parent.parent
    out = args.out or (root / "runs" / "tiny_world_quick" if args.quick
                       else tasks.default_data_dir())
    profile = "smoke" if args.quick else "full"
    if args.stage in ("all", "data"):
        build_data(out, args.seed)
    for role in ("teacher", "student"):
        if args.stage in ("all", role):
            train_role(role, out, args.seed, profile, args.device, args.threads, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
