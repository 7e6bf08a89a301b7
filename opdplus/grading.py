"""Grading GSM8K-format answers, and the 95% intervals of pass@1 and avg@k.

- ``extract_answer`` reads the final answer of a completion: the text after the *last*
  ``#### `` marker, else the content of the last ``\\boxed{...}``. Commas, ``$`` and the
  spaces a digit-level tokenizer leaves between digits (``#### 2 5``) are removed, and a
  Unicode minus (``−5``) reads as ``-5``. The answer must be a single number: ``#### 3/4``
  or ``#### 10-3`` is an expression, not an answer, and counts as wrong (``None``); only
  ``\\boxed{\\frac{a}{b}}`` or ``\\boxed{a/b}`` gives a fraction. There is
  deliberately no "last number in the text" fallback: a completion that never states its
  answer in one of the two formats counts as wrong, and nothing here raises on malformed
  text.
- ``grade`` compares numerically (``36.0 == 36``, ``1/2 == 0.5``) using exact fractions.
- ``wilson_interval`` for pass@1: each problem is one Bernoulli trial.
- ``avg_at_k_interval`` for avg@k, the mean over problems of the fraction of the k samples
  that are correct: the Wilson score interval on all n k samples, with the sample size
  shrunk by the design effect of the within-problem correlation: ``n_eff = n k / deff``,
  ``deff = k s^2 / (p (1 - p))`` (the variance of the mean over problems relative to that
  of n k independent samples; ``s`` is the sample sd of the per-problem fractions),
  clipped to ``[1, k]``. When every sample agrees (p = 0 or 1) the correlation cannot be
  estimated and ``deff = k``: the interval is then Wilson's on the n problems, never the
  empty (0, 0) that a normal interval (``mean_interval``) gives. Problems are the unit of
  evidence; k correlated samples of one problem count as between 1 and k independent ones.

Pure Python (no torch): ``opdplus.evaluation`` generates and calls these.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Optional, Sequence, Tuple, Union

Z95 = 1.959963984540054  # standard normal quantile at 0.975

# ----------------------------------------------------------------------------- extraction

# A number as a model may write it: "-1,234.5", "$ 25", or digit tokens rejoined with single
# spaces ("2 5"). The spaced form only joins single digits, so "25 3" still reads as 25.
_NUMBER = r"-?\s?\$?\s?(?:\d(?: \d)+(?![\d,])|\d[\d,]*)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_BOXED_RE = re.compile(r"\\\s*boxed\s*\{")
_FRAC_RE = re.compile(r"\\d?frac\s*\{\s*(-?[\d\s]+)\s*\}\s*\{\s*([\d\s]+)\s*\}")


def _braced(text: str, start: int) -> Optional[str]:
    """Content of the brace group opening just before ``start``; None if never closed."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _clean_number(s: str) -> Optional[str]:
    s = re.sub(r"[\s,$]", "", s)
    return s if re.fullmatch(r"-?\d+(?:\.\d+)?", s) else None


# What may not follow a final answer: an arithmetic operator and another number
# ("#### 10-3", "#### 3/4", "#### 2 * 5"), or a digit/slash glued to it ("#### 3/").
_NOT_ALONE_RE = re.compile(r"\s*[-+*/×÷^=]\s*\$?\s*\d|/")
_MINUSES = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-",
                          "\uff0d": "-"})


def extract_answer(text: str) -> Optional[str]:
    """The final answer of ``text`` as a plain number string (``"-1234.5"``), or None.

    ``#### n`` wins over ``\\boxed{n}``; within a format the last occurrence wins. An
    expression after the marker (``#### 10-3``, ``#### 3/4``) is not a single number: None.
    """
    if not isinstance(text, str):
        return None
    text = text.translate(_MINUSES)  # Unicode minus and dashes before a number: "-"
    hashes = list(_HASH_RE.finditer(text))
    if hashes:
        last = hashes[-1]
        if _NOT_ALONE_RE.match(text, last.end()):
            return None
        return _clean_number(last.group(1))
    if "####" in text:
        return None  # a marker followed by no number: do not fall back to \boxed
    for m in reversed(list(_BOXED_RE.finditer(text))):
        inner = _braced(text, m.end())
        if inner is None:
            continue
        frac = _FRAC_RE.search(inner)
        if frac:
            num, den = (re.sub(r"\s", "", g) for g in frac.groups())
            return f"{num}/{den}" if int(den) != 0 else None
        inner = re.sub(r"\\text\s*\{[^}]*\}|\\[,!; ]|\\\$", " ", inner)
        num = _NUMBER_RE.search(inner)
        if not num:
            return None
        rest = inner[num.end():]
        slash = re.match(r"\s*/\s*(\d[\d\s]*)\s*$", rest)  # a plain fraction "3/4"
        if slash:
            den = re.sub(r"\s", "", slash.group(1))
            got = _clean_number(num.group(0))
            return f"{got}/{den}" if got and "." not in got and int(den) != 0 else None
        if _NOT_ALONE_RE.match(rest):
            return None  # an expression such as 10-3
        return _clean_number(num.group(0))
    return None


def to_fraction(answer: Optional[Union[str, int, float]]) -> Optional[Fraction]:
    """Exact value of an answer string (``"36.0"``, ``"1,000"``, ``"3/4"``); None if not one."""
    if answer is None:
        return None
    s = re.sub(r"[\s,$]", "", str(answer).translate(_MINUSES))
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def target_of(row: dict) -> str:
    """The reference answer of a GSM8K-format row: the number after its ``####``."""
    ans = extract_answer(row["answer"])
    if ans is None:
        raise ValueError(f"row has no '#### <number>' in its answer: {row['answer']!r}")
    return ans


def grade(completion: str, target: Union[str, int]) -> bool:
    """True iff the completion's extracted answer equals ``target`` as a number."""
    got, want = to_fraction(extract_answer(completion)), to_fraction(target)
    return got is not None and want is not None and got == want


# ----------------------------------------------------------------------------- intervals


def _wilson(p: float, n: float, z: float) -> Tuple[float, float]:
    """Wilson score interval for proportion ``p`` observed on (possibly effective) size ``n``."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 and p = 1 the bound is exactly 0 or 1; say so rather than trust rounding.
    lo = 0.0 if p == 0 else max(0.0, centre - half)
    hi = 1.0 if p == 1 else min(1.0, centre + half)
    return lo, hi


def wilson_interval(successes: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}, {n}")
    return _wilson(successes / n, n, z)


def design_effect(scores: Sequence[float], k: int) -> float:
    """Kish design effect of k correlated samples per problem, from per-problem fractions.

    ``deff = Var(mean over problems) / Var(mean of n k independent samples)
    = k s^2 / (p (1 - p))``, clipped to ``[1, k]`` (1: the k samples of a problem are as
    good as independent; k: they always agree). ``k`` when p is 0 or 1 or n < 2, where the
    correlation cannot be estimated: the cautious choice.
    """
    n = len(scores)
    if n < 2 or k < 1:
        return float(max(k, 1))
    p = sum(scores) / n
    if p <= 0.0 or p >= 1.0:
        return float(k)
    s2 = sum((x - p) ** 2 for x in scores) / (n - 1)
    return min(float(k), max(1.0, k * s2 / (p * (1 - p))))


def avg_at_k_interval(scores: Sequence[float], k: int, z: float = Z95) -> Tuple[float, float]:
    """95% interval for avg@k: Wilson on all n k samples, shrunk by the design effect.

    ``scores`` are the per-problem fractions correct (each a multiple of 1/k). The
    effective size is ``n k / design_effect(scores, k)``, between n and n k, so the
    interval is honest at 0 and 1 (never (0, 0)); with k = 1 it is ``wilson_interval``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(scores)
    if n == 0:
        return 0.0, 1.0
    if any(not 0.0 <= x <= 1.0 for x in scores):
        raise ValueError("avg@k scores must be fractions in [0, 1]")
    p = sum(scores) / n
    return _wilson(p, n * k / design_effect(scores, k), z)


def mean_interval(scores: Sequence[float], z: float = Z95) -> Tuple[float, float]:
    """Normal interval for the mean of per-problem scores in [0, 1], clipped to [0, 1].

    Not used by ``evaluate``: it collapses to (0, 0) or (1, 1) when every score agrees.
    ``avg_at_k_interval`` stays honest there.
    """
    n = len(scores)
    if n < 2:
        return 0.0, 1.0
    mean = sum(scores) / n
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = z * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)
