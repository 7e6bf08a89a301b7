"""Command line: ``python -m opdplus {reproduce, study, train} ...`` (also the ``opdplus`` command)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m opdplus {reproduce,study,train} [options]\n\n"
              "  reproduce   the CPU reproduction (what `make reproduce` runs)\n"
              "  study       beyond the paper: stability map, generator shift, gamma and "
              "baselines (`make study`)\n"
              "  train       one distillation run on any causal LM (see `train --help`)")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "reproduce":
        from .reproduce import main as reproduce_main

        return reproduce_main(rest) or 0
    if cmd == "study":
        from .study_cli import main as study_main

        return study_main(rest) or 0
    if cmd == "train":
        from .cli import main as cli_main

        return cli_main(["train", *rest]) or 0
    print(f"unknown command {cmd!r}; expected 'reproduce', 'study' or 'train'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
