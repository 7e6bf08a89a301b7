"""The static site (``make site``): built pages work offline, and a plotly slider moves.

``scripts/build_site.py`` executes notebooks into HTML with plotly.js shipped once as a file.
Building the whole site takes as long as running every notebook, so the browser check builds
the site from one notebook with a plotly-native slider: notebook 01 or 02 when its source
calls a slider builder of ``opdplus.plots_explore`` (or sets ``sliders=``), else a tiny
fixture notebook with one slider, so the check works whatever state the notebooks are in.
Then headless Chromium (Debian's, as in test_browser.py) opens ``index.html`` from
``file://`` with every non-file request refused, follows the link to the page, finds the
figures, clicks a slider's rail at its far end, and checks that the plotted data changed; a figure left alone must not
change (the check can fail). It also waits for MathJax, loaded from the site's own files, to
typeset every display formula, and fails on any file the page asked for and did not find.
Screenshots go to ``test-artifacts/site/``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDER_BUILDERS = r"\bsliders=|fig_generator_sliders\(|fig_dynamics_steps\("
DATA = ".cartesianlayer"  # the plotted traces and axes of a figure (not its slider)

SLIDER_NB = '''import numpy as np
import plotly.graph_objects as go
x = np.linspace(0, 2 * np.pi, 60)
fig = go.Figure([go.Scatter(x=x, y=np.sin(k * x), name=f"k={k}", visible=(k == 1))
                 for k in (1, 2, 3)])
fig.update_layout(sliders=[dict(active=0, steps=[
    dict(label=f"k={k}", method="restyle", args=["visible", [j == i for j in range(3)]])
    for i, k in enumerate((1, 2, 3))])])
fig'''


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


site = _load("opdplus_build_site", ROOT / "scripts" / "build_site.py")
bc = _load("opdplus_tests_browser_check", ROOT / "tests" / "browser_check.py")


def fixture_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 fixture: one plotly slider\n"
                                              "See [the cheat sheet](../docs/cheatsheet.md).\n\n"
                                              "$$D_f = \\mathbb{E}_{a\\sim p}[f(u)]$$"),
                nbformat.v4.new_code_cell(SLIDER_NB),
                nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider()")]
    nbformat.write(nb, path)
    return path


def slider_notebook(tmp_path: Path) -> Path:
    """Notebook 01 or 02 when it has a plotly-native slider, else the fixture."""
    for stem in ("01_f_divergences", "02_stop_gradient_bias"):
        py = ROOT / "notebooks" / f"{stem}.py"
        if py.exists() and re.search(SLIDER_BUILDERS, py.read_text()):
            return py.with_suffix(".ipynb")
    return fixture_notebook(tmp_path / "00_slider_fixture.ipynb")


def test_prepare_rewrites_plotly_widgets_and_links():
    import plotly.graph_objects as go

    nb = nbformat.v4.new_notebook()
    fig = go.Figure(go.Scatter(y=[1, 2])).to_plotly_json()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        site.PLOTLY_MIME: fig, "text/plain": "Figure"}),
        nbformat.v4.new_output("display_data", data={site.WIDGET_MIME: {"model_id": "x"}})]
    nb.cells = [nbformat.v4.new_markdown_cell("[g](../docs/glossary.md)"), cell]
    nb.metadata["widgets"] = {"state": {}}
    assert site.prepare(nb, "09_x") == 1
    assert nb.cells[0].source == "[g](docs/glossary.html)"
    html = nb.cells[1].outputs[0]["data"]["text/html"]
    assert 'id="09_x-fig1"' in html and "Plotly.newPlot" in html and "cdn" not in html.lower()
    assert "running kernel" in nb.cells[1].outputs[1]["data"]["text/html"]
    assert "widgets" not in nb.metadata


@pytest.mark.slow
def test_static_site_works_offline_and_its_plotly_slider_moves(tmp_path: Path):
    sync_api, chromium = bc.playwright_and_chromium()
    artifacts = Path(os.environ.get("OPDPLUS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "site"
    artifacts.mkdir(parents=True, exist_ok=True)
    nb = slider_notebook(tmp_path)
    out = tmp_path / "site"
    summary = site.build([nb], out)
    page_name = f"{nb.stem}.html"
    assert summary["pages"][:2] == ["index.html", page_name] and summary["figures"] >= 1
    text = (out / page_name).read_text()
    assert "require.js" not in text and "cdnjs" not in text and "cdn.jsdelivr" not in text
    assert text.count('src="mathjax/MathJax.js?') == 1, "MathJax is loaded from the site"
    n_display = sum(c.source.count("$$") // 2 for c in nbformat.read(nb, as_version=4).cells
                    if c.cell_type == "markdown")  # display formulas in the notebook's text
    assert text.count('src="plotly.min.js"') == 1, "plotly.js is loaded once, from the site"

    refused = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})

            def only_files(route):  # offline: the page may load nothing but its own files
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    refused.append(route.request.url)
                    route.abort()

            page.route("**/*", only_files)
            errors, failed = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto((out / "index.html").as_uri())
            page.locator(f"a[href='{page_name}']").first.click()
            page.wait_for_selector(f".js-plotly-plot {DATA} path.js-line", timeout=30000)
            assert n_display >= 1, "the page should have a formula to typeset"
            page.wait_for_function(  # MathJax typeset every display formula, from local files
                "n => document.querySelectorAll('.MathJax_Display').length >= n",
                arg=n_display, timeout=30000)
            assert page.locator(".MathJax_Display .merror, .MathJax .merror").count() == 0
            print(f"{n_display} display formula(s) typeset by the site's MathJax")
            figures = page.locator(".js-plotly-plot")
            slider_figs = page.locator(".js-plotly-plot:has(.slider-container)")
            print(f"\n{page_name}: {figures.count()} figures, {slider_figs.count()} with a "
                  f"plotly slider, {summary['bytes'] / 1e6:.1f} MB site")
            assert figures.count() >= 1 and slider_figs.count() >= 1
            assert page.locator(".opdplus-widget-note").count() >= (1 if "fixture" in nb.stem
                                                                      else 0)
            fig = slider_figs.first
            fig.scroll_into_view_if_needed()
            state = lambda: fig.evaluate(  # noqa: E731  the drawn data and the slider's step
                "(gd, sel) => [gd.querySelector(sel).innerHTML, gd.layout.sliders[0].active]", DATA)
            before = state()
            page.wait_for_timeout(500)
            assert state() == before, "an untouched figure changed by itself"
            fig.screenshot(path=str(artifacts / "slider_before.png"))
            rail = fig.locator(".slider-rail-touch-rect").first
            box = rail.bounding_box()
            n_steps = fig.evaluate("gd => gd.layout.sliders[0].steps.length")
            far_end = box["x"] + (2 if before[1] > (n_steps - 1) / 2 else box["width"] - 2)
            page.mouse.click(far_end, box["y"] + box["height"] / 2)  # the end away from it
            page.wait_for_function(
                "([el, sel, old]) => el.querySelector(sel).innerHTML !== old",
                arg=[fig.element_handle(), DATA, before[0]], timeout=10000)
            after = state()
            fig.screenshot(path=str(artifacts / "slider_after.png"))
            print(f"slider step {before[1]} -> {after[1]}; screenshots in {artifacts}")
            assert after[1] != before[1] and after[0] != before[0]
            assert not errors, errors
        finally:
            browser.close()
    assert refused == [], f"the page tried to reach the network: {refused[:5]}"
    # MathJax probes for its TeX fonts (an about:blank @font-face and the TeX AMS font) before
    # it settles on the STIX-Web fonts the site ships; the package has no TeX fonts. The
    # formulas are typeset all the same (checked above); any other miss is a missing file.
    probes = ("about:blank", "/mathjax/fonts/HTML-CSS/TeX/")
    missing = [u for u in failed if not any(p in u for p in probes)]
    assert missing == [], f"files the page asked for are missing from the site: {missing[:5]}"
