"""Build the static site: every notebook executed in the smoke profile, as HTML: ``make site``.

    python scripts/build_site.py                        # all notebooks -> site/
    python scripts/build_site.py --out DIR NB.ipynb...  # some notebooks (the browser test)

The tool is **nbconvert** (its ``lab`` HTML template), with nbclient to execute. Both are
already installed with JupyterLab and nbval, so the site needs no new dependency; Jupyter
Book would bring Sphinx and its theme for a dozen pages, and would load plotly through
require.js from a CDN. Three things are done on top of nbconvert, each for a page that works
offline with no kernel:

- **plotly**: the kernel renders figures as plotly's mime bundle
  (``PLOTLY_RENDERER=plotly_mimetype``); each one is rewritten to a ``<div>`` plus a
  ``Plotly.newPlot`` call, and ``plotly.min.js`` (from the installed plotly) is copied once to
  ``site/plotly.min.js`` and loaded by every page. plotly's own sliders, dropdowns and frames
  live in the figure JSON, so they keep working in the page;
- **no CDN**: the template drops require.js (it would also capture ``Plotly`` as an AMD
  module) and mermaid, which nbconvert loads from the internet. Formulas are typeset by
  MathJax 2.7 from the site itself: the files the pages need (TeX input, HTML-CSS output,
  the STIX-Web fonts, about 3 MB) are copied once into ``site/mathjax/`` from the
  ``jupyter-server-mathjax`` package (a dependency, Apache-2.0 MathJax inside);
- **ipywidgets** need a live kernel: their outputs become a short note saying so, instead of
  a widget manager loaded from a CDN that would draw an empty box.

The cheat sheet and the glossary (``docs/*.md``) become ``site/docs/*.html`` and the notebooks'
links to them are rewritten. ``site/index.html`` lists every page with its measured runtime.
The folder is git-ignored: it is built output.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import List, Sequence

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdplus.classroom import load_times  # noqa: E402
from opdplus.nbrun import execute, smoke_env  # noqa: E402

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p class='opdplus-widget-note'><em>Interactive widget: it needs a running "
               "kernel. Open the notebook in JupyterLab (<code>make lab</code>) to use it; "
               "the plotly sliders on this page work without one.</em></p>")

TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}
<script src="{{ resources.plotly_js }}"></script>
{%- endblock -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]],
            displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  "HTML-CSS": {availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web",
               linebreaks: {automatic: true}},
  displayAlign: "center", messageStyle: "none", showMathMenu: false
});
</script>
<script src="{{ resources.mathjax_js }}?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>
{%- endblock -%}
{%- block html_head_js_mermaidjs -%}{%- endblock -%}
{%- block jupyter_widgets -%}{%- endblock -%}
{%- block body_header -%}
{{ super() }}
<nav class="opdplus-nav" style="padding: 8px 16px; font-family: sans-serif;">
<a href="{{ resources.index }}">opdplus notebooks</a> ·
<a href="{{ resources.docs }}cheatsheet.html">cheat sheet</a> ·
<a href="{{ resources.docs }}glossary.html">glossary</a></nav>
{%- endblock body_header -%}
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
line-height: 1.5; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
code {{ background: #f4f4f4; }}</style></head>
<body>{body}</body></html>
"""


MATHJAX_PARTS = ("MathJax.js", "LICENSE", "config", "jax/input", "jax/element",
                 "jax/output/HTML-CSS", "extensions/TeX", "extensions/tex2jax.js",
                 "extensions/MathEvents.js", "extensions/MathMenu.js", "extensions/MathZoom.js",
                 "extensions/Safe.js", "extensions/HTML-CSS", "fonts/HTML-CSS/STIX-Web",
                 "localization/en")
"""What the pages load from MathJax (everything else in the package is left out)."""


def copy_mathjax(out: Path) -> Path:
    """Copy ``MATHJAX_PARTS`` of the installed ``jupyter_server_mathjax`` into ``out/mathjax``;
    returns the folder. The package is found without importing it (it imports a server)."""
    import importlib.util

    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the static site needs jupyter-server-mathjax (pip install -e .)")
    src = Path(list(spec.submodule_search_locations)[0]) / "static"
    dst = out / "mathjax"
    for part in MATHJAX_PARTS:
        s, d = src / part, dst / part
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        elif s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(s, d)
        else:
            raise SystemExit(f"jupyter-server-mathjax has no {part}: an unexpected version")
    return dst


def _figure_html(fig: dict, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, auto_play=False,
                       validate=False, div_id=div_id,
                       config={"responsive": True, "displaylogo": False})


def prepare(nb, stem: str) -> int:
    """Rewrite ``nb``'s outputs for a static page in place; returns the number of figures."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\.\./docs/([a-z_]+)\.md", r"docs/\1.html", cell.source)
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                n += 1
                fig = data[PLOTLY_MIME]
                out["data"] = {"text/html": _figure_html(fig, f"{stem}-fig{n}"),
                               "text/plain": "<plotly figure>"}
            elif WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE, "text/plain": "<widget>"}
    nb.metadata.pop("widgets", None)
    return n


def _exporter():
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(template_file="opdplus_site.html.j2",
                        extra_loaders=[jinja2.DictLoader({"opdplus_site.html.j2": TEMPLATE})],
                        exclude_input_prompt=True, exclude_output_prompt=True)


def render_markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(text)


def title_of(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def build(notebooks: Sequence[Path], out: Path, docs: Path = ROOT / "docs") -> dict:
    """Execute and convert ``notebooks`` into ``out``; returns a summary (pages, bytes...)."""
    out.mkdir(parents=True, exist_ok=True)
    import plotly

    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                out / "plotly.min.js")
    copy_mathjax(out)
    exporter = _exporter()
    times = load_times().get("notebooks", {})
    rows: List[str] = []
    summary = {"pages": [], "figures": 0, "seconds": {}}
    for path in notebooks:
        path = Path(path)
        stem = path.stem
        executed = out / f".{stem}.executed.ipynb"
        t0 = time.perf_counter()
        execute(path, env=smoke_env("plotly_mimetype"), store=executed)
        summary["seconds"][stem] = round(time.perf_counter() - t0, 1)
        nb = nbformat.read(executed, as_version=4)
        executed.unlink()
        n = prepare(nb, stem)
        body, _ = exporter.from_notebook_node(
            nb, resources={"plotly_js": "plotly.min.js", "mathjax_js": "mathjax/MathJax.js",
                           "index": "index.html", "docs": "docs/",
                           "metadata": {"name": stem}})
        (out / f"{stem}.html").write_text(body)
        summary["pages"].append(f"{stem}.html")
        summary["figures"] += n
        runtime = times.get(stem, {}).get("smoke_s")
        rows.append(f"<tr><td><a href='{stem}.html'>{html.escape(stem)}</a></td>"
                    f"<td>{html.escape(title_of(nb, stem))}</td><td>{n}</td>"
                    f"<td>{'' if runtime is None else f'{runtime:.0f} s'}</td></tr>")
        print(f"{stem}: {n} figures, {summary['seconds'][stem]:.0f} s")
    doc_links = []
    if docs.is_dir():
        (out / "docs").mkdir(exist_ok=True)
        for md in sorted(docs.glob("*.md")):
            text = re.sub(r"\(([a-z_]+)\.md\)", r"(\1.html)", md.read_text())
            page = PAGE.format(title=md.stem, body="<p><a href='../index.html'>opdplus "
                               "notebooks</a></p>" + render_markdown(text))
            (out / "docs" / f"{md.stem}.html").write_text(page)
            summary["pages"].append(f"docs/{md.stem}.html")
            doc_links.append(f"<li><a href='docs/{md.stem}.html'>{md.stem}</a></li>")
    index = PAGE.format(title="opdplus notebooks", body=(
        "<h1>opdplus: on-policy distillation with f-divergences, OPD vs OPD+</h1>"
        "<p>Every notebook executed in the smoke profile. Plotly figures, with their sliders "
        "and dropdowns, work in these pages without a kernel; ipywidgets need JupyterLab "
        "(<code>make lab</code>).</p>"
        "<table><tr><th>notebook</th><th>title</th><th>figures</th>"
        "<th>smoke runtime</th></tr>" + "".join(rows) + "</table>"
        + (f"<h2>Reference</h2><ul>{''.join(doc_links)}</ul>" if doc_links else "")))
    (out / "index.html").write_text(index)
    summary["pages"].insert(0, "index.html")
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (out / "site.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", help="default: notebooks/NN_*.ipynb")
    p.add_argument("--out", default=str(ROOT / "site"))
    args = p.parse_args(argv)
    paths = ([Path(n) for n in args.notebooks]
             or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    summary = build(paths, Path(args.out))
    print(f"{len(summary['pages'])} pages, {summary['figures']} figures, "
          f"{summary['bytes'] / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
