"""A fork server for mutation testing: pay for ``import torch`` once, not once per mutant.

mutmut (2.x) runs a shell command per mutant. Importing torch, transformers and
accelerate takes longer than the fast tests themselves on a small CPU machine, so the
command is this script's client, which asks a server to fork a child that already has
those libraries imported. The child imports ``opdplus`` afresh from the client's working
directory (where mutmut has just written the mutant) and runs pytest there; its exit
status goes back to mutmut.

    python scripts/mutate_forkserver.py serve SOCKET        # started by ``make mutate``
    python scripts/mutate_forkserver.py run SOCKET -- ARGS  # mutmut's runner: pytest ARGS

The server never imports ``opdplus`` itself, so no mutant outlives its child.
"""

import os
import signal
import socket
import sys
import time


def serve(path: str) -> None:
    import accelerate  # noqa: F401  (the slow imports, done once)
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(int(os.environ.get("OPDPLUS_TEST_THREADS", "1")))
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    print(f"mutation fork server ready on {path}", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            request = b""
            while not request.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            cwd, *args = request.decode().rstrip("\n").split("\0")
            pid = os.fork()
            if pid == 0:  # the child: a fresh opdplus from cwd, then pytest
                srv.close()
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.chdir(cwd)
                sys.path.insert(0, cwd)
                code = int(pytest.main(["-p", "no:cacheprovider", *args]))
                os._exit(code)
            code = _wait(pid, float(os.environ.get("MUTATE_CHILD_TIMEOUT", "600")))
            try:
                conn.sendall(f"{code & 0xFF}\n".encode())
            except OSError:  # the client went away (interrupted run): serve the next one
                pass


def _wait(pid: int, timeout: float) -> int:
    """The child's exit status; a child past ``timeout`` seconds (an endless loop) is killed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.02)


def run(path: str, args) -> int:
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.connect(path)
    cli.sendall(("\0".join([os.getcwd(), *args]) + "\n").encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = cli.recv(64)
        if not chunk:
            return 3  # the server died: report an error, not a kill
        reply += chunk
    return int(reply)


if __name__ == "__main__":
    mode, sock, *rest = sys.argv[1:]
    if mode == "serve":
        serve(sock)
    elif mode == "run":
        sys.exit(run(sock, rest[1:] if rest[:1] == ["--"] else rest))
    else:
        sys.exit(f"unknown mode {mode!r}; expected 'serve' or 'run'")
