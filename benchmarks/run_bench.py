"""``make bench``: opdplus against TRL and against the bare compute, side by side.

Every contender (``benchmarks/contenders.py``) and every full-vocabulary mode
(``benchmarks/fullvocab_bench.py``) runs in a process of its own, so its peak memory is its
own. The runs are interleaved, round by round, with the order rotated each round
(A B C, B C A, ...), so that a machine that slows down or speeds up during the benchmark moves
every contender alike. Each ratio is taken within one round, against the baseline measured in
that round, and reported as the median and range over the rounds. The load average is recorded
beside every run: the numbers mean little on a machine that is busy with other work.

Writes ``benchmarks/results/``: ``steps_<size>.json`` (every run), ``fullvocab.json`` and
``summary.json`` (the headline ratios at SmolLM2 size, the hardware and the settings), and
prints every ratio.

    .venv/bin/python benchmarks/run_bench.py                 # the full benchmark
    .venv/bin/python benchmarks/run_bench.py --rounds 2 --sizes tiny
    .venv/bin/python benchmarks/run_bench.py --smoke --out /tmp/b   # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from contenders import CONTENDERS, SIZES, TRL_CONTENDERS  # noqa: E402

SUMMARY_KEYS = (
    "tokens_per_s_ratio_vs_gkd",
    "tokens_per_s_ratio_vs_distill",
    "peak_mem_ratio_vs_gkd",
    "peak_mem_ratio_vs_distill",
    "overhead_vs_bare",
    "fullvocab_mem_ratio",
    "fullvocab_time_ratio",
)
"""The headline numbers of ``summary.json`` (at SmolLM2 size; V = 151,936 for the last two)."""
CEILING_KEYS = ("overhead_vs_floor", "ceiling_vs_gkd", "ceiling_vs_distill")
"""Beside them: how far the floor (completion-only logits, no loss) is from us and from TRL."""

OURS = "opd_logits"  # the like-for-like mode: full-vocabulary JSD, as TRL computes it


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


IN_PROCESS = False
"""Run the children in this process (``--in-process``: the test suite's smoke run; the peaks
are then not each run's own, only the JSON's structure means anything)."""


def _child(cmd: Sequence[str], timeout: float) -> Dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    if IN_PROCESS:
        import contextlib
        import importlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            importlib.import_module(Path(cmd[0]).stem).main(list(cmd[1:]))
        stdout = buf.getvalue()
    else:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OPDPLUS_QUIET="1",
                   TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        stdout = proc.stdout
    rec = json.loads(stdout.strip().splitlines()[-1])
    rec["loadavg_1min"] = load
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def _rotations(items: Sequence[str], rounds: int) -> List[List[str]]:
    items = list(items)
    return [items[r % len(items):] + items[: r % len(items)] for r in range(rounds)]


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median and range of ``values`` (the rounds of one ratio)."""
    v = [float(x) for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


CLOCK = "cpu"
"""Which seconds the ratios use: ``cpu`` (the process's CPU time, ``time.process_time``) or
``wall``. On a shared, oversubscribed CPU a single-threaded process's wall time measures mostly
its share of the scheduler, which drifts from run to run; its CPU time is the work it did. On a
GPU only wall time means anything (``--clock wall``)."""


def step_seconds(rec: Dict, clock: Optional[str] = None) -> List[float]:
    clock = clock or CLOCK
    return rec["step_cpu_s"] if clock == "cpu" and rec.get("step_cpu_s") else rec["step_s"]


def tokens_per_s(rec: Dict, clock: Optional[str] = None) -> float:
    return sum(rec["tokens"]) / sum(step_seconds(rec, clock))


# ----------------------------------------------------------------------------- the step benchmark


def run_steps(size: str, contenders: Sequence[str], rounds: int, steps: int, threads: int,
              device: str, dtype: str, log=print, first_round: int = 0,
              runs: Optional[List[Dict]] = None) -> Dict:
    """Run rounds ``first_round .. first_round + rounds - 1`` of every contender, interleaved
    (appending to ``runs``); return all runs so far and their ratios."""
    runs = [] if runs is None else runs
    for r in range(first_round, first_round + rounds):
        order = _rotations(contenders, r + 1)[r]
        for name in order:
            rec = _child(["benchmarks/contenders.py", name, "--size", size, "--steps", str(steps),
                          "--threads", str(threads), "--device", device, "--dtype", dtype],
                         timeout=3600)
            rec["round"] = r
            runs.append(rec)
            log(f"  [{size} round {r}] {name:12s} {statistics.median(rec['step_s']):6.2f} s/step "
                f"(cpu {statistics.median(step_seconds(rec, 'cpu')):6.2f}) "
                f"{tokens_per_s(rec):7.1f} tok/{CLOCK}-s  peak {rec['peak_mem_mb']:6.0f} MB  "
                f"load {rec['loadavg_1min']:.1f}")
    return {"size": size, "runs": runs, **step_ratios(runs, contenders)}


TAGS = {"trl_gkd": "gkd", "trl_distill": "distill", "bare": "bare", "floor": "floor",
        "opd_logits": "logits", "opd_pg": "pg"}


def step_ratios(runs: Sequence[Dict], contenders: Sequence[str]) -> Dict:
    """Per-round ratios of tokens/s and peak memory, our two modes against each other contender.

    ``overhead_vs_bare``: our seconds per completion token over the bare compute's, per round
    (``overhead_vs_floor``: over the floor's, the bare compute with completion-only logits).
    ``ceiling_vs_gkd`` / ``ceiling_vs_distill``: the floor's tokens/s over the TRL trainer's,
    the largest speed-up any trainer of these three passes could show against it.
    """
    by_round: Dict[int, Dict[str, Dict]] = {}
    for rec in runs:
        by_round.setdefault(rec["round"], {})[rec["contender"]] = rec
    ratios: Dict[str, List[float]] = {}
    for recs in by_round.values():
        for ours in ("opd_logits", "opd_pg"):
            if ours not in recs:
                continue
            for base in contenders:
                if base == ours or base not in recs:
                    continue
                tag = TAGS[base]
                mode = "" if ours == OURS else "_pg"
                tps = tokens_per_s(recs[ours]) / tokens_per_s(recs[base])
                mem = recs[ours]["peak_mem_mb"] / recs[base]["peak_mem_mb"]
                ratios.setdefault(f"tokens_per_s_ratio_vs_{tag}{mode}", []).append(tps)
                ratios.setdefault(f"peak_mem_ratio_vs_{tag}{mode}", []).append(mem)
                if base in ("bare", "floor"):
                    ratios.setdefault(f"overhead_vs_{base}{mode}", []).append(1.0 / tps)
        if "floor" in recs:
            for base in TRL_CONTENDERS:
                if base in recs:
                    ratios.setdefault(f"ceiling_vs_{TAGS[base]}", []).append(
                        tokens_per_s(recs["floor"]) / tokens_per_s(recs[base]))
    per_contender = {}
    for name in contenders:
        recs = [r for r in runs if r["contender"] == name]
        if not recs:
            continue
        per_contender[name] = {
            "s_per_step": spread([statistics.median(r["step_s"]) for r in recs]),
            "cpu_s_per_step": spread([statistics.median(step_seconds(r, "cpu")) for r in recs]),
            "tokens_per_s": spread([tokens_per_s(r) for r in recs]),
            "tokens_per_wall_s": spread([tokens_per_s(r, "wall") for r in recs]),
            "tokens_per_step": spread([statistics.mean(r["tokens"]) for r in recs]),
            "peak_mem_mb": spread([r["peak_mem_mb"] for r in recs]),
            "mem_added_by_training_mb": spread(
                [r["peak_mem_mb"] - r["mem_loaded_mb"] for r in recs]),
            "split_s": {k: statistics.median([statistics.median(r["split"][k]) for r in recs])
                        for k in recs[0]["split"]},
        }
    return {"contenders": per_contender, "ratios": {k: spread(v) for k, v in ratios.items()}}


# ----------------------------------------------------------------------------- full vocabulary


def run_fullvocab(vocabs: Sequence[int], positions: int, rounds: int, threads: int, device: str,
                  log=print) -> Dict:
    out = {}
    for vocab in vocabs:
        runs = []
        for r, order in enumerate(_rotations(["chunked", "naive"], rounds)):
            for mode in order:
                rec = _child(["benchmarks/fullvocab_bench.py", mode, "--vocab", str(vocab),
                              "--positions", str(positions), "--threads", str(threads),
                              "--device", device], timeout=1800)
                rec["round"] = r
                runs.append(rec)
                log(f"  [V={vocab} round {r}] {mode:8s} {rec['seconds']:6.2f} s  extra peak "
                    f"{rec['extra_peak_mb']:6.0f} MB  load {rec['loadavg_1min']:.1f}")
        mem, tim = [], []
        for r in range(rounds):
            c, n = ([x for x in runs if x["round"] == r and x["mode"] == m][0]
                    for m in ("chunked", "naive"))
            mem.append(c["extra_peak_mb"] / n["extra_peak_mb"])
            key = "cpu_seconds" if CLOCK == "cpu" and "cpu_seconds" in c else "seconds"
            tim.append(c[key] / n[key])
        out[str(vocab)] = {"vocab": vocab, "positions": positions, "runs": runs,
                           "mem_ratio": spread(mem), "time_ratio": spread(tim)}
    return out


# ----------------------------------------------------------------------------- summary


def hardware(device: str) -> Dict:
    import torch

    hw = {"machine": platform.machine(), "processor": platform.processor() or None,
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "torch": torch.__version__, "device": device}
    try:
        import transformers

        hw["transformers"] = transformers.__version__
    except ImportError:
        pass
    if trl_available():
        import trl

        hw["trl"] = trl.__version__
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                hw["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        hw["memory_gb"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def summarize(steps: Dict[str, Dict], fullvocab: Dict[str, Dict], settings: Dict,
              headline_size: str, headline_vocab: int, device: str) -> Dict:
    """``summary.json``: the headline ratios (medians) with their ranges, hardware, settings."""
    head = steps.get(headline_size, {}).get("ratios", {})
    summary: Dict = {}
    for key in SUMMARY_KEYS[:5] + CEILING_KEYS:
        summary[key] = head[key]["median"] if key in head else None
    fv = fullvocab.get(str(headline_vocab))
    summary["fullvocab_mem_ratio"] = fv["mem_ratio"]["median"] if fv else None
    summary["fullvocab_time_ratio"] = fv["time_ratio"]["median"] if fv else None
    summary["headline"] = {"size": headline_size, "ours": OURS, "fullvocab_vocab": headline_vocab}
    summary["ranges"] = {size: s["ratios"] for size, s in steps.items()}
    summary["contenders"] = {size: s["contenders"] for size, s in steps.items()}
    summary["fullvocab"] = {v: {"mem_ratio": f["mem_ratio"], "time_ratio": f["time_ratio"]}
                            for v, f in fullvocab.items()}
    summary["hardware"] = hardware(device)
    loads = [r["loadavg_1min"] for s in steps.values() for r in s["runs"]]
    loads += [r["loadavg_1min"] for f in fullvocab.values() for r in f["runs"]]
    summary["loadavg_1min"] = spread(loads) if loads else None
    summary["settings"] = settings
    summary["gpu_lent"] = False if device == "cpu" else True
    return summary


def print_ratios(summary: Dict) -> None:
    print("\nRatios (median [min-max] over rounds; each against its baseline in the same round)")
    for size, ratios in summary["ranges"].items():
        print(f"  {size}:")
        for k, s in sorted(ratios.items()):
            print(f"    {k:38s} {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]")
    for v, f in summary["fullvocab"].items():
        for k in ("mem_ratio", "time_ratio"):
            s = f[k]
            print(f"  full vocabulary V={v}: chunked/naive {k:10s} {s['median']:.3f} "
                  f"[{s['min']:.3f}-{s['max']:.3f}]")
    print("\nsummary.json:")
    for k in SUMMARY_KEYS + CEILING_KEYS:
        v = summary.get(k)
        print(f"  {k:32s} {'n/a' if v is None else f'{v:.3f}'}")
    la = summary.get("loadavg_1min")
    if la:
        print(f"  load average (1 min) during the runs: median {la['median']:.1f} "
              f"[{la['min']:.1f}-{la['max']:.1f}] on {summary['hardware']['cpu_count']} cores")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["smollm2", "tiny"], choices=tuple(SIZES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per run, after a warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--vocabs", type=int, nargs="*", default=[49_152, 151_936])
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--fullvocab-rounds", type=int, default=1)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL even when it is installed")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny models, one round of one step, a small full-vocabulary case")
    ap.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                    help="seconds for the ratios: process CPU time (default) or wall time")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    global IN_PROCESS, CLOCK
    IN_PROCESS, CLOCK = a.in_process, a.clock
    if a.device != "cpu" and CLOCK == "cpu":
        CLOCK = "wall"  # CPU time says nothing about a GPU's work
    if a.smoke:
        a.sizes, a.rounds, a.steps, a.vocabs, a.positions = ["smoke"], 1, 1, [512], 16
        a.fullvocab_rounds = 1
    if a.rounds < 1 or a.steps < 1:
        raise SystemExit("--rounds and --steps must be >= 1")
    skip_trl = a.no_trl or not trl_available()
    contenders = [c for c in CONTENDERS if not (c in TRL_CONTENDERS and skip_trl)]
    if len(contenders) < len(CONTENDERS):
        print("TRL is not installed (pip install -e .[bench]) or --no-trl: TRL contenders skipped")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    settings = {
        "sizes": {s: {"prompts": SIZES[s].prompts, "samples_per_prompt": 1,
                      "max_new_tokens": SIZES[s].max_new_tokens} for s in a.sizes},
        "models": {"tiny": "tiny world teacher (4 layers) -> student (2 layers)",
                   "smollm2": "SmolLM2-135M-Instruct -> its first 6 layers",
                   "smoke": "tiny world teacher -> student"},
        "divergence": "JSD, beta = 0.5, full vocabulary (opd_pg: sampled-token OPD+)",
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "dtype": a.dtype, "device": a.device,
        "threads_per_process": a.threads, "rounds": a.rounds, "timed_steps_per_run": a.steps,
        "warmup_steps_per_run": 1, "optimizer": "AdamW (fused where torch has it), lr 1e-5",
        "trl": "GKDTrainer lmbda=1 beta=0.5; DistillationTrainer beta=0.5; both "
               "gradient_checkpointing=False, optim=adamw_torch_fused, no logging or saving",
        "bare": "generate (KV cache) + teacher forward + student forward, cross-entropy, "
                "backward (full logits) + fused AdamW",
        "floor": "bare with logits only at the completion positions (logits_to_keep)",
        "eos": "every contender ends a row at its first EOS and counts the tokens up to and "
               "including it",
        "fullvocab": {"vocabs": a.vocabs, "positions": a.positions, "rounds": a.fullvocab_rounds},
        "interleaving": "each run its own process; order rotated every round",
        "clock": CLOCK,
    }
    headline = "smollm2" if "smollm2" in a.sizes else a.sizes[0]
    hv = 151_936 if 151_936 in a.vocabs else (a.vocabs[-1] if a.vocabs else 0)
    steps: Dict[str, Dict] = {}
    fullvocab: Dict[str, Dict] = {}

    def write_summary(stage: str) -> Dict:
        summary = summarize(steps, fullvocab, settings, headline, hv, a.device)
        summary["wall_s"] = time.perf_counter() - t0
        summary["complete"] = stage == "done"
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    # Round by round, the headline size first, with the full-vocabulary pair after its first
    # round; summary.json is rewritten after each round, so an interrupted run still leaves
    # every finished round (and a round's ratios need only the pair it compares).
    order = [headline] + [s for s in a.sizes if s != headline]
    for size in order:
        for r in range(a.rounds):
            print(f"step benchmark, size {size}, round {r + 1} of {a.rounds}: "
                  f"{len(contenders)} contenders")
            prev = steps.get(size, {}).get("runs", [])
            steps[size] = run_steps(size, contenders, 1, a.steps, a.threads, a.device, a.dtype,
                                    first_round=r, runs=prev)
            (out / f"steps_{size}.json").write_text(json.dumps(steps[size], indent=1))
            write_summary(size)
            if size == headline and r == 0 and a.vocabs:
                print(f"full-vocabulary divergence, T = {a.positions}: chunked vs naive")
                fullvocab.update(run_fullvocab(a.vocabs, a.positions, a.fullvocab_rounds,
                                               a.threads, a.device))
                (out / "fullvocab.json").write_text(json.dumps(fullvocab, indent=1))
                write_summary("fullvocab")
    summary = write_summary("done")
    print_ratios(summary)
    print(f"\nwrote {out}/ in {summary['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
