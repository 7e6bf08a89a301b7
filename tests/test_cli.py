"""CLI: ``opdplus train`` end to end on tiny models saved to disk, config files, user errors."""

import json

import pytest
import torch
import yaml

from opdplus import models
from opdplus.checkpoint import LATEST
from opdplus.cli import main
from opdplus.trainer import VOLATILE_KEYS

WORDS = [f"w{i}" for i in range(40)]
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
FAST = [
    "--prompts-per-step",
    "4",
    "--samples-per-prompt",
    "2",
    "--max-new-tokens",
    "8",
    "--lr",
    "0.01",
    "--no-progress",
]


# Tiny models: one thread is several times faster than two on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Teacher and student directories (weights + tokenizer) and a prompts file."""
    root = tmp_path_factory.mktemp("cli")
    tok = models.word_tokenizer(WORDS)
    teacher = models.peaky_teacher(len(tok), seed=1, **IDS)
    student = models.tiny_causal_lm("llama", len(tok), hidden_size=32, num_layers=1, seed=2, **IDS)
    for name, m in (("teacher", teacher), ("student", student)):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(12):
            f.write(
                json.dumps({"prompt": " ".join(f"w{(i * 7 + j) % 40}" for j in range(1 + i % 3))})
                + "\n"
            )
    return root


def base_args(world, out, *extra):
    return [
        "train",
        "--teacher",
        str(world / "teacher"),
        "--student",
        str(world / "student"),
        "--prompts",
        str(world / "prompts.jsonl"),
        "--out",
        str(out),
        *FAST,
        *extra,
    ]


def records(out):
    return json.loads((out / "history.json").read_text())


def test_train_writes_history_and_checkpoint_then_resumes(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            base_args(
                world,
                out,
                "--steps",
                "2",
                "--divergence",
                "jsd",
                "--divergence-param",
                "beta=0.3",
                "--estimator",
                "opd+",
            )
        )
        == 0
    )
    hist = records(out)
    assert [r["step"] for r in hist] == [0, 1]
    for r in hist:
        for key in ("loss", "teacher_kl", "grad_norm"):
            assert isinstance(r[key], float), key
    assert "eval_teacher_kl" in hist[-1]
    ckpt = out / "checkpoint"
    assert (ckpt / LATEST).read_text().strip() == "step-000002"
    state = json.loads((ckpt / "step-000002" / "trainer_state.json").read_text())
    assert state["config"]["divergence"] == "jsd" and state["config"]["divergence_params"] == {
        "beta": 0.3
    }
    assert (ckpt / "step-000002" / "model" / "model.safetensors").is_file()
    assert "2 steps done" in capsys.readouterr().err

    assert (
        main(
            base_args(
                world,
                out,
                "--steps",
                "3",
                "--divergence",
                "jsd",
                "--divergence-param",
                "beta=0.3",
                "--resume",
            )
        )
        == 0
    )
    resumed = records(out)
    assert [r["step"] for r in resumed] == [0, 1, 2]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in rs]  # noqa: E731
    assert strip(resumed[:2]) == strip(hist)


def test_config_file_and_flag_precedence(world, tmp_path):
    cfg = {
        "teacher": str(world / "teacher"),
        "student": str(world / "student"),
        "prompts": str(world / "prompts.jsonl"),
        "out": str(tmp_path / "yaml"),
        "steps": 1,
        "divergence": "jsd",
        "divergence_params": {"beta": 0.3},
        "prompts-per-step": 4,
        "samples_per_prompt": 2,
        "max_new_tokens": 6,
        "progress": False,
        "baseline": "loo",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert (
        main(["train", "--config", str(tmp_path / "c.yaml"), "--divergence-param", "beta=0.7"]) == 0
    )
    state = json.loads(
        (tmp_path / "yaml" / "checkpoint" / "step-000001" / "trainer_state.json").read_text()
    )
    assert state["config"]["divergence_params"] == {"beta": 0.7}  # the flag wins over the file
    assert state["config"]["baseline"] == "loo" and state["config"]["max_new_tokens"] == 6
    cfg["out"] = str(tmp_path / "json")
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--steps", "1"]) == 0
    assert len(records(tmp_path / "json")) == 1


def test_student_cut_from_the_teacher(world, tmp_path):
    args = [
        "train",
        "--teacher",
        str(world / "teacher"),
        "--student-layers",
        "1",
        "--prompts",
        str(world / "prompts.jsonl"),
        "--out",
        str(tmp_path / "cut"),
        "--steps",
        "1",
        *FAST,
    ]
    assert main(args) == 0
    assert records(tmp_path / "cut")[0]["grad_norm"] > 0


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "w1"}', '{"prompt": "w2"', '{"prompt": "w3"}'],
            "prompts.jsonl:2: not valid JSON",
        ),
        (
            ['{"prompt": "w1"}', "", '{"text": "w3"}'],
            "prompts.jsonl:3: expected a JSON object with a string 'prompt'",
        ),
        (['{"prompt": "   "}'], "prompts.jsonl:1: the 'prompt' field is empty"),
    ],
)
def test_malformed_prompt_rows_name_file_and_line(world, tmp_path, capsys, lines, message):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    args = base_args(world, tmp_path / "out", "--steps", "1")
    args[args.index("--prompts") + 1] = str(bad)
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gamma", "2"], "gamma must lie in [0, 1]"),
        (["--divergence", "kl"], "unknown divergence 'kl'"),
        (["--divergence-param", "beta"], "KEY=VALUE"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_options_are_user_errors(world, tmp_path, capsys, extra, message):
    assert main(base_args(world, tmp_path / "out", "--steps", "1", *extra)) == 2
    assert message in capsys.readouterr().err


def test_missing_and_mismatched_inputs(world, tmp_path, capsys):
    assert main(["train", "--prompts", str(world / "prompts.jsonl"), "--out", str(tmp_path)]) == 2
    assert "--teacher is required" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("stepz: 3\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "unknown option(s) ['stepz']" in capsys.readouterr().err
    other = models.word_tokenizer(WORDS[:-1] + ["zzz"])
    m = models.tiny_causal_lm("llama", len(other), hidden_size=16, num_layers=1, **IDS)
    m.save_pretrained(tmp_path / "alien")
    other.save_pretrained(tmp_path / "alien")
    args = base_args(world, tmp_path / "out", "--steps", "1")
    args[args.index("--student") + 1] = str(tmp_path / "alien")
    assert main(args) == 2
    assert "tokenizers differ: token id" in capsys.readouterr().err
