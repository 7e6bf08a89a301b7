"""OPD vs OPD+ with sampled tokens on a real LM: SmolLM2-135M teaching its own first layers.

    python scripts/smollm2_opd_pair.py                       # both arms, the shipped sizes
    python scripts/smollm2_opd_pair.py --arms opd+ --steps 3 --out runs/pair_smoke

Notebook 05's teacher/student pair (SmolLM2-135M-Instruct, de-quantised from Q4_1, and a
student made of its first ``STUDENT_LAYERS`` blocks with the tied embedding frozen), on
05's plain-text prompts, trained with the sampled-token policy-gradient loss
(``loss="pg"``) and the **forward KL**, the divergence under which OPD's fixed point p = q
repels (method.md; the tiny world shows the collapse there first). The two arms differ in
``estimator`` only, with the same seed, so they draw the same first rollout.

Each arm writes ``OUT/<divergence>_<arm>.json``: ``{"provenance": {...}, "history": [...]}``,
rewritten after every step (a long run can be watched, and an interrupted one still leaves
its steps). The provenance holds the exact command, seed, configuration, machine and wall
time. :func:`load_pair` reads a directory back. Arms run one after the other in one process,
or in parallel as separate processes (``--arms opd`` and ``--arms opd+``), which is how the
shipped files were made on a 2-core machine (one thread each).

Simplified: no held-out evaluation (the logged teacher KL is measured on each step's fresh
on-policy rollouts, before the update), one seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from opdplus.checkpoint import History, _json_safe, write_json_atomic

DEFAULT_OUT = ROOT / "data" / "reference" / "smollm2_pair"
ARMS = ("opd", "opd+")
STUDENT_LAYERS = 4
"""Blocks of the teacher's 30 kept in the student (notebook 05's pair)."""
PROMPTS = ["The capital of France is", "My favourite colour is", "Once upon a time,",
           "The quick brown fox", "Two plus two equals", "In the morning I", "Water boils at",
           "The best fruit is"]
"""Notebook 05's plain-text prompts."""


def arm_path(out: Path, divergence: str, arm: str) -> Path:
    """The file of one arm: ``OUT/forward_kl_opd.json``, ``OUT/forward_kl_opd+.json``."""
    return Path(out) / f"{divergence}_{arm}.json"


def load_pair(out: Path = DEFAULT_OUT, divergence: str = "forward_kl") -> dict:
    """``{arm: {"provenance": dict, "history": History}}`` for both arms in ``out``."""
    pair = {}
    for arm in ARMS:
        path = arm_path(out, divergence, arm)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run `python scripts/smollm2_opd_pair.py --out {out}` "
                f"to make it")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or set(data) != {"provenance", "history"}:
            raise ValueError(f"{path} is not an arm file: expected the keys 'provenance' and "
                             f"'history'; rerun scripts/smollm2_opd_pair.py")
        pair[arm] = {"provenance": data["provenance"], "history": History(data["history"])}
    return pair


def machine(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


class _OutOfTime(Exception):
    """Raised by the step callback when ``--max-minutes`` have passed."""


def config_for(args: argparse.Namespace, arm: str):
    from opdplus.trainer import TrainConfig

    return TrainConfig(divergence=args.divergence, estimator=arm, loss="pg", steps=args.steps,
                       lr=args.lr, prompts_per_step=args.prompts, samples_per_prompt=args.samples,
                       max_new_tokens=args.max_new_tokens, seed=args.seed, progress=False)


def run_arm(args: argparse.Namespace, arm: str, argv: list) -> Path:
    """Train one arm from a fresh student and write its file; returns the path."""
    from opdplus.models import load_smollm2, seed_everything, truncated_student
    from opdplus.trainer import train

    cfg = config_for(args, arm)
    seed_everything(args.seed)
    teacher, tok = load_smollm2(device="cpu", dtype="float32")
    student = truncated_student(teacher, STUDENT_LAYERS)
    student.get_input_embeddings().weight.requires_grad_(False)  # tied to the LM head
    path = arm_path(args.out, args.divergence, arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    prov = {
        "what": f"sampled-token {arm.upper()} with the {args.divergence} on SmolLM2-135M-Instruct "
                f"(de-quantised Q4_1) teaching its first {STUDENT_LAYERS} blocks "
                f"(tied embedding frozen), notebook 05's {len(PROMPTS)} prompts",
        "command": "python " + " ".join(shlex.quote(a) for a in argv),
        "seed": args.seed, "arm": arm, "student_layers": STUDENT_LAYERS, "prompts": PROMPTS,
        "config": dataclasses.asdict(cfg), "machine": machine(args.threads),
        "started_utc": started.isoformat(timespec="seconds"),
    }

    def save(history, finished: bool) -> None:
        write_json_atomic(path, {"provenance": {**prov, "wall_s": round(time.perf_counter() - t0, 1),
                                                "steps_done": len(history), "finished": finished},
                                 "history": [_json_safe(r) for r in history]})

    def log(step, rec, history) -> None:
        save(history, finished=False)
        if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes:
            raise _OutOfTime(step)
        shown = {k: rec.get(k) for k in ("teacher_kl", "completion_len", "grad_norm", "t_step")}
        print(f"[{arm}] step {step:4d}: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
            flush=True)

    history = History()

    def keep(step, rec, hist) -> None:
        history[:] = hist

    try:
        train(student, teacher, tok, PROMPTS, cfg, callbacks=[keep, log])
        save(history, finished=True)
    except _OutOfTime as stop:  # a clean, recorded early stop: the file says how far it got
        prov["stopped"] = f"--max-minutes {args.max_minutes} reached after step {stop.args[0]}"
        save(history, finished=False)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--divergence", default="forward_kl")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop an arm cleanly after this many minutes (0: never); the file "
                        "records the stop")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shown = [os.path.relpath(__file__, Path.cwd()) if Path(__file__).is_relative_to(Path.cwd())
             else __file__] + list(sys.argv[1:] if argv is None else argv)
    return [run_arm(args, arm, shown) for arm in args.arms]


if __name__ == "__main__":
    for path in main():
        print(f"wrote {path}")
