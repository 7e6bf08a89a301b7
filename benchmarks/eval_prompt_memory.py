"""Peak memory of evaluation's prompt pass: logits at every prompt position vs the last only.

``evaluation.generate`` reads one position of each prompt's logits. Asking the model for
every position materialises ``(B, T, V)`` logits; ``logits_to_keep=1`` keeps ``(B, 1, V)``.
Each variant runs in its own subprocess (peak RSS is per process) on SmolLM2-135M-Instruct
(``opdplus.models.load_smollm2``, float32, offline) with a realistic evaluation batch:
``--batch`` GSM8K-style questions (reasoning_gym's ``gsm_symbolic``, the tiny world's test
split if it is missing) in the chat template, left-padded, ``--new`` generated tokens. The
script prints the extra peak over the loaded model for both and their ratio, and writes
them as JSON with ``--out``. CPU only; on a GPU read torch.cuda.max_memory_allocated.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_prompt_memory.py --batch 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(variant: str, batch: int, new: int, threads: int) -> dict:
    import torch

    from opdplus import evaluation as ev
    from opdplus import models

    torch.set_num_threads(threads)
    model, tok = models.load_smollm2()
    model.eval()
    try:
        from opdplus.tasks import gsm_symbolic_rows

        questions = [r["question"] for r in gsm_symbolic_rows(batch, seed=0)]
    except ImportError:
        from opdplus.tasks import load_split

        questions = [r["question"] for r in load_split("test")[:batch]]
    tok.padding_side = "left"
    enc = tok([ev.chat_prompt(tok, q) for q in questions], return_tensors="pt", padding=True,
              add_special_tokens=False)
    if variant == "all_positions":  # the behaviour before: no logits_to_keep
        ev._last_position_only = lambda model: {}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = ev.generate(model, enc["input_ids"], enc["attention_mask"], new, tok.eos_token_id,
                      tok.pad_token_id, vocab_size=len(tok))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "batch": batch, "prompt_len": int(enc["input_ids"].shape[1]),
            "vocab": int(model.config.vocab_size), "new_tokens": new, "seconds": dt,
            "extra_peak_mib": (peak - base) / 1024, "tokens": out.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", choices=["all_positions", "last_position"])
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.batch, a.new, a.threads)))
        return
    res = {}
    for variant in ("all_positions", "last_position"):
        cmd = [sys.executable, __file__, "--one", variant, "--batch", str(a.batch), "--new",
               str(a.new), "--threads", str(a.threads)]
        res[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                 text=True).stdout.strip().splitlines()[-1])
    same = res["all_positions"].pop("tokens") == res["last_position"].pop("tokens")
    before, after = res["all_positions"], res["last_position"]
    summary = {"before": before, "after": after, "same_tokens": same,
               "peak_ratio_after_over_before": after["extra_peak_mib"] / before["extra_peak_mib"]}
    for r in (before, after):
        print(f"{r['variant']:>14}: batch {r['batch']} x {r['prompt_len']} tokens, V {r['vocab']}: "
              f"extra peak {r['extra_peak_mib']:.0f} MiB, {r['seconds']:.1f} s")
    print(f"ratio after/before: {summary['peak_ratio_after_over_before']:.3f}; "
          f"identical tokens: {same}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
