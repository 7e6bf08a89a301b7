"""``TrainConfig``: every knob of a distillation run, documented and range-checked.

One frozen dataclass (cleanrl style): a docstring under every field, all checks in
``__post_init__`` (a bad value fails at construction, before any model is loaded), and
``preset("smoke" | "full", **overrides)`` for sizes. Derived values (the divergence
object, the clip range, micro-batch counts) are computed in one place, below the fields.
``to_dict`` / ``from_dict`` round-trip through JSON and YAML (the CLI's ``--config``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .divergences import ESTIMATORS, Divergence, get
from .estimators import BASELINES
from .fieldtypes import check_field_types

LOSSES = ("pg", "logits")
MIX_SOURCES = ("teacher", "dataset")
PRECISIONS = ("auto", "no", "bf16", "fp16")
TRUNCATIONS = ("error", "left")


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of ``opdplus.trainer.train``. Frozen: use ``dataclasses.replace`` to vary."""

    # ---- objective ------------------------------------------------------------------
    divergence: str = "reverse_kl"
    """Registry name of the f-divergence (``opdplus.divergences.names()``)."""
    divergence_params: Dict[str, float] = field(default_factory=dict)
    """Parameters of the divergence, e.g. ``{"beta": 0.5}`` for ``jsd``."""
    estimator: str = "opd+"
    """Advantage design: ``"opd"`` (stop-gradient, -f(u)) or ``"opd+"`` (w_f(u) = -f + u f')."""
    loss: str = "pg"
    """``"pg"``: sampled-token policy gradient (OPD / OPD+); ``"logits"``: full-vocabulary
    divergence at the visited states (GKD-style logit distillation). The logit loss has no
    advantage, so ``estimator``, ``gamma`` and ``baseline`` must keep their defaults with it:
    a non-default value is an error rather than a warning, because silently ignoring it would
    label a plain logit distillation as, say, "OPD with gamma=1"."""
    gamma: float = 0.0
    """Weight of the divergence-to-go in [0, 1] (0: the paper's default; 1: exact gradient)."""
    baseline: str = "none"
    """Variance baseline: ``"none"``, ``"analytic"`` (E_p[A], needs full-vocabulary logits)
    or ``"loo"`` (leave-one-out over the G samples of a prompt; needs G >= 2)."""
    clip_log_u: Optional[float] = 6.0
    """Clip log u = log q - log p to [-c, c] before the advantage (None: no clipping)."""
    max_importance_ratio: Optional[float] = None
    """Truncate rho = p_theta / p_sampler at this value (None: no truncation)."""

    # ---- optimisation ---------------------------------------------------------------
    steps: int = 100
    """Optimizer steps."""
    lr: float = 3e-4
    """AdamW learning rate (after warm-up; constant afterwards)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from lr / (warmup_steps + 1)."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this value (None: measure it, do not clip)."""

    # ---- batch ----------------------------------------------------------------------
    prompts_per_step: int = 16
    """Prompts in one optimizer step, over all processes."""
    samples_per_prompt: int = 4
    """G, completions sampled per prompt."""
    micro_batch_prompts: Optional[int] = None
    """Prompts per micro-batch (sampled, scored and back-propagated together). None: one
    micro-batch per process. Gradient accumulation steps = prompts_per_step /
    (micro_batch_prompts x processes); the result does not depend on the split."""

    # ---- sampling -------------------------------------------------------------------
    temperature: float = 1.0
    """Sampling temperature (0: greedy). Not 1: the loss uses the importance ratio."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1] (1: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_new_tokens: int = 48
    """Completion length cap; a completion that reaches it without EOS is 'truncated'."""
    max_prompt_tokens: Optional[int] = None
    """Longest prompt allowed (None: the models' context minus ``max_new_tokens``)."""
    prompt_truncation: str = "error"
    """A too-long prompt: ``"error"`` (before any compute) or ``"left"`` (keep its last tokens)."""
    use_chat_template: bool = False
    """Render each prompt as one user message with the tokenizer's chat template."""

    # ---- off-policy data ------------------------------------------------------------
    mix_lambda: float = 0.0
    """Probability that a micro-batch uses off-policy sequences instead of student rollouts
    (GKD-style mixing; note GKD's own lambda is the *on*-policy fraction, 1 - this)."""
    mix_source: str = "teacher"
    """Off-policy sequences: ``"teacher"`` (sampled from the teacher) or ``"dataset"`` (each
    prompt's ``completion`` field; needs ``loss="logits"``)."""
    seqkd_warmup_steps: int = 0
    """Sequence-KD warm start: the first N steps maximise the student's likelihood of
    teacher samples (supervised), then on-policy distillation starts."""

    # ---- run ------------------------------------------------------------------------
    seed: int = 0
    """Seed of the prompt order and of every rollout (same seed, same run)."""
    eval_every: int = 0
    """Call ``eval_fn`` after every N-th step and after the last (0: only after the last)."""
    checkpoint_every: int = 50
    """With ``out_dir``: write a checkpoint after every N-th step (0: never by step count).
    The last step is always checkpointed. Cost, measured: see the README's "Checkpoints"."""
    checkpoint_minutes: float = 15.0
    """With ``out_dir``: also write one when this many wall-clock minutes have passed since
    the last (0: never by time); whichever of the two intervals comes first."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep on disk (the newest)."""
    max_nonfinite_steps: int = 3
    """Skipped steps (non-finite loss or gradient) tolerated; one more stops the run."""
    mixed_precision: str = "auto"
    """Accelerate mixed precision: ``"auto"`` (the launcher's setting, else none), ``"no"``,
    ``"bf16"`` or ``"fp16"``."""
    logp_chunk_size: int = 1024
    """Positions per float32 log-softmax chunk (memory: chunk x V floats)."""
    progress: bool = True
    """Show a tqdm progress bar (main process only) when stderr is a terminal and
    ``OPDPLUS_QUIET`` is unset (``opdplus.progress.enabled``); False: never."""

    def __post_init__(self):
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        def finite(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        check_field_types(self)
        try:
            get(self.divergence, **self.divergence_params)
        except ValueError as e:
            raise ValueError(f"TrainConfig: divergence: {e}") from None
        check(
            self.estimator in ESTIMATORS,
            f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}",
        )
        check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        check(
            finite(self.gamma) and 0.0 <= self.gamma <= 1.0,
            f"gamma must lie in [0, 1], got {self.gamma!r}",
        )
        check(
            self.baseline in BASELINES,
            f"baseline must be one of {BASELINES}, got {self.baseline!r}",
        )
        check(
            self.clip_log_u is None or (finite(self.clip_log_u) and self.clip_log_u > 0),
            f"clip_log_u must be > 0 or None, got {self.clip_log_u!r}",
        )
        check(
            self.max_importance_ratio is None
            or (finite(self.max_importance_ratio) and self.max_importance_ratio >= 1.0),
            f"max_importance_ratio must be >= 1 or None, got {self.max_importance_ratio!r}",
        )
        check(
            isinstance(self.steps, int) and self.steps >= 1,
            f"steps must be an int >= 1, got {self.steps!r}",
        )
        check(finite(self.lr) and 0.0 < self.lr < 1.0, f"lr must lie in (0, 1), got {self.lr!r}")
        check(
            finite(self.weight_decay) and self.weight_decay >= 0.0,
            f"weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        check(
            len(self.adam_betas) == 2
            and all(finite(b) and 0.0 <= b < 1.0 for b in self.adam_betas),
            f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}",
        )
        check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}",
        )
        check(
            self.max_grad_norm is None or (finite(self.max_grad_norm) and self.max_grad_norm > 0),
            f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}",
        )
        for name in (
            "prompts_per_step",
            "samples_per_prompt",
            "max_new_tokens",
            "logp_chunk_size",
            "keep_checkpoints",
        ):
            v = getattr(self, name)
            check(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                f"{name} must be an int >= 1, got {v!r}",
            )
        m = self.micro_batch_prompts
        check(
            m is None
            or (
                isinstance(m, int)
                and 1 <= m <= self.prompts_per_step
                and self.prompts_per_step % m == 0
            ),
            f"micro_batch_prompts must divide prompts_per_step ({self.prompts_per_step}), "
            f"got {m!r}",
        )
        check(
            finite(self.temperature) and 0.0 <= self.temperature <= 10.0,
            f"temperature must lie in [0, 10], got {self.temperature!r}",
        )
        check(
            finite(self.top_p) and 0.0 < self.top_p <= 1.0,
            f"top_p must lie in (0, 1], got {self.top_p!r}",
        )
        check(
            isinstance(self.top_k, int) and self.top_k >= 0,
            f"top_k must be an int >= 0, got {self.top_k!r}",
        )
        check(
            self.max_prompt_tokens is None
            or (isinstance(self.max_prompt_tokens, int) and self.max_prompt_tokens >= 1),
            f"max_prompt_tokens must be an int >= 1 or None, got {self.max_prompt_tokens!r}",
        )
        check(
            self.prompt_truncation in TRUNCATIONS,
            f"prompt_truncation must be one of {TRUNCATIONS}, got {self.prompt_truncation!r}",
        )
        check(
            finite(self.mix_lambda) and 0.0 <= self.mix_lambda <= 1.0,
            f"mix_lambda must lie in [0, 1], got {self.mix_lambda!r}",
        )
        check(
            self.mix_source in MIX_SOURCES,
            f"mix_source must be one of {MIX_SOURCES}, got {self.mix_source!r}",
        )
        check(
            not (self.mix_lambda > 0 and self.mix_source == "dataset" and self.loss == "pg"),
            "dataset sequences have no sampler log-probs, so the policy gradient cannot weight "
            "them: "
            "use loss='logits' with mix_source='dataset', or mix_source='teacher'",
        )
        for name in ("seqkd_warmup_steps", "eval_every", "checkpoint_every", "max_nonfinite_steps"):
            v = getattr(self, name)
            check(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                f"{name} must be an int >= 0, got {v!r}",
            )
        check(
            finite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0.0,
            f"checkpoint_minutes must be >= 0 (0: never by time), got {self.checkpoint_minutes!r}",
        )
        check(
            self.seqkd_warmup_steps < self.steps,
            f"seqkd_warmup_steps ({self.seqkd_warmup_steps}) must be smaller than steps "
            f"({self.steps})",
        )
        check(
            isinstance(self.seed, int) and self.seed >= 0,
            f"seed must be an int >= 0, got {self.seed!r}",
        )
        check(
            self.mixed_precision in PRECISIONS,
            f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}",
        )
        check(
            not (self.baseline == "loo" and self.samples_per_prompt < 2),
            "baseline='loo' needs samples_per_prompt >= 2",
        )
        if self.temperature == 0.0:
            check(
                self.loss == "logits",
                "temperature 0 (greedy) makes the rollouts deterministic; the policy gradient "
                "needs "
                "sampling. Use temperature > 0, or loss='logits'",
            )

        # The full-vocabulary loss has no advantage: it differentiates the divergence at
        # every visited state directly, so there is no estimator, divergence-to-go or
        # baseline to apply. Ignoring them silently would let a run labelled "OPD, gamma=1"
        # be a plain logit distillation, so non-default values are an error, not a warning.
        if self.loss == "logits":
            ignored = [
                f"{name}={getattr(self, name)!r}"
                for name, default in (("estimator", "opd+"), ("gamma", 0.0), ("baseline", "none"))
                if getattr(self, name) != default
            ]
            check(
                not ignored,
                f"loss='logits' (full-vocabulary divergence) has no advantage, so "
                f"{', '.join(ignored)} would be ignored; leave estimator, gamma and baseline at "
                "their defaults ('opd+', 0.0, 'none'), or use loss='pg'",
            )

    # ---- derived values ----------------------------------------------------------------
    @property
    def divergence_obj(self) -> Divergence:
        """The ``Divergence`` object for ``divergence`` and ``divergence_params``."""
        return get(self.divergence, **self.divergence_params)

    @property
    def clip_range(self) -> Optional[Tuple[float, float]]:
        return (
            None if self.clip_log_u is None else (-float(self.clip_log_u), float(self.clip_log_u))
        )

    def micro_batches(self, num_processes: int = 1) -> Tuple[int, int]:
        """(prompts per micro-batch, micro-batches per process) for this many processes."""
        m = self.micro_batch_prompts
        if m is None:
            if self.prompts_per_step % num_processes:
                raise ValueError(
                    f"prompts_per_step ({self.prompts_per_step}) must be divisible by the number "
                    "of "
                    f"processes ({num_processes})"
                )
            m = self.prompts_per_step // num_processes
        shards = self.prompts_per_step // m
        if shards % num_processes:
            raise ValueError(
                f"{shards} micro-batches of {m} prompts cannot be split evenly over "
                f"{num_processes} processes; choose micro_batch_prompts so that "
                "prompts_per_step / micro_batch_prompts "
                f"is a multiple of {num_processes}"
            )
        return m, shards // num_processes

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping; unknown keys raise an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown field(s) {unknown}; valid fields are {sorted(known)}"
            )
        return cls(**dict(d))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = (
    "steps",
    "eval_every",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "progress",
    "max_nonfinite_steps",
)

PRESETS: Dict[str, Dict[str, Any]] = {
    # A couple of minutes on 2 CPU cores with the tiny models: enough to see OPD collapse.
    "smoke": dict(
        steps=20, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=32, eval_every=10
    ),
    # The tiny-world reproduction (docs/tiny-world-facts.md): 16 x 4 rollouts, 48 tokens.
    "full": dict(
        steps=200,
        prompts_per_step=16,
        samples_per_prompt=4,
        max_new_tokens=48,
        eval_every=20,
        checkpoint_every=50,
    ),
}


def field_docs() -> Dict[str, str]:
    """The docstring under each ``TrainConfig`` field (read from the source; used by --help)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
        ):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def preset(name: str, **overrides) -> TrainConfig:
    """A ``TrainConfig`` of a named size (``"smoke"`` or ``"full"``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
