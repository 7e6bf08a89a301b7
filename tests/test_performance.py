"""The performance changes keep the numbers: one pass per chunk, fused AdamW, chunk sizes.

``benchmarks/`` measures the speed; here we check that the faster code computes the same
thing as the plain one (autograd on one block, the default AdamW) and that the work it saves
is really saved (the divergence rows are evaluated once per chunk, not three times).
"""

import pytest
import torch

from opdplus import divergences as D
from opdplus.trainer import make_adamw


class _Counting(D.JSD):
    """The JSD, counting how many (chunk, V) blocks its perspective form is evaluated on."""

    calls = []

    def perspective(self, lp, lq):
        _Counting.calls.append(tuple(lp.shape))
        return super().perspective(lp, lq)


def test_full_vocab_evaluates_each_chunk_once_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 4, 50, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, 4, 50, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 4, generator=g) < 0.7
    d = _Counting(beta=0.3)
    _Counting.calls.clear()
    weights = torch.arange(4.0, dtype=torch.float64)
    (d.full_vocab(zs, zt, mask, chunk_size=5) * weights).sum().backward()
    n = int(mask.sum())
    # once per chunk (the old checkpointed form evaluated every chunk twice: no-grad, then again)
    assert len(_Counting.calls) == -(-n // 5)
    assert sum(s[0] for s in _Counting.calls) == n
    # the gradient is autograd's on one unchunked block, weights per position included
    z2 = zs.detach().clone().requires_grad_(True)
    ref = D.JSD(beta=0.3)._full_vocab_rows(z2.reshape(-1, 50), zt.reshape(-1, 50)).reshape(6, 4)
    (ref * mask * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(zs.grad, z2.grad, rtol=1e-12, atol=1e-14)


def test_full_vocab_gradient_is_scaled_by_the_incoming_gradient_in_float32():
    g = torch.Generator().manual_seed(1)
    zs = (3 * torch.randn(7, 300, generator=g)).requires_grad_(True)
    zt = 3 * torch.randn(7, 300, generator=g)
    w = torch.randn(7, generator=g)
    d = D.get("jsd", beta=0.5)
    (d.full_vocab(zs, zt, chunk_size=3) * w).sum().backward()
    z64 = zs.detach().double().requires_grad_(True)
    (d._full_vocab_rows(z64, zt.double()) * w.double()).sum().backward()
    torch.testing.assert_close(zs.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)


def test_default_chunk_is_a_few_mib_on_cpu_and_larger_on_a_gpu():
    assert D.default_chunk(49_152, torch.device("cpu")) == (1 << 20) // 49_152 == 21
    assert D.default_chunk(151_936, torch.device("cpu")) == 6
    assert D.default_chunk(151_936, torch.device("cuda")) == (1 << 24) // 151_936
    assert D.default_chunk(10**9, torch.device("cpu")) == 1  # never 0 positions


def test_make_adamw_is_fused_on_cpu_and_matches_the_default_update():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 5)
    b = torch.nn.Linear(8, 5)
    b.load_state_dict(a.state_dict())
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    fused, plain = make_adamw(a.parameters(), **kw), torch.optim.AdamW(b.parameters(), **kw)
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 8)
    for _ in range(5):
        for m, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_make_adamw_falls_back_where_there_is_no_fused_kernel():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not make_adamw([p], lr=1e-3).defaults.get("fused")


def test_the_trainer_uses_the_fused_optimizer(one_thread):
    from opdplus import tinyworld
    from opdplus.config import TrainConfig
    from opdplus.trainer import setup

    tok = tinyworld.load_tokenizer()
    state = setup(tinyworld.load_student(), tinyworld.load_teacher(), tok,
                  ["Q: 1 + 1 ?"], TrainConfig(prompts_per_step=1, samples_per_prompt=1,
                                              progress=False, checkpoint_every=0,
                                              checkpoint_minutes=0.0))
    opt = getattr(state.optimizer, "optimizer", state.optimizer)  # Accelerate's wrapper
    assert opt.defaults["fused"] is True


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "jsd", "tv"])
def test_double_backward_still_raises_a_clear_error(name):
    zs = torch.randn(3, 11, requires_grad=True)
    zt = torch.randn(3, 11)
    (g,) = torch.autograd.grad(D.get(name).full_vocab(zs, zt).sum(), zs, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
