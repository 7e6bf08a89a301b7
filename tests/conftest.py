"""Shared test set-up: offline hub, deterministic threads, float64 helpers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Long jobs report progress only when watched (opdplus.progress); tests are never watched.
os.environ.setdefault("OPDPLUS_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores on the reference machine: one pytest process uses both (about 1.8x faster
# than one thread when the machine is otherwise idle). Tests that start several
# processes set one thread per process themselves.
# Under pytest-xdist (`make test` runs two workers) each worker takes one thread: two
# single-threaded processes keep both cores busy without OpenMP barriers stalling.
_DEFAULT_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("OPDPLUS_TEST_THREADS", _DEFAULT_THREADS)))


@pytest.fixture
def gen():
    """A fresh seeded generator for each test."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests (several times faster than two on a
    shared 2-core machine: OpenMP barriers stall when a thread is descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
