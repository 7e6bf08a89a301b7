"""Exact toys: one categorical state, and a tabular autoregressive student and teacher.

Both are small enough to enumerate, so every quantity the method talks about has an
exact value: the objective J_f, its gradient (autograd over all sequences), and the
*expectation* of each estimator. The expectations go through the library's own
``pg_loss``: enumerating all sequences and weighting each by its probability through
the importance ratio (``sampler_logp = log p_theta - log p(y)`` makes ``rho = p(y)``)
turns the sampled-token loss into its exact expectation. So the oracles test the code
that trains models, not a copy of it. ``temperature=`` draws the rollouts from the
tempered student, as the trainer does, and shows that with ``gamma = 1`` the
prefix-product ratios of ``estimators`` keep the gradient exact where per-token ratios
alone do not.

Simplifications: fixed horizon T (no EOS), student and teacher parameterised directly
by a table of next-token logits per prefix. With V = 6 and T = 4 there are 259 prefixes
and 1296 sequences. Everything defaults to float64.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from .divergences import Divergence, get
from .estimators import pg_loss


def _div(d: Union[str, Divergence]) -> Divergence:
    return get(d) if isinstance(d, str) else d


# ----------------------------------------------------------------------------- one state


def one_state_expected_gradient(
    student_logits_V: Tensor, teacher_logits_V: Tensor, divergence, estimator: str
) -> Tensor:
    """Exact E_{a~p}[ -A(a) grad_z log p(a) ]: the expected gradient of the estimator's loss.

    This is what the estimator's loss gradient (with respect to the student's logits)
    averages to at one state, so compare it with the gradient ``grad_z D_f`` (autograd
    of ``full_vocab``); a descent step moves *against* it. Computed through the
    library's ``pg_loss``; ``one_state_expected_gradient_closed_form`` is the same
    vector in closed form.
    """
    toy = TabularToy(student_logits_V[None], teacher_logits_V[None], vocab=student_logits_V.numel(),
                     horizon=1)
    return toy.expected_gradient(divergence, estimator, gamma=0.0)[0]


def one_state_expected_gradient_closed_form(
    student_logits_V: Tensor, teacher_logits_V: Tensor, divergence, estimator: str
) -> Tensor:
    """The same expected loss gradient in closed form: ``-p * (A - E_p[A])``.

    For a softmax student ``grad_z log p(a) = e_a - p``, so
    ``E_{a~p}[-A(a) (e_a - p)] = -p * (A - sum_a p_a A(a))``. It skips ``pg_loss`` (tested
    equal to ``one_state_expected_gradient``) and is about a hundred times faster, which
    matters when a figure runs the dynamics of every divergence.
    """
    z = student_logits_V.detach().double()
    p = torch.softmax(z, -1)
    log_u = torch.log_softmax(teacher_logits_V.double(), -1) - torch.log_softmax(z, -1)
    adv = _div(divergence).advantage(log_u, estimator)
    return -p * (adv - (p * adv).sum())


def one_state_true_gradient(student_logits_V: Tensor, teacher_logits_V: Tensor, divergence) -> Tensor:
    """grad_z D_f(teacher, student) by autograd of the full-vocabulary divergence."""
    z = student_logits_V.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_div(divergence).full_vocab(z, teacher_logits_V), z)
    return g


def one_state_dynamics(
    teacher_logits_V: Tensor,
    divergence,
    estimator: str,
    steps: int = 2000,
    lr: float = 0.5,
    student_logits_V: Optional[Tensor] = None,
    record_every: int = 1,
    closed_form: bool = False,
) -> Dict[str, Tensor]:
    """Expected-gradient descent on the student's logits at one state.

    Each step moves the logits against the estimator's expected loss gradient,
    ``z <- z - lr * E[grad loss]`` (through ``pg_loss``, or with ``closed_form=True``
    through ``one_state_expected_gradient_closed_form``, the same numbers much faster).
    Returns ``probs`` (recorded steps x V), ``tv`` (total variation to the teacher) and
    ``max_prob`` per recorded step. OPD with forward KL, JSD or Hellinger drives the
    student to one-hot; OPD+ converges to the teacher (method.md §8).
    """
    grad_fn = (one_state_expected_gradient_closed_form if closed_form
               else one_state_expected_gradient)
    q = torch.softmax(teacher_logits_V.double(), -1)
    z = (torch.zeros_like(teacher_logits_V, dtype=torch.float64) if student_logits_V is None
         else student_logits_V.detach().double().clone())
    rec = []
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            rec.append(torch.softmax(z, -1))
        if step == steps:
            break
        g = grad_fn(z, teacher_logits_V.double(), divergence, estimator)
        z = z - lr * g
    probs = torch.stack(rec)
    return {
        "probs": probs,
        "tv": 0.5 * (probs - q).abs().sum(-1),
        "max_prob": probs.max(-1).values,
    }


# ----------------------------------------------------------------------------- sequences


@dataclass
class TabularToy:
    """Tabular autoregressive student and teacher over ``vocab`` tokens and ``horizon`` steps.

    ``student_logits`` and ``teacher_logits`` are ``(num_prefixes, V)``: row ``index(prefix)``
    holds the next-token logits after that prefix. Prefixes of length k occupy the rows
    ``[offset_k, offset_k + V**k)`` in base-V order.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    vocab: int
    horizon: int

    def __post_init__(self):
        if not (self.vocab >= 1 and self.horizon >= 1 and self.vocab ** self.horizon <= 50_000):
            raise ValueError(f"toy too large to enumerate: vocab {self.vocab}, horizon {self.horizon}")
        n = self.num_prefixes
        for nm, x in (("student_logits", self.student_logits), ("teacher_logits", self.teacher_logits)):
            if tuple(x.shape) != (n, self.vocab):
                raise ValueError(f"{nm} must be ({n}, {self.vocab}), got {tuple(x.shape)}")
        seqs = torch.tensor(list(itertools.product(range(self.vocab), repeat=self.horizon)),
                            dtype=torch.long)
        self._seqs = seqs  # (S, T)
        self._rows = torch.stack([self._row_index(seqs[:, :t]) for t in range(self.horizon)], 1)

    @classmethod
    def random(cls, vocab: int = 4, horizon: int = 3, scale: float = 1.5, seed: int = 0,
               dtype=torch.float64) -> "TabularToy":
        g = torch.Generator().manual_seed(seed)
        n = sum(vocab ** k for k in range(horizon))
        s = scale * torch.randn(n, vocab, generator=g, dtype=dtype)
        t = scale * torch.randn(n, vocab, generator=g, dtype=dtype)
        return cls(s, t, vocab, horizon)

    @property
    def num_prefixes(self) -> int:
        return sum(self.vocab ** k for k in range(self.horizon))

    def _row_index(self, prefix_BK: Tensor) -> Tensor:
        k = prefix_BK.shape[1]
        offset = sum(self.vocab ** j for j in range(k))
        idx = torch.zeros(prefix_BK.shape[0], dtype=torch.long)
        for j in range(k):
            idx = idx * self.vocab + prefix_BK[:, j]
        return idx + offset

    @property
    def sequences(self) -> Tensor:
        """All V**T sequences, ``(S, T)``."""
        return self._seqs

    def token_logps(self, seqs_BT: Tensor, logits: Tensor) -> Tensor:
        """log-prob of each token of each sequence under a logits table: ``(B, T)``."""
        rows = torch.stack([self._row_index(seqs_BT[:, :t]) for t in range(self.horizon)], 1)
        lp = torch.log_softmax(logits, -1)[rows]  # (B, T, V)
        return lp.gather(-1, seqs_BT[..., None]).squeeze(-1)

    def objective(self, divergence, student_logits: Optional[Tensor] = None) -> Tensor:
        """Exact J_f = E_{y ~ student}[ sum_t f(u_t) ] by enumeration (differentiable)."""
        d = _div(divergence)
        z = self.student_logits if student_logits is None else student_logits
        lp = self.token_logps(self._seqs, z)
        lq = self.token_logps(self._seqs, self.teacher_logits)
        return (lp.sum(1).exp() * d.f_log(lq - lp).sum(1)).sum()

    def true_gradient(self, divergence) -> Tensor:
        """grad J_f w.r.t. the student's logits table, by autograd over all sequences."""
        z = self.student_logits.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.objective(divergence, z), z)
        return g

    def expected_gradient(self, divergence, estimator: str, gamma: float = 0.0,
                          temperature: float = 1.0, **loss_kwargs) -> Tensor:
        """Exact expectation of the ``pg_loss`` gradient, by enumeration.

        Every sequence enters once with its probability under the sampler (see the module
        doc). ``temperature != 1``: the rollouts come from the tempered student
        ``softmax(z / T)`` and ``pg_loss`` gets the sampler's log-probs, as in training;
        with ``gamma > 0`` it then weights by prefix-product ratios (``estimators``), so
        ``gamma = 1`` stays the exact gradient of J_f. ``loss_kwargs`` go to ``pg_loss``
        (clipping is off unless given).
        """
        z = self.student_logits.detach().clone().requires_grad_(True)
        seqs = self._seqs
        lp = self.token_logps(seqs, z)
        lq = self.token_logps(seqs, self.teacher_logits)
        loss_kwargs.setdefault("clip_log_u", None)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if temperature == 1.0:
            # On-policy: pg_loss would get no sampler log-probs, and rho_t = 1. Here
            # rho_t = exp(lp - sampler) = p(y) at every token weights the sequence.
            prefix = bool(loss_kwargs.pop("prefix_weights", None) or False)
            if prefix:
                raise ValueError("prefix_weights needs temperature != 1 in the toy (on-policy "
                                 "the prefix weights are 1)")
            sampler = lp.detach() - lp.detach().sum(1, keepdim=True)
        else:
            ls = self.token_logps(seqs, self.student_logits.detach() / temperature)
            log_py = ls.sum(1, keepdim=True)  # log p_T(y), the sampler's sequence probability
            prefix = loss_kwargs.pop("prefix_weights", None)
            prefix = gamma > 0.0 if prefix is None else bool(prefix)
            if prefix and loss_kwargs.get("max_importance_ratio") is not None:
                raise ValueError("the toy's exact expectation cannot truncate prefix weights")
            sampler = ls.clone()
            if prefix:  # every R_t = prod_{k<=t} rho_k shares rho_1: weight p_T(y) goes there
                sampler[:, :1] -= log_py
            else:  # per-token ratios: each rho_t carries the weight p_T(y)
                sampler -= log_py
        loss, _ = pg_loss(lp, lq, torch.ones_like(lp, dtype=torch.bool), divergence, estimator,
                          sampler_logp_BT=sampler, gamma=gamma, num_tokens=1,
                          prefix_weights=prefix, **loss_kwargs)
        (g,) = torch.autograd.grad(loss, z)
        return g

    def sample(self, n: int, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` sequences from the student (tempered: ``softmax(z / T)``), ``(n, T)``."""
        seqs = torch.zeros(n, 0, dtype=torch.long)
        probs = torch.softmax(self.student_logits.detach() / temperature, -1)
        for _ in range(self.horizon):
            p = probs[self._row_index(seqs)]
            nxt = torch.multinomial(p, 1, generator=generator)
            seqs = torch.cat([seqs, nxt], 1)
        return seqs

    def sampled_gradients(self, divergence, estimator: str, gamma: float, batches: int,
                          batch_size: int, generator: torch.Generator,
                          temperature: float = 1.0, **loss_kwargs) -> Tensor:
        """Monte Carlo: the ``pg_loss`` gradient on ``batches`` independent student batches.

        Returns ``(batches, num_prefixes, V)``; their mean estimates the expected gradient
        and their standard deviation / sqrt(batches) is its standard error. With
        ``temperature != 1`` the batches come from the tempered student and ``pg_loss``
        gets the sampler's log-probs, as in training.
        """
        loss_kwargs.setdefault("clip_log_u", None)
        out = []
        for _ in range(batches):
            seqs = self.sample(batch_size, generator, temperature)
            z = self.student_logits.detach().clone().requires_grad_(True)
            lp = self.token_logps(seqs, z)
            lq = self.token_logps(seqs, self.teacher_logits)
            if temperature != 1.0:
                loss_kwargs["sampler_logp_BT"] = self.token_logps(
                    seqs, self.student_logits.detach() / temperature)
            # Normalise by the number of sequences: the gradient of J_f is a per-sequence sum.
            loss, _ = pg_loss(lp, lq, torch.ones_like(lp, dtype=torch.bool), divergence, estimator,
                              gamma=gamma, num_tokens=batch_size, **loss_kwargs)
            (g,) = torch.autograd.grad(loss, z)
            out.append(g)
        return torch.stack(out)


def gradient_agreement(est: Tensor, exact: Tensor) -> Dict[str, float]:
    """Relative error ``|est - exact| / |exact|`` and cosine similarity, as floats."""
    e, x = est.flatten().double(), exact.flatten().double()
    return {
        "rel_error": float((e - x).norm() / x.norm().clamp_min(1e-300)),
        "cosine": float(torch.dot(e, x) / (e.norm() * x.norm()).clamp_min(1e-300)),
    }


def default_params() -> Dict[str, dict]:
    """Parameters used for the parameterised divergences in tables and tests."""
    return {"jsd": {"beta": 0.5}, "alpha": {"alpha": 0.5}, "skew_kl": {"alpha": 0.1},
            "skew_reverse_kl": {"alpha": 0.1}}


def family(params: Optional[Dict[str, dict]] = None) -> List[Divergence]:
    """One instance of every registered divergence (with ``default_params``)."""
    from .divergences import names

    params = default_params() if params is None else params
    return [get(n, **params.get(n, {})) for n in names()]
