"""The paper's OPD vs OPD+ comparison in miniature: the tiny math world on a CPU.

Arms: {reverse KL, forward KL, JSD} x {OPD, OPD+}, each from the shipped SFT student
(``data/tiny_world/student``) towards the shipped teacher, plus two reference rows (the
SFT initialisation and the teacher itself). Every arm uses the same prompts, seeds and
hyper-parameters; only the divergence and the advantage design change.

Measured per arm: greedy pass@1 on the test split with a Wilson 95% interval, avg@4 at
temperature 1 with a design-effect Wilson interval (``evaluation.avg_at_k_interval``), validation accuracy during training, and the
collapse signals of method.md §6 (teacher KL, completion length, grad norm).

Profiles (``OPDPLUS_PROFILE``): ``smoke`` (about 1-2 minutes; what the tests run),
``default`` (the README's table, within 15 minutes on 2 cores) and ``full`` (more steps
and seeds, for a GPU or a patient CPU). Arms run in ``workers`` processes with one
thread each: on 2 cores, two single-thread processes were steadier than one process
with two threads (tiny-world-facts.md).

A killed run loses no finished arm: each arm's record is written atomically next to its
History and reused when the same arm is asked for again with the same settings; an
arm killed midway resumes from its last checkpoint.

Progress (``opdplus.progress``): the parent process shows a bar over arms x seeds with an
ETA, advanced as results arrive from the workers, and prints one line as each arm ends
(arm, seed, accuracy with its interval, teacher KL, seconds). The workers themselves stay
silent. Quiet when stderr is not a terminal (tests, nbval) or ``OPDPLUS_QUIET`` is set.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import progress as _progress
from .pools import spawn_pool

ARMS: Tuple[Tuple[str, str], ...] = tuple(
    (d, e) for d in ("reverse_kl", "forward_kl", "jsd") for e in ("opd", "opd+")
)
TASK = "tiny_math"


@dataclass(frozen=True)
class Profile:
    """Sizes of one reproduction profile."""

    name: str
    steps: int
    """Optimizer steps per arm."""
    seeds: Tuple[int, ...]
    """One run per arm and seed."""
    prompts_per_step: int = 16
    samples_per_prompt: int = 4
    max_new_tokens: int = 48
    lr: float = 3e-4
    clip_log_u: float = 6.0
    eval_every: int = 20
    """Validation accuracy every N steps (the learning curves)."""
    val_problems: int = 100
    test_problems: Optional[int] = None
    """Test problems for the final accuracy (None: the whole split)."""
    avg_k: int = 4
    """avg@k at temperature 1 (0: skip)."""
    workers: int = 2
    checkpoint_every: int = 25


PROFILES: Dict[str, Profile] = {
    "smoke": Profile("smoke", steps=16, seeds=(0,), prompts_per_step=8, eval_every=8,
                     val_problems=50, test_problems=100, avg_k=0, checkpoint_every=0),
    "default": Profile("default", steps=100, seeds=(0, 1)),
    "full": Profile("full", steps=300, seeds=(0, 1, 2), eval_every=25, val_problems=200),
}


def get_profile(name: Optional[str] = None) -> Profile:
    name = name or os.environ.get("OPDPLUS_PROFILE", "default")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def train_config(profile: Profile, divergence: str, estimator: str, seed: int):
    from .config import TrainConfig

    return TrainConfig(
        divergence=divergence, estimator=estimator, steps=profile.steps, lr=profile.lr,
        max_grad_norm=1.0, prompts_per_step=profile.prompts_per_step,
        samples_per_prompt=profile.samples_per_prompt, max_new_tokens=profile.max_new_tokens,
        clip_log_u=profile.clip_log_u, temperature=1.0, use_chat_template=True, seed=seed,
        eval_every=profile.eval_every, checkpoint_every=profile.checkpoint_every,
        progress=False,
    )


def fingerprint() -> str:
    """Hash of the code an arm runs (``codehash.closure`` of this module: the package modules
    it imports, directly or not) and the shipped checkpoints: a stored arm is reused only if
    neither changed (after a code fix, ``make reproduce`` retrains rather than reprint; an
    edit to a plotting helper it never imports retrains nothing)."""
    from . import tinyworld
    from .codehash import run_fingerprint

    return run_fingerprint(("miniature",), str(tinyworld.data_dir()))


def _jsonable(x):
    return json.loads(json.dumps(x))


def _tail_mean(history: Sequence[dict], key: str, n: int = 5) -> Optional[float]:
    xs = [r[key] for r in history if r.get(key) is not None][-n:]
    return sum(xs) / len(xs) if xs else None


def _test_metrics(model, tok, profile: Profile, seed: int) -> Dict[str, float]:
    import torch

    from . import tasks
    from .evaluation import evaluate

    test = tasks.load_split("test")[: profile.test_problems]
    res = evaluate(model, tok, test, k=1, greedy=True, max_new_tokens=profile.max_new_tokens)
    out = {"accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high,
           "n_test": res.n, "metric": res.metric}
    if profile.avg_k:
        g = torch.Generator().manual_seed(10_000 + seed)
        s = evaluate(model, tok, test, k=profile.avg_k, greedy=False, generator=g,
                     max_new_tokens=profile.max_new_tokens)
        out.update({f"avg{profile.avg_k}": s.accuracy, f"avg{profile.avg_k}_ci_low": s.ci_low,
                    f"avg{profile.avg_k}_ci_high": s.ci_high})
    return out


def run_reference(role: str, profile: Profile) -> dict:
    """The SFT initialisation (``role="student"``) or the teacher, evaluated like an arm."""
    import torch

    from . import tinyworld

    torch.set_num_threads(1)
    tok = tinyworld.load_tokenizer()
    model = tinyworld.load_student() if role == "student" else tinyworld.load_teacher()
    t0 = time.time()
    rec = {"task": TASK, "divergence": "-", "estimator": "sft-init" if role == "student" else "teacher",
           "seed": 0, **_test_metrics(model, tok, profile, 0)}
    rec["wall_s"] = time.time() - t0
    return rec


def _arm_dir(divergence: str, estimator: str, seed: int, out_root: Path) -> Path:
    return Path(out_root) / "runs" / f"{divergence}_{estimator.replace('+', 'plus')}_s{seed}"


def stored_record(divergence: str, estimator: str, seed: int, profile: Profile,
                  out_root: Path) -> Optional[dict]:
    """The record of this arm finished earlier with the same settings and code, else None."""
    rec_path = _arm_dir(divergence, estimator, seed, out_root) / "record.json"
    if not rec_path.exists():
        return None
    old = json.loads(rec_path.read_text())
    cfg = train_config(profile, divergence, estimator, seed)
    if (old.get("config") == _jsonable(cfg.to_dict())
            and old.get("profile") == _jsonable(asdict(profile))
            and old.get("fingerprint") == fingerprint()):
        return old
    return None


def run_arm(divergence: str, estimator: str, seed: int, profile: Profile, out_root: Path) -> dict:
    """Train one arm from the SFT student; write its History and record under ``out_root``."""
    import torch

    from . import tasks, tinyworld
    from .checkpoint import latest_checkpoint, write_json_atomic
    from .evaluation import evaluate
    from .trainer import train

    torch.set_num_threads(1)
    out = _arm_dir(divergence, estimator, seed, out_root)
    cfg = train_config(profile, divergence, estimator, seed)
    rec_path = out / "record.json"
    old = stored_record(divergence, estimator, seed, profile, out_root)
    if old is not None:
        return old  # finished earlier with the same settings
    if rec_path.exists():  # stale (code or settings changed): resuming would train nothing
        import shutil

        shutil.rmtree(out)
    tok = tinyworld.load_tokenizer()
    student, teacher = tinyworld.load_student(), tinyworld.load_teacher()
    prompts = [{"prompt": r["question"]} for r in tasks.load_split("train")]
    val = tasks.load_split("validation")[: profile.val_problems]

    def eval_fn(model, step):
        r = evaluate(model, tok, val, k=1, greedy=True, max_new_tokens=profile.max_new_tokens)
        return {"accuracy": r.accuracy}

    resume = latest_checkpoint(out) is not None
    t0 = time.time()
    history = train(student, teacher, tok, prompts, cfg, eval_fn=eval_fn, out_dir=out,
                    resume=resume)
    train_s = time.time() - t0
    rec = {"task": TASK, "divergence": divergence, "estimator": estimator, "seed": seed,
           **_test_metrics(student, tok, profile, seed),
           "steps": profile.steps,
           "final_teacher_kl": _tail_mean(history, "teacher_kl"),
           "final_completion_len": _tail_mean(history, "completion_len"),
           "final_truncation_frac": _tail_mean(history, "truncation_frac"),
           "max_grad_norm": max((r["grad_norm"] for r in history if r.get("grad_norm") is not None),
                                default=None),
           "train_wall_s": train_s, "resumed": resume,
           "history": str((out / "history.json").relative_to(out_root)),
           "fingerprint": fingerprint(),
           "config": cfg.to_dict(), "profile": asdict(profile)}
    write_json_atomic(rec_path, rec)
    return rec


def _quiet_worker() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextmanager
def _silenced():
    """Silence ``opdplus.progress`` inside a job (the parent owns the bar), then restore."""
    before = os.environ.get(_progress.QUIET_ENV)
    os.environ[_progress.QUIET_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_progress.QUIET_ENV, None)
        else:
            os.environ[_progress.QUIET_ENV] = before


def _job(args):
    _quiet_worker()
    kind, a, b, c, profile, out_root = args
    if kind == "ref":
        return run_reference(a, profile)
    return run_arm(a, b, c, profile, out_root)


def _timed_job(indexed):
    """``(index, job) -> (index, record, seconds, reused)``, silent, for ``run_all``."""
    i, job = indexed
    t0 = time.time()
    with _silenced():
        kind, a, b, c, profile, out_root = job
        reused = kind == "arm" and stored_record(a, b, c, profile, out_root) is not None
        rec = _job(job)
    return i, rec, time.time() - t0, reused


def _fmt(x: Optional[float], spec: str) -> str:
    return "–" if x is None else format(x, spec)


def arm_line(rec: dict, seconds: float, reused: bool = False) -> str:
    """One line for a finished arm or reference row: arm, seed, accuracy [interval], teacher
    KL, seconds; e.g. ``forward_kl/opd+ s0: accuracy 0.290 [0.210, 0.390], teacher KL 0.71,
    95 s``."""
    if rec.get("divergence") == "-":
        name = rec["estimator"]  # the reference rows: sft-init, teacher
    else:
        name = f"{rec['divergence']}/{rec['estimator']} s{rec['seed']}"
    text = (f"{name}: accuracy {_fmt(rec.get('accuracy'), '.3f')} "
            f"[{_fmt(rec.get('ci_low'), '.3f')}, {_fmt(rec.get('ci_high'), '.3f')}]")
    if rec.get("divergence") != "-":
        text += f", teacher KL {_fmt(rec.get('final_teacher_kl'), '.3g')}"
    text += f", {seconds:.0f} s"
    return text + (" (finished earlier: reused)" if reused else "")


def run_all(profile: Profile, out_root: Path, arms: Sequence[Tuple[str, str]] = ARMS,
            progress: Optional[bool] = None) -> List[dict]:
    """Reference rows and every (arm, seed), in ``profile.workers`` processes.

    Records come back in job order (references first, then seed-major arms). ``progress``
    (``opdplus.progress.enabled``; None: automatic) shows a bar over arms x seeds with an
    ETA, advanced as results arrive, and one line per finished arm or reference row.
    """
    jobs = [("ref", role, None, None, profile, out_root) for role in ("student", "teacher")]
    jobs += [("arm", d, e, s, profile, out_root) for s in profile.seeds for d, e in arms]
    show = _progress.enabled(progress)  # decided once, here: the jobs silence themselves
    records: List[Optional[dict]] = [None] * len(jobs)
    n_arms = sum(j[0] == "arm" for j in jobs)
    with _progress.bar(total=n_arms, desc="arms x seeds", unit="arm", progress=show) as pbar:

        def collect(results) -> None:
            for i, rec, seconds, reused in results:
                records[i] = rec
                pbar.write(arm_line(rec, seconds, reused))
                if jobs[i][0] == "arm":
                    pbar.update(1)

        if profile.workers <= 1:
            collect(_timed_job(ij) for ij in enumerate(jobs))
        else:
            # fresh interpreters (no forked torch thread pools) that end with this process
            with spawn_pool(profile.workers, maxtasksperchild=4) as pool:
                collect(pool.imap_unordered(_timed_job, enumerate(jobs)))
    return records  # type: ignore[return-value]


def histories_of(records: Sequence[dict], out_root: Path) -> Dict[str, list]:
    hs = {}
    for r in records:
        if r.get("history"):
            rows = json.loads((out_root / r["history"]).read_text())
            # the validation accuracy is "accuracy" in the History ("eval_accuracy" if the
            # trainer ever had to rename it)
            hs[f"{r['divergence']}/{r['estimator']}/s{r['seed']}"] = [
                {**x, "accuracy": x.get("accuracy", x.get("eval_accuracy"))} for x in rows
            ]
    return hs


def public_record(r: dict) -> dict:
    """What goes into summary.json (the full config stays in each run's record.json)."""
    return {k: v for k, v in r.items() if k not in ("config", "profile")}
