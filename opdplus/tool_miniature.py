"""OPD vs OPD+ on tool use, in miniature: the tiny tool world's arms of ``make reproduce``.

The tool-use counterpart of ``opdplus.miniature``: arms {reverse KL, forward KL, JSD} x
{OPD, OPD+}, with the math arms' seeds, each from the shipped SFT student of
``data/tiny_tools/`` towards its teacher, plus two reference rows (the SFT start and the
teacher). Rollouts are multi-turn: the trainer draws them through
``opdplus.tooluse.tool_rollout_fn`` with the world's real tools, so the student's calls
are run, their results are inserted as tool turns (attended to, never in the loss), and
the student continues to a final answer.

Records have the math arms' schema with ``task = "tiny_tools"``: greedy final-answer
accuracy on the test tasks with a Wilson 95% interval, the collapse signals (teacher KL,
completion length, grad norm), plus call validity (parses, known tool, schema-valid
arguments), parse rate and the share of calls equal to the reference call, at the end on
the test tasks and during training (``final_tool_call_valid_frac``).

Profiles follow ``OPDPLUS_PROFILE`` (``smoke``, ``default``, ``full``); the default is
sized so that the math and the tool arms of ``make reproduce`` together stay within 15
minutes on 2 idle cores. A finished arm is reused when asked for again with the same
settings and code (``fingerprint``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .miniature import ARMS  # the same six arms as the math world
from .pools import spawn_pool

TASK = "tiny_tools"
SUBDIR = "tools"
"""Where the arms' runs go under the reproduction's output folder."""


@dataclass(frozen=True)
class ToolProfile:
    """Sizes of the tool arms in one reproduction profile."""

    name: str
    steps: int
    seeds: Tuple[int, ...]
    """One run per arm and seed (the math arms' seeds)."""
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    lr: float = 3e-4
    clip_log_u: float = 6.0
    eval_every: int = 10
    """Validation accuracy every N steps (the learning curves)."""
    val_problems: int = 50
    test_problems: Optional[int] = None
    """Test tasks for the final accuracy (None: the whole split)."""
    workers: int = 2


def _math_seeds(name: str) -> Tuple[int, ...]:
    from .miniature import PROFILES

    return tuple(PROFILES[name].seeds)


def profiles() -> Dict[str, ToolProfile]:
    return {
        "smoke": ToolProfile("smoke", steps=4, seeds=_math_seeds("smoke"), prompts_per_step=4,
                             eval_every=4, val_problems=10, test_problems=20),
        # Sized so that math + tool arms stay within 15 minutes on 2 idle cores: a step of
        # 4 x 4 multi-turn rollouts costs about 1.5-2 core-seconds, so each arm takes well
        # under a minute with its evaluations (estimated from runs on a loaded machine).
        "default": ToolProfile("default", steps=16, seeds=_math_seeds("default"),
                               prompts_per_step=4, eval_every=8, val_problems=20,
                               test_problems=100),
        "full": ToolProfile("full", steps=150, seeds=_math_seeds("full"), prompts_per_step=16,
                            eval_every=25, val_problems=100),
    }


def data_dir() -> Path:
    from .tinytools import default_data_dir

    return default_data_dir()


def checkpoints_present() -> bool:
    """Whether the shipped teacher and student of the tool world are in place."""
    return all((data_dir() / r / "model.safetensors").exists() for r in ("teacher", "student"))


def get_profile(name: Optional[str] = None) -> ToolProfile:
    name = name or os.environ.get("OPDPLUS_PROFILE", "default")
    table = profiles()
    if name not in table:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(table)}")
    return table[name]


def train_config(profile: ToolProfile, divergence: str, estimator: str, seed: int):
    from .config import TrainConfig
    from .tinytools_train import MAX_NEW_TOKENS

    return TrainConfig(
        divergence=divergence, estimator=estimator, steps=profile.steps, lr=profile.lr,
        max_grad_norm=1.0, prompts_per_step=profile.prompts_per_step,
        samples_per_prompt=profile.samples_per_prompt, max_new_tokens=MAX_NEW_TOKENS,
        clip_log_u=profile.clip_log_u, temperature=1.0, seed=seed,
        eval_every=profile.eval_every, progress=False,
    )


def fingerprint() -> str:
    """Hash of the code a tool-world arm runs (``codehash.closure`` of this module) and the
    shipped tool-world checkpoints."""
    from . import tinytools
    from .codehash import run_fingerprint

    return run_fingerprint(("tool_miniature",), str(tinytools.default_data_dir()))


def _jsonable(x):
    return json.loads(json.dumps(x))


def _tail_mean(history: Sequence[dict], key: str, n: int = 5) -> Optional[float]:
    xs = [r[key] for r in history if r.get(key) is not None][-n:]
    return sum(xs) / len(xs) if xs else None


def _test_metrics(model, tok, profile: ToolProfile) -> dict:
    from . import tinytools as tt
    from . import tinytools_train as ttt

    res = ttt.evaluate(model, tok, tt.load_split("test")[: profile.test_problems])
    return {"accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high,
            "n_test": res.n, "metric": "final-answer accuracy (greedy)",
            "call_validity": res.call_validity, "parse_rate": res.parse_rate,
            "call_match": res.call_match, "calls_per_task": res.calls / max(res.n, 1),
            "call_errors": res.errors}


def run_reference(role: str, profile: ToolProfile) -> dict:
    """The SFT start (``role="student"``) or the teacher, evaluated like an arm."""
    import torch

    from . import tinytools as tt
    from . import tinytools_train as ttt

    torch.set_num_threads(1)
    tok = tt.load_tokenizer()
    model = ttt.load_student() if role == "student" else ttt.load_teacher()
    t0 = time.time()
    rec = {"task": TASK, "divergence": "-",
           "estimator": "sft-init" if role == "student" else "teacher", "seed": 0,
           **_test_metrics(model, tok, profile)}
    rec["wall_s"] = time.time() - t0
    return rec


def arm_dir(divergence: str, estimator: str, seed: int, out_root: Path) -> Path:
    return (Path(out_root) / SUBDIR / "runs"
            / f"{divergence}_{estimator.replace('+', 'plus')}_s{seed}")


def run_arm(divergence: str, estimator: str, seed: int, profile: ToolProfile,
            out_root: Path) -> dict:
    """Train one arm from the SFT student with tool rollouts; write its History and record."""
    import torch

    from . import tinytools as tt
    from . import tinytools_train as ttt
    from .checkpoint import latest_checkpoint, write_json_atomic
    from .trainer import train
    from .tooluse import tool_rollout_fn

    torch.set_num_threads(1)
    out = arm_dir(divergence, estimator, seed, out_root)
    cfg = train_config(profile, divergence, estimator, seed)
    rec_path = out / "record.json"
    if rec_path.exists():
        old = json.loads(rec_path.read_text())
        if (old.get("config") == _jsonable(cfg.to_dict())
                and old.get("profile") == _jsonable(asdict(profile))
                and old.get("fingerprint") == fingerprint()):
            return old
    tok = tt.load_tokenizer()
    student, teacher = ttt.load_student(), ttt.load_teacher()
    prompts = ttt.encode_prompts(tok, [r["question"] for r in tt.load_split("train")])
    val = tt.load_split("validation")[: profile.val_problems]

    def eval_fn(model, step):
        r = ttt.evaluate(model, tok, val)
        return {"accuracy": r.accuracy, "call_validity": r.call_validity}

    resume = latest_checkpoint(out) is not None
    t0 = time.time()
    history = train(student, teacher, tok, prompts, cfg, eval_fn=eval_fn, out_dir=out,
                    resume=resume,
                    rollout_fn=tool_rollout_fn(tok, ttt.toolbox(), max_turns=ttt.MAX_TURNS))
    train_s = time.time() - t0
    rec = {"task": TASK, "divergence": divergence, "estimator": estimator, "seed": seed,
           **_test_metrics(student, tok, profile),
           "steps": profile.steps,
           "final_teacher_kl": _tail_mean(history, "teacher_kl"),
           "final_completion_len": _tail_mean(history, "completion_len"),
           "final_truncation_frac": _tail_mean(history, "truncation_frac"),
           "final_tool_call_valid_frac": _tail_mean(history, "tool_call_valid_frac"),
           "max_grad_norm": max((r["grad_norm"] for r in history
                                 if r.get("grad_norm") is not None), default=None),
           "train_wall_s": train_s, "resumed": resume,
           "history": str((out / "history.json").relative_to(out_root)),
           "fingerprint": fingerprint(),
           "config": cfg.to_dict(), "profile": asdict(profile)}
    write_json_atomic(rec_path, rec)
    return rec


def _job(args):
    from .miniature import _quiet_worker

    _quiet_worker()
    kind, a, b, c, profile, out_root = args
    if kind == "ref":
        return run_reference(a, profile)
    return run_arm(a, b, c, profile, out_root)


def run_all(profile: ToolProfile, out_root: Path,
            arms: Sequence[Tuple[str, str]] = ARMS) -> List[dict]:
    """Reference rows and every (arm, seed), in ``profile.workers`` processes."""
    jobs = [("ref", role, None, None, profile, out_root) for role in ("student", "teacher")]
    jobs += [("arm", d, e, s, profile, out_root) for s in profile.seeds for d, e in arms]
    if profile.workers <= 1:
        return [_job(j) for j in jobs]
    with spawn_pool(profile.workers, maxtasksperchild=4) as pool:
        return list(pool.imap(_job, jobs))


def histories_of(records: Sequence[dict], out_root: Path) -> Dict[str, list]:
    """Run name (``"tiny_tools: jsd/opd+/s0"``) -> its History rows."""
    hs = {}
    for r in records:
        if r.get("history"):
            rows = json.loads((Path(out_root) / r["history"]).read_text())
            hs[f"{TASK}: {r['divergence']}/{r['estimator']}/s{r['seed']}"] = rows
    return hs


def public_record(r: dict) -> dict:
    """What goes into summary.json (the full config stays in each run's record.json)."""
    return {k: v for k, v in r.items() if k not in ("config", "profile")}


def format_table(records: Sequence[dict]) -> str:
    """Markdown table of the tool arms: accuracy per seed with intervals, call validity,
    teacher KL and length (means over seeds)."""
    by_arm: Dict[str, List[dict]] = {}
    for r in records:
        name = f"{r['divergence']}/{r['estimator']}" if r["divergence"] != "-" else r["estimator"]
        by_arm.setdefault(name, []).append(r)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    def f(x, fmt):
        return "–" if x is None else fmt.format(x)

    lines = ["| arm | final-answer accuracy on test, per seed [95% Wilson CI] | mean | "
             "call validity (test) | calls equal to the reference | final teacher KL "
             "(nats/token) | final completion length | max grad norm |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rs in by_arm.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        seeds = "; ".join(f"s{r['seed']}: {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
                          f"{r['ci_high']:.3f}]" for r in rs)
        lines.append(
            f"| {name} | {seeds} | {mean([r['accuracy'] for r in rs]):.3f} | "
            f"{f(mean([r.get('call_validity') for r in rs]), '{:.3f}')} | "
            f"{f(mean([r.get('call_match') for r in rs]), '{:.3f}')} | "
            f"{f(mean([r.get('final_teacher_kl') for r in rs]), '{:.2f}')} | "
            f"{f(mean([r.get('final_completion_len') for r in rs]), '{:.1f}')} | "
            f"{f(mean([r.get('max_grad_norm') for r in rs]), '{:.1f}')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- README

PAPER_TOOL_USE_OPD_PLUS = 61.44
"""The paper's tool-use result: reverse-KL OPD+, accuracy in % on its benchmark (method.md §7)."""
REFERENCE = "data/reference/tiny_tools_default"
README_BEGIN = ("<!-- begin: {name} (generated by scripts/sync_readme.py; edit the source, "
                "not this block) -->\n")
README_END = "<!-- end: {name} -->"


def readme_blocks(root: Optional[Path] = None) -> Dict[str, str]:
    """The README's tool-use blocks, generated from the shipped reference summary and the
    checkpoints' provenance (never typed by hand): models, arms table, next to the paper."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    summary = json.loads((root / REFERENCE / "summary.json").read_text())
    rows = ["| model | training | final-answer accuracy on test (greedy) [95% Wilson] | "
            "calls that parse | calls valid for the schema | calls equal to the reference |",
            "|---|---|---|---|---|---|"]
    data = root / "data" / "tiny_tools"
    for role in ("teacher", "student"):
        p = json.loads((data / role / "provenance.json").read_text())
        t = p["test"]
        rows.append(f"| {role} | SFT step {p['kept_step']} of {p['steps']} | {t['accuracy']:.3f} "
                    f"[{t['ci_low']:.3f}, {t['ci_high']:.3f}] (n = {t['n']}) | "
                    f"{t['parse_rate']:.3f} | {t['call_validity']:.3f} | {t['call_match']:.3f} |")
    ours = [r for r in summary if (r["divergence"], r["estimator"]) == ("reverse_kl", "opd+")]
    mean = sum(r["accuracy"] for r in ours) / len(ours)
    paper = ["| | reverse-KL OPD+ on tool use |", "|---|---|",
             f"| paper (Qwen3-8B, its tool-use benchmark) | {PAPER_TOOL_USE_OPD_PLUS:.2f}% |",
             f"| this miniature (tiny tool world, final-answer accuracy, mean of "
             f"{len(ours)} seeds) | {100 * mean:.2f}% |"]
    return {"tiny-tools-models": "\n".join(rows),
            "tiny-tools-table": format_table(summary),
            "tiny-tools-vs-paper": "\n".join(paper)}


def sync_readme(path: Path, check: bool = False) -> bool:
    """Rewrite the tool-use blocks of the README at ``path``; with ``check``, only say whether
    they are up to date. Returns True when nothing was (or needs to be) changed."""
    text = Path(path).read_text()
    new = text
    for name, body in readme_blocks(Path(path).resolve().parent).items():
        begin, end = README_BEGIN.format(name=name), README_END.format(name=name)
        i, j = new.find(begin), new.find(end)
        if i < 0 or j < i:
            raise ValueError(f"{path} has no block {name!r} (markers {begin.strip()} ... {end})")
        new = new[:i + len(begin)] + body + "\n" + new[j:]
    if not check and new != text:
        Path(path).write_text(new)
    return new == text


def write_reference(records: Sequence[dict], out_root: Path, dest: Path, note: str) -> None:
    """Ship a run as reference: ``summary.json``, the seed-0 Histories and a README."""
    dest = Path(dest)
    (dest / "histories").mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps([public_record(r) for r in records],
                                                  indent=1) + "\n")
    for r in records:
        if r.get("history") and r["seed"] == 0:
            name = f"{r['divergence']}__{r['estimator'].replace('+', 'plus')}_s0.json"
            keep = [{k: v for k, v in x.items() if k != "sample"}
                    for x in json.loads((Path(out_root) / r["history"]).read_text())]
            (dest / "histories" / name).write_text(json.dumps(keep) + "\n")
    (dest / "README.md").write_text(note)


def main(argv=None) -> int:
    """``python -m opdplus.tool_miniature``: only the tool arms (``make reproduce`` runs both)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m opdplus.tool_miniature")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out", default="results")
    ap.add_argument("--reference", default=None, help="also write a reference folder here")
    ap.add_argument("--workers", type=int, default=None, help="parallel arm processes")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    if args.workers is not None:
        from dataclasses import replace

        prof = replace(prof, workers=args.workers)
    t0 = time.time()
    records = run_all(prof, Path(args.out))
    wall = time.time() - t0
    print(format_table([public_record(r) for r in records]))
    print(f"({wall:.0f} s, {prof.workers} worker(s) x 1 thread)")
    if args.reference:
        import platform

        import torch

        note = (f"# Reference results: the tool-use arms, profile {prof.name!r}\n\n"
                f"Written by `python -m opdplus.tool_miniature --profile {prof.name} "
                f"--reference {args.reference}` on "
                f"{time.strftime('%Y-%m-%d', time.gmtime())} ({platform.machine()} CPU shared "
                f"with other jobs, torch {torch.__version__}, {prof.workers} worker processes "
                f"x 1 thread; {wall / 60:.1f} minutes). `summary.json` has one record per arm "
                f"and seed (the math arms' schema, `task` = `tiny_tools`, plus call validity); "
                f"`histories/` holds the seed-0 History of each arm.\n")
        write_reference(records, Path(args.out), Path(args.reference), note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
