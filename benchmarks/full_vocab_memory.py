"""Peak memory and time of the full-vocabulary divergence: chunked vs one block.

Each variant runs in its own subprocess (peak RSS is per process), on the same
logits, forward and backward, and the script prints ratios against the unchunked
baseline measured in the same run. CPU only; on a GPU, read
torch.cuda.max_memory_allocated instead.

    .venv/bin/python benchmarks/full_vocab_memory.py --vocab 150000 --positions 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(vocab: int, positions: int, chunk: int, divergence: str) -> dict:
    import torch

    from opdplus import divergences as D

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(positions, vocab, generator=g).requires_grad_(True)
    zt = torch.randn(positions, vocab, generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    D.get(divergence).full_vocab(zs, zt, chunk_size=chunk).sum().backward()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"chunk": chunk, "seconds": dt, "extra_peak_mib": (peak - base) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--divergence", default="jsd")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(run_one(a.vocab, a.positions, a.child, a.divergence)))
        return
    logits_mib = a.positions * a.vocab * 4 / 2**20
    rows = []
    for chunk in [a.positions] + a.chunks:  # the first is one block: the baseline
        out = subprocess.run([sys.executable, __file__, "--vocab", str(a.vocab), "--positions",
                              str(a.positions), "--divergence", a.divergence, "--child", str(chunk)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    b = rows[0]
    print(f"{a.divergence}, V = {a.vocab}, {a.positions} positions; one float32 logits tensor "
          f"= {logits_mib:.0f} MiB; peak memory beyond the inputs, forward + backward")
    print("| chunk (positions) | extra peak MiB | ratio vs one block | seconds | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['chunk']} | {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / b['extra_peak_mib']:.2f}"
              f" | {r['seconds']:.2f} | {r['seconds'] / b['seconds']:.2f} |")


if __name__ == "__main__":
    main()
