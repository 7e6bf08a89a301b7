"""Helpers for the real-browser notebook check (used by tests/test_browser.py).

What it does, and why each step is there (see docs/browser-test-facts.md):

- ``ensure_chromium``: Debian's ``chromium`` through apt when missing (never
  ``playwright install``, whose download cannot work offline). Playwright is pointed
  at the real binary, not the ``/usr/bin`` shell wrapper.
- ``LabServer``: JupyterLab on a free local port, in its own process session, with
  config, runtime, settings and workspace folders in a temporary directory, the news
  pop-up and autosave turned off, and the notebooks *copied* into a temporary root so
  a run in the browser can never write outputs into the repository. It is shut down
  with ``POST /api/shutdown``; any process it started that is still alive afterwards
  is killed by pid (its process group first), so nothing is left behind.
- ``run_notebook``: opens a notebook, waits for the real kernel (the status bar's
  ``| Idle``; the toolbar says idle before a kernel exists), presses Run All from the
  Run menu, waits until every prompt has a number, and reports what rendered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium",)  # Debian's real binary
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on screen
PLOTLY_SELECTOR = ".jp-Cell-outputArea .jp-RenderedPlotly.js-plotly-plot"
SLIDER_SELECTOR = ".widget-slider"
ERROR_SELECTOR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'

# JupyterLab user settings written into the isolated settings folder.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # Render every cell: with windowing, off-screen cells (and their plots) may not exist.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


# ----------------------------------------------------------------------------- chromium


def find_chromium() -> Optional[str]:
    """Path of the real Chromium binary, or None."""
    for path in CHROMIUM_BINARIES:
        if os.access(path, os.X_OK):
            return path
    try:  # another layout: ask dpkg where the package put it
        listing = subprocess.run(["dpkg", "-L", "chromium"], capture_output=True, text=True,
                                 timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for path in listing:
        if path.endswith("/chromium") and "/lib/" in path and os.access(path, os.X_OK):
            return path
    return None


class ChromiumUnavailable(RuntimeError):
    """Chromium is missing and this machine cannot install it (no apt-get, or not root)."""


def ensure_chromium() -> str:
    """The Chromium binary, installing Debian's package with apt-get if needed.

    Raises ``ChromiumUnavailable`` when installing is impossible here (no apt-get, not
    root) and RuntimeError when apt-get was possible but failed.
    """
    path = find_chromium()
    if path:
        return path
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable("chromium is not installed and apt-get is not available")
    if os.geteuid() != 0:
        raise ChromiumUnavailable("chromium is not installed and installing it needs root "
                                  "(run: sudo apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    path = find_chromium()
    if not path:
        raise RuntimeError("apt-get installed chromium but its binary was not found")
    return path


# ----------------------------------------------------------------------------- the server


def playwright_and_chromium():
    """For a test: ``(playwright.sync_api, chromium path)``, or skip it, saying why (no
    playwright installed, or no Chromium and no way to install one here)."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="install the test extra (it provides playwright)")
    try:
        return sync_api, ensure_chromium()
    except ChromiumUnavailable as err:  # not root / no apt: say so, do not pretend
        pytest.skip(f"real-browser check impossible here: {err}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> List[int]:
    """All live descendants of ``pid`` (from /proc; Linux only)."""
    parents: Dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class LabServer:
    """A throwaway JupyterLab server serving copies of ``notebooks``.

    Use as a context manager; ``url(name)`` is the address of a served notebook.
    ``env`` adds or overrides environment variables of the server (and so its kernels).
    """

    notebooks: Sequence[Path]
    env: Dict[str, str] = field(default_factory=dict)
    start_timeout: float = 90.0
    token: str = field(default_factory=lambda: os.urandom(16).hex())

    def __enter__(self) -> "LabServer":
        self.tmp = Path(tempfile.mkdtemp(prefix="opdplus-lab-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        for nb in self.notebooks:
            shutil.copy(nb, self.root / Path(nb).name)
        dirs = {k: self.tmp / k.lower() for k in (
            "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
            "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR")}
        for d in dirs.values():
            d.mkdir()
        for rel, values in LAB_SETTINGS.items():
            target = dirs["JUPYTERLAB_SETTINGS_DIR"] / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
        env.pop("PLOTLY_RENDERER", None)  # the browser needs the default plotly_mimetype
        env.update(self.env)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.tmp / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=None"],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the fallback kill
        )
        self._wait_ready()
        return self

    def _request(self, path: str, method: str = "GET", timeout: float = 5.0):
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early:\n{self.log()}")
            try:
                if self._request("/api/status")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"JupyterLab did not answer within {self.start_timeout} s:\n{self.log()}")

    def url(self, notebook: str) -> str:
        """A fresh workspace per visit, so no tab from an earlier visit is restored."""
        workspace = f"check-{os.urandom(4).hex()}"
        return f"{self.base}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def __exit__(self, *exc) -> None:
        started = [self.proc.pid] + _children(self.proc.pid)  # server and kernels
        try:
            self._request("/api/shutdown", method="POST")
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in started[1:]):
            time.sleep(0.2)
        for pid in started[1:]:  # e.g. a kernel that ignored the shutdown
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.leftover = [p for p in started if _alive(p)]
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- the browser


@dataclass
class NotebookRun:
    """What a Run All in the browser produced."""

    prompts: List[str]
    plotly_figures: int
    plotly_svgs: int
    sliders: int
    errors: List[str]
    seconds: float


def run_notebook(page, server: LabServer, notebook: str, timeout_s: float = 120.0,
                 wait_for: Sequence[str] = ()) -> NotebookRun:
    """Open ``notebook``, Run All once the kernel is idle, and count what rendered.

    ``wait_for``: selectors to wait for (each up to ``timeout_s``) after execution, for
    outputs that render asynchronously (plotly figures, widgets).
    """
    ms = timeout_s * 1000
    t0 = time.monotonic()
    page.goto(server.url(notebook))
    page.wait_for_selector(f"{PANEL} .jp-Cell", timeout=ms)
    # the real kernel: the bottom status bar reads "<kernel name> | Idle"
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-Widget, .jp-StatusBar-Item')]"
        ".some(e => /\\|\\s*Idle/.test(e.textContent))", timeout=ms)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator('[data-command="runmenu:run-all"]').first.click()
    # finished: every code prompt numbered, or an error output appeared (Run All stops there)
    page.wait_for_function(
        """([panel, err]) => {
            const ps = [...document.querySelectorAll(panel + ' .jp-CodeCell .jp-InputArea-prompt')];
            const done = ps.length > 0 && ps.every(p => /\\[\\d+\\]/.test(p.textContent));
            return done || document.querySelector(panel + ' ' + err) !== null;
        }""", arg=[PANEL, ERROR_SELECTOR], timeout=ms)
    errors = [e.inner_text()[:2000] for e in page.locator(f"{PANEL} {ERROR_SELECTOR}").all()]
    if not errors:
        for sel in wait_for:
            page.wait_for_selector(f"{PANEL} {sel}", timeout=ms)
    prompts = [p.inner_text().strip()
               for p in page.locator(f"{PANEL} .jp-CodeCell .jp-InputArea-prompt").all()]
    return NotebookRun(
        prompts=prompts,
        plotly_figures=page.locator(f"{PANEL} {PLOTLY_SELECTOR}").count(),
        plotly_svgs=page.locator(f"{PANEL} {PLOTLY_SELECTOR} svg.main-svg").count(),
        sliders=page.locator(f"{PANEL} {SLIDER_SELECTOR}").count(),
        errors=errors,
        seconds=time.monotonic() - t0,
    )
