"""The tiny math world: tokenizer, prompt format, model sizes, SFT loop and loaders.

Everything a CPU-only reader needs to own a teacher and a student on the word problems of
``opdplus.tasks``, built from scratch in minutes by ``scripts/build_tiny_world.py``:

- **Tokenizer** (Hugging Face ``tokenizers``): word level, with every digit its own token
  (pre-tokenizer ``Whitespace`` + ``Digits(individual_digits=True)``), about 70 tokens. Digit
  tokens make arithmetic digit-wise instead of a lookup table of whole numbers. Its decoder
  rejoins what the pre-tokenizer split (``1 5 * 2 = 3 0 .`` -> ``15*2=30.``), so decoded
  text is the canonical text and grades as such.
- **Prompt format**: a chat template in the tokenizer renders a user question as
  ``<s>Q: {question} A:`` and an assistant turn as `` {solution}</s>``; ``format_prompt``
  and ``format_completion`` give the same strings without a tokenizer. Whitespace is not a
  token, so prompt tokens + completion tokens are exactly the tokens of the whole text.
- **Models**: small ``LlamaForCausalLM`` configs (``TEACHER``: 4 layers, width 128, ~1.06M
  parameters; ``STUDENT``: 2 layers, width 96, ~0.30M), tied embeddings.
- **SFT** (``sft``): next-token cross-entropy on the completion tokens only, AdamW with
  warm-up, a constant LR, then a linear decay over the last part of training; fresh problems
  every step from a stream, periodic greedy validation accuracy. A ``tqdm.auto`` bar over
  the steps (with an ETA) and one line per validation check, when someone is watching
  (``opdplus.progress``: silent under tests and nbval).
- **Loaders** ``load_tokenizer``, ``load_teacher``, ``load_student``: read the shipped
  ``data/tiny_world/`` files and say how to regenerate them when one is missing.

Simplified: no packing, no gradient accumulation, no mixed precision (float32 throughout);
weight decay skips 1-D parameters (norm gains), as is usual for transformers.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from . import evaluation, tasks

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}Q: {{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %} A: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('the tiny world has only user and assistant turns') }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %} A:{% endif %}"
)
REGENERATE = "regenerate it with `python scripts/build_tiny_world.py`"


def format_prompt(question: str) -> str:
    """The prompt text for a question: what the chat template renders for one user turn."""
    return f"{BOS}Q: {question} A:"


def format_completion(answer: str) -> str:
    """The completion text for a GSM8K-format answer (solution, ``#### n``) plus EOS."""
    return f" {answer}{EOS}"


# ----------------------------------------------------------------------------- tokenizer


def _pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                    pre_tokenizers.Digits(individual_digits=True)])


def _decoder():
    # Decoders see the list of tokens: put a space before each, fuse into one string, then
    # remove the spaces the canonical text does not have (between digits, before
    # punctuation, around operators). "####" keeps its space before the number.
    return decoders.Sequence([
        decoders.Replace(Regex("^"), " "),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
        decoders.Replace(Regex(r"(?<=\d) (?=\d)"), ""),
        decoders.Replace(Regex(r"(?<!#) (?=[.,?:*=+/-]|</s>)|(?<=<s>) "), ""),
        decoders.Replace(Regex(r"(?<=[*=+/]) "), ""),
        decoders.Replace(Regex(r"(?<=[\d=]-) |(?<=# -) "), ""),
    ])


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every piece of ``texts``, with single-digit tokens.

    Ids are deterministic: the four special tokens, the ten digits, then the other pieces
    sorted (so rebuilding from the same texts gives the same file).
    """
    pre = _pre_tokenizer()
    pieces = {p for t in texts for p, _ in pre.pre_tokenize_str(t)}
    digits = [str(d) for d in range(10)]
    specials = [PAD, UNK, BOS, EOS]
    ordered = specials + digits + sorted(pieces - set(digits) - set(specials))
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(ordered)}, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = _decoder()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False, model_max_length=256)


def tiny_world_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny world's tokenizer, built on every word the task generator can write."""
    return build_tokenizer([tasks.template_text(), "Q: A:"])


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}; {REGENERATE}")
    return path


def data_dir(path: Optional[Union[str, Path]] = None) -> Path:
    return Path(path) if path is not None else tasks.default_data_dir()


def load_tokenizer(path: Optional[Union[str, Path]] = None) -> PreTrainedTokenizerFast:
    """The shipped tokenizer (``data/tiny_world/tokenizer``) via ``AutoTokenizer``."""
    path = Path(path) if path is not None else data_dir() / "tokenizer"
    _require(path / "tokenizer.json", "the tiny-world tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """Size of a tiny Llama."""

    layers: int
    """Transformer blocks."""
    width: int
    """Hidden size; the MLP is ``mlp_mult * width``."""
    heads: int
    """Attention heads (no grouped-query sharing)."""
    mlp_mult: int = 4
    max_positions: int = 128
    """Longest prompt + completion, in tokens (the longest shipped example is ~80)."""

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even "
                             f"size (rotary embeddings)")


TEACHER = ModelSpec(layers=4, width=128, heads=4)
STUDENT = ModelSpec(layers=2, width=96, heads=4)


def llama_config(spec: ModelSpec, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.width, intermediate_size=spec.mlp_mult *
        spec.width, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_model(spec: ModelSpec, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama; the init depends on ``seed`` only."""
    # HF draws the init from the global RNG: fork it so the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(llama_config(spec, tokenizer))


def n_params(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def _load_model(role: str, path, device, dtype) -> LlamaForCausalLM:
    path = Path(path) if path is not None else data_dir() / role
    _require(path / "model.safetensors", f"the tiny-world {role} checkpoint")
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def load_teacher(path=None, device="cpu", dtype=torch.float32) -> LlamaForCausalLM:
    """The shipped teacher (``data/tiny_world/teacher``), in eval mode."""
    return _load_model("teacher", path, device, dtype)


def load_student(path=None, device="cpu", dtype=torch.float32) -> LlamaForCausalLM:
    """The shipped student (``data/tiny_world/student``), in eval mode: the SFT initialisation."""
    return _load_model("student", path, device, dtype)


def load_provenance(role: str, path=None) -> dict:
    """The provenance JSON of a shipped checkpoint (how, when and how well it was trained)."""
    p = (Path(path) if path is not None else data_dir() / role) / "provenance.json"
    return json.loads(_require(p, f"the {role} provenance").read_text())


# ----------------------------------------------------------------------------- SFT


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on (prompt, solution) pairs; loss on the solution only."""

    steps: int = 2400
    """Optimizer steps (one fresh batch each)."""
    batch_size: int = 32
    lr: float = 2e-3
    """Peak learning rate."""
    betas: Tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on 1-D norm gains)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to ``lr``."""
    decay_frac: float = 0.3
    """The LR decays linearly over this last fraction of ``steps`` (0: constant LR)."""
    final_lr_frac: float = 0.1
    """LR at the last step, as a fraction of ``lr``."""
    eval_every: int = 100
    """Greedy accuracy on the eval problems every this many steps (0: never)."""
    stop_at_accuracy: Optional[float] = None
    """Stop at the first evaluation with accuracy >= this (used for the weak student)."""
    keep_best: bool = False
    """Restore the weights of the evaluation with the highest accuracy at the end."""
    seed: int = 0
    """Seeds the order of a fixed problem list (a stream carries its own seed)."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")
        if not 0 <= self.decay_frac <= 1 or not 0 <= self.final_lr_frac <= 1:
            raise ValueError("decay_frac and final_lr_frac must lie in [0, 1]")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("warmup_steps and eval_every must be >= 0")

    @staticmethod
    def preset(role: str, profile: str = "full") -> "SFTConfig":
        """The recipes of ``scripts/build_tiny_world.py``: role teacher/student, full/smoke."""
        table = {
            ("teacher", "full"): SFTConfig(steps=2400, eval_every=100, keep_best=True),
            # The student is stopped early on purpose: weaker than the teacher, and still
            # learning, so distillation has room to help.
            ("student", "full"): SFTConfig(steps=1500, decay_frac=0.0, eval_every=25,
                                           stop_at_accuracy=0.35),
            ("teacher", "smoke"): SFTConfig(steps=60, warmup_steps=10, eval_every=30),
            ("student", "smoke"): SFTConfig(steps=40, warmup_steps=10, decay_frac=0.0,
                                            eval_every=20),
        }
        if (role, profile) not in table:
            raise ValueError(f"no preset for {role!r}/{profile!r}; roles teacher, student and "
                             f"profiles full, smoke")
        return table[(role, profile)]


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Learning rate at 0-based ``step``: warm-up, constant, linear decay at the end."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps - int(cfg.decay_frac * cfg.steps)
    if step < decay_start or cfg.steps == decay_start:
        return cfg.lr
    frac = (step - decay_start + 1) / (cfg.steps - decay_start)
    return cfg.lr * (1 - frac * (1 - cfg.final_lr_frac))


def make_batch(tokenizer, rows: Sequence[dict], device="cpu"):
    """Right-padded ``(input_ids_BT, attention_mask_BT, loss_mask_BT)`` for SFT.

    ``loss_mask_BT[b, t]`` is 1 where token ``t`` belongs to the completion (solution and
    EOS): the model is trained to predict it from the tokens before it.
    """
    prompts = tokenizer([format_prompt(r["question"]) for r in rows],
                        add_special_tokens=False)["input_ids"]
    comps = tokenizer([format_completion(r["answer"]) for r in rows],
                      add_special_tokens=False)["input_ids"]
    T = max(len(p) + len(c) for p, c in zip(prompts, comps))
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), T), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        ids[b, :len(p) + len(c)] = torch.tensor(p + c)
        attn[b, :len(p) + len(c)] = 1
        loss_mask[b, len(p):len(p) + len(c)] = 1
    return ids.to(device), attn.to(device), loss_mask.to(device)


def completion_loss(model, ids_BT, attn_BT, loss_mask_BT) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens of the whole batch."""
    logits_BTV = model(input_ids=ids_BT, attention_mask=attn_BT).logits
    if logits_BTV.element_size() < 4:  # half precision: take the softmax in float32
        logits_BTV = logits_BTV.float()
    # Position t predicts token t + 1.
    nll_BT = F.cross_entropy(logits_BTV[:, :-1].transpose(1, 2), ids_BT[:, 1:],
                             reduction="none")
    mask_BT = loss_mask_BT[:, 1:]
    return (nll_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)


def _batches(problems, batch_size: int, seed: int) -> Iterator[List[dict]]:
    """Batches from a stream (taken in order) or a fixed list (reshuffled every epoch)."""
    if isinstance(problems, Sequence):
        if not problems:
            raise ValueError("no training problems")
        rng, order, i = random.Random(seed), [], 0
        while True:
            batch = []
            while len(batch) < batch_size:
                if i == len(order):
                    order, i = list(range(len(problems))), 0
                    rng.shuffle(order)
                batch.append(problems[order[i]])
                i += 1
            yield batch
    it = iter(problems)
    while True:
        yield [next(it) for _ in range(batch_size)]


@dataclass
class SFTRun:
    """What ``sft`` did: per-step history and the evaluation it kept."""

    history: List[dict] = field(default_factory=list)
    """Per step: step, loss, lr, grad_norm, elapsed_s, and val_accuracy where evaluated."""
    steps_done: int = 0
    wall_s: float = 0.0
    best_step: Optional[int] = None
    """Step of the evaluation with the highest accuracy (restored only with keep_best)."""
    best_val_accuracy: Optional[float] = None


def sft(model, tokenizer, problems: Union[Sequence[dict], Iterable[dict]],
        config: SFTConfig = SFTConfig(), eval_problems: Optional[Sequence[dict]] = None,
        device="cpu", callback: Optional[Callable[[dict], None]] = None,
        progress: Optional[bool] = None, label: str = "sft") -> SFTRun:
    """Train ``model`` in place on GSM8K-format ``problems`` (a list or an endless stream).

    With ``eval_problems`` and ``config.eval_every``, greedy accuracy is measured on them
    every ``eval_every`` steps and at the end (choose validation problems, never test).
    ``callback`` gets each history row as it is written. ``progress``
    (``opdplus.progress.enabled``; None: on when stderr is a terminal) shows a bar over the
    steps named ``label`` and prints one line per validation check: step, loss, accuracy,
    seconds so far.
    """
    from . import progress as _progress

    model.to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=config.betas)
    run, best_state = SFTRun(), None
    t0 = time.perf_counter()
    batches = _batches(problems, config.batch_size, config.seed)
    show = _progress.enabled(progress)
    bar = _progress.bar(total=config.steps, desc=label, unit="step", progress=show)
    for step in range(config.steps):
        lr = lr_at(step, config)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = completion_loss(model, *make_batch(tokenizer, next(batches), device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        row = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": gnorm.item()}
        last = step + 1 == config.steps
        if eval_problems and config.eval_every and ((step + 1) % config.eval_every == 0 or last):
            acc = evaluation.evaluate(model, tokenizer, eval_problems, device=device,
                                      prompt_fn=format_prompt, max_new_tokens=48,
                                      batch_size=100, progress=False).accuracy  # our line
            row["val_accuracy"] = acc
            bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{acc:.3f}")
            bar.write(f"{label} step {step + 1}/{config.steps}: loss {row['loss']:.3f}, "
                      f"val accuracy {acc:.3f}, {time.perf_counter() - t0:.0f} s")
            if run.best_val_accuracy is None or acc > run.best_val_accuracy:
                run.best_step, run.best_val_accuracy = step + 1, acc
                if config.keep_best:
                    best_state = copy.deepcopy(model.state_dict())
        row["elapsed_s"] = time.perf_counter() - t0
        run.history.append(row)
        run.steps_done = step + 1
        bar.update(1)
        if callback:
            callback(row)
        stop = config.stop_at_accuracy
        if stop is not None and row.get("val_accuracy", -1.0) >= stop:
            bar.write(f"{label}: stopped at step {step + 1}, val accuracy "
                      f"{row['val_accuracy']:.3f} >= {stop:g}")
            break
    bar.close()
    if config.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    run.wall_s = time.perf_counter() - t0
    return run
