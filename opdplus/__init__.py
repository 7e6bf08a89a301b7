"""opdplus: on-policy distillation with f-divergences and the unbiased OPD+ advantage.

Shape suffixes used across the package (after tinker-cookbook):

    B  batch (rows; prompt-major, G consecutive rows share a prompt)
    T  tokens (sequence positions)
    V  vocabulary
    P  prompts
    G  samples per prompt

so ``logits_BTV`` is (batch, tokens, vocab), ``mask_BT`` a (batch, tokens) mask and
``adv_BT`` the per-token advantages. Direction of a KL is always said in words:
"forward KL" is KL(teacher || student), "reverse KL" is KL(student || teacher).
"""

from . import divergences, estimators, toy  # noqa: F401

__version__ = "0.1.0"
