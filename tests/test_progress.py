"""opdplus.progress: when long jobs speak, and that the quiet stand-in behaves like a bar."""

import io
import sys

import pytest

from opdplus import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_enabled_obeys_explicit_flag(monkeypatch):
    monkeypatch.setenv("OPDPLUS_QUIET", "1")
    assert progress.enabled(True) is True
    monkeypatch.delenv("OPDPLUS_QUIET")
    assert progress.enabled(False) is False


def test_enabled_auto_follows_terminal_and_quiet_env(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Tty())
    monkeypatch.delenv("OPDPLUS_QUIET", raising=False)
    assert progress.enabled() is True
    monkeypatch.setenv("OPDPLUS_QUIET", "")  # empty counts as unset
    assert progress.enabled() is True
    monkeypatch.setenv("OPDPLUS_QUIET", "1")
    assert progress.enabled() is False
    monkeypatch.delenv("OPDPLUS_QUIET")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal (pytest, nbval, pipes)
    assert progress.enabled() is False


def test_enabled_rejects_non_bool():
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        progress.enabled("yes")


def test_tests_run_quiet_by_default():
    # conftest sets OPDPLUS_QUIET, and pytest's stderr is not a terminal either way
    assert progress.enabled() is False


def test_line_prints_when_on_and_nothing_when_quiet(capsys):
    progress.line("arm done", progress=True)
    progress.line("hidden", progress=False)
    progress.line("hidden too")  # automatic: quiet under tests
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "arm done\n"


def test_bar_when_on_is_a_tqdm_that_writes_to_stderr(capsys):
    from tqdm.auto import tqdm

    with progress.bar(total=3, desc="arms", unit="run", progress=True) as b:
        assert isinstance(b, tqdm)
        for _ in range(3):
            b.update()
        b.set_postfix(acc=0.5)
        b.write("a line")
    out, err = capsys.readouterr()
    assert out == ""
    assert "a line\n" in err
    assert "arms" in err and "3/3" in err


def test_quiet_bar_prints_nothing_and_behaves_like_a_bar(capsys):
    b = progress.bar(range(4), desc="arms", progress=False)
    assert not hasattr(b, "format_meter")  # the silent stand-in, not a tqdm
    assert list(b) == [0, 1, 2, 3]
    assert b.n == 4 and len(b) == 4
    with progress.bar(total=2, progress=False) as b2:
        b2.update()
        b2.update(1)
        b2.set_postfix(acc=0.5)
        b2.set_description("x")
        b2.write("not shown")
        assert b2.n == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


def test_quiet_bar_without_iterable_cannot_be_iterated():
    with pytest.raises(TypeError, match="without an iterable"):
        list(progress.bar(total=3, progress=False))
