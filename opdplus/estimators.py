"""Surrogate losses: the sampled-token policy gradient (OPD / OPD+) and full-vocabulary distillation.

Policy gradient (method.md §2, §4). Along a student rollout, with
``log u_t = log q(y_t|s_t) - log p(y_t|s_t)`` (teacher minus current student, detached),
the per-token ascent advantage is

    A_t = a(u_t) - sum_{t' > t} gamma^(t' - t) f(u_t') - b_t

with ``a = -f`` (OPD) or ``a = w_f`` (OPD+), ``gamma`` the weight of the
divergence-to-go (1: exact sequence gradient; 0: the paper's default, which holds the
visited states fixed) and ``b_t`` an optional baseline. The loss is

    loss = - sum_t rho_t A_t / N,   rho_t = p_theta(y_t|s_t) / p_sampler(y_t|s_t),

with the sampler's log-probs detached, so on-policy ``rho_t == 1`` in value and its
gradient is ``grad log p_theta``. ``N`` is the completion-token count of the whole
optimizer batch (all micro-batches, all ranks), passed in by the trainer.

Off-policy samples with ``gamma > 0`` (temperature != 1, top-p/top-k, teacher samples).
The per-token ratio ``rho_t`` corrects the *action* at ``s_t`` but not the distribution of
the visited *states*: those were reached through the sampler's earlier choices. With
``gamma = 0`` that is the intended objective (divergence at the visited states, held
fixed). With ``gamma > 0`` the target is the student's own sequence objective, so each
term is weighted by the prefix-product ratio ``R_t = prod_{k <= t} rho_k`` (exact
sequence-level importance sampling; tokens after t' integrate out):

    loss = - sum_t g_t [ R_t (a_t - b_t) - sum_{t' > t} gamma^(t' - t) R_t' f(u_t') ] / N

where ``g_t`` equals 1 in value and has gradient ``grad log p_theta(y_t|s_t)``. With
``gamma = 1`` this is again the exact gradient of ``J_f`` (checked by enumeration on the
tabular toy at temperatures 0.7 and 1.3). Prefix products grow or shrink geometrically
with the length, so long sequences at a temperature far from 1 give high-variance
weights: ``max_importance_ratio`` truncates ``R_t`` in that mode. ``prefix_weights=``
overrides the automatic choice (on iff ``gamma > 0`` and sampler log-probs are given);
``False`` keeps the sampler's states on purpose, as the trainer does for teacher samples
mixed in GKD-style (``mix_lambda``), whose point is to train on the teacher's states.

Shapes: ``_BT`` is (batch, tokens), ``_BTV`` adds the vocabulary. The mask selects the
tokens the student chose (completion tokens; later, tool-result tokens are excluded
by the same mask, so they are conditioned on but neither scored nor in the future sum).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .divergences import Divergence, check_finite, get

BASELINES = ("none", "analytic", "loo")


def _as_divergence(divergence: Union[str, Divergence], params: Optional[dict] = None) -> Divergence:
    return get(divergence, **(params or {})) if isinstance(divergence, str) else divergence


def future_sum(f_BT: Tensor, gamma: float) -> Tensor:
    """``sum_{t' > t} gamma^(t' - t) f_t'`` along the last dim (f already 0 off the mask)."""
    if gamma == 0.0:
        return torch.zeros_like(f_BT)
    if gamma == 1.0:
        suffix = f_BT.flip(-1).cumsum(-1).flip(-1)  # sum_{t' >= t}
        return suffix - f_BT
    out = torch.zeros_like(f_BT)
    run = torch.zeros_like(f_BT[..., 0])
    for t in range(f_BT.shape[-1] - 1, -1, -1):  # run_t = gamma * (f_{t+1} + run_{t+1})
        out[..., t] = run
        run = gamma * (f_BT[..., t] + run)
    return out


def leave_one_out(adv_BT: Tensor, mask_BT: Tensor, group_size: int) -> Tensor:
    """Per-position mean of the *other* samples of the same prompt (0 where none).

    Rows must be grouped prompt-major: rows ``[g*G, (g+1)*G)`` share a prompt. The
    baseline of sample i depends only on samples j != i, which are independent of i,
    so it adds no bias.
    """
    B, T = adv_BT.shape
    if group_size < 2 or B % group_size:
        raise ValueError(
            f"leave-one-out needs rows grouped by prompt with group_size >= 2 dividing the "
            f"batch; got batch {B}, group_size {group_size}"
        )
    m = mask_BT.to(adv_BT.dtype).view(-1, group_size, T)
    a = (adv_BT * mask_BT).view(-1, group_size, T)
    tot, cnt = a.sum(1, keepdim=True), m.sum(1, keepdim=True)
    others = (cnt - m).clamp_min(1.0)
    return ((tot - a) / others * (cnt - m > 0)).view(B, T)


def compute_advantages(
    log_u_BT: Tensor,
    mask_BT: Tensor,
    divergence: Union[str, Divergence],
    estimator: str = "opd+",
    gamma: float = 0.0,
    clip_log_u: Optional[Tuple[float, float]] = (-6.0, 6.0),
    baseline: str = "none",
    baseline_BT: Optional[Tensor] = None,
    group_size: int = 1,
    weight_BT: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Detached per-token ascent advantages ``A_BT`` (0 off the mask) and raw statistics.

    ``baseline="analytic"`` needs ``baseline_BT``, the per-state expectation of the
    immediate advantage (``Divergence.expected_advantage``); ``"loo"`` needs
    ``group_size`` (samples per prompt).

    ``weight_BT``: prefix importance weights ``R_t`` of off-policy samples (module doc).
    When given, the result is ``R_t (a_t - b_t) - sum_{t'>t} gamma^(t'-t) R_t' f_t'``;
    the baseline stays unbiased because ``R_t = R_{t-1} rho_t`` with ``R_{t-1}`` fixed at
    ``s_t``.
    """
    d = _as_divergence(divergence)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if log_u_BT.shape != mask_BT.shape:
        raise ValueError(f"log_u {tuple(log_u_BT.shape)} and mask {tuple(mask_BT.shape)} differ")
    mask = mask_BT.bool()
    t = log_u_BT.detach()
    clipped = torch.zeros_like(mask)
    if clip_log_u is not None:
        lo, hi = clip_log_u
        if not lo < 0.0 < hi:
            raise ValueError(f"clip_log_u must be (lo, hi) with lo < 0 < hi, got {clip_log_u}")
        clipped = ((t < lo) | (t > hi)) & mask
        t = t.clamp(lo, hi)
    t = torch.where(mask, t, torch.zeros_like(t))  # u = 1 off the mask: f(1) = 0
    a_BT = d.advantage(t, estimator)  # same dtype as log_u (float32, or float64 in the oracles)
    f_BT = torch.where(mask, -d.advantage(t, "opd"), torch.zeros_like(a_BT))
    adv = a_BT - future_sum(f_BT, gamma)
    b_BT = torch.zeros_like(adv)
    if baseline == "analytic":
        if baseline_BT is None:
            raise ValueError("baseline='analytic' needs baseline_BT (Divergence.expected_advantage)")
        b_BT = baseline_BT.detach().to(adv.dtype)
    elif baseline == "loo":
        b_BT = leave_one_out(adv, mask, group_size)
    if weight_BT is None:
        adv = adv - b_BT
    else:
        if weight_BT.shape != mask.shape:
            raise ValueError(f"weight_BT {tuple(weight_BT.shape)} and mask {tuple(mask.shape)} differ")
        w = torch.where(mask, weight_BT.detach().to(adv.dtype), torch.zeros_like(adv))
        adv = w * (a_BT - b_BT) - future_sum(w * f_BT, gamma)
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    return adv, {"clipped_BT": clipped, "f_BT": f_BT}


def pg_loss(
    student_logp_BT: Tensor,
    teacher_logp_BT: Tensor,
    mask_BT: Tensor,
    divergence: Union[str, Divergence] = "reverse_kl",
    estimator: str = "opd+",
    sampler_logp_BT: Optional[Tensor] = None,
    gamma: float = 0.0,
    baseline: str = "none",
    baseline_BT: Optional[Tensor] = None,
    group_size: int = 1,
    clip_log_u: Optional[Tuple[float, float]] = (-6.0, 6.0),
    max_importance_ratio: Optional[float] = None,
    num_tokens: Optional[Union[int, float, Tensor]] = None,
    prefix_weights: Optional[bool] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """Sampled-token OPD / OPD+ surrogate loss (to minimise) and its metrics.

    student_logp_BT: log p_theta of the sampled tokens, *with* grad.
    teacher_logp_BT: log q of the same tokens (detached inside).
    sampler_logp_BT: log-probs under the distribution the tokens were actually drawn
        from (temperature, top-p, a stale policy). ``None`` means on-policy.
    max_importance_ratio: truncate the importance weight at this value (off by default):
        ``rho_t`` per token, or the prefix product ``R_t`` when ``prefix_weights`` is on.
    num_tokens: the global normaliser N; default the mask's own token count.
    prefix_weights: weight by the prefix-product ratios ``R_t`` (module doc), which makes
        ``gamma > 0`` exact for off-policy samples (temperature != 1 included). ``None``
        (default): on iff ``gamma > 0`` and ``sampler_logp_BT`` is given.

    Metrics (floats): ``loss``, ``teacher_kl`` (per-token estimate of
    KL(student||teacher) on these rollouts, mean of -log u), ``clip_frac``,
    ``adv_mean``, ``adv_std`` (of the advantage including any prefix weights),
    ``ratio_mean`` and ``ratio_max`` (of the raw per-token ratio ``rho_t``, before any
    truncation), ``ratio_trunc_frac`` (fraction of tokens whose importance weight was
    truncated at ``max_importance_ratio``), ``tokens``.
    """
    if estimator not in ("opd", "opd+"):
        raise ValueError(f"unknown estimator {estimator!r}; expected 'opd' or 'opd+'")
    shapes = {tuple(student_logp_BT.shape), tuple(teacher_logp_BT.shape), tuple(mask_BT.shape)}
    if sampler_logp_BT is not None:
        shapes.add(tuple(sampler_logp_BT.shape))
    if len(shapes) != 1:
        raise ValueError(f"log-prob and mask shapes differ: {sorted(shapes)}")
    mask = mask_BT.bool()
    for nm, x in (("student log-probs", student_logp_BT), ("teacher log-probs", teacher_logp_BT)):
        check_finite(nm, x.detach()[mask])
    s_det = student_logp_BT.detach()
    cdt = torch.float64 if student_logp_BT.dtype == torch.float64 else torch.float32
    log_u = teacher_logp_BT.detach().to(cdt) - s_det.to(cdt)
    ref = s_det if sampler_logp_BT is None else sampler_logp_BT.detach()
    log_ratio = torch.where(mask, student_logp_BT - ref, torch.zeros_like(student_logp_BT))
    raw_ratio = log_ratio.detach().exp()
    if prefix_weights is None:
        prefix_weights = gamma > 0.0 and sampler_logp_BT is not None
    truncated = torch.zeros_like(mask)
    weight_BT = None
    if prefix_weights:
        # R_t = prod_{k<=t} rho_k in log space (0 off the mask: prompt, tool results, padding)
        weight_BT = log_ratio.detach().to(cdt).cumsum(-1).exp()
        if max_importance_ratio is not None:
            truncated = (weight_BT > float(max_importance_ratio)) & mask
            weight_BT = weight_BT.clamp(max=float(max_importance_ratio))
    adv, raw = compute_advantages(
        log_u, mask, divergence, estimator, gamma, clip_log_u, baseline, baseline_BT, group_size,
        weight_BT=weight_BT,
    )
    logp_m = torch.where(mask, student_logp_BT, torch.zeros_like(student_logp_BT))
    if prefix_weights:
        # The weights are inside adv; this factor is 1 in value with gradient grad log p.
        ratio = (logp_m - logp_m.detach()).exp()
    elif max_importance_ratio is not None:
        # Truncated importance sampling: weight min(rho, c), gradient min(rho, c) grad log p.
        # (Clamping rho itself would zero the gradient of every token above c.)
        truncated = (raw_ratio > float(max_importance_ratio)) & mask
        weight = raw_ratio.clamp(max=float(max_importance_ratio))
        ratio = weight * (logp_m - logp_m.detach()).exp()
    else:
        ratio = log_ratio.exp()  # rho, value and gradient (grad rho = rho grad log p_theta)
    n_local = mask.sum()
    N = n_local if num_tokens is None else torch.as_tensor(num_tokens, device=adv.device)
    N = N.to(cdt).clamp_min(1.0)
    loss = -(ratio * adv.to(ratio.dtype) * mask).sum() / N
    with torch.no_grad():
        n = n_local.clamp_min(1).float()
        a_m = adv[mask].float()
        r_m = raw_ratio[mask].float()
        metrics = {
            "loss": float(loss.detach()),
            "teacher_kl": float((-log_u[mask]).sum() / n),
            "clip_frac": float(raw["clipped_BT"].sum() / n),
            "adv_mean": float(a_m.mean()) if a_m.numel() else 0.0,
            "adv_std": float(a_m.std()) if a_m.numel() > 1 else 0.0,
            "ratio_mean": float(r_m.mean()) if r_m.numel() else 1.0,
            "ratio_max": float(r_m.max()) if r_m.numel() else 1.0,
            "ratio_trunc_frac": float(truncated.sum() / n),
            "tokens": int(n_local),
        }
    return loss, metrics


def logit_distillation_loss(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    mask_BT: Tensor,
    divergence: Union[str, Divergence] = "forward_kl",
    num_tokens: Optional[Union[int, float, Tensor]] = None,
    chunk_size: Optional[int] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """Full-vocabulary (GKD-style) loss: ``sum_t D_f(s_t) / N`` at the visited states.

    Exact at each state (no stop-gradient bias), but it ignores the future term and
    needs full teacher logits. Memory: one ``(chunk_size, V)`` float32 block at a time
    (default chunk: ``divergences.default_chunk(V, device)`` positions).
    """
    d = _as_divergence(divergence)
    D_BT = d.full_vocab(student_logits_BTV, teacher_logits_BTV, mask_BT, chunk_size=chunk_size)
    mask = mask_BT.bool()
    n_local = mask.sum()
    N = n_local if num_tokens is None else torch.as_tensor(num_tokens, device=D_BT.device)
    N = N.to(D_BT.dtype).clamp_min(1.0)
    loss = D_BT.sum() / N
    with torch.no_grad():
        metrics = {
            "loss": float(loss.detach()),
            "divergence_mean": float(D_BT[mask].mean()) if mask.any() else 0.0,
            "tokens": int(n_local),
        }
    return loss, metrics
