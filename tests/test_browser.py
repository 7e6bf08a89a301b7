"""One real-browser check: notebook 01 run in JupyterLab in headless Chromium.

nbval proves the notebooks execute and learn; it cannot see whether a plotly figure
or an ipywidgets slider actually *draws* in JupyterLab (the renderer extension, the
widget manager, the mime types). This test does, once per run:

1. install Debian's chromium if missing (apt-get, as root);
2. start an isolated JupyterLab serving a copy of notebook 01 and a tiny control notebook;
3. Run All in headless Chromium and assert every cell ran, no error, at least one plotly
   figure drew its SVG, and at least one slider rendered; save screenshots;
4. the control sets plotly's ``json`` renderer, under which no figure may appear: it
   shows that the figure check can fail;
5. shut the server down and check that no process it started is left.

Screenshots go to ``test-artifacts/browser/`` (override with ``OPDPLUS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_f_divergences.ipynb"


def _load_helper():
    # loaded by path: tests/ is not a package, and this must not depend on rootdir/sys.path
    name = "opdplus_tests_browser_check"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).with_name("browser_check.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bc = _load_helper()


def _control_notebook(path: Path) -> Path:
    """A two-cell notebook that draws a figure with plotly's json renderer (draws nothing)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('import plotly.io as pio\npio.renderers.default = "json"'),
        nbformat.v4.new_code_cell(
            "import plotly.graph_objects as go\ngo.Figure(go.Scatter(y=[1, 3, 2]))"),
    ]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_notebook_01_renders_plotly_and_widgets_in_chromium(tmp_path: Path):
    sync_api, chromium = bc.playwright_and_chromium()
    artifacts = Path(os.environ.get("OPDPLUS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    artifacts.mkdir(parents=True, exist_ok=True)
    control = _control_notebook(tmp_path / "00_json_renderer_control.ipynb")

    with bc.LabServer([NOTEBOOK, control], env={"OPDPLUS_PROFILE": "smoke",
                                                "HF_HUB_OFFLINE": "1"}) as server:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                try:
                    run = bc.run_notebook(page, server, NOTEBOOK.name,
                                          wait_for=[f"{bc.PLOTLY_SELECTOR} svg.main-svg",
                                                    bc.SLIDER_SELECTOR])
                finally:  # a screenshot helps most when something went wrong
                    sliders = page.locator(f"{bc.PANEL} {bc.SLIDER_SELECTOR}")
                    if sliders.count():  # show the last explorer: sliders above its figure
                        sliders.last.scroll_into_view_if_needed(timeout=5000)
                    shot = artifacts / "01_f_divergences.png"
                    page.screenshot(path=str(shot))
                    print(f"\nscreenshot: {shot}")
                if run.plotly_figures:
                    figure_shot = artifacts / "01_f_divergences_first_figure.png"
                    page.locator(f"{bc.PANEL} {bc.PLOTLY_SELECTOR}").first.screenshot(
                        path=str(figure_shot))
                    print(f"screenshot: {figure_shot}")
                print(f"notebook 01 in Chromium: {run}")

                assert not run.errors, f"a cell raised in the browser:\n{run.errors[0]}"
                assert run.prompts and all(p.startswith("[") and p[1:-2].isdigit()
                                           for p in run.prompts), run.prompts
                assert run.plotly_figures >= 1 and run.plotly_svgs >= 1, run
                assert run.sliders >= 1, run

                page = browser.new_page(viewport={"width": 1280, "height": 900})
                ctrl = bc.run_notebook(page, server, control.name)
                print(f"json-renderer control: {ctrl}")
                assert not ctrl.errors and len(ctrl.prompts) == 2, ctrl
                assert ctrl.plotly_figures == 0, "a json-rendered figure must not draw"
            finally:
                browser.close()
    assert server.leftover == [], f"processes left behind: {server.leftover}"
