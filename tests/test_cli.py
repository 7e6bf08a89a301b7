"""CLI: ``opdplus train`` end to end on tiny models saved to disk, config files, user errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from opdplus import models
from opdplus import tasks
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
        (
            ["--prompts", "opdplus-no-such-org/no-such-dataset", "--prompts-config", "main"],
            "could not load hub dataset 'opdplus-no-such-org/no-such-dataset' (config 'main', "
            "split 'train')",
        ),
        (["--prompt-column", "body"], "no column 'body'; the columns are ['prompt']"),
        (["--loss", "logits", "--gamma", "1"], "gamma=1.0 would be ignored"),
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


ROOT = Path(__file__).resolve().parents[1]


def test_tiny_world_trains_by_directory_paths_alone(tmp_path, capsys):
    """The shipped checkpoints carry their tokenizer, and the shipped split its 'question'."""
    data = tasks.default_data_dir()
    args = [
        "train",
        "--teacher",
        str(data / "teacher"),
        "--student",
        str(data / "student"),
        "--prompts",
        str(data / "train.jsonl"),
        "--out",
        str(tmp_path / "tw"),
        "--steps",
        "2",
        "--use-chat-template",
        "--eval-samples",
        "1",
        *FAST,
    ]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "prompts from" in err and "column 'question'" in err
    hist = records(tmp_path / "tw")
    assert [r["step"] for r in hist] == [0, 1]
    assert hist[-1]["teacher_kl"] > 0 and hist[-1]["grad_norm"] > 0


def test_resume_without_a_checkpoint_says_how_many_steps_were_lost(world, tmp_path, capsys):
    """A run stopped before its first checkpoint: --resume names the lost steps and the fix."""
    out = tmp_path / "lost"
    from opdplus import trainer

    real_step = trainer.train_step

    def dies_at_step_3(state, step):
        if step == 3:
            raise KeyboardInterrupt  # what a Ctrl-C between checkpoints leaves behind
        return real_step(state, step)

    trainer.train_step = dies_at_step_3
    try:
        with pytest.raises(KeyboardInterrupt):
            main(base_args(world, out, "--steps", "6", "--checkpoint-every", "0"))
    finally:
        trainer.train_step = real_step
    assert len(records(out)) == 3 and not (out / "checkpoint" / LATEST).exists()
    assert main(base_args(world, out, "--steps", "6", "--checkpoint-every", "0", "--resume")) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "records 3 finished step(s)" in err
    assert "those 3 step(s) are lost" in err and "Start again without resume" in err
    assert "checkpoint_every=0, checkpoint_minutes=15" in err  # the settings to change


# A CLI run with default checkpoint settings that slows down after step 52, so that the test
# can kill it mid-run (the default checkpoint at step 50 is on disk by then).
CLI_RUNNER = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from opdplus import cli, trainer
    real_step = trainer.train_step
    def step_then_report(state, step):
        rec = real_step(state, step)
        if step >= 52:
            print("STEP", step, flush=True)
            time.sleep(float(sys.argv[1]))
        return rec
    trainer.train_step = step_then_report
    sys.exit(cli.main(["train", *sys.argv[2:]]))
""")


@pytest.mark.slow
def test_default_flags_sigkill_and_resume_gives_the_uninterrupted_history(world, tmp_path):
    script = tmp_path / "cli_runner.py"
    script.write_text(CLI_RUNNER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}

    def launch(out, *extra, pause=0.0):
        # default checkpoint flags; the smallest batch, since only the bookkeeping is tested
        args = base_args(world, out, "--steps", "60", "--prompts-per-step", "2",
                         "--samples-per-prompt", "1", "--max-new-tokens", "4", *extra)[1:]
        return subprocess.Popen(
            [sys.executable, str(script), str(pause), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    ref = launch(tmp_path / "ref")
    victim = launch(tmp_path / "run", pause=2.0)
    for line in victim.stdout:
        if line.strip() == "STEP 52":  # checkpoint step-000050 exists; the run goes on
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=300)
    assert victim.returncode == -signal.SIGKILL
    _, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-2000:]
    assert len(records(tmp_path / "run")) == 52  # killed mid-run, during step 52
    assert (tmp_path / "run" / "checkpoint" / LATEST).read_text().strip() == "step-000050"
    resumed = launch(tmp_path / "run", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert out.split()[:2] == ["STEP", "52"], "the resumed run redid steps 50 and 51 silently"
    a, b = records(tmp_path / "ref"), records(tmp_path / "run")
    assert len(a) == len(b) == 60

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in rs]

    assert strip(a) == strip(b)  # float equality on CPU


def test_one_shared_tokenizer_for_a_student_saved_without_one(world, tmp_path, capsys):
    bare = tmp_path / "bare_student"
    models.load_causal_lm(str(world / "student")).save_pretrained(bare)  # weights only
    args = base_args(world, tmp_path / "out", "--steps", "1")
    args[args.index("--student") + 1] = str(bare)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "could not load the student's tokenizer" in err and "or pass --tokenizer" in err
    assert main([*args, "--tokenizer", str(world / "teacher")]) == 0
    assert len(records(tmp_path / "out")) == 1


@pytest.mark.parametrize(
    "flags, kept",
    [
        (["--checkpoint-every", "0", "--checkpoint-minutes", "0.000001"], [1, 2, 3]),  # by time
        (["--checkpoint-every", "2", "--checkpoint-minutes", "0"], [2, 3]),  # by steps
        (["--checkpoint-every", "0", "--checkpoint-minutes", "0"], [3]),  # never: the last only
    ],
)
def test_checkpoint_intervals_by_steps_or_wall_clock(world, tmp_path, flags, kept):
    out = tmp_path / "ck"
    assert main(base_args(world, out, "--steps", "3", "--keep-checkpoints", "5", *flags)) == 0
    names = sorted(p.name for p in (out / "checkpoint").glob("step-*"))
    assert names == [f"step-{s:06d}" for s in kept]


def test_yaml_config_types(world, tmp_path, capsys):
    """YAML 1.1 reads ``1e-5`` as a string and ``true`` as a bool: one is a number, one an error."""
    run = {"teacher": str(world / "teacher"), "student": str(world / "student"),
           "prompts": str(world / "prompts.jsonl"), "prompts_per_step": 4,
           "samples_per_prompt": 2, "max_new_tokens": 6, "progress": False}
    text = yaml.safe_dump(run) + "lr: 1e-5\nsteps: 1\n"
    (tmp_path / "ok.yaml").write_text(text + f"out: {tmp_path / 'ok'}\n")
    assert main(["train", "--config", str(tmp_path / "ok.yaml")]) == 0
    state = json.loads((tmp_path / "ok" / "checkpoint" / "step-000001" / "trainer_state.json")
                       .read_text())
    assert state["config"]["lr"] == 1e-5
    (tmp_path / "bad.yaml").write_text(text.replace("steps: 1", "steps: true")
                                       + f"out: {tmp_path / 'bad'}\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "steps must be an int, got the bool True" in capsys.readouterr().err
