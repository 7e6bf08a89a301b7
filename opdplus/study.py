"""The study's runs in the tiny math world: train, evaluate, measure, reuse.

Each run trains the shipped SFT student towards the shipped teacher with one
(divergence, generator shift c, estimator, gamma, baseline, seed) for the profile's fixed
budget (``study_plan.StudyProfile``), then measures

- greedy test accuracy with its Wilson 95% interval;
- the teacher KL, KL(student || teacher) per token on the run's own rollouts, at the start
  (first 3 steps) and the end (last 5), and so the collapse criterion of ``study_plan``;
- in the gamma x baseline runs (OPD+ on reverse KL, forward KL, JSD, unshifted): validation
  accuracy every ``eval_every`` steps (for steps-to-target) and the gradient covariance trace
  (``gradient_covariance_trace``) at two checkpoints: the SFT initialisation, identical for
  every run, and the run's own final weights.

A run is identified by its settings (``RunSpec``); the three experiments share runs where
they coincide (the map's OPD+ reverse KL is also gamma = 0 without baseline, the shift
experiment's unshifted rows are the map's). Like ``make reproduce``, a run writes its History
and record atomically under ``<out>/runs/<name>/`` and is reused when asked for again with the
same settings, package code and checkpoints (``miniature.fingerprint``).

The generator shift goes through ``ShiftedConfig``, a ``TrainConfig`` whose divergence is
``f + c (u - 1)``; everything else is the library's trainer step (``step.train_step``).
Runs go to ``workers`` single-thread processes (as in ``miniature.run_all``) with a progress
bar over runs and one line per finished run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import progress as _progress
from .pools import spawn_pool
from . import study_plan as plan
from .config import TrainConfig
from .divergences import Divergence, shifted
from .miniature import _quiet_worker, _silenced

EXPERIMENTS = ("stability", "shift", "gamma_baseline")


@dataclass(frozen=True)
class ShiftedConfig(TrainConfig):
    """A ``TrainConfig`` whose generator is ``f + shift (u - 1)`` (same divergence, other OPD)."""

    shift: float = 0.0
    """The c of f + c (u - 1); 0 is the registry's own generator."""

    @property
    def divergence_obj(self) -> Divergence:
        d = super().divergence_obj
        return shifted(d, self.shift) if self.shift else d


@dataclass(frozen=True)
class RunSpec:
    """The settings that make one run (its name and reuse key)."""

    divergence: str
    estimator: str
    seed: int
    shift: float = 0.0
    gamma: float = 0.0
    baseline: str = "none"
    measure: bool = False
    """Validation curve and gradient covariance (the gamma x baseline runs)."""

    @property
    def name(self) -> str:
        est = self.estimator.replace("+", "plus")
        return (f"{self.divergence}_{est}_c{self.shift:g}_g{self.gamma:g}_{self.baseline}"
                f"_s{self.seed}")


def plan_runs(profile: plan.StudyProfile) -> List[Tuple[str, RunSpec]]:
    """(experiment, run) pairs of the profile; a run may serve more than one experiment."""
    gb = set(profile.gb_divergences)

    def spec(d, e, s, c=0.0, g=0.0, b="none"):
        # every unshifted OPD+ run of a gamma x baseline divergence is measured, so the map's
        # and the shift experiment's copies of gamma = 0 / none are the same run
        return RunSpec(d, e, s, c, g, b, measure=(e == "opd+" and d in gb and c == 0.0))

    out = []
    for s in profile.seeds:
        for d in profile.map_divergences:
            for e in ("opd", "opd+"):
                out.append(("stability", spec(d, e, s)))
        for d in profile.shift_divergences:
            for slope in profile.shift_slopes:
                c = plan.shift_for_slope(d, slope)
                for e in ("opd", "opd+"):
                    out.append(("shift", spec(d, e, s, c)))
        for d in profile.gb_divergences:
            for g in profile.gammas:
                for b in profile.baselines:
                    out.append(("gamma_baseline", spec(d, "opd+", s, 0.0, g, b)))
    return out


def train_config(profile: plan.StudyProfile, spec: RunSpec) -> ShiftedConfig:
    from .toy import default_params

    return ShiftedConfig(
        divergence=spec.divergence, divergence_params=default_params().get(spec.divergence, {}),
        shift=spec.shift, estimator=spec.estimator, gamma=spec.gamma, baseline=spec.baseline,
        steps=profile.steps, lr=profile.lr, max_grad_norm=1.0,
        prompts_per_step=profile.prompts_per_step, samples_per_prompt=profile.samples_per_prompt,
        max_new_tokens=profile.max_new_tokens, clip_log_u=profile.clip_log_u, temperature=1.0,
        use_chat_template=True, seed=spec.seed, checkpoint_every=0, progress=False,
    )


RUN_VERSION = 1
"""Bump when ``run_one`` or ``gradient_covariance_trace`` changes what a run measures."""
RUN_MODULES = ("config", "divergences", "estimators", "step", "trainer",
               "sampler", "scoring", "prompts", "evaluation", "tinyworld", "tasks", "grading",
               "checkpoint", "fieldtypes", "toy", "models", "rollout", "tooluse")
"""The library modules a run's numbers depend on (with everything they import, followed by
``codehash.closure``). The study's own modules are versioned by ``RUN_VERSION`` instead, so
editing the plan's text or the report reuses every run."""
RUN_PROFILE_FIELDS = ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "lr",
                      "clip_log_u", "eval_every", "val_problems", "test_problems",
                      "variance_repeats", "variance_prompts")


def fingerprint() -> str:
    """Hash of the run-relevant code (``RUN_MODULES`` and every package module they import,
    ``codehash.closure``), ``RUN_VERSION`` and the shipped checkpoints: a stored run is
    reused only if none of them changed."""
    from . import tinyworld
    from .codehash import run_fingerprint

    return run_fingerprint(tuple(RUN_MODULES), str(tinyworld.data_dir()),
                           f"study-run-v{RUN_VERSION}")


def _settings(profile: plan.StudyProfile, spec: RunSpec) -> dict:
    sizes = {k: getattr(profile, k) for k in RUN_PROFILE_FIELDS}
    return json.loads(json.dumps({"spec": asdict(spec), "config": train_config(profile, spec).to_dict(),
                                  "sizes": sizes, "fingerprint": fingerprint()}))


def run_dir(spec: RunSpec, out_root: Path) -> Path:
    return Path(out_root) / "runs" / spec.name


def stored_record(spec: RunSpec, profile: plan.StudyProfile, out_root: Path) -> Optional[dict]:
    """The record of this run finished earlier with the same settings and code, else None."""
    path = run_dir(spec, out_root) / "record.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    return old if old.get("settings") == _settings(profile, spec) else None


def gradient_covariance_trace(state, prompt_ids: Sequence[Sequence[int]], repeats: int,
                              seed: int, tag: str) -> float:
    """tr Cov of the stochastic gradient over ``repeats`` independent rollout batches.

    Every batch samples G completions of the same ``prompt_ids`` at the current weights (no
    update is made), runs the run's own loss (estimator, gamma, baseline) through
    ``step.accumulate_gradients`` and flattens the raw, unclipped gradient. The trace is the
    sum over parameters of the unbiased sample variance. Batches are seeded from
    ``(seed, tag, r)``, so two runs at the same weights share their rollouts.
    """
    import torch

    from .prompts import derive_seed
    from .sampler import sample
    from .step import accumulate_gradients

    c = state.config
    params = [p for p in state.model.parameters() if p.requires_grad]
    grads = []
    for r in range(repeats):
        state.generator.manual_seed(derive_seed(seed, "variance", tag, r))
        roll = sample(state.generation_model, list(prompt_ids), G=c.samples_per_prompt,
                      generator=state.generator, eos_token_id=state.eos_ids,
                      pad_token_id=state.pad_id, max_new_tokens=c.max_new_tokens,
                      temperature=c.temperature, vocab_size=state.vocab_size, source="student")
        state.optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(state, [("student", roll)])
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                for p in params]).double())
    state.optimizer.zero_grad(set_to_none=True)
    return float(torch.stack(grads).var(0, unbiased=True).sum())


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def run_one(spec: RunSpec, profile: plan.StudyProfile, out_root: Path) -> dict:
    """Train and measure one run from the SFT student; write its History and record."""
    import torch

    from . import tasks, tinyworld
    from .checkpoint import write_json_atomic
    from .evaluation import evaluate
    from .step import train_step
    from .trainer import setup

    old = stored_record(spec, profile, out_root)
    if old is not None:
        return old
    torch.set_num_threads(1)
    t0 = time.time()
    out = run_dir(spec, out_root)
    cfg = train_config(profile, spec)
    tok = tinyworld.load_tokenizer()
    student, teacher = tinyworld.load_student(), tinyworld.load_teacher()
    prompts = [{"prompt": r["question"]} for r in tasks.load_split("train")]
    val = tasks.load_split("validation")[: profile.val_problems]
    state = setup(student, teacher, tok, prompts, cfg)
    var_prompts = [state.data.prompt_ids[i] for i in range(profile.variance_prompts)]
    rec: Dict = {}
    if spec.measure:
        rec["grad_var_init"] = gradient_covariance_trace(
            state, var_prompts, profile.variance_repeats, spec.seed, "init")

    def val_accuracy() -> float:
        return evaluate(state.unwrapped, tok, val, k=1, greedy=True,
                        max_new_tokens=profile.max_new_tokens, progress=False).accuracy

    history = []
    for step in range(cfg.steps):
        row = train_step(state, step)
        row.pop("sample", None)
        if spec.measure and ((step + 1) % profile.eval_every == 0 or step == cfg.steps - 1):
            row["accuracy"] = val_accuracy()
        history.append(row)
    if spec.measure:
        rec["grad_var_final"] = gradient_covariance_trace(
            state, var_prompts, profile.variance_repeats, spec.seed, "final")
    test = tasks.load_split("test")[: profile.test_problems]
    res = evaluate(state.unwrapped, tok, test, k=1, greedy=True,
                   max_new_tokens=profile.max_new_tokens, progress=False)
    kls = [h["teacher_kl"] for h in history]
    kl_start = _mean(kls[: plan.KL_HEAD_STEPS])
    kl_final = _mean(kls[-plan.KL_TAIL_STEPS:])
    rec.update({
        **{k: v for k, v in asdict(spec).items() if k != "measure"},
        "accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high, "n_test": res.n,
        "teacher_kl_start": kl_start, "teacher_kl_final": kl_final,
        "final_completion_len": _mean([h["completion_len"] for h in history][-plan.KL_TAIL_STEPS:]),
        "max_grad_norm": max((h["grad_norm"] for h in history if h["grad_norm"] is not None),
                             default=None),
        "val_curve": [[h["step"] + 1, h["accuracy"]] for h in history if "accuracy" in h],
        "steps": cfg.steps, "wall_s": time.time() - t0,
        "history": str((out / "history.json").relative_to(out_root)),
        "settings": _settings(profile, spec),
    })
    write_json_atomic(out / "history.json", history)
    write_json_atomic(out / "record.json", rec)
    return rec


def run_reference(role: str, profile: plan.StudyProfile) -> dict:
    """Validation and test accuracy of the SFT student or the teacher (the target's ends)."""
    import torch

    from . import tasks, tinyworld
    from .evaluation import evaluate

    torch.set_num_threads(1)
    tok = tinyworld.load_tokenizer()
    model = tinyworld.load_student() if role == "student" else tinyworld.load_teacher()
    out = {"role": "sft-init" if role == "student" else "teacher"}
    for split, n in (("validation", profile.val_problems), ("test", profile.test_problems)):
        r = evaluate(model, tok, tasks.load_split(split)[:n], k=1, greedy=True,
                     max_new_tokens=profile.max_new_tokens, progress=False)
        out[split] = {"accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}
    return out


def stored_reference(role: str, profile: plan.StudyProfile, out_root: Path) -> Optional[dict]:
    path = Path(out_root) / "runs" / f"reference_{role}.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    return old["record"] if old.get("settings") == _ref_settings(profile) else None


def _ref_settings(profile: plan.StudyProfile) -> dict:
    return {"val_problems": profile.val_problems, "test_problems": profile.test_problems,
            "max_new_tokens": profile.max_new_tokens, "fingerprint": fingerprint()}


def _timed(indexed):
    i, job, profile, out_root = indexed
    _quiet_worker()
    t0 = time.time()
    with _silenced():
        if isinstance(job, str):
            old = stored_reference(job, profile, out_root)
            if old is not None:
                return i, old, time.time() - t0, True
            from .checkpoint import write_json_atomic

            rec = run_reference(job, profile)
            write_json_atomic(Path(out_root) / "runs" / f"reference_{job}.json",
                              {"record": rec, "settings": _ref_settings(profile)})
            return i, rec, time.time() - t0, False
        reused = stored_record(job, profile, out_root) is not None
        return i, run_one(job, profile, out_root), time.time() - t0, reused


def run_line(rec: dict, seconds: float, reused: bool) -> str:
    """One line per finished run: name, accuracy [interval], teacher KL start -> end, outcome."""
    if "role" in rec:
        v = rec["validation"]["accuracy"]
        t = rec["test"]
        text = f"{rec['role']}: validation {v:.3f}, test {t['accuracy']:.3f}, {seconds:.0f} s"
        return text + (" (finished earlier: reused)" if reused else "")
    name = RunSpec(rec["divergence"], rec["estimator"], rec["seed"], rec["shift"], rec["gamma"],
                   rec["baseline"]).name
    kl0, kl1 = rec["teacher_kl_start"], rec["teacher_kl_final"]
    text = (f"{name}: accuracy {rec['accuracy']:.3f} [{rec['ci_low']:.3f}, {rec['ci_high']:.3f}],"
            f" teacher KL {kl0:.3g} -> {kl1:.3g}, "
            f"{'collapsed' if plan.collapsed(rec['accuracy'], kl0, kl1) else 'stable'}"
            f", {seconds:.0f} s")
    return text + (" (finished earlier: reused)" if reused else "")


def load_finished(profile: plan.StudyProfile, out_root: Path, partial: bool = False
                  ) -> Tuple[List[Tuple[str, dict]], Dict[str, dict]]:
    """What ``run_all`` returns, read from the stored records without training or checking the
    fingerprint (``study --report-only``: rebuild the report after a change of library code
    that did not touch these runs). A missing run is an error naming it, unless ``partial``:
    then it is left out (a study stopped early reports what finished, and says so)."""
    pairs = plan_runs(profile)
    recs, refs = {}, {}
    for s in dict.fromkeys(s for _, s in pairs):
        path = run_dir(s, out_root) / "record.json"
        if not path.exists():
            if partial:
                continue
            raise FileNotFoundError(f"run {s.name} has no record under {out_root}; run "
                                    f"`python -m opdplus study --profile {profile.name}` first")
        recs[s] = {**json.loads(path.read_text()), "_mtime": path.stat().st_mtime}
    for role in ("student", "teacher"):
        path = Path(out_root) / "runs" / f"reference_{role}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run the study first")
        r = json.loads(path.read_text())["record"]
        refs[r["role"]] = r
    return [(e, {**recs[s], "experiment": e}) for e, s in pairs if s in recs], refs


def run_all(profile: plan.StudyProfile, out_root: Path, workers: Optional[int] = None,
            progress: Optional[bool] = None, first: Sequence[str] = ()
            ) -> Tuple[List[Tuple[str, dict]], Dict[str, dict]]:
    """Every run of the profile (each distinct run once) and the two reference rows.

    Returns ``(experiment, record)`` pairs in plan order and ``{"sft-init": .., "teacher": ..}``.
    ``first``: run names to start before the others, in this order (e.g. the cells that
    answer a question at one seed, when time is short).
    """
    pairs = plan_runs(profile)
    unique: List[RunSpec] = list(dict.fromkeys(s for _, s in pairs))
    rank = {name: i for i, name in enumerate(first)}
    unique.sort(key=lambda s: rank.get(s.name, len(rank)))  # stable: plan order otherwise
    # plan order is seed-major: a study stopped early still has every cell for its first seeds
    jobs = ["student", "teacher"] + unique
    workers = profile.workers if workers is None else workers
    show = _progress.enabled(progress)
    results: List[Optional[dict]] = [None] * len(jobs)
    with _progress.bar(total=len(jobs), desc="study runs", unit="run", progress=show) as pbar:
        items = [(i, j, profile, Path(out_root)) for i, j in enumerate(jobs)]
        def collect(it) -> None:
            for i, rec, seconds, reused in it:
                results[i] = rec
                pbar.write(run_line(rec, seconds, reused))
                pbar.update(1)

        if workers <= 1:
            collect(map(_timed, items))
        else:
            with spawn_pool(workers, maxtasksperchild=8) as pool:
                collect(pool.imap_unordered(_timed, items))
    refs = {r["role"]: r for r in results[:2]}
    by_spec = {s: r for s, r in zip(jobs[2:], results[2:])}
    return [(e, {**by_spec[s], "experiment": e}) for e, s in pairs], refs


SUMMARY_FIELDS = ("experiment", "divergence", "estimator", "seed", "shift", "gamma", "baseline",
                  "accuracy", "ci_low", "ci_high", "teacher_kl_final", "collapsed",
                  "predicted_collapse")
EXTRA_FIELDS = ("teacher_kl_start", "f1", "f2", "n_test", "steps_to_target", "grad_var_init",
                "grad_var_final", "val_curve", "final_completion_len", "max_grad_norm", "steps",
                "wall_s", "history")


def steps_to_target(val_curve: Sequence[Sequence[float]], target: float) -> Optional[int]:
    """The first evaluated step whose validation accuracy reaches ``target`` (None: never)."""
    for step, acc in val_curve:
        if acc >= target:
            return int(step)
    return None


def summary_records(pairs: Sequence[Tuple[str, dict]], refs: Dict[str, dict]) -> List[dict]:
    """One record per (experiment, run) with ``SUMMARY_FIELDS`` first, then the extras.

    The judgement (``collapsed`` by the criterion, ``predicted_collapse``, f'(1), f''(1)) is
    made here from the plan, not stored with the run."""
    lo = refs["sft-init"]["validation"]["accuracy"]
    hi = refs["teacher"]["validation"]["accuracy"]
    target = lo + plan.TARGET_FRACTION * (hi - lo)
    out = []
    for exp, r in pairs:
        d = plan.divergence(r["divergence"], r["shift"])
        f1, f2 = plan.derivatives_at_one(d)
        r = {**r, "experiment": exp, "f1": f1, "f2": f2,
             "collapsed": plan.collapsed(r["accuracy"], r["teacher_kl_start"], r["teacher_kl_final"]),
             "predicted_collapse": plan.predict(d, r["estimator"])[0]}
        rec = {k: r.get(k) for k in SUMMARY_FIELDS}
        extra = {k: r.get(k) for k in EXTRA_FIELDS}
        extra["steps_to_target"] = (steps_to_target(r["val_curve"], target)
                                    if r.get("val_curve") else None)
        out.append({**rec, **extra})
    return out
