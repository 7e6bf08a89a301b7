"""All figure builders in one namespace: ``fig_*(...) -> plotly.graph_objects.Figure``.

The builders live in two modules, each importable on its own:

- ``opdplus.plots_toy``: the exact-toy figures (generators, advantages, categorical
  distributions, gradient agreement, one-state dynamics, Monte Carlo histograms) and the
  plotly-native explorers of ``opdplus.plots_explore`` (sliders and dropdowns that work
  in a static page);
- ``opdplus.plots_runs``: the training-run figures (learning curves, accuracy with
  intervals, per-token heatmaps, measured costs);

both drawn in the shared style of ``opdplus.plot_style`` (one colour per divergence, one
dash per estimator). This module re-exports all three, so ``from opdplus import plotting``
and ``plotting.fig_generators(...)`` keep working. Nothing here calls ``.show()``.
"""

from __future__ import annotations

from .plot_style import (  # noqa: F401  (re-exported)
    DIVERGENCE_COLORS,
    ESTIMATOR_DASH,
    ESTIMATOR_PATTERN,
    OTHER_COLORS,
    TEACHER_COLOR,
    arm_style,
    divergence_color,
    divergence_label,
    estimator_of,
)
from .plots_runs import (  # noqa: F401  (re-exported)
    DEFAULT_METRICS,
    METRIC_LABELS,
    fig_accuracy,
    fig_learning_curves,
    fig_measurements,
    fig_token_heatmap,
)
from .plots_toy import (  # noqa: F401  (re-exported)
    ESTIMATOR_COLOR,
    ESTIMATOR_MARKER,
    fig_advantages,
    fig_categorical,
    fig_divergence_explorer,
    fig_dynamics,
    fig_dynamics_steps,
    fig_generator_sliders,
    fig_generators,
    fig_gradient_agreement,
    fig_mc_histograms,
)

__all__ = [
    "DIVERGENCE_COLORS", "ESTIMATOR_DASH", "ESTIMATOR_PATTERN", "TEACHER_COLOR", "OTHER_COLORS",
    "METRIC_LABELS", "DEFAULT_METRICS",
    "divergence_color", "divergence_label", "estimator_of", "arm_style",
    "fig_generators", "fig_advantages", "fig_categorical", "fig_gradient_agreement",
    "fig_dynamics", "fig_mc_histograms", "fig_learning_curves", "fig_accuracy",
    "fig_token_heatmap", "fig_measurements",
    "ESTIMATOR_MARKER", "ESTIMATOR_COLOR", "fig_generator_sliders", "fig_divergence_explorer",
    "fig_dynamics_steps",
]
