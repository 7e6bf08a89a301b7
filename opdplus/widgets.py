"""A thin ipywidgets layer over the pure figure builders (``plots_toy``, ``plots_runs``).

ipywidgets need a running kernel: in a static page (the site, nbconvert) they are dead.
So the notebooks use them only where a control must *compute* something (refit a
student for a new teacher shape, follow a training run); a control that only selects
among states computable in advance is a plotly-native slider or dropdown instead
(``plots_toy.fig_generator_sliders``, ``fig_divergence_explorer``, ``fig_dynamics_steps``,
from ``opdplus.plots_explore``). ``divergence_explorer`` and ``dynamics_explorer`` stay
for continuous parameters in a live session.

Each explorer is a ``FigureBox``: a row of controls above an ``Output`` area, and
``builder(**control_values)`` re-run whenever a control changes. The current
figure is kept on ``box.figure`` so tests (and readers) can inspect it without a
browser. There is no logic here beyond wiring: anything that computes (a fit, a
dynamics run) is passed in by the notebook, which is where the lesson lives.
``TrainingMonitor`` is the same idea driven by the trainer instead of a slider: its
``callback(arm)`` is a ``train(..., callbacks=[...])`` hook that redraws
``plots_runs.fig_learning_curves`` as the steps come in.

Why ``Output`` and not ``go.FigureWidget``: plotly >= 6 needs the optional
``anywidget`` package for ``FigureWidget``. Writing the figure's mime bundle into
the ``Output`` widget works with the base install, in JupyterLab and in a plain
Python process alike (the bundle follows the active plotly renderer).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import ipywidgets as W
import plotly.graph_objects as go

from . import plots_runs, plots_toy
from .divergences import get


class FigureBox(W.VBox):
    """Controls above an ``Output`` that shows ``builder(**{name: control.value})``.

    ``controls`` maps the builder's keyword names to value widgets (sliders, ...).
    ``box.figure`` is the last figure built; ``box.refresh()`` rebuilds it.
    """

    def __init__(self, builder: Callable[..., go.Figure], controls: Mapping[str, W.ValueWidget]):
        self.builder = builder
        self.controls: Dict[str, W.ValueWidget] = dict(controls)
        self.output = W.Output()
        self.figure: Optional[go.Figure] = None
        super().__init__([W.HBox(list(self.controls.values())), self.output])
        for c in self.controls.values():
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def values(self) -> Dict[str, Any]:
        """The controls' current values, keyed as the builder expects."""
        return {k: c.value for k, c in self.controls.items()}

    def refresh(self) -> go.Figure:
        """Rebuild the figure from the controls and show it in the output area."""
        self.figure = self.builder(**self.values())
        bundle = dict(self.figure._repr_mimebundle_() or {})
        bundle.setdefault("text/plain", f"<plotly figure: {self.figure.layout.title.text}>")
        self.output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        return self.figure


def _slider(description: str, value: float, lo: float, hi: float, step: float) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=description,
                         continuous_update=False, readout_format=".2f")


def divergence_explorer(beta: float = 0.5, alpha: float = 0.5, kind: str = "advantages",
                        log_u_range: Tuple[float, float] = (-3.0, 3.0)) -> FigureBox:
    """Sliders for JSD's β and the α-divergence's α over the generator or advantage builder.

    ``kind="generators"`` shows f(u) (``plots_toy.fig_generators``), ``"advantages"``
    shows −f (OPD) and w_f (OPD+) (``plots_toy.fig_advantages``), for reverse KL,
    forward KL, JSD_β and the α-divergence: moving α shows the family sliding between
    the two KL directions (up to ``c (u - 1)``: see ``plots_toy.fig_generator_sliders``,
    the kernel-free version that the notebooks use).
    """
    builders = {"generators": plots_toy.fig_generators, "advantages": plots_toy.fig_advantages}
    if kind not in builders:
        raise ValueError(f"kind must be one of {sorted(builders)}, got {kind!r}")

    def build(beta: float, alpha: float) -> go.Figure:
        divs = [get("reverse_kl"), get("forward_kl"), get("jsd", beta=beta),
                get("alpha", alpha=alpha)]
        return builders[kind](divs, log_u_range=log_u_range)

    return FigureBox(build, {"beta": _slider("JSD β", beta, 0.05, 0.95, 0.05),
                             "alpha": _slider("α", alpha, -1.0, 2.0, 0.1)})


def teacher_shape_explorer(
    fit: Callable[[float, float], Tuple[Any, Mapping[str, Any], Sequence[Any]]],
    separation: float = 5.0,
    left_weight: float = 0.5,
    separation_range: Tuple[float, float] = (0.0, 8.0),
) -> FigureBox:
    """Sliders for a bimodal teacher's shape over ``plots_toy.fig_categorical``.

    ``fit(separation, left_weight)`` (written in the notebook) returns
    ``(teacher_probs, {label: student_probs}, grid)``; the figure overlays them.
    """
    def build(separation: float, left_weight: float) -> go.Figure:
        teacher, students, grid = fit(separation, left_weight)
        return plots_toy.fig_categorical(
            teacher, students, labels=[float(x) for x in grid], style="lines",
            title=f"Fitted students, teacher modes {separation:.1f} apart, "
                  f"left weight {left_weight:.2f}", x_title="grid position x (bin centre)")

    lo, hi = separation_range
    return FigureBox(build, {
        "separation": _slider("separation", separation, lo, hi, 0.5),
        "left_weight": _slider("left weight", left_weight, 0.1, 0.9, 0.05),
    })


def dynamics_explorer(runs: Mapping[Any, Mapping[str, Any]], teacher_probs: Any,
                      record_every: int = 1) -> FigureBox:
    """A step slider over ``toy.one_state_dynamics`` runs: the students at that step.

    ``runs[key]["probs"]`` is (recorded steps, V). The slider moves in optimisation
    steps; the figure shows every run's distribution at that step against the teacher.
    ``plots_toy.fig_dynamics_steps`` is the kernel-free version that notebook 02 uses.
    """
    n = min(len(r["probs"]) for r in runs.values())

    def build(step: int) -> go.Figure:
        k = min(step // record_every, n - 1)
        students = {("/".join(key) if isinstance(key, tuple) else str(key)): r["probs"][k]
                    for key, r in runs.items()}
        return plots_toy.fig_categorical(teacher_probs, students,
                                        title=f"Student distributions at step {k * record_every}")

    last = (n - 1) * record_every
    slider = W.IntSlider(value=last, min=0, max=last, step=record_every, description="step",
                         continuous_update=False)
    return FigureBox(build, {"step": slider})


class TrainingMonitor(W.VBox):
    """Live learning curves while ``opdplus.trainer.train`` runs: a status line above an ``Output``.

    ``monitor.callback(arm)`` returns a trainer callback ``cb(step, record, history)``
    (pass it in ``train(..., callbacks=[...])``); each arm gets its own. Every ``every``
    steps, and at an arm's ``last_step``, the callback redraws
    ``plots_runs.fig_learning_curves`` over every arm seen so far, so earlier arms stay on
    the figure for comparison. The figure is written into the ``Output`` (as
    ``FigureBox`` does) and kept on ``monitor.figure``, so it also works with no
    frontend (nbval, a script): nothing here needs a browser.
    """

    def __init__(self, metrics: Optional[Sequence[str]] = None, every: int = 1,
                 title: str = "Training curves (live)", cols: int = 3):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.metrics = list(metrics) if metrics is not None else None
        self.every, self.title, self.cols = int(every), title, cols
        self.histories: Dict[str, Any] = {}
        self.figure: Optional[go.Figure] = None
        self.redraws = 0
        self.status = W.HTML(value="waiting for the first step")
        self.output = W.Output()
        super().__init__([self.status, self.output])

    def callback(self, arm: str, last_step: Optional[int] = None) -> Callable:
        """A ``cb(step, record, history)`` that files the run under ``arm`` and redraws."""
        def cb(step: int, record: Mapping[str, Any], history: Any) -> None:
            self.histories[arm] = history  # the trainer's live History (appended in place)
            parts = [f"{k} {record[k]:.3g}" for k in ("loss", "teacher_kl", "grad_norm",
                                                     "accuracy") if record.get(k) is not None]
            self.status.value = f"<b>{arm}</b> step {step}: " + ", ".join(parts)
            if (step + 1) % self.every == 0 or (last_step is not None and step >= last_step):
                self.refresh()
        return cb

    def refresh(self) -> Optional[go.Figure]:
        """Redraw the curves of every arm so far (no-op before the first step)."""
        if not self.histories:
            return None
        self.figure = plots_runs.fig_learning_curves(self.histories, metrics=self.metrics,
                                                   cols=self.cols, title=self.title)
        bundle = dict(self.figure._repr_mimebundle_() or {})
        bundle.setdefault("text/plain", f"<plotly figure: {self.title}>")
        self.output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        self.redraws += 1
        return self.figure


__all__ = ["FigureBox", "divergence_explorer", "teacher_shape_explorer", "dynamics_explorer",
           "TrainingMonitor"]
