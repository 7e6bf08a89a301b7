"""One OPD+ step of notebook 06's full recipe at its real shapes, with random weights.

Notebook 06 prints, before anyone rents a GPU, an estimate of one step's peak memory
(``opdplus.memory_budget.step_memory_estimate``) and of its time (about a minute, mostly
sampling). This script measures both on whatever device it is given, without a download:

- a Qwen3-4B-shaped teacher (bf16) and a Qwen3-0.6B-shaped student (float32 master weights,
  bf16 autocast), built from configs written here, with random weights;
- a word-level tokenizer of the same vocabulary size (151,936), built in code;
- 16 prompts of 200 tokens x 4 samples x 512 new tokens, micro-batches of 4 prompts, forward
  KL with the OPD+ estimator, as in 06's full recipe. End-of-sequence is suppressed (the
  rollout stops only at ``max_new_tokens``), so every step has the recipe's full length.

It runs ``opdplus.trainer.train`` for one step and prints one JSON line: the time split
(generate, score, backward, the rest), completion tokens, the peak memory (CUDA:
``max_memory_allocated``) and 06's estimate for the same shapes. ``--scale tiny`` runs the
same logic at toy shapes on the CPU, which is what the test suite does.

    python benchmarks/recipe_step.py --scale full --device cuda      # on a GPU, ~2 minutes
    python benchmarks/recipe_step.py --scale tiny                    # seconds, CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Scale:
    """Model shapes and batch of one recipe step."""

    teacher: Dict
    student: Dict
    prompts: int
    samples: int
    micro_batch_prompts: int
    max_new_tokens: int
    prompt_tokens: int


# Qwen3-4B and Qwen3-0.6B(-Base) as published in their config.json (both tie embeddings).
_QWEN3_COMMON = dict(vocab_size=151_936, head_dim=128, num_key_value_heads=8, rope_theta=1e6,
                     max_position_embeddings=40_960, rms_norm_eps=1e-6, tie_word_embeddings=True)
SCALES = {
    "full": Scale(
        teacher=dict(_QWEN3_COMMON, num_hidden_layers=36, hidden_size=2560,
                     intermediate_size=9728, num_attention_heads=32),
        student=dict(_QWEN3_COMMON, num_hidden_layers=28, hidden_size=1024,
                     intermediate_size=3072, num_attention_heads=16),
        prompts=16, samples=4, micro_batch_prompts=4, max_new_tokens=512, prompt_tokens=200),
    "tiny": Scale(
        teacher=dict(vocab_size=300, head_dim=8, num_key_value_heads=2, num_hidden_layers=2,
                     hidden_size=32, intermediate_size=64, num_attention_heads=4,
                     tie_word_embeddings=True, max_position_embeddings=128),
        student=dict(vocab_size=300, head_dim=8, num_key_value_heads=2, num_hidden_layers=1,
                     hidden_size=16, intermediate_size=32, num_attention_heads=2,
                     tie_word_embeddings=True, max_position_embeddings=128),
        prompts=4, samples=2, micro_batch_prompts=2, max_new_tokens=6, prompt_tokens=5),
}


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries (``w0`` ... and ``<eos>`` last)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)}
    vocab["<eos>"] = vocab_size - 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>",
                                   unk_token="w0")


def build_model(cfg: Dict, dtype, device, seed: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**cfg, attn_implementation="sdpa", use_cache=True)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    return model.eval()


def run(scale_name: str = "tiny", device: str = "cpu") -> Dict:
    import torch

    from opdplus.config import TrainConfig
    from opdplus.memory_budget import step_memory_estimate
    from opdplus.models import param_count
    from opdplus.sampler import sample
    from opdplus.trainer import train

    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r}; expected one of {tuple(SCALES)}")
    sc = SCALES[scale_name]
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    t0 = time.perf_counter()
    teacher = build_model(sc.teacher, torch.bfloat16 if on_gpu else torch.float32, dev, 1)
    student = build_model(sc.student, torch.float32, dev, 2)
    tok = word_tokenizer(sc.teacher["vocab_size"])
    t_build = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    n_words = sc.teacher["vocab_size"] - 1
    prompts = [" ".join(f"w{int(i)}" for i in torch.randint(0, n_words, (sc.prompt_tokens,),
                                                             generator=g))
               for _ in range(sc.prompts)]
    never = sc.teacher["vocab_size"]  # an id the sampler cannot draw: EOS never ends a row

    def rollout_no_eos(policy, prompt_ids, **kw):
        return sample(policy, prompt_ids, **{**kw, "eos_token_id": [never]})

    cfg = TrainConfig(divergence="forward_kl", estimator="opd+", loss="pg", steps=1, lr=1e-5,
                      prompts_per_step=sc.prompts, samples_per_prompt=sc.samples,
                      micro_batch_prompts=sc.micro_batch_prompts,
                      max_new_tokens=sc.max_new_tokens, mixed_precision="bf16" if on_gpu else "no",
                      checkpoint_every=0, checkpoint_minutes=0.0, progress=False)
    if on_gpu:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    rec = list(train(student, teacher, tok, prompts, cfg, rollout_fn=rollout_no_eos))[0]
    recipe = dict(micro_batch_prompts=sc.micro_batch_prompts, samples_per_prompt=sc.samples,
                  max_new_tokens=sc.max_new_tokens)
    estimate = step_memory_estimate(teacher.config, student.config, param_count(teacher),
                                    param_count(student), recipe, prompt_tokens=sc.prompt_tokens,
                                    teacher_bytes=2 if on_gpu else 4, act_bytes=2 if on_gpu else 4)
    t_rest = rec["t_step"] - rec["t_generate"] - rec["t_score"] - rec["t_backward"]
    return {
        "scale": scale_name, "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if on_gpu else None,
        "teacher_params": param_count(teacher), "student_params": param_count(student),
        "prompts": sc.prompts, "samples_per_prompt": sc.samples,
        "micro_batch_prompts": sc.micro_batch_prompts, "max_new_tokens": sc.max_new_tokens,
        "prompt_tokens": sc.prompt_tokens, "completion_tokens": rec["tokens"],
        "time_s": {"build": t_build, "generate": rec["t_generate"], "score": rec["t_score"],
                   "backward": rec["t_backward"], "rest": t_rest, "step": rec["t_step"]},
        "peak_mem_gib": rec["peak_mem_mb"] / 1024,
        "peak_mem_measure": "torch.cuda.max_memory_allocated" if on_gpu else "ru_maxrss (process)",
        "estimate_gib": estimate, "estimate_total_gib": sum(estimate.values()),
        "notebook06_time_estimate_s": [40, 60] if scale_name == "full" else None,
        "loss": rec["loss"], "skipped": rec["skipped"],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="tiny", choices=tuple(SCALES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    res = run(a.scale, a.device)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
