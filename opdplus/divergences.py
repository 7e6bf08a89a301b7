"""The f-divergence family of OPD+, with both advantage designs.

Convention (method.md §1): the student is ``p`` (trained), the teacher is ``q``
(frozen), and ``u = q / p`` is the teacher-over-student ratio of a token. An
f-divergence at one state is

    D_f(s) = sum_a p(a) f(q(a) / p(a)) = E_{a ~ student}[ f(u(a)) ].

So ``f(u) = u log u`` gives the *forward* KL, KL(teacher || student), and
``f(u) = -log u`` the *reverse* KL, KL(student || teacher). We never write a bare
``kl(p, q)``: every name says its direction in words.

Each divergence object offers

- ``f(u)``: the generator;
- ``advantage(log_u, estimator)``: the per-token *ascent* advantage, ``-f(u)`` for
  OPD (stop-gradient design) and ``w_f(u) = -f(u) + u f'(u)`` for OPD+;
- ``full_vocab(student_logits, teacher_logits, mask)``: the exact per-position
  D_f over the whole vocabulary, differentiable in the student logits.

Numerics. Everything is written in terms of ``t = log u``. Advantages are
computed in float64 internally (they are only B x T numbers) and returned in the
input dtype; a value whose true magnitude exceeds that dtype's range (for
example Pearson's ``u**2 - 1`` at ``log u = 50`` in float32, about 2.7e43) is
saturated to the largest finite number instead of becoming inf or NaN. In
training, ``log u`` is clipped long before that (see ``estimators``).

``full_vocab`` works on "perspective" forms ``p f(q/p)`` written with ``log p``
and ``log q``, so a token that the student gives ~0 probability contributes a
finite number even when ``u`` itself would overflow: the chi^2 forms are
exponentiated from log space (``(q - p)^2 / p`` at log p = -90 is finite in float32),
and the alpha-divergence uses ``p expm1(a log u)`` so that it keeps its precision
for alpha within 1e-4 of 0 or 1. It runs in float32 chunks of positions; under
autograd each chunk's gradient is taken in the same pass as its value (one forward and
one backward per chunk, no recomputation), so memory beyond the logits is their
per-row gradient plus one chunk of ``(chunk, V)`` even at V = 150k. That gradient is
once-differentiable: a double backward raises a clear error. Only masked-in positions are computed and checked for NaN/inf; padding and
prompt positions may hold anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Optional

import torch
from torch import Tensor

ESTIMATORS = ("opd", "opd+")
# Positions x vocab per chunk in full_vocab. On CPU a 4 MiB float32 block stays in cache,
# which was about twice as fast as the former 16 MiB blocks at V = 49k
# (benchmarks/fullvocab_bench.py --chunk). A GPU wants fewer, larger kernels: 64 MiB there.
CHUNK_ELEMENTS = 1 << 20
CHUNK_ELEMENTS_GPU = 1 << 24


def default_chunk(vocab: int, device: torch.device) -> int:
    """Positions per chunk for ``full_vocab`` when none is given (at least 1)."""
    per = CHUNK_ELEMENTS if torch.device(device).type == "cpu" else CHUNK_ELEMENTS_GPU
    return max(1, per // vocab)


# ----------------------------------------------------------------------------- helpers


def _log_mix(t: Tensor, a: float) -> Tensor:
    """log(a * e^t + (1 - a)) for a scalar a in [0, 1], stable for large |t|."""
    if a == 0.0:
        return torch.zeros_like(t)
    if a == 1.0:
        return t
    return torch.logaddexp(t + math.log(a), torch.full_like(t, math.log1p(-a)))


def _log_mix2(lq: Tensor, lp: Tensor, a: float) -> Tensor:
    """log(a * q + (1 - a) * p) from log q and log p (a in [0, 1])."""
    if a == 0.0:
        return lp
    if a == 1.0:
        return lq
    return torch.logaddexp(lq + math.log(a), lp + math.log1p(-a))


def _xlogy(x: Tensor, logy: Tensor) -> Tensor:
    """x * logy with the convention 0 * (anything) = 0 (avoids 0 * -inf = nan)."""
    return torch.where(x == 0, torch.zeros_like(x), x * logy)


def _p_expm1(lp: Tensor, s: Tensor, bound: float = 20.0) -> Tensor:
    """``p * expm1(s)`` from ``log p``, accurate for small ``|s|`` and finite for large ``s``.

    For ``|s| <= bound``, ``exp(lp) * expm1(s)`` keeps full relative precision (no
    ``p^(1-a) q^a - p`` cancellation when ``s = a log u`` is tiny). Beyond it the two
    exponentials differ by a factor ``e^bound`` and are subtracted directly, in log space,
    so a tiny ``p`` times a huge ``e^s`` never becomes ``0 * inf``. The small-``s`` branch
    is evaluated on a clamped ``s`` so that its unused gradient stays finite.
    """
    small = torch.exp(lp) * torch.expm1(s.clamp(-bound, bound))
    large = torch.exp(lp + s) - torch.exp(lp)
    return torch.where(s.abs() <= bound, small, large)


def _chi2_perspective(lp: Tensor, lq: Tensor, bound: float = 20.0) -> Tensor:
    """``(q - p)^2 / p = p expm1(log q - log p)^2`` from log p and log q, without overflow.

    Written as ``exp(lp + 2 log|expm1(d)|)`` when ``d = lq - lp > bound``: the naive
    ``(q - p)^2 * exp(-lp)`` is ``0 * inf = NaN`` in float32 once ``lp < -88``. For
    ``d <= bound`` the direct form cannot overflow (``expm1(d)^2 <= e^(2 bound)``, p <= 1).
    Each branch sees a clamped ``d``, so the branch not taken has a finite gradient.
    """
    d = lq - lp
    d_small = d.clamp(max=bound)
    small = torch.exp(lp) * torch.expm1(d_small) ** 2
    d_large = d.clamp(min=bound)
    # log|expm1(d)| = d + log1p(-e^-d) for d > 0
    large = torch.exp(lp + 2.0 * (d_large + torch.log1p(-torch.exp(-d_large))))
    return torch.where(d > bound, large, small)


def _saturate(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast to ``dtype``, mapping values beyond its range to its largest finite value."""
    fi = torch.finfo(dtype)
    x = torch.nan_to_num(x, nan=float("nan"), posinf=fi.max, neginf=-fi.max)
    return x.clamp(-fi.max, fi.max).to(dtype)


def check_finite(name: str, x: Tensor) -> None:
    """Raise a ValueError naming ``name`` when ``x`` holds NaN or +-inf."""
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf) out of "
            f"{x.numel()}; check the model outputs (e.g. fp16 overflow) before the loss."
        )


# ----------------------------------------------------------------------------- base class


@dataclass(frozen=True)
class Divergence:
    """One member of the f-divergence family.

    Subclasses provide three closed forms in terms of ``t = log u`` (float64 safe)
    and one perspective form; everything else is shared.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

    # -- closed forms, t = log u ------------------------------------------------
    def f_log(self, t: Tensor) -> Tensor:  # f(e^t)
        raise NotImplementedError

    def w_log(self, t: Tensor) -> Tensor:  # w_f(e^t) = -f + u f'
        raise NotImplementedError

    def perspective(self, lp: Tensor, lq: Tensor) -> Tensor:
        """Elementwise p * f(q / p) from log p (student) and log q (teacher)."""
        raise NotImplementedError

    @property
    def params(self) -> Dict[str, float]:
        return {}

    # -- public API --------------------------------------------------------------
    def f(self, u: Tensor) -> Tensor:
        """The generator f(u), u = teacher/student probability ratio (u > 0)."""
        u = torch.as_tensor(u)
        return self.f_log(torch.log(u))

    def advantage(self, log_u: Tensor, estimator: str = "opd+") -> Tensor:
        """Per-token ascent advantage from ``log_u = log q - log p`` of the sampled token.

        ``"opd"``: ``-f(u)``, the stop-gradient design (biased unless reverse KL).
        ``"opd+"``: ``w_f(u) = -f(u) + u f'(u)``, the exact per-state gradient weight.
        The result is detached and has ``log_u``'s dtype (saturated, never inf/NaN).
        """
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
        log_u = torch.as_tensor(log_u)
        if torch.isnan(log_u).any():
            raise ValueError("log_u contains NaN; check the teacher and student log-probs")
        out_dtype = log_u.dtype if log_u.is_floating_point() else torch.get_default_dtype()
        t = log_u.detach().to(torch.float64)
        a = -self.f_log(t) if estimator == "opd" else self.w_log(t)
        return _saturate(a, out_dtype)

    def full_vocab(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Optional[Tensor] = None,
        chunk_size: Optional[int] = None,
    ) -> Tensor:
        """Exact D_f(s) = sum_a p(a) f(q(a)/p(a)) at every position, over the last dim.

        student_logits, teacher_logits: ``(..., V)``; mask: ``(...)`` (bool or 0/1).
        Returns ``(...)`` in float32 (float64 if the inputs are float64), 0 where the
        mask is off. Differentiable in ``student_logits``; the teacher is detached.
        Only masked-in positions are computed, ``chunk_size`` at a time (default:
        ``default_chunk(V, device)``: 4 MiB float32 blocks on CPU, 64 MiB on a GPU).
        """
        return _chunked_over_positions(
            lambda zs, zt: self._full_vocab_rows(zs, zt),
            student_logits, teacher_logits, mask, chunk_size,
        )

    def expected_advantage(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        estimator: str = "opd+",
        mask: Optional[Tensor] = None,
        clip_log_u: Optional[tuple] = None,
        chunk_size: Optional[int] = None,
    ) -> Tensor:
        """E_{a ~ student}[A(a)] at every position: the analytic per-state baseline.

        For OPD+ this is the variance-minimising baseline of method.md §4 (for reverse
        KL it equals ``-KL(student || teacher)(s) - 1``). With ``clip_log_u`` the same
        clipping as the sampled estimator is applied, so the baseline matches the
        advantage it is subtracted from. No gradient; computed in float64.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")

        def rows(zs: Tensor, zt: Tensor) -> Tensor:
            lp = torch.log_softmax(zs.double(), -1)
            lq = torch.log_softmax(zt.double(), -1)
            t = lq - lp
            if clip_log_u is not None:
                t = t.clamp(clip_log_u[0], clip_log_u[1])
            a = -self.f_log(t) if estimator == "opd" else self.w_log(t)
            return (lp.exp() * a).sum(-1)

        with torch.no_grad():
            return _chunked_over_positions(
                rows, student_logits.detach(), teacher_logits, mask, chunk_size, checkpointed=False
            )

    def _full_vocab_rows(self, zs: Tensor, zt: Tensor) -> Tensor:
        dt = torch.float64 if zs.dtype == torch.float64 else torch.float32
        lp = torch.log_softmax(zs.to(dt), -1)
        lq = torch.log_softmax(zt.detach().to(dt), -1)
        return self.perspective(lp, lq).sum(-1)

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{type(self).__name__}({ps})" if ps else f"{type(self).__name__}()"


def _chunked_over_positions(
    rows_fn: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor],
    chunk_size: Optional[int],
    checkpointed: bool = True,
) -> Tensor:
    """Apply ``rows_fn((N, V), (N, V)) -> (N,)`` to the masked positions, in chunks."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
            + (
                f" (vocabulary {student_logits.shape[-1]} vs {teacher_logits.shape[-1]}: slice both "
                "to the shared real vocabulary, see opdplus.sampler.preflight)"
                if student_logits.shape[:-1] == teacher_logits.shape[:-1]
                else ""
            )
        )
    if chunk_size is None:
        chunk_size = default_chunk(student_logits.shape[-1], student_logits.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = student_logits.shape[:-1]
    V = student_logits.shape[-1]
    zs = student_logits.reshape(-1, V)
    zt = teacher_logits.reshape(-1, V)
    out_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    idx = None
    n = zs.shape[0]
    if mask is not None:
        if mask.shape != lead:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(lead)}")
        idx = mask.reshape(-1).bool().nonzero().squeeze(-1)
        n = idx.numel()
    if idx is None:
        idx = torch.arange(n, device=zs.device)
    if checkpointed and torch.is_grad_enabled() and zs.requires_grad:
        vals = _ChunkedRows.apply(zs, zt, idx, rows_fn, chunk_size)
    else:
        vals = _rows_in_chunks(rows_fn, zs, zt, idx, chunk_size, out_dtype)
    vals = vals.to(out_dtype)
    if mask is None:
        return vals.reshape(lead)
    full = torch.zeros(zs.shape[0], dtype=out_dtype, device=zs.device)
    full = full.index_put((idx,), vals)
    return full.reshape(lead)


def _rows_in_chunks(rows_fn, zs: Tensor, zt: Tensor, idx: Tensor, chunk: int, dtype) -> Tensor:
    """rows_fn over the selected rows, chunk by chunk. Only these rows are checked for
    NaN/inf: masked-out positions (padding, prompt) may hold anything."""
    parts = []
    for i in range(0, idx.numel(), chunk):
        a, b = zs.index_select(0, idx[i:i + chunk]), zt.index_select(0, idx[i:i + chunk])
        check_finite("student logits", a.detach())
        check_finite("teacher logits", b.detach())
        parts.append(rows_fn(a, b))
    return torch.cat(parts).to(dtype) if parts else zs.new_zeros(0, dtype=dtype)


class _ChunkedRows(torch.autograd.Function):
    """Chunked rows whose gradient is taken in the same pass as the value.

    Autograd through per-chunk slices would allocate a full ``(N, V)`` gradient buffer
    per chunk, and recomputing each chunk in the backward pass (activation checkpointing)
    evaluates the rows three times (a no-grad forward, then forward and backward again).
    Here the forward runs each chunk once with grad, takes the chunk's gradient by autograd
    right away (so no hand-written derivative) and writes it into one buffer; the backward
    only scales that buffer's rows by ``grad_out``. This holds because each row's value
    depends on its own logits only. Memory beyond the logits: the per-row gradient, its
    scaled copy and one chunk of intermediates.
    """

    @staticmethod
    def forward(ctx, zs, zt, idx, rows_fn, chunk):
        out_dtype = torch.float64 if zs.dtype == torch.float64 else torch.float32
        zs_d = zs.detach()
        # gradient of each selected row's value w.r.t. that row (row-major over idx)
        grad_rows = torch.empty((idx.numel(), zs.shape[-1]), dtype=zs.dtype, device=zs.device)
        parts = []
        for i in range(0, idx.numel(), chunk):
            rows = idx[i:i + chunk]
            b = zt.index_select(0, rows)
            a = zs_d.index_select(0, rows)
            check_finite("student logits", a)
            check_finite("teacher logits", b)
            a.requires_grad_(True)
            with torch.enable_grad():
                val = rows_fn(a, b)
                (g,) = torch.autograd.grad(val.sum(), a)
            grad_rows[i:i + chunk] = g
            parts.append(val.detach())
        ctx.save_for_backward(zs, idx, grad_rows)
        ctx.n_rows = zs.shape[0]
        return torch.cat(parts).to(out_dtype) if parts else zs.new_zeros(0, dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        zs, idx, grad_rows = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()  # backward(create_graph=True)
        go = grad_out.detach().to(grad_rows.dtype)[:, None]
        every = torch.arange(ctx.n_rows, device=idx.device)
        if idx.numel() == ctx.n_rows and bool((idx == every).all()):
            grad = grad_rows * go  # every row selected, in order: no scatter
        else:
            grad = grad_rows.new_zeros((ctx.n_rows, grad_rows.shape[1]))
            grad.index_copy_(0, idx, grad_rows * go)
        if create_graph and (zs.requires_grad or grad_out.requires_grad):
            # The gradient above is a plain number, not a graph: attach a node that raises
            # on a second differentiation, so that double backward fails with a clear error
            # instead of "does not require grad" or a silently missing term.
            grad = _NoDoubleBackward.apply(grad, zs, grad_out)
        return grad, None, None, None, None


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on a first-order gradient whose own backward raises: full_vocab is
    once_differentiable (its gradient is computed chunk by chunk and has no graph)."""

    @staticmethod
    def forward(ctx, grad, zs, grad_out):
        return grad.clone()

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            "full_vocab is once_differentiable: its chunked backward has no double backward "
            "(no Hessian-vector products or gradient penalties through it). Differentiate it "
            "once, without create_graph=True, or use an unchunked divergence for higher orders."
        )


# ----------------------------------------------------------------------------- the family


@dataclass(frozen=True, repr=False)
class ReverseKL(Divergence):
    """KL(student || teacher): f(u) = -log u. Mode-seeking. OPD and OPD+ agree in expectation."""

    name = "reverse_kl"
    title = "reverse KL, KL(student‖teacher)"

    def f_log(self, t):
        return -t

    def w_log(self, t):
        return t - 1.0

    def perspective(self, lp, lq):
        return _xlogy(lp.exp(), lp - lq)


@dataclass(frozen=True, repr=False)
class ForwardKL(Divergence):
    """KL(teacher || student): f(u) = u log u. Mass-covering. OPD+ advantage is u itself."""

    name = "forward_kl"
    title = "forward KL, KL(teacher‖student)"

    def f_log(self, t):
        return t.exp() * t

    def w_log(self, t):
        return t.exp()

    def perspective(self, lp, lq):
        return _xlogy(lq.exp(), lq - lp)


@dataclass(frozen=True, repr=False)
class JSD(Divergence):
    """Generalized Jensen-Shannon: beta KL(teacher||M) + (1-beta) KL(student||M), M = beta q + (1-beta) p.

    ``beta`` in (0, 1); 0.5 is the usual JSD. Both ends are excluded because JSD_beta
    tends to 0 there (a silent change of objective). With ``normalized=True`` the
    divergence is divided by beta (1 - beta), which tends to forward KL as beta -> 0
    and to reverse KL as beta -> 1.
    """

    beta: float = 0.5
    normalized: bool = False
    name = "jsd"
    title = "Jensen–Shannon (β)"

    def __post_init__(self):
        b = self.beta
        if not (isinstance(b, (int, float)) and math.isfinite(b) and 0.0 < b < 1.0):
            raise ValueError(
                f"jsd: beta must lie strictly between 0 and 1, got {b!r} (at 0 or 1 JSD_beta is "
                "identically 0; use normalized=True with beta near 0 or 1 for the KL limits)"
            )

    @property
    def params(self):
        return {"beta": self.beta, **({"normalized": 1.0} if self.normalized else {})}

    @property
    def _scale(self):
        return 1.0 / (self.beta * (1.0 - self.beta)) if self.normalized else 1.0

    def f_log(self, t):
        b = self.beta
        lm = _log_mix(t, b)  # log m, m = b u + 1 - b
        return self._scale * (b * t.exp() * (t - lm) - (1.0 - b) * lm)

    def w_log(self, t):
        return self._scale * (1.0 - self.beta) * _log_mix(t, self.beta)

    def perspective(self, lp, lq):
        b = self.beta
        lM = _log_mix2(lq, lp, b)
        return self._scale * (b * _xlogy(lq.exp(), lq - lM) + (1.0 - b) * _xlogy(lp.exp(), lp - lM))


@dataclass(frozen=True, repr=False)
class TotalVariation(Divergence):
    """Total variation: f(u) = |u - 1| / 2. Bounded advantage, non-smooth at u = 1."""

    name = "tv"
    title = "total variation"

    def f_log(self, t):
        return 0.5 * torch.expm1(t).abs()

    def w_log(self, t):
        return 0.5 * torch.sign(t)

    def perspective(self, lp, lq):
        return 0.5 * (lq.exp() - lp.exp()).abs()


@dataclass(frozen=True, repr=False)
class Hellinger(Divergence):
    """Squared Hellinger: f(u) = (sqrt(u) - 1)^2 = sum_a (sqrt q - sqrt p)^2."""

    name = "hellinger"
    title = "squared Hellinger"

    def f_log(self, t):
        return torch.expm1(0.5 * t) ** 2

    def w_log(self, t):
        return torch.expm1(0.5 * t)

    def perspective(self, lp, lq):
        return (torch.exp(0.5 * lq) - torch.exp(0.5 * lp)) ** 2


@dataclass(frozen=True, repr=False)
class PearsonChi2(Divergence):
    """Pearson chi^2 (teacher || student): f(u) = (u - 1)^2. Unbounded in u: clip log u."""

    name = "pearson_chi2"
    title = "Pearson χ² (teacher‖student)"

    def f_log(self, t):
        return torch.expm1(t) ** 2

    def w_log(self, t):
        return torch.expm1(2.0 * t)

    def perspective(self, lp, lq):
        # (q - p)^2 / p, in log space: p can be ~e^-90 (0 in float32) while q is not.
        return _chi2_perspective(lp, lq)


@dataclass(frozen=True, repr=False)
class NeymanChi2(Divergence):
    """Neyman chi^2 (student || teacher): f(u) = (1 - u)^2 / u."""

    name = "neyman_chi2"
    title = "Neyman χ² (student‖teacher)"

    def f_log(self, t):
        return torch.expm1(t) * (-torch.expm1(-t))  # (u-1)(1-1/u) = (u-1)^2/u

    def w_log(self, t):
        return -2.0 * torch.expm1(-t)

    def perspective(self, lp, lq):
        # (p - q)^2 / q: Pearson's form with the roles of student and teacher swapped.
        return _chi2_perspective(lq, lp)


@dataclass(frozen=True, repr=False)
class Alpha(Divergence):
    """Amari alpha-divergence: f(u) = (u^a - a u - (1 - a)) / (a (a - 1)), any real a.

    a -> 0: reverse KL + (u - 1); a -> 1: forward KL - (u - 1); a = 1/2: twice squared
    Hellinger; a = 2: half Pearson chi^2; a = -1: half Neyman chi^2. The (u - 1) terms
    change neither the divergence value nor the OPD+ gradient (method.md §2).
    a = 0 and a = 1 use the limit forms; near them the formulas are rearranged with
    expm1 so nothing cancels catastrophically.
    """

    alpha: float = 0.5
    name = "alpha"
    title = "α-divergence (Amari)"

    def __post_init__(self):
        a = self.alpha
        if not (isinstance(a, (int, float)) and math.isfinite(a)):
            raise ValueError(f"alpha: alpha must be a finite real number, got {a!r}")

    @property
    def params(self):
        return {"alpha": self.alpha}

    def f_log(self, t):
        a = self.alpha
        u1 = torch.expm1(t)  # u - 1
        if a == 0.0:
            return -t + u1
        if a == 1.0:
            return t.exp() * t - u1
        if abs(a) <= abs(a - 1.0):  # near 0: [ (u^a - 1)/a - (u - 1) ] / (a - 1)
            return (torch.expm1(a * t) / a - u1) / (a - 1.0)
        # near 1: [ u (u^(a-1) - 1)/(a - 1) - (u - 1) ] / a
        return (t.exp() * torch.expm1((a - 1.0) * t) / (a - 1.0) - u1) / a

    def w_log(self, t):
        a = self.alpha
        if a == 0.0:
            return t.clone()
        return torch.expm1(a * t) / a

    def perspective(self, lp, lq):
        a = self.alpha
        p, q = lp.exp(), lq.exp()
        if a == 0.0:
            return _xlogy(p, lp - lq) + (q - p)
        if a == 1.0:
            return _xlogy(q, lq - lp) - (q - p)
        # f_log's rearrangement scaled by p, with p u^a - p = p expm1(a log u) (and its
        # mirror q expm1((a - 1) log u) near 1) from _p_expm1: the plain
        # (p^(1-a) q^a - a q - (1-a) p) / (a (a-1)) cancels to a relative error of
        # eps / |a| (0.1 in float32 at a = 1e-6).
        t = lq - lp
        if abs(a) <= abs(a - 1.0):  # near 0: [ p (u^a - 1)/a - (q - p) ] / (a - 1)
            return (_p_expm1(lp, a * t) / a - (q - p)) / (a - 1.0)
        # near 1: [ q (u^(a-1) - 1)/(a - 1) - (q - p) ] / a
        return (_p_expm1(lq, (a - 1.0) * t) / (a - 1.0) - (q - p)) / a


@dataclass(frozen=True, repr=False)
class SkewKL(Divergence):
    """Skew forward KL: KL(teacher || alpha q + (1 - alpha) p), alpha in [0, 1).

    alpha = 0 is forward KL. The OPD+ advantage (1 - alpha) u / (alpha u + 1 - alpha)
    is bounded by (1 - alpha) / alpha, which is the point of the skew.
    """

    alpha: float = 0.1
    name = "skew_kl"
    title = "skew KL_α, KL(teacher‖αq+(1−α)p)"

    def __post_init__(self):
        a = self.alpha
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 0.0 <= a < 1.0):
            raise ValueError(
                f"skew_kl: alpha must lie in [0, 1), got {a!r} (alpha = 1 makes the divergence 0)"
            )

    @property
    def params(self):
        return {"alpha": self.alpha}

    def f_log(self, t):
        return t.exp() * (t - _log_mix(t, self.alpha))

    def w_log(self, t):
        return (1.0 - self.alpha) * torch.exp(t - _log_mix(t, self.alpha))

    def perspective(self, lp, lq):
        return _xlogy(lq.exp(), lq - _log_mix2(lq, lp, self.alpha))


@dataclass(frozen=True, repr=False)
class SkewReverseKL(Divergence):
    """Skew reverse KL: KL(student || alpha p + (1 - alpha) q), alpha in [0, 1).

    alpha = 0 is reverse KL; f(u) = -log(alpha + (1 - alpha) u).
    """

    alpha: float = 0.1
    name = "skew_reverse_kl"
    title = "skew reverse KL_α, KL(student‖αp+(1−α)q)"

    def __post_init__(self):
        a = self.alpha
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 0.0 <= a < 1.0):
            raise ValueError(
                f"skew_reverse_kl: alpha must lie in [0, 1), got {a!r} "
                "(alpha = 1 makes the divergence 0)"
            )

    @property
    def params(self):
        return {"alpha": self.alpha}

    def _log_m(self, t):  # log(alpha + (1 - alpha) u)
        return _log_mix(t, 1.0 - self.alpha)

    def f_log(self, t):
        return -self._log_m(t)

    def w_log(self, t):
        lm = self._log_m(t)
        return lm - (1.0 - self.alpha) * torch.exp(t - lm)

    def perspective(self, lp, lq):
        return _xlogy(lp.exp(), lp - _log_mix2(lp, lq, self.alpha))


@dataclass(frozen=True, repr=False)
class Jeffreys(Divergence):
    """Jeffreys: forward + reverse KL, f(u) = (u - 1) log u."""

    name = "jeffreys"
    title = "Jeffreys (forward + reverse KL)"

    def f_log(self, t):
        return torch.expm1(t) * t

    def w_log(self, t):
        return torch.expm1(t) + t

    def perspective(self, lp, lq):
        return (lq.exp() - lp.exp()) * (lq - lp)


@dataclass(frozen=True, repr=False)
class Shifted(Divergence):
    """``f(u) + c (u - 1)``: the same divergence written with another generator.

    D_f is unchanged (sum_a p (u - 1) = 0), the OPD+ advantage shifts by the
    constant c (a harmless baseline), the OPD advantage by -c (u - 1), which changes
    the expected update (method.md §2, the generator-shift argument).
    """

    base: Divergence = None  # type: ignore[assignment]
    c: float = 0.0

    @property
    def name(self):  # type: ignore[override]
        return f"{self.base.name}+{self.c:g}(u-1)"

    @property
    def title(self):  # type: ignore[override]
        return f"{self.base.title} + {self.c:g}(u−1)"

    @property
    def params(self):
        return {**self.base.params, "c": self.c}

    def f_log(self, t):
        return self.base.f_log(t) + self.c * torch.expm1(t)

    def w_log(self, t):
        return self.base.w_log(t) + self.c

    def perspective(self, lp, lq):
        return self.base.perspective(lp, lq) + self.c * (lq.exp() - lp.exp())


def shifted(d: Divergence, c: float) -> Shifted:
    """The divergence ``d`` written with the generator ``f(u) + c (u - 1)``."""
    return Shifted(base=d, c=float(c))


_REGISTRY = {
    cls.name: cls
    for cls in (
        ReverseKL, ForwardKL, JSD, TotalVariation, Hellinger, PearsonChi2, NeymanChi2,
        Alpha, SkewKL, SkewReverseKL, Jeffreys,
    )
}


def names() -> list:
    """Registry names, in the order of method.md §3."""
    return list(_REGISTRY)


def get(name: str, **params) -> Divergence:
    """Build a divergence by registry name, e.g. ``get("jsd", beta=0.5)``.

    Parameters: ``jsd`` (beta, normalized), ``alpha`` (alpha), ``skew_kl`` (alpha),
    ``skew_reverse_kl`` (alpha); the others take none.
    """
    if isinstance(name, Divergence):
        if params:
            raise ValueError("pass parameters only with a registry name")
        return name
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown divergence {name!r}; valid names are: {', '.join(_REGISTRY)}"
        ) from None
    try:
        return cls(**params)
    except TypeError as e:
        fields = list(cls.__dataclass_fields__)
        raise ValueError(
            f"divergence {name!r} takes parameters {fields or 'none'}, got {sorted(params)}"
        ) from e
