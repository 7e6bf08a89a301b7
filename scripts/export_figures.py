"""Export the key figures as PNG and SVG for slides: ``make figures``.

    python scripts/export_figures.py                 # -> figures/ (git-ignored)
    python scripts/export_figures.py --out DIR --only generators

The figures come from the library's pure builders (the same ones the notebooks call), in the
projector style of ``opdplus.plot_style.apply_projector_style`` (large fonts; OPD and OPD+
told apart by colour and marker). They are computed from the exact toys and the shipped
reference run, so no notebook has to run.

Rendering: plotly.js's own ``Plotly.toImage`` in headless Chromium driven by Playwright, the
same browser and driver as the real-browser tests (Debian's ``chromium``, the ``test``
extra). That is what kaleido does internally; using the browser the tests already need
avoids a second copy of Chromium and a new dependency, and nothing in ``make test`` depends
on this script.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Callable, Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdplus import plotting, toy  # noqa: E402
from opdplus.plot_style import apply_projector_style  # noqa: E402

WIDTH, HEIGHT, SCALE = 1280, 720, 2  # 16:9 slides; PNG at twice the pixels


def fig_generators():
    return plotting.fig_generators(["reverse_kl", "forward_kl", "jsd", "hellinger"])


def fig_advantages():
    return plotting.fig_advantages(["reverse_kl", "forward_kl", "jsd"])


def _runs(names=("forward_kl", "jsd", "reverse_kl"), steps=400, every=20):
    import torch

    g = torch.Generator().manual_seed(100)  # the teacher of the exact dynamics table
    q = 1.5 * torch.randn(8, generator=g, dtype=torch.float64)
    return {(n, est): toy.one_state_dynamics(q, n, est, steps=steps, lr=0.5, record_every=every,
                                             closed_form=True)
            for n in names for est in ("opd", "opd+")}, every


def fig_dynamics():
    runs, every = _runs()
    return plotting.fig_dynamics(runs, record_every=every)


def fig_forward_kl_dynamics():
    """One divergence, both estimators: the figure to show OPD collapse next to OPD+."""
    runs, every = _runs(names=("forward_kl",))
    return plotting.fig_dynamics(runs, record_every=every,
                                 title="forward KL at one state: OPD collapses, OPD+ converges")


FIGURES: Dict[str, Callable] = {
    "generators": fig_generators,
    "advantages": fig_advantages,
    "dynamics": fig_dynamics,
    "forward_kl_dynamics": fig_forward_kl_dynamics,
}

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script>
</head><body><div id="fig"></div></body></html>"""


def export(figures: Dict[str, object], out: Path, chromium: str) -> list:
    """Write ``NAME.svg`` and ``NAME.png`` for each figure; returns the paths written."""
    import plotly
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    work = out / ".render"
    work.mkdir(exist_ok=True)
    (work / "plotly.min.js").write_bytes(
        (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes())
    (work / "page.html").write_text(PAGE)
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto((work / "page.html").as_uri())
            for name, fig in figures.items():
                spec = json.loads(fig.to_json())
                for fmt in ("svg", "png"):
                    url = page.evaluate(
                        """async ([spec, fmt, w, h, s]) => {
                            const gd = document.getElementById('fig');
                            await Plotly.newPlot(gd, spec.data, spec.layout, {staticPlot: true});
                            return await Plotly.toImage(gd, {format: fmt, width: w, height: h,
                                                             scale: fmt === 'png' ? s : 1});
                        }""", [spec, fmt, WIDTH, HEIGHT, SCALE])
                    header, payload = url.split(",", 1)
                    data = (base64.b64decode(payload) if ";base64" in header
                            else __import__("urllib.parse").parse.unquote(payload).encode())
                    path = out / f"{name}.{fmt}"
                    path.write_bytes(data)
                    written.append(path)
        finally:
            browser.close()
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "figures"))
    p.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="default: all")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from browser_check import ChromiumUnavailable, ensure_chromium

    try:
        chromium = ensure_chromium()
    except ChromiumUnavailable as err:
        print(f"export_figures: {err}", file=sys.stderr)
        return 1
    figs = {n: apply_projector_style(FIGURES[n]()) for n in (args.only or FIGURES)}
    for path in export(figs, Path(args.out), chromium):
        print(f"{path.relative_to(Path(args.out).parent)}: {path.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
