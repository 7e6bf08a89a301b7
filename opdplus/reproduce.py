"""``make reproduce``: the CPU reproduction.

Today it prints the exact-toy tables (``opdplus.exact_tables``), computed afresh.
The tiny math-reasoning comparison of OPD vs OPD+ joins it here.
"""

from __future__ import annotations

import argparse
import time

import torch

from .exact_tables import print_exact_tables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opdplus reproduce")
    ap.add_argument("--dynamics-steps", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.time()
    print_exact_tables(steps=args.dynamics_steps)
    print(f"\n(exact tables: {time.time() - t0:.1f} s)")
    return 0
