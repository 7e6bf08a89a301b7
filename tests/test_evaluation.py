"""Grading, confidence intervals, the generation loop, evaluate() and the GSM8K loader."""

import json
import math
import random
import string

import pytest
import torch

from opdplus import evaluation as ev
from opdplus import tasks, tinyworld


# ----------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    ("15*2=30. 30-5=25. #### 25", "25"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### $5", "5"),
    ("#### $ 1,000.50", "1000.50"),
    ("#### -7", "-7"),
    ("####-7", "-7"),
    ("#### - 7", "-7"),
    ("#### 2 5", "25"),           # digit tokens joined by spaces (naive decode)
    ("#### 1 5 0 apples", "150"),
    ("#### 25 3", "25"),          # only single digits are rejoined
    ("#### 25.", "25"),
    ("#### 12.50", "12.50"),
    ("#### 3 then later #### 4", "4"),   # the last marker wins
    ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{-1,000}", "-1000"),
    ("\\boxed{\\frac{1}{2}}", "1/2"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{{7}}", "7"),
    ("#### 9 and \\boxed{8}", "9"),      # #### wins over \boxed
    ("\\ boxed { 2 5 }", "25"),
])
def test_extract_answer(text, expected):
    assert ev.extract_answer(text) == expected


@pytest.mark.parametrize("text", [
    "", "no answer here", "the answer is 25", "####", "#### abc", "#### -", "\\boxed{",
    "\\boxed{x}", "\\boxed{\\frac{1}{0}}", "#### #### ####", None, 25,
])
def test_unparseable_answers_are_none(text):
    assert ev.extract_answer(text) is None


def test_grade_compares_numbers():
    assert ev.grade("A: 3*12=36. #### 36.0", "36")
    assert ev.grade("#### 1,000", 1000)
    assert ev.grade("\\boxed{\\frac{1}{2}}", "0.5")
    assert ev.grade("#### -4", "-4")
    assert not ev.grade("#### 35", "36")
    assert not ev.grade("#### 4", "-4")
    assert not ev.grade("the answer is 36", "36")   # no marker: wrong, not guessed
    assert not ev.grade("#### 36", "not a number")


def test_grading_never_crashes_on_garbage():
    rng = random.Random(0)
    alphabet = string.printable + "#$\\{}—½٣"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.5:
            s = rng.choice(["#### ", "\\boxed{", "####-"]) + s
        ans = ev.extract_answer(s)
        assert ans is None or ev.to_fraction(ans) is not None
        ev.grade(s, "7")


def test_grading_agrees_with_reasoning_gym_scorer():
    rg_utils = pytest.importorskip("reasoning_gym.utils")
    rng = random.Random(1)
    for _ in range(300):
        oracle = str(rng.randint(-500, 5000))
        guess = rng.choice([oracle, str(int(oracle) + rng.randint(1, 9)),
                            f"{int(oracle):,}", oracle + ".0", oracle + ".5"])
        ours = ev.grade(f"#### {guess}", oracle)
        theirs = rg_utils.compute_decimal_reward(guess, oracle) == 1.0
        assert ours == theirs, (guess, oracle)


# ----------------------------------------------------------------------------- intervals

def test_wilson_matches_hand_computed_values():
    # 8/10: centre (0.8 + z^2/20) / (1 + z^2/10), half-width from the score formula, by hand.
    lo, hi = ev.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)
    # 0/n has the closed form upper = z^2 / (n + z^2).
    z2 = ev.Z95 ** 2
    assert ev.wilson_interval(0, 20) == pytest.approx((0.0, z2 / (20 + z2)))
    assert ev.wilson_interval(20, 20) == pytest.approx((20 / (20 + z2), 1.0))


@pytest.mark.parametrize("x, n", [(1, 7), (13, 40), (161, 200), (3, 300)])
def test_wilson_bounds_solve_the_score_equation(x, n):
    # The Wilson bounds are the roots in p of (x/n - p)^2 = z^2 p (1 - p) / n.
    for p in ev.wilson_interval(x, n):
        assert (x / n - p) ** 2 == pytest.approx(ev.Z95 ** 2 * p * (1 - p) / n, abs=1e-12)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        ev.wilson_interval(5, 4)


def test_mean_interval_by_hand():
    # scores 1, 0, 1, 1: mean 0.75, sample sd 0.5, half-width 1.96 * 0.5 / 2.
    lo, hi = ev.mean_interval([1, 0, 1, 1])
    assert lo == pytest.approx(0.75 - ev.Z95 * 0.25) and hi == 1.0  # clipped
    lo, hi = ev.mean_interval([0.25, 0.5, 0.75])
    assert (lo + hi) / 2 == pytest.approx(0.5)
    assert hi - lo == pytest.approx(2 * ev.Z95 * 0.25 / math.sqrt(3))


# ----------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def tok():
    return tinyworld.tiny_world_tokenizer()


@pytest.fixture(scope="module")
def random_model(tok):
    return tinyworld.build_model(tinyworld.STUDENT, tok, seed=3).eval()


@pytest.fixture(scope="module")
def problems():
    return tasks.generate_split("test", 12, seed=11)


def _left_padded(tok, problems):
    tok.padding_side = "left"
    return tok([tinyworld.format_prompt(p["question"]) for p in problems], return_tensors="pt",
               padding=True, add_special_tokens=False)


def test_greedy_loop_matches_hf_generate(tok, random_model, problems):
    enc = _left_padded(tok, problems)
    assert (enc["attention_mask"] == 0).any()  # the batch really is padded
    ours = ev.generate(random_model, enc["input_ids"], enc["attention_mask"], 12,
                       tok.eos_token_id, tok.pad_token_id)
    ref = random_model.generate(**enc, max_new_tokens=12, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ref = ref[:, enc["input_ids"].shape[1]:]
    assert torch.equal(ours, ref[:, :ours.shape[1]])


def test_sampling_uses_only_the_given_generator(tok, random_model, problems):
    enc = _left_padded(tok, problems)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return ev.generate(random_model, enc["input_ids"], enc["attention_mask"], 10,
                           tok.eos_token_id, tok.pad_token_id, greedy=False, generator=g)

    torch.manual_seed(0)
    a = sample(1)
    torch.manual_seed(99)  # the global RNG must not matter
    assert torch.equal(a, sample(1))
    assert not torch.equal(a, sample(2))


def test_evaluate_records_and_metrics(tok, random_model, problems):
    res = ev.evaluate(random_model, tok, problems, max_new_tokens=8, batch_size=5)
    assert res.n == len(problems) and res.k == 1 and res.metric == "pass@1"
    assert "Wilson" in res.ci_method
    assert res.accuracy == sum(r["correct"][0] for r in res.records) / res.n
    assert 0 <= res.ci_low <= res.accuracy <= res.ci_high <= 1
    assert [r["target"] for r in res.records] == [str(p["final"]) for p in problems]

    g = torch.Generator().manual_seed(0)
    res4 = ev.evaluate(random_model, tok, problems, k=4, greedy=False, max_new_tokens=8,
                       generator=g)
    assert res4.metric == "avg@4" and "design effect" in res4.ci_method
    assert (res4.ci_low, res4.ci_high) == ev.avg_at_k_interval([r["score"] for r in res4.records], 4)
    assert all(len(r["completions"]) == 4 for r in res4.records)
    with pytest.raises(ValueError, match="greedy"):
        ev.evaluate(random_model, tok, problems, k=2, greedy=True)


def test_evaluate_counts_correct_answers(tok, random_model, problems, monkeypatch):
    # Replace generation by an oracle that answers the first half right: accuracy 1/2.
    def fake_generate(model, ids, attn, *a, **k):
        rows = []
        for i in range(ids.shape[0]):
            q = tok.decode(ids[i], skip_special_tokens=True)
            p = next(p for p in problems if p["question"] in q)
            idx = problems.index(p)
            ans = p["final"] if idx < len(problems) // 2 else p["final"] + 1
            rows.append(tok(f" #### {ans}", add_special_tokens=False)["input_ids"])
        width = max(map(len, rows))
        return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])

    monkeypatch.setattr(ev, "generate", fake_generate)
    res = ev.evaluate(random_model, tok, problems, batch_size=5)
    assert res.accuracy == 0.5
    assert res.records[0]["predictions"] == [str(problems[0]["final"])]


# ----------------------------------------------------------------------------- GSM8K

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                 "many clips in May. How many clips did Natalia sell altogether in April and "
                 "May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                 "babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she "
               "earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "A big number?", "answer": "It is 1,200 + 34.\n#### 1,234"},
]


def _write(tmp_path, lines):
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_gsm8k_local_file(tmp_path):
    path = _write(tmp_path, [json.dumps(r) for r in GSM8K_ROWS] + [""])
    rows = ev.load_gsm8k("test", path=path)
    assert [ev.target_of(r) for r in rows] == ["72", "10", "1234"]
    assert ev.grade("so #### 1,234", ev.target_of(rows[2]))


@pytest.mark.parametrize("bad, message", [
    ('{"question": "q", "answer": "#### 1"', "not valid JSON"),
    ('{"question": "q"}', "'answer'"),
    ('{"question": "", "answer": "#### 1"}', "'question'"),
    ('{"question": "q", "answer": 5}', "'answer'"),
    ('["q", "#### 1"]', "JSON object"),
    ('{"question": "q", "answer": "it is 5"}', "####"),
])
def test_malformed_gsm8k_rows_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, [json.dumps(GSM8K_ROWS[0]), bad, json.dumps(GSM8K_ROWS[1])])
    with pytest.raises(ValueError) as err:
        ev.load_gsm8k("test", path=path)
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_load_gsm8k_missing_file_and_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        ev.load_gsm8k("test", path=tmp_path / "nope.jsonl")
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="path="):
        ev.load_gsm8k("test")

    def fake_hub(name, config, split):
        assert (name, config, split) == ("openai/gsm8k", "main", "train")
        return [dict(r, extra=1) for r in GSM8K_ROWS]

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert ev.load_gsm8k("train") == GSM8K_ROWS


def test_generate_stops_at_any_of_several_eos_ids_and_slices_padded_rows():
    from opdplus import models
    from opdplus.evaluation import generate

    torch.manual_seed(0)
    lm = models.tiny_causal_lm("llama", 20, hidden_size=16, num_layers=1, tie_embeddings=False)
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    attn = torch.ones_like(ids)
    free = generate(lm, ids, attn, 6, eos_token_id=19, pad_token_id=0)
    first = free[:, 0].tolist()
    # each row's first greedy token, declared an end-of-turn id, ends that row at once
    stopped = generate(lm, ids, attn, 6, eos_token_id=[19, *first], pad_token_id=0)
    assert stopped.shape[1] == 1 and stopped[:, 0].tolist() == first
    with torch.no_grad():  # make a "padded" row the argmax everywhere
        lm.lm_head.weight[19] = 100 * lm.lm_head.weight[:19].abs().max(0).values
    assert (generate(lm, ids, attn, 4, eos_token_id=1, pad_token_id=0) == 19).any()
    assert not (generate(lm, ids, attn, 4, eos_token_id=1, pad_token_id=0, vocab_size=19) == 19).any()


# ----------------------------------------------------------------------------- single numbers


@pytest.mark.parametrize("text", [
    "#### 3/4", "#### 10-3", "#### 10 - 3", "#### 2*5", "#### 2 + 3", "#### 7=7", "#### 3/",
    "\\boxed{10-3}", "\\boxed{2*3}",
])
def test_an_answer_that_is_not_a_single_number_is_wrong(text):
    assert ev.extract_answer(text) is None
    for target in ("3", "10", "7", "2", "0.75", "6"):
        assert not ev.grade(text, target)


def test_unicode_minus_reads_as_minus():
    assert ev.extract_answer("#### \u22125") == "-5"
    assert ev.grade("so the change is #### \u22125", "-5")
    assert ev.grade("\\boxed{\u221212}", -12)
    assert ev.to_fraction("\u22123") == -3
    assert not ev.grade("#### \u22125", "5")


def test_plain_and_latex_fractions_in_boxed_still_read_as_fractions():
    assert ev.extract_answer("\\boxed{3/4}") == "3/4"
    assert ev.grade("\\boxed{3/4}", "0.75") and not ev.grade("\\boxed{3/4}", "3")
    assert ev.extract_answer("\\boxed{\\frac{3}{4}}") == "3/4"
    assert ev.extract_answer("\\boxed{3/0}") is None


# ----------------------------------------------------------------------------- avg@k interval


def test_avg_at_k_interval_is_honest_when_every_sample_fails_or_succeeds():
    n, k = 50, 4
    z2 = ev.Z95 ** 2
    lo, hi = ev.avg_at_k_interval([0.0] * n, k)
    # no correlation estimate: deff = k, so Wilson on the n problems, upper z^2 / (n + z^2)
    assert lo == 0.0 and hi == pytest.approx(z2 / (n + z2), rel=1e-12) and hi > 0.05
    lo, hi = ev.avg_at_k_interval([1.0] * n, k)
    assert hi == 1.0 and lo == pytest.approx(n / (n + z2), rel=1e-12)
    assert ev.mean_interval([0.0] * n) == (0.0, 0.0)  # the interval it replaces


def test_avg_at_k_interval_design_effect_by_hand():
    # Independent samples (scores spread like binomial): deff from k s^2 / (p (1 - p)).
    scores = [0.25, 0.5, 0.75, 0.5, 0.0, 1.0]
    k, n = 4, len(scores)
    p = sum(scores) / n
    s2 = sum((x - p) ** 2 for x in scores) / (n - 1)
    deff = min(k, max(1.0, k * s2 / (p * (1 - p))))
    assert ev.design_effect(scores, k) == pytest.approx(deff)
    n_eff = n * k / deff
    lo, hi = ev.avg_at_k_interval(scores, k)
    for b in (lo, hi):  # Wilson bounds solve (p - b)^2 = z^2 b (1 - b) / n_eff
        assert (p - b) ** 2 == pytest.approx(ev.Z95 ** 2 * b * (1 - b) / n_eff, abs=1e-12)
    # perfectly correlated samples (every problem all right or all wrong): deff = k
    assert ev.design_effect([0.0, 1.0, 1.0, 0.0], 4) == 4.0
    # identical per-problem fractions: less spread than binomial, deff floors at 1
    assert ev.design_effect([0.5] * 10, 4) == 1.0
    assert ev.avg_at_k_interval([0.5] * 10, 4) == ev.wilson_interval(20, 40)
    # k = 1 is plain Wilson on the problems
    assert ev.avg_at_k_interval([1.0, 0.0, 1.0], 1) == pytest.approx(ev.wilson_interval(2, 3))


def test_avg_at_k_interval_covers_at_the_nominal_rate():
    # Monte Carlo: problems with difficulty p_i ~ Beta(0.5, 2), k = 4 samples each.
    rng = random.Random(0)
    n, k, trials, covered = 40, 4, 400, 0
    truth = 0.5 / 2.5
    for _ in range(trials):
        scores = []
        for _ in range(n):
            p_i = rng.betavariate(0.5, 2.0)
            scores.append(sum(rng.random() < p_i for _ in range(k)) / k)
        lo, hi = ev.avg_at_k_interval(scores, k)
        covered += lo <= truth <= hi
    # 95% nominal; binomial standard error of the coverage over 400 trials is about 0.011
    assert covered / trials > 0.95 - 4 * math.sqrt(0.95 * 0.05 / trials)


# ----------------------------------------------------------------------------- memory, progress


def test_prompt_pass_computes_logits_at_the_last_position_only(tok, random_model, problems):
    enc = _left_padded(tok, problems)
    calls = []
    hook = random_model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs.get("logits_to_keep"),
                                                   tuple(out.logits.shape))),
        with_kwargs=True)
    try:
        ours = ev.generate(random_model, enc["input_ids"], enc["attention_mask"], 6,
                           tok.eos_token_id, tok.pad_token_id)
    finally:
        hook.remove()
    B, V = enc["input_ids"].shape[0], random_model.config.vocab_size
    assert calls[0] == (1, (B, 1, V))  # the prompt pass: one position, not T
    assert all(shape == (B, 1, V) for _, shape in calls)
    full = random_model(**enc).logits[:, -1].argmax(-1)
    assert torch.equal(ours[:, 0], full)  # same first token as from the full logits
    ref = random_model.generate(**enc, max_new_tokens=6, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1]:][:, :ours.shape[1]])


def test_evaluate_progress_bar_only_when_asked(tok, random_model, problems, capsys):
    kw = dict(max_new_tokens=4, batch_size=5, prompt_fn=tinyworld.format_prompt)
    quiet = ev.evaluate(random_model, tok, problems, **kw)  # tests: stderr is no terminal
    assert capsys.readouterr().err == ""
    shown = ev.evaluate(random_model, tok, problems, progress=True, **kw)
    err = capsys.readouterr().err
    assert "evaluate (pass@1)" in err and f"{len(problems)}/{len(problems)}" in err
    assert "acc=" in err
    assert shown.accuracy == quiet.accuracy and shown.records == quiet.records
    ev.evaluate(random_model, tok, problems, progress=False, **kw)
    assert capsys.readouterr().err == ""
