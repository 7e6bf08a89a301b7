"""Progress bars and progress lines for long jobs, silent when nobody is watching.

Long jobs (the tiny-world arms of ``make reproduce``, the SFT of the shipped checkpoints)
report through this one module, so that every job follows the same rule about when to speak:

* ``progress=True`` or ``progress=False`` is obeyed as given;
* ``progress=None`` (the default everywhere) means "on when ``sys.stderr`` is a terminal and
  the environment variable ``OPDPLUS_QUIET`` is unset or empty".

Tests and nbval run with stderr not a terminal (and ``tests/conftest.py`` also sets
``OPDPLUS_QUIET=1``), so they stay silent without any flag. Bars are ``tqdm.auto`` bars; lines
go through ``tqdm.write`` to stderr, so they print above a live bar instead of breaking it.
When progress is off, :func:`bar` returns a no-op stand-in with the same methods, so calling
code never branches on whether it is being watched.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm as _tqdm

__all__ = ["enabled", "bar", "line", "QUIET_ENV"]

QUIET_ENV = "OPDPLUS_QUIET"
"""Set this environment variable to a non-empty value to silence progress by default."""


def enabled(progress: bool | None = None) -> bool:
    """Whether progress should be shown.

    ``True``/``False`` are returned as given. ``None`` means: on when ``sys.stderr`` is a
    terminal and ``OPDPLUS_QUIET`` is unset or empty.
    """
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(
                f"progress must be True, False or None (automatic), got {progress!r} "
                f"of type {type(progress).__name__}"
            )
        return progress
    if os.environ.get(QUIET_ENV):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


class _Bar(_tqdm):
    """A ``tqdm.auto`` bar whose ``write`` goes to stderr (tqdm's default is stdout)."""

    @classmethod
    def write(cls, s, file=None, end="\n", nolock=False):  # tqdm's signature
        return super().write(s, file=sys.stderr if file is None else file, end=end, nolock=nolock)


class _Silent:
    """A stand-in for a tqdm bar that shows nothing: same methods, same iteration."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.desc = ""

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable; call update() instead")
        for item in self.iterable:
            yield item
            self.n += 1

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this progress bar has no total")
        return int(self.total)

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        """Print nothing: a quiet job is quiet."""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    progress: bool | None = None,
):
    """A progress bar over ``iterable`` (or one advanced by ``update``), or a silent stand-in.

    Returns a ``tqdm.auto.tqdm`` bar (writing to stderr) when :func:`enabled` says so, else an
    object with the same ``update``, ``set_postfix``, ``set_description``, ``close`` and
    ``write`` methods that prints nothing. Both iterate over ``iterable`` and work as context
    managers.
    """
    if enabled(progress):
        return _Bar(iterable, total=total, desc=desc or None, unit=unit, file=sys.stderr,
                    dynamic_ncols=True)
    return _Silent(iterable, total=total)


def line(msg: str, progress: bool | None = None) -> None:
    """Print one line to stderr when progress is enabled (above any live bar), else nothing."""
    if enabled(progress):
        _tqdm.write(str(msg), file=sys.stderr)
