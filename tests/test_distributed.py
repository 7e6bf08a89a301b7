"""Two processes (Accelerate DDP over gloo, on CPU) give the single-process losses and gradients.

``accelerate launch --config_file configs/accelerate_ddp.yaml --num_processes 2`` runs a
script that (1) back-propagates step 0 of a run through the trainer's own
``collect_rollouts`` / ``accumulate_gradients`` and saves the all-reduced gradients, and
(2) trains through the CLI (``opdplus.cli.main``), i.e. the CLI under ``accelerate
launch``. The same script runs in this process as the single-process reference. The
global batch is identical by construction: rollouts are seeded per (step, micro-batch),
not per process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from accelerate import Accelerator
    from opdplus import models
    from opdplus.cli import main
    from opdplus.trainer import TrainConfig, accumulate_gradients, collect_rollouts, setup

    out = sys.argv[1]
    tok = models.word_tokenizer([f"w{{i}}" for i in range(40)])
    ids = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
    prompts = [" ".join(f"w{{(i * 7 + j * 3) % 40}}" for j in range(1 + i % 4)) for i in range(64)]
    teacher = models.peaky_teacher(len(tok), seed=1, **ids)
    student = models.tiny_causal_lm("llama", len(tok), hidden_size=32, num_layers=2, seed=2, **ids)
    acc = Accelerator(cpu=True)
    cfg = TrainConfig(prompts_per_step=4, micro_batch_prompts=1, samples_per_prompt=2,
                      max_new_tokens=16, progress=False)
    state = setup(student, teacher, tok, prompts, cfg, accelerator=acc)
    stats = accumulate_gradients(state, collect_rollouts(state, 0))
    if acc.is_main_process:
        grads = {{n: p.grad for n, p in state.unwrapped.named_parameters()}}
        torch.save({{"loss": stats["loss"], "tokens": stats["tokens"], "grads": grads}},
                   f"{{out}}/grads-{{acc.num_processes}}.pt")
        for name, m in (("teacher", teacher), ("student", models.tiny_causal_lm(
                "llama", len(tok), hidden_size=32, num_layers=2, seed=2, **ids))):
            m.save_pretrained(f"{{out}}/{{name}}")
            tok.save_pretrained(f"{{out}}/{{name}}")
        with open(f"{{out}}/prompts.jsonl", "w") as f:
            f.writelines(json.dumps({{"prompt": p}}) + "\\n" for p in prompts)
    acc.wait_for_everyone()
    sys.exit(main(["train", "--teacher", f"{{out}}/teacher", "--student", f"{{out}}/student",
                   "--prompts", f"{{out}}/prompts.jsonl",
                   "--out", f"{{out}}/cli-{{acc.num_processes}}",
                   "--steps", "3", "--prompts-per-step", "4", "--micro-batch-prompts", "1",
                   "--samples-per-prompt", "2",
                   "--max-new-tokens", "16", "--lr", "0.01", "--no-progress", "--device", "cpu"]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_configs_are_valid():
    ddp = yaml.safe_load((ROOT / "configs" / "accelerate_ddp.yaml").read_text())
    fsdp = yaml.safe_load((ROOT / "configs" / "accelerate_fsdp.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["num_processes"] >= 2
    assert fsdp["distributed_type"] == "FSDP"
    assert fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate_ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        str(script),
        str(tmp_path),
    ]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    g1 = torch.load(tmp_path / "grads-1.pt")
    g2 = torch.load(tmp_path / "grads-2.pt")
    assert g1["tokens"] == g2["tokens"] > 0
    assert abs(g1["loss"] - g2["loss"]) < 1e-6
    diff = max(float((g1["grads"][k] - g2["grads"][k]).abs().max()) for k in g1["grads"])
    scale = max(float(v.abs().max()) for v in g1["grads"].values())
    print(
        f"max |grad(2 processes) - grad(1 process)| = {diff:.2e} "
        f"(largest gradient entry {scale:.2e})"
    )
    assert diff < 1e-6 * max(scale, 1.0)

    h1 = json.loads((tmp_path / "cli-1" / "history.json").read_text())
    h2 = json.loads((tmp_path / "cli-2" / "history.json").read_text())
    assert len(h1) == len(h2) == 3
    for a, b in zip(h1, h2):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "teacher_kl", "grad_norm", "clip_frac", "adv_mean", "completion_len"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
    assert abs(h1[-1]["eval_teacher_kl"] - h2[-1]["eval_teacher_kl"]) < 1e-4
    assert (tmp_path / "cli-2" / "checkpoint" / "step-000003" / "rng" / "rank-1.pt").is_file()
