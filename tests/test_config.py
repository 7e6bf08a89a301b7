"""TrainConfig field types: what a YAML or JSON config file can put in a field.

YAML 1.1 (PyYAML) reads ``1e-5`` as a string and ``true`` as a bool; a scalar may stand where
a list or mapping belongs. Each must become the number it spells or a ValueError that names
the field, never a TypeError from deep inside the trainer.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from opdplus.config import RESUMABLE_CHANGES, TrainConfig


def from_yaml(text: str) -> TrainConfig:
    return TrainConfig.from_dict(yaml.safe_load(text))


def test_yaml_scientific_notation_is_read_as_the_number_it_spells():
    assert yaml.safe_load("lr: 1e-5") == {"lr": "1e-5"}  # the YAML 1.1 trap itself
    cfg = from_yaml("lr: 1e-5\nweight_decay: 1e-2\nclip_log_u: 5e0\nsteps: 1e2\n")
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 0.01 and cfg.clip_log_u == 5.0
    assert cfg.steps == 100 and isinstance(cfg.steps, int)
    assert TrainConfig(adam_betas=["9e-1", 0.95]).adam_betas == (0.9, 0.95)
    assert TrainConfig(divergence="jsd", divergence_params={"beta": "5e-1"}).divergence_params == {
        "beta": 0.5
    }
    # the normalised config round-trips through YAML unchanged
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(steps=True), "steps must be an int, got the bool True"),
        (dict(seed=False), "seed must be an int, got the bool False"),
        (dict(lr=True), "lr must be a number, got the bool True"),
        (dict(steps=2.5), "steps must be a whole number, got 2.5"),
        (dict(lr="fast"), "lr must be a number, got the string 'fast'"),
        (dict(lr=[1e-5]), "lr must be a number, got list"),
        (dict(progress="yes"), "progress must be true or false, got str 'yes'"),
        (dict(adam_betas=0.9), "adam_betas must be a pair of numbers [a, b], got 0.9"),
        (dict(adam_betas="0.9"), "adam_betas must be a pair of numbers"),
        (dict(adam_betas=[0.9, "x"]), "adam_betas[1] must be a number, got the string 'x'"),
        (dict(divergence=["jsd"]), "divergence must be a string, got list ['jsd']"),
        (dict(divergence_params=[["beta", 0.5]]), "divergence_params must be a mapping"),
        (dict(divergence_params=["beta"]), "divergence_params must be a mapping"),
        (dict(checkpoint_minutes=-1.0), "checkpoint_minutes must be >= 0"),
    ],
)
def test_wrong_types_name_the_field(change, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**change)
    assert message in str(e.value)


def test_yaml_bool_and_scalar_mistakes_from_a_file():
    with pytest.raises(ValueError, match="steps must be an int, got the bool True"):
        from_yaml("steps: true")
    with pytest.raises(ValueError, match=r"adam_betas must be a pair"):
        from_yaml("adam_betas: 0.9")
    with pytest.raises(ValueError, match="divergence must be a string"):
        from_yaml("divergence: [jsd]")
    with pytest.raises(ValueError, match="divergence_params must be a mapping"):
        from_yaml("divergence: jsd\ndivergence_params: [0.5]")


@pytest.mark.parametrize(
    "change",
    [dict(estimator="opd"), dict(gamma=1.0), dict(baseline="loo"), dict(baseline="analytic")],
)
def test_logit_loss_rejects_the_advantage_settings_it_would_ignore(change):
    with pytest.raises(ValueError, match="loss='logits'.*would be ignored") as e:
        TrainConfig(loss="logits", **change)
    name = next(iter(change))
    assert f"{name}={change[name]!r}" in str(e.value)
    TrainConfig(loss="pg", **change)  # the same setting is meaningful for the policy gradient
    TrainConfig(loss="logits")  # and the defaults are fine with the logit loss


def test_checkpoint_intervals_default_on_and_zero_means_never():
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert defaults["checkpoint_every"] > 0 and defaults["checkpoint_minutes"] > 0
    TrainConfig(checkpoint_every=0, checkpoint_minutes=0)
    assert {"checkpoint_every", "checkpoint_minutes"} <= set(RESUMABLE_CHANGES)


def test_readme_quotes_the_checkpoint_defaults_and_their_measured_cost():
    """The README's checkpoint numbers come from benchmarks/checkpoint_cost.py's results file."""
    root = Path(__file__).resolve().parents[1]
    readme = " ".join((root / "README.md").read_text().split())
    results = json.loads((root / "data" / "reference" / "checkpoint_cost.json").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    every, minutes = defaults["checkpoint_every"], defaults["checkpoint_minutes"]
    assert f"`checkpoint_every` = {every} steps or `checkpoint_minutes` = {minutes:g} minutes" in (
        readme
    )
    for setting in ("tiny_world", "smollm2"):
        r = results[setting]
        assert (r["checkpoint_every"], r["checkpoint_minutes"]) == (every, minutes), setting
        assert r["overhead_at_defaults"] < 0.05, setting  # the budget: under 5%
        for quoted in (
            f"{r['save_s_median']:.2f} s per save",
            f"{r['step_s_median']:.2f} s per step",
            f"{100 * r['overhead_at_defaults']:.1f}% of run time",
            f"{r['student_params'] / 1e6:.1f}M-parameter" if setting == "tiny_world"
            else f"({r['student_params'] / 1e6:.1f}M parameters",
            f"{r['checkpoint_mb']:.0f} MB per checkpoint",
        ):
            assert quoted in readme, (setting, quoted)
