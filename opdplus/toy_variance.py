"""Exact spread of the sampled gradient estimators on the tabular toy (notebook 03).

``TabularToy.expected_gradient`` gives the *mean* of an estimator exactly; this module gives
its *spread*, also exactly, by enumerating every sequence. A batch of ``B`` independent
sequences yields the gradient ``(1/B) Σ_b g(y_b)``, where
``g(y) = ∇_z[−Σ_t A_t log p(y_t|s_t)]`` is one sequence's contribution (the ``pg_loss`` gradient normalised per sequence, like
``J_f``). So its covariance is ``Cov_y[g(y)] / B``, and its **total variance** (the trace of
that covariance, summed over every logit of the table) is

    tr Cov = Σ_y p(y) ‖g(y) − E[g]‖² / B.

The trace, not the variance along one direction: a projection on the exact gradient hides
the noise in every other direction.

``g(y)`` is written in closed form, ``∇_z log softmax(z_r)[a] = e_a − softmax(z_r)`` at the
row ``r`` of the state, with the advantages of ``estimators.compute_advantages`` (so the
library's clipping, future term and baselines apply unchanged); the tests check it against
autograd of ``pg_loss``. ``loo_expected_gradient`` enumerates whole groups of ``G`` samples,
the only way to take the exact expectation of a leave-one-out baseline, whose value depends on
the *other* samples of the group.
"""

from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .estimators import compute_advantages
from .toy import TabularToy, _div


def _rows(tt: TabularToy, seqs_ST: Tensor) -> Tensor:
    """Row of the state before each token: ``(S, T)`` indices into the logits tables."""
    return torch.stack([tt._row_index(seqs_ST[:, :t]) for t in range(tt.horizon)], 1)


def sequence_probs(tt: TabularToy) -> Tensor:
    """``p(y)`` of every enumerated sequence under the student, ``(S,)``."""
    return tt.token_logps(tt.sequences, tt.student_logits).sum(1).exp()


def _grads_from_advantages(tt: TabularToy, seqs_ST: Tensor, adv_ST: Tensor) -> Tensor:
    """``g(y) = −Σ_t A_t (e_{y_t} − p(·|s_t))`` placed at each state's row: ``(S, R, V)``."""
    S, T = seqs_ST.shape
    probs_RV = torch.softmax(tt.student_logits.detach(), -1)
    rows_ST = _rows(tt, seqs_ST)
    onehot_STV = torch.nn.functional.one_hot(seqs_ST, tt.vocab).to(probs_RV.dtype)
    score_STV = onehot_STV - probs_RV[rows_ST]  # ∇_z log p(y_t|s_t) at row s_t
    out = torch.zeros(S, tt.num_prefixes, tt.vocab, dtype=probs_RV.dtype)
    contrib_STV = -adv_ST.to(probs_RV.dtype)[..., None] * score_STV
    out.scatter_add_(1, rows_ST[..., None].expand(S, T, tt.vocab), contrib_STV)
    return out


def _advantages(tt: TabularToy, seqs_ST: Tensor, divergence, estimator: str, gamma: float,
                **kwargs) -> Tensor:
    lp = tt.token_logps(seqs_ST, tt.student_logits.detach())
    lq = tt.token_logps(seqs_ST, tt.teacher_logits)
    kwargs.setdefault("clip_log_u", None)  # like expected_gradient: the exact estimator
    adv, _ = compute_advantages(lq - lp, torch.ones_like(lp, dtype=torch.bool), _div(divergence),
                                estimator, gamma=gamma, **kwargs)
    return adv


def per_sequence_gradients(tt: TabularToy, divergence, estimator: str, gamma: float,
                           baseline: str = "none", baseline_ST: Optional[Tensor] = None) -> Tensor:
    """One sequence's gradient ``g(y)`` for every enumerated sequence: ``(S, R, V)``.

    ``baseline`` may be ``"none"`` or ``"analytic"`` (with ``baseline_ST``, the per-state
    expectation at each token of ``tt.sequences``); a leave-one-out baseline needs a group,
    see :func:`loo_expected_gradient`.
    """
    if baseline == "loo":
        raise ValueError("a leave-one-out baseline depends on the other samples of a group: "
                         "use loo_expected_gradient(tt, ..., group_size=G)")
    adv = _advantages(tt, tt.sequences, divergence, estimator, gamma, baseline=baseline,
                      baseline_BT=baseline_ST)
    return _grads_from_advantages(tt, tt.sequences, adv)


def total_variance(grads_SRV: Tensor, probs_S: Tensor, batch_size: int = 1) -> float:
    """Trace of the covariance of a batch mean of ``batch_size`` draws of ``g``:
    ``Σ_y p(y) ‖g(y) − E[g]‖² / batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grads_SRV.shape[0] != probs_S.shape[0]:
        raise ValueError(f"{grads_SRV.shape[0]} gradients but {probs_S.shape[0]} probabilities")
    flat = grads_SRV.flatten(1)
    mean = (probs_S[:, None] * flat).sum(0)
    return float((probs_S * ((flat - mean) ** 2).sum(1)).sum() / batch_size)


def batch_moments(tt: TabularToy, divergence, estimator: str, gamma: float, batch_size: int,
                  direction: Optional[Tensor] = None) -> Dict[str, float]:
    """Exact moments of the batch gradient of ``estimator`` (``batch_size`` sequences).

    ``total_var``: trace of its covariance; ``rel_bias``: ``‖E[ĝ] − ∇J_f‖ / ‖∇J_f‖``;
    ``proj_mean`` / ``proj_sd``: mean and standard deviation of its projection on the unit
    vector ``direction`` (default: the exact gradient's direction).
    """
    d = _div(divergence)
    exact = tt.true_gradient(d)
    unit = (exact if direction is None else direction).flatten()
    unit = unit / unit.norm()
    g = per_sequence_gradients(tt, d, estimator, gamma)
    p = sequence_probs(tt)
    mean = (p[:, None, None] * g).sum(0)
    proj = g.flatten(1) @ unit
    proj_mean = float((p * proj).sum())
    proj_var = float((p * (proj - proj_mean) ** 2).sum()) / batch_size
    return {"total_var": total_variance(g, p, batch_size),
            "rel_bias": float((mean - exact).norm() / exact.norm()),
            "proj_mean": proj_mean, "proj_sd": proj_var ** 0.5}


def gamma_sweep(tt: TabularToy, divergence, gammas: Sequence[float], batch_size: int,
                estimators: Sequence[str] = ("opd", "opd+")) -> Dict[str, object]:
    """:func:`batch_moments` of each estimator at each ``γ``: the data of the γ slider.

    Returns ``{"gammas": [...], "target": ‖∇J_f‖, "batch_size": B, est: {key: [per γ]}}``.
    """
    if not gammas:
        raise ValueError("gamma_sweep needs at least one gamma")
    d = _div(divergence)
    out: Dict[str, object] = {"gammas": [float(g) for g in gammas], "batch_size": batch_size,
                              "target": float(tt.true_gradient(d).norm()), "divergence": d.name}
    for est in estimators:
        rows = [batch_moments(tt, d, est, float(g), batch_size) for g in gammas]
        out[est] = {k: [r[k] for r in rows] for k in rows[0]}
    return out


def loo_expected_gradient(tt: TabularToy, divergence, estimator: str, gamma: float,
                          group_size: int = 2) -> Tensor:
    """Exact expectation of the batch gradient with a leave-one-out baseline, ``(R, V)``.

    Enumerates every ordered group of ``group_size`` independent sequences (``S**G`` of
    them), takes the library's advantages with ``baseline="loo"`` inside each group, and
    weights the group's mean gradient by ``Π p(y_i)``.
    """
    S = len(tt.sequences)
    if group_size < 2 or S ** group_size > 200_000:
        raise ValueError(f"group_size must be >= 2 with S**G <= 200000 groups; got S={S}, "
                         f"G={group_size}")
    idx = torch.tensor(list(itertools.product(range(S), repeat=group_size)), dtype=torch.long)
    seqs = tt.sequences[idx.flatten()]  # (N*G, T), groups on consecutive rows
    adv = _advantages(tt, seqs, divergence, estimator, gamma, baseline="loo",
                      group_size=group_size)
    g = _grads_from_advantages(tt, seqs, adv)  # (N*G, R, V)
    p = sequence_probs(tt)[idx].prod(1)  # (N,)
    g_group = g.view(len(idx), group_size, *g.shape[1:]).mean(1)
    return (p[:, None, None] * g_group).sum(0)


__all__ = ["sequence_probs", "per_sequence_gradients", "total_variance", "batch_moments",
           "gamma_sweep", "loo_expected_gradient"]
