"""Worker pools that never outlive the run that started them.

``make reproduce`` and ``make study`` spread their runs over a few single-thread processes
(``multiprocessing``'s spawn context: fresh interpreters, no forked torch thread pools). Two
ways of stopping such a run used to leave those workers behind, each still training:

- ``kill`` (SIGTERM) or a closed terminal ends the parent without running any cleanup, and
  SIGKILL cannot be caught at all. So every worker watches its parent (``_watch_parent``):
  once the parent process is gone, the worker exits within ``POLL_S`` seconds.
- Ctrl-C in a loop that ends with ``pool.close(); pool.join()`` waits for every queued run
  to finish. ``spawn_pool`` terminates the workers when its block is left by an exception
  (``KeyboardInterrupt`` included) and waits for them only after a normal exit.

Finished runs are stored by each worker as it goes, so a stopped run resumes where it was.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from typing import Iterator

POLL_S = 1.0
"""How often a worker checks that its parent is still alive."""


def _watch_parent(parent_pid: int, poll_s: float = POLL_S) -> None:
    """Pool initializer: a daemon thread that ends this worker once ``parent_pid`` is gone.

    A process whose parent died is re-parented (to init or a subreaper), so its
    ``os.getppid()`` changes; that is the signal, and it needs no cooperation from the
    parent, which may have been killed with SIGKILL."""

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="opdplus-watch-parent", daemon=True).start()


@contextlib.contextmanager
def spawn_pool(workers: int, maxtasksperchild: int = 4) -> Iterator["mp.pool.Pool"]:
    """A spawn-context ``Pool`` of ``workers`` processes whose workers exit with the parent.

    Leaving the block normally closes the pool and waits for the workers; leaving it by an
    exception terminates them at once."""
    pool = mp.get_context("spawn").Pool(workers, initializer=_watch_parent,
                                        initargs=(os.getpid(),),
                                        maxtasksperchild=maxtasksperchild)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


__all__ = ["POLL_S", "spawn_pool"]
