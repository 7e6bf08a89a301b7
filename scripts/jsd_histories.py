"""Write the per-step Histories of the tiny world's JSD arms (default profile, seed 0).

Notebook 04 runs forward KL and reverse KL in its smoke profile; JSD collapses too slowly to
show in 16 steps. Its exercise "which logged signal exposes JSD's collapse first?" is
checked against these two Histories instead, so they are shipped in
``data/reference/tiny_world_jsd/``. Each is one arm of ``make reproduce``'s default
profile (``opdplus.miniature``): same config, same seed, validation accuracy every
``eval_every`` steps.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/jsd_histories.py
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "reference" / "tiny_world_jsd"


def main(arms=(("jsd", "opd"), ("jsd", "opd+")), seed: int = 0) -> None:
    import torch

    from opdplus import miniature, tasks, tinyworld
    from opdplus.evaluation import evaluate
    from opdplus.trainer import train

    torch.set_num_threads(1)
    profile = miniature.PROFILES["default"]
    tok = tinyworld.load_tokenizer()
    teacher = tinyworld.load_teacher()
    prompts = [{"prompt": r["question"]} for r in tasks.load_split("train")]
    val = tasks.load_split("validation")[: profile.val_problems]

    def eval_fn(model, step):
        r = evaluate(model, tok, val, k=1, greedy=True, max_new_tokens=profile.max_new_tokens)
        return {"accuracy": r.accuracy}

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"profile": profile.name, "steps": profile.steps, "seed": seed,
            "torch": torch.__version__, "machine": platform.machine(),
            "command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python "
                       "scripts/jsd_histories.py", "arms": {}}
    for div, est in arms:
        cfg = miniature.train_config(profile, div, est, seed)
        t0 = time.time()
        history = train(tinyworld.load_student(), teacher, tok, prompts, cfg, eval_fn=eval_fn)
        name = f"{div}__{est.replace('+', 'plus')}_s{seed}.json"
        history.save(OUT / name)
        meta["arms"][f"{div}/{est}"] = {"history": name, "train_wall_s": time.time() - t0,
                                         "config": cfg.to_dict()}
        print(f"{div}/{est}: {len(history)} steps in {time.time() - t0:.0f} s", file=sys.stderr)
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
