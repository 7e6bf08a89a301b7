"""Fast checks of the trainer's plumbing that a mutation run found unguarded.

Each test pins a behaviour whose one-line corruption passed every other fast test:
which EOS ids generation stops at, a frozen teacher, the wall-clock checkpoint interval,
the progress bar's silence when quiet, the evaluation's default temperature, and the chat
prompt's generation header, clean decoded completions, GSM8K's default split; and the three
left as follow-ups the first time: the resumed-config comparison over the union of keys, the
sample-text log's guard when no tokenizer is given, the ``history.json`` name in the "steps
lost" message.

Survivors of that sample (data/reference/mutation/after_records.json) accepted, not killed:
- equivalent: a sentinel 10**9 -> 10**10 for "no length cap"; a stats key renamed in a
  tuple that only names the keys; ``sum * nan`` -> ``sum / nan``; the default string of a
  ``getattr`` whose attribute always exists; numpy's ``has_gauss`` replaced by the cached
  Gaussian (both 0 unless a Gaussian is cached, which nothing here draws);
- GPU or multi-process only, checked by the GPU tests and the two-process test (not in
  the fast list): the CUDA RNG key of a checkpoint, ``Accelerator(cpu=...)`` on a machine
  without a GPU, the fp16 overflow flag, the broadcast checkpoint decision;
- not observable without a power cut: which directories are fsynced after a checkpoint.
"""

import math
import time
from types import SimpleNamespace

import pytest
import torch

from opdplus import evaluation, models, trainer
from opdplus.config import TrainConfig

WORDS = [f"w{i}" for i in range(24)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_with_generation_eos(eos):
    return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))


@pytest.mark.parametrize("gen_eos", [7, [2, 7]])
def test_eos_ids_add_the_models_end_of_turn_tokens_to_the_tokenizers(gen_eos):
    tok = SimpleNamespace(eos_token_id=2)
    model = _model_with_generation_eos(gen_eos)
    assert sorted(trainer._eos_ids(tok, model)) == [2, 7]
    assert evaluation._eos_ids(model, tok) == [2, 7]
    assert trainer._eos_ids(tok, SimpleNamespace()) == [2]  # no generation config


def test_setup_freezes_the_teacher_and_puts_it_in_eval_mode():
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1, seed=2, **IDS)
    teacher.train()
    cfg = TrainConfig(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4)
    trainer.setup(student, teacher, TOK, ["w3 w4", "w5"], cfg)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("minutes, elapsed_s, due", [
    (15, 5.0, False), (15, 899.0, False), (15, 901.0, True), (0.5, 29.0, False), (0.5, 31.0, True),
])
def test_wall_clock_checkpoint_interval_is_in_minutes(minutes, elapsed_s, due):
    cfg = TrainConfig(steps=1000, checkpoint_every=0, checkpoint_minutes=minutes)
    acc = SimpleNamespace(num_processes=1)
    t_saved = time.perf_counter() - elapsed_s
    assert trainer._checkpoint_due(acc, cfg, step=3, last=False, t_saved=t_saved) is due
    assert trainer._checkpoint_due(acc, cfg, step=3, last=True, t_saved=time.perf_counter())


def test_training_writes_no_progress_bar_when_quiet(monkeypatch, capfd):
    monkeypatch.setenv("OPDPLUS_QUIET", "1")
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1, seed=2, **IDS)
    cfg = TrainConfig(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4,
                      progress=True, checkpoint_every=0, checkpoint_minutes=0)
    trainer.train(student, teacher, TOK, ["w3 w4", "w5"], cfg)
    err = capfd.readouterr().err
    assert "it/s" not in err and "s/it" not in err and "%|" not in err, err


def test_teacher_kl_eval_defaults_to_four_samples_at_temperature_one():
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1, seed=2, **IDS)
    prompts = ["w3 w4", "w5", "w6 w7 w8"]
    kw = dict(max_new_tokens=6, seed=5)
    default = trainer.teacher_kl_eval(teacher, TOK, prompts, **kw)(student)
    documented = trainer.teacher_kl_eval(teacher, TOK, prompts, temperature=1.0,
                                         samples_per_prompt=4, **kw)(student)
    at_two = trainer.teacher_kl_eval(teacher, TOK, prompts, temperature=2.0,
                                     samples_per_prompt=4, **kw)(student)
    five = trainer.teacher_kl_eval(teacher, TOK, prompts, samples_per_prompt=5, **kw)(student)
    assert default == documented
    assert default != at_two and default != five


def test_chat_prompt_ends_with_the_assistant_header():
    class ChatTokenizer:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False
            text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
            return text + ("<assistant>" if add_generation_prompt else "")

    assert evaluation.chat_prompt(ChatTokenizer(), "2+2?") == "<user>2+2?</user><assistant>"


def test_evaluate_records_completions_without_special_tokens(monkeypatch):
    tok = models.word_tokenizer(["5", "7", "w"], chat_template=None)
    five, eos, pad = tok.convert_tokens_to_ids("5"), tok.eos_token_id, tok.pad_token_id
    model = models.tiny_causal_lm("llama", len(tok), hidden_size=16, num_layers=1, seed=0,
                                  eos_token_id=eos, pad_token_id=pad, bos_token_id=1)

    def scripted_generate(model, input_ids_BT, *args, **kwargs):  # "5", then EOS and padding
        return torch.tensor([[five, eos, pad]] * input_ids_BT.shape[0])

    monkeypatch.setattr(evaluation, "generate", scripted_generate)
    problems = [{"question": "w", "answer": "#### 5"}, {"question": "w w", "answer": "#### 7"}]
    res = evaluation.evaluate(model, tok, problems, prompt_fn=lambda q: q, max_new_tokens=3)
    assert [r["completions"] for r in res.records] == [["5"], ["5"]]


def test_load_gsm8k_reads_the_test_split_by_default(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": f"q {split}", "answer": "#### 1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert evaluation.load_gsm8k() == [{"question": "q test", "answer": "#### 1"}]
    assert calls == [("openai/gsm8k", "main", "test")]


def test_resume_refuses_a_key_present_on_one_side_only(tmp_path):
    now = TrainConfig(steps=4)
    saved = now.to_dict()
    trainer._check_resumable(dict(saved), now, tmp_path)  # same config: resumes
    older = {k: v for k, v in saved.items() if k != "gamma"}  # a checkpoint without the key
    with pytest.raises(trainer.CheckpointError, match="gamma"):
        trainer._check_resumable(older, TrainConfig(steps=4, gamma=1.0), tmp_path)
    with pytest.raises(trainer.CheckpointError, match="from_the_future"):
        trainer._check_resumable({**saved, "from_the_future": 1}, now, tmp_path)
    changed = {**saved, "steps": 2}  # steps may change when resuming (RESUMABLE_CHANGES)
    assert "steps" in trainer.RESUMABLE_CHANGES
    trainer._check_resumable(changed, now, tmp_path)


def test_no_checkpoint_message_counts_the_steps_in_history_json(tmp_path):
    cfg = TrainConfig(steps=10, checkpoint_every=5, checkpoint_minutes=15)
    assert "lost" not in trainer._no_checkpoint_message(tmp_path, cfg)
    trainer.History([{"step": i} for i in range(3)]).save(tmp_path / "history.json")
    msg = trainer._no_checkpoint_message(tmp_path, cfg)
    assert "records 3 finished step(s)" in msg and "checkpoint_every=5" in msg


def test_a_step_without_a_tokenizer_logs_no_sample_text():
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1, seed=2, **IDS)
    cfg = TrainConfig(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4,
                      checkpoint_every=0, checkpoint_minutes=0)
    state = trainer.setup(student, teacher, TOK, ["w3 w4", "w5"], cfg)
    assert "sample" in trainer.train_step(state, 0)
    state.tokenizer = None
    rec = trainer.train_step(state, 1)
    assert "sample" not in rec and math.isfinite(rec["loss"])
