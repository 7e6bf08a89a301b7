"""Full-vocabulary divergence, forward and backward: chunked (ours) against one naive block.

``python benchmarks/fullvocab_bench.py MODE --vocab V --positions T`` builds random float32
logits of shape (1, T, V) for the student (with grad) and the teacher, then times
``D(student || teacher).sum().backward()`` for the JSD at beta = 0.5 and prints one JSON line
with the seconds and the peak memory added beyond the inputs (``ru_maxrss``; on CUDA, peak
allocated memory).

- ``chunked``: ``Divergence.full_vocab``, ``chunk`` positions at a time (the library default
  unless ``--chunk`` is given), as the trainer computes it;
- ``naive``: the same per-row formula applied to the whole (1, T, V) block at once, with plain
  autograd: what one writes without chunking.

Each mode runs in its own process, so each peak is its own (``run_bench`` interleaves them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("chunked", "naive")


def _mem_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb(device) -> float:
    """Memory in use now (resident set on CPU): the base the peak is measured from."""
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(mode: str, vocab: int, positions: int, chunk: int = 0, device: str = "cpu",
        threads: int = 0) -> dict:
    import torch

    from opdplus import divergences as D

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    zs = torch.randn(1, positions, vocab, generator=g, device=dev).mul_(3).requires_grad_(True)
    zt = torch.randn(1, positions, vocab, generator=g, device=dev).mul_(3)
    div = D.get("jsd", beta=0.5)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    base = _current_mb(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "chunked":
        val = div.full_vocab(zs, zt, chunk_size=chunk or None)
    else:
        val = div._full_vocab_rows(zs, zt)
    val.sum().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "vocab": vocab, "positions": positions,
            "chunk": (chunk or D.default_chunk(vocab, dev)) if mode == "chunked" else positions,
            "seconds": dt, "cpu_seconds": dc, "extra_peak_mb": _mem_mb(dev) - base,
            "logits_mb": positions * vocab * 4 / 2**20, "value": float(val.detach().sum()),
            "threads": torch.get_num_threads(), "device": str(dev)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=0, help="positions per chunk (0: the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.mode, a.vocab, a.positions, a.chunk, a.device, a.threads)))


if __name__ == "__main__":
    main()
