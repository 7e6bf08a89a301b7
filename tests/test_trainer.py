"""Trainer: config checks, every mode, normalisation, non-finite steps, checkpoints, learning."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from opdplus import models
from opdplus.checkpoint import LATEST, CheckpointError, History, verify_checkpoint
from opdplus.config import TrainConfig, field_docs, preset
from opdplus.estimators import pg_loss
from opdplus.prompts import encode_prompts
from opdplus.sampler import score
from opdplus.trainer import (
    VOLATILE_KEYS,
    NonFiniteLossError,
    accumulate_gradients,
    collect_rollouts,
    setup,
    teacher_kl_eval,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(40)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
PROMPTS = [" ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 4)) for i in range(64)]
SMALL = TrainConfig(
    steps=2, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, lr=1e-2, progress=False
)


# Tiny models: one thread is several times faster than two on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def pair(arch="llama", seed=0):
    teacher = models.peaky_teacher(V, arch=arch, seed=1 + seed, **IDS)
    student = models.tiny_causal_lm(arch, V, hidden_size=32, num_layers=1, seed=2 + seed, **IDS)
    return teacher, student


def strip(history):
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in history]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(divergence="kl"), "unknown divergence"),
        (dict(divergence="jsd", divergence_params={"beta": 0.0}), "beta"),
        (dict(estimator="ppo"), "estimator"),
        (dict(loss="mse"), "loss"),
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(baseline="mean"), "baseline"),
        (dict(clip_log_u=0.0), "clip_log_u"),
        (dict(max_importance_ratio=0.5), "max_importance_ratio"),
        (dict(steps=0), "steps"),
        (dict(lr=-1e-3), "lr"),
        (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(samples_per_prompt=0), "samples_per_prompt"),
        (dict(prompts_per_step=6, micro_batch_prompts=4), "micro_batch_prompts"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(mix_lambda=1.2), "mix_lambda"),
        (dict(mix_lambda=0.5, mix_source="dataset"), "loss='logits'"),
        (dict(seqkd_warmup_steps=5, steps=5), "seqkd_warmup_steps"),
        (dict(baseline="loo", samples_per_prompt=1), "loo"),
        (dict(temperature=0.0), "greedy"),
        (dict(max_nonfinite_steps=-1), "max_nonfinite_steps"),
        (dict(mixed_precision="fp8"), "mixed_precision"),
    ],
)
def test_config_rejects_out_of_range(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**change)


def test_config_presets_roundtrip_and_docs():
    smoke, full = preset("smoke"), preset("full", lr=1e-5)
    assert smoke.steps < full.steps and full.lr == 1e-5
    assert TrainConfig.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    docs = field_docs()
    assert set(docs) == set(TrainConfig.__dataclass_fields__), "every field needs a docstring"
    assert TrainConfig(prompts_per_step=8, micro_batch_prompts=2).micro_batches(2) == (2, 2)
    with pytest.raises(ValueError, match="processes"):
        TrainConfig(prompts_per_step=4, micro_batch_prompts=4).micro_batches(2)


# ----------------------------------------------------------------------------- one step, every mode


@pytest.mark.parametrize("arch", models.ARCHS)
def test_one_training_step_per_architecture(arch):
    teacher, student = pair(arch)
    t0, s0 = snapshot(teacher), snapshot(student)
    h = train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=1))
    (rec,) = h
    for key in (
        "loss",
        "teacher_kl",
        "grad_norm",
        "completion_len",
        "truncation_frac",
        "clip_frac",
        "adv_mean",
        "adv_std",
        "tokens_per_s",
        "t_generate",
        "t_score",
        "t_backward",
    ):
        assert rec[key] is not None and torch.isfinite(torch.tensor(rec[key])), key
    assert rec["grad_norm"] > 0 and rec["tokens"] > 0 and not rec["skipped"]
    assert rec["teacher_kl"] > 1.0  # the peaky teacher is far from a fresh student
    assert not same_weights(snapshot(student), s0)
    assert same_weights(snapshot(teacher), t0)


@pytest.mark.parametrize(
    "change",
    [
        dict(loss="logits"),
        dict(baseline="analytic"),
        dict(baseline="loo"),
        dict(gamma=1.0, divergence="forward_kl"),
        dict(temperature=0.7, top_k=5, top_p=0.9, max_importance_ratio=5.0),
        dict(mix_lambda=1.0),
        dict(mix_lambda=1.0, mix_source="dataset", loss="logits"),
        dict(seqkd_warmup_steps=1),
        dict(
            divergence="jsd",
            divergence_params={"beta": 0.3},
            estimator="opd",
            micro_batch_prompts=1,
        ),
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_modes_run_and_report(change):
    teacher, student = pair()
    prompts = [{"prompt": p, "completion": "w1 w2 w3"} for p in PROMPTS]
    h = train(student, teacher, TOK, prompts, SMALL.replace(**change))
    assert len(h) == 2
    for rec in h:
        assert rec["loss"] is not None and abs(rec["loss"]) < 1e6 and rec["grad_norm"] > 0
    off = [r["offpolicy_shards"] for r in h]
    if change.get("mix_lambda") == 1.0:
        assert off == [1, 1] and h[0]["teacher_kl"] is None  # no student rollouts in these steps
    elif "seqkd_warmup_steps" in change:
        assert off == [1, 0] and h[1]["teacher_kl"] is not None
    else:
        assert off == [0, 0]


def test_loss_is_normalised_by_the_global_token_count():
    teacher, student = pair()
    cfg = SMALL.replace(
        micro_batch_prompts=1, max_new_tokens=40
    )  # 4 micro-batches, different lengths
    state = setup(student, teacher, TOK, PROMPTS, cfg)
    rollouts = collect_rollouts(state, 0)
    lengths = [r.num_tokens for _, r in rollouts]
    assert len(rollouts) == 4 and len(set(lengths)) > 1
    stats = accumulate_gradients(state, rollouts)
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    def manual(normaliser):
        total = 0.0
        for (_, r), n in zip(rollouts, normaliser):
            s, t = score(student, r, grad=True), score(teacher, r)
            loss, _ = pg_loss(
                s.logp_BT,
                t.logp_BT,
                r.completion_mask,
                "reverse_kl",
                "opd+",
                sampler_logp_BT=r.sampler_logp,
                num_tokens=n,
            )
            loss.backward()
            total += float(loss.detach())
        grads = {n: p.grad.clone() for n, p in student.named_parameters()}
        student.zero_grad(set_to_none=True)
        return total, grads

    N = sum(lengths)
    loss_global, grads_global = manual([N] * 4)
    assert stats["tokens"] == N and abs(stats["loss"] - loss_global) < 1e-6
    for k in got:
        torch.testing.assert_close(got[k], grads_global[k], atol=1e-7, rtol=1e-5)
    # the per-micro-batch mean is a different estimator: the test can tell them apart
    _, grads_local = manual([n * 4 for n in lengths])
    assert any((got[k] - grads_local[k]).abs().max() > 1e-5 for k in got)


# ----------------------------------------------------------------------------- non-finite steps


def _poison(model, on):
    w = model.get_output_embeddings().weight
    with torch.no_grad():
        if on:
            model._saved = w[0, 0].clone()
            w[0, 0] = float("nan")
        else:
            w[0, 0] = model._saved


def test_nonfinite_step_is_skipped_and_training_continues():
    teacher, student = pair()
    weights = {}

    def cb(step, rec, history):
        weights[step] = snapshot(student)
        if step == 0:
            _poison(teacher, True)
        if step == 1:
            _poison(teacher, False)

    h = train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=3), callbacks=[cb])
    assert [r["skipped"] for r in h] == [False, True, False]
    assert h[1]["loss"] is None and h[1]["grad_norm"] is None and h[1]["nonfinite_steps"] == 1
    assert same_weights(weights[0], weights[1])  # the poisoned step changed nothing
    assert not same_weights(weights[1], weights[2])


def test_too_many_nonfinite_steps_stop_with_a_clear_error(tmp_path):
    teacher, student = pair()
    s0 = snapshot(student)
    _poison(teacher, True)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=1"):
        train(
            student,
            teacher,
            TOK,
            PROMPTS,
            SMALL.replace(steps=5, max_nonfinite_steps=1),
            out_dir=tmp_path,
        )
    assert same_weights(snapshot(student), s0)
    saved = History.load(tmp_path / "history.json")
    assert [r["skipped"] for r in saved] == [True, True]


# ----------------------------------------------------------------------------- prompts


def test_prompt_problems_fail_before_compute():
    teacher, student = pair()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        train(student, teacher, TOK, ["w1", "  "], SMALL)
    with pytest.raises(ValueError, match="prompt 0 has 5 tokens"):
        train(student, teacher, TOK, ["w1 w2 w3 w4"], SMALL.replace(max_prompt_tokens=3))
    with pytest.raises(ValueError, match="no room"):
        train(student, teacher, TOK, ["w1"], SMALL.replace(max_new_tokens=300))  # context is 256
    h = train(
        student,
        teacher,
        TOK,
        ["w1 w2 w3 w4"] * 4,
        SMALL.replace(steps=1, max_prompt_tokens=3, prompt_truncation="left"),
    )
    assert len(h) == 1


def test_history_file_callbacks_and_eval(tmp_path):
    teacher, student = pair()
    seen = []
    ev = teacher_kl_eval(teacher, TOK, PROMPTS[:4], samples_per_prompt=2, max_new_tokens=8)
    assert ev(student) == ev(student)  # fresh rollouts, common random numbers
    h = train(
        student,
        teacher,
        TOK,
        PROMPTS,
        SMALL.replace(steps=3, eval_every=2),
        eval_fn=ev,
        callbacks=[lambda s, r, hist: seen.append((s, len(hist)))],
        out_dir=tmp_path,
    )
    assert seen == [(0, 1), (1, 2), (2, 3)]
    assert [("eval_teacher_kl" in r) for r in h] == [False, True, True]
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert strip(on_disk) == strip(json.loads(json.dumps(h)))
    assert (tmp_path / "checkpoint" / LATEST).read_text().strip() == "step-000003"
    nan = History([{"step": 0, "loss": float("nan")}])
    nan.save(tmp_path / "h.json")
    assert History.load(tmp_path / "h.json")[0]["loss"] is None


# ----------------------------------------------------------------------------- checkpoints

RUNNER = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from opdplus import models
    from opdplus.trainer import train, TrainConfig
    out, steps = sys.argv[1], int(sys.argv[2])
    resume, pause = sys.argv[3] == "1", float(sys.argv[4])
    tok = models.word_tokenizer([f"w{{i}}" for i in range(40)])
    ids = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
    teacher = models.peaky_teacher(len(tok), seed=1, **ids)
    student = models.tiny_causal_lm("llama", len(tok), hidden_size=32, num_layers=1, seed=2, **ids)
    prompts = [" ".join(f"w{{(i * 7 + j * 3) % 40}}" for j in range(1 + i % 4)) for i in range(64)]
    cfg = TrainConfig(steps=steps, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8,
                      lr=1e-2, checkpoint_every=2, progress=False)
    def report(step, record, history):
        print("STEP", step, flush=True)
        if step >= 4:
            time.sleep(pause)  # leaves the parent time to kill a run that is still going
    train(student, teacher, tok, prompts, cfg, out_dir=out, resume=resume, callbacks=[report])
""")


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_history(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(root=str(ROOT)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def launch(out, steps, resume, pause=0.0):
        return subprocess.Popen(
            [sys.executable, str(script), str(out), str(steps), "1" if resume else "0", str(pause)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    ref = launch(tmp_path / "ref", 8, False)
    victim = launch(tmp_path / "run", 8, False, pause=1.0)
    for line in victim.stdout:
        if line.strip() == "STEP 4":  # checkpoint step-000004 exists; the run goes on
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=120)
    assert victim.returncode == -signal.SIGKILL
    assert ref.wait(timeout=120) == 0
    partial = History.load(tmp_path / "run" / "history.json")
    assert len(partial) >= 5  # the killed run got past its last checkpoint
    resumed = launch(tmp_path / "run", 8, True)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert out.split()[:2] == ["STEP", "4"], "resumption starts after the checkpoint at step 4"
    a = History.load(tmp_path / "ref" / "history.json")
    b = History.load(tmp_path / "run" / "history.json")
    assert len(a) == len(b) == 8
    assert strip(a) == strip(b)  # float equality on CPU


def test_crash_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = SMALL.replace(steps=6, checkpoint_every=2)
    teacher, student = pair()
    reference = train(student, teacher, TOK, PROMPTS, cfg)

    real_save, calls = torch.save, []

    def crashing_save(obj, f, *a, **kw):
        if str(f).endswith("optimizer.pt"):
            calls.append(f)
            if len(calls) == 2:
                Path(f).write_bytes(b"half a file")
                raise OSError("simulated crash while writing the checkpoint")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", crashing_save)
    teacher, student = pair()
    with pytest.raises(OSError, match="simulated crash"):
        train(student, teacher, TOK, PROMPTS, cfg, out_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    root = tmp_path / "checkpoint"
    assert (root / LATEST).read_text().strip() == "step-000002"
    assert (root / ".tmp-step-000004").is_dir() and not (root / "step-000004").exists()
    verify_checkpoint(root / "step-000002")
    teacher, student = pair()
    resumed = train(student, teacher, TOK, PROMPTS, cfg, out_dir=tmp_path, resume=True)
    assert strip(resumed) == strip(reference)
    assert (root / LATEST).read_text().strip() == "step-000006"
    assert not (root / ".tmp-step-000004").exists()
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000004", "step-000006"]


def test_missing_corrupt_or_mismatched_checkpoints_give_clear_errors(tmp_path):
    teacher, student = pair()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(student, teacher, TOK, PROMPTS, SMALL, out_dir=tmp_path / "empty", resume=True)
    train(student, teacher, TOK, PROMPTS, SMALL, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        train(student, teacher, TOK, PROMPTS, SMALL, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="lr: 0.01 -> 0.02"):
        train(
            student,
            teacher,
            TOK,
            PROMPTS,
            SMALL.replace(steps=3, lr=2e-2),
            out_dir=tmp_path,
            resume=True,
        )
    weights = tmp_path / "checkpoint" / "step-000002" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt"):
        train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=3), out_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint" / LATEST).write_text("step-000099\n")
    with pytest.raises(CheckpointError, match="damaged"):
        train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=3), out_dir=tmp_path, resume=True)


# ----------------------------------------------------------------------------- learning


def test_opd_learns_and_forward_kl_opd_collapses():
    """40 steps, 8 prompts x 4 samples, lr 1e-2: a 1-layer student distils a peaky 2-layer teacher.

    Checked on fresh student rollouts (fixed seed, 16 prompts x 4): the teacher reverse KL
    falls by at least 15% for reverse-KL OPD and for forward-KL OPD+; forward-KL OPD shows
    the collapse signature: its teacher KL rises by at least 20% and its largest gradient
    norm is at least 5x that of forward-KL OPD+. (Seed 0 measured 3.86 -> 1.20, 3.86 ->
    1.42 and 3.86 -> 5.69 with max grad norms 3.8 / 8.1 / 79; seeds 1-3 keep these margins.)
    """
    ev = teacher_kl_eval(
        pair()[0], TOK, PROMPTS[:16], samples_per_prompt=4, max_new_tokens=12, seed=99
    )
    cfg = TrainConfig(
        steps=40,
        lr=1e-2,
        prompts_per_step=8,
        samples_per_prompt=4,
        max_new_tokens=12,
        progress=False,
    )
    result = {}
    for div, est in [("reverse_kl", "opd"), ("forward_kl", "opd+"), ("forward_kl", "opd")]:
        teacher, student = pair()
        before = ev(student)["teacher_kl"]
        h = train(student, teacher, TOK, PROMPTS, cfg.replace(divergence=div, estimator=est))
        result[div, est] = (before, ev(student)["teacher_kl"], max(h.column("grad_norm")))
    print({k: tuple(round(x, 3) for x in v) for k, v in result.items()})
    for arm in [("reverse_kl", "opd"), ("forward_kl", "opd+")]:
        before, after, _ = result[arm]
        assert after < 0.85 * before, (arm, before, after)
    before, after, gmax = result["forward_kl", "opd"]
    assert after > 1.2 * before, (before, after)
    assert gmax > 5 * result["forward_kl", "opd+"][2]


# ----------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "student_dtype, precision", [(torch.bfloat16, "no"), (torch.float32, "bf16")]
)
def test_gpu_bf16_sdpa_training_step(student_dtype, precision):
    teacher, student = pair()
    teacher = teacher.to("cuda", torch.bfloat16)
    student = student.to("cuda", student_dtype)
    assert student.config._attn_implementation == "sdpa"
    h = train(student, teacher, TOK, PROMPTS, SMALL.replace(mixed_precision=precision))
    assert all(r["loss"] is not None and r["grad_norm"] > 0 for r in h)
    assert h[-1]["peak_mem_mb"] > 0


def test_consecutive_runs_may_change_precision():
    """A notebook can run one training after another with different settings (one process)."""
    for precision in ("no", "bf16", "auto"):
        teacher, student = pair()
        h = train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=1, mixed_precision=precision))
        assert h[0]["loss"] is not None and h[0]["grad_norm"] > 0


def test_chat_template_prompts():
    chat_tok = models.word_tokenizer(WORDS, chat_template=models.SIMPLE_CHAT_TEMPLATE)
    enc = encode_prompts(chat_tok, ["w1 w2"], max_prompt_tokens=50, use_chat_template=True)
    assert chat_tok.decode(enc.prompt_ids[0]) == "<user> w1 w2 <assistant>"
    teacher, student = pair()
    h = train(student, teacher, chat_tok, PROMPTS, SMALL.replace(steps=1, use_chat_template=True))
    assert h[0]["grad_norm"] > 0
    with pytest.raises(ValueError, match="no chat template"):
        train(student, teacher, TOK, PROMPTS, SMALL.replace(steps=1, use_chat_template=True))


def test_train_checks_a_separate_teacher_tokenizer_before_any_compute():
    from opdplus.preflight import TokenizerMismatchError

    teacher, student = pair()
    before = snapshot(student)
    other = models.word_tokenizer(WORDS[:-1] + ["zzz"])
    with pytest.raises(TokenizerMismatchError, match="'zzz' in the teacher's vocabulary and 'w39'"):
        train(student, teacher, TOK, PROMPTS, SMALL, teacher_tokenizer=other)
    after = snapshot(student)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was trained
    twin = models.word_tokenizer(WORDS)
    assert len(train(student, teacher, TOK, PROMPTS, SMALL, teacher_tokenizer=twin)) == 2
