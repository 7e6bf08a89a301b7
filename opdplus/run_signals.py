"""When does a logged signal expose a collapse? Departures of a History's metrics.

A collapsing run shows up in several per-step metrics (method.md §6): the teacher KL on
the rollouts rises, the gradient norm explodes, the completion length runs to the cap or
shrinks, the validation accuracy falls. They do not move at the same time, and which one
moves *first* differs between divergences (notebook 04's exercise). This module states one
simple, explicit criterion so the answer can be computed rather than eyeballed:

    a signal *departs* at the first step where the mean of its last ``window`` logged values
    is ``factor`` times its starting level (the mean of its first ``window`` values) or more,
    in the signal's collapse direction (``DIRECTIONS``: up, down or either way).

Sparse signals (validation accuracy, logged every ``eval_every`` steps) are judged on the
values they have, so they can only depart at a step where they were measured.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

DIRECTIONS: Dict[str, str] = {"teacher_kl": "up", "grad_norm": "up", "completion_len": "either",
                              "accuracy": "down", "truncation_frac": "up"}
"""The direction in which each signal moves when a run collapses."""

SIGNALS = ("teacher_kl", "grad_norm", "completion_len", "accuracy")
"""The collapse signals notebook 04 asks about."""


def _series(history: Sequence[Mapping], key: str):
    pts = [(r["step"], r[key]) for r in history if r.get(key) is not None]
    if not pts:
        raise ValueError(f"the History has no logged values of {key!r}; it logs "
                         f"{sorted({k for r in history for k in r})}")
    return pts


def first_departure(history: Sequence[Mapping], key: str, factor: float = 2.0, window: int = 5,
                    direction: Optional[str] = None) -> Optional[int]:
    """The first step at which ``key`` has moved by ``factor`` from its start, else None.

    ``window`` is capped at a fifth of the logged values (at least 1), so a sparse signal
    is compared value by value. ``direction``: ``"up"``, ``"down"`` or ``"either"``
    (default: ``DIRECTIONS[key]``).
    """
    if not factor > 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    direction = direction or DIRECTIONS.get(key)
    if direction not in ("up", "down", "either"):
        raise ValueError(f"direction for {key!r} must be 'up', 'down' or 'either', got "
                         f"{direction!r} (add it to DIRECTIONS or pass direction=)")
    pts = _series(history, key)
    w = max(1, min(window, len(pts) // 5))
    start = sum(v for _, v in pts[:w]) / w
    for i in range(w, len(pts) + 1):
        level = sum(v for _, v in pts[i - w:i]) / w
        up = level >= factor * start if start > 0 else level > 0
        down = level <= start / factor
        if (direction == "up" and up) or (direction == "down" and down) or (
                direction == "either" and (up or down)):
            return pts[i - 1][0]
    return None


def departures(history: Sequence[Mapping], keys: Sequence[str] = SIGNALS, factor: float = 2.0,
               window: int = 5) -> Dict[str, Optional[int]]:
    """:func:`first_departure` of every signal in ``keys``."""
    return {k: first_departure(history, k, factor, window) for k in keys}


def first_signal(history: Sequence[Mapping], keys: Sequence[str] = SIGNALS, factor: float = 2.0,
                 window: int = 5) -> Optional[str]:
    """The signal that departs first (None if none does); ties go to the earlier in ``keys``."""
    found = [(step, i, k) for i, (k, step) in enumerate(departures(history, keys, factor,
                                                                   window).items())
             if step is not None]
    return min(found)[2] if found else None


__all__ = ["DIRECTIONS", "SIGNALS", "first_departure", "departures", "first_signal"]
