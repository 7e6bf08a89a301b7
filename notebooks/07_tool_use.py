# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Tool use: a multi-turn rollout, its loss mask, OPD vs OPD+, and BFCL-style grading
#
# **Learning goals.** After this notebook you can
#
# - follow a multi-turn tool-use rollout token by token and say which tokens carry the
#   loss (the student's) and which do not (the tool's);
# - show that the loss cannot see the tool's tokens;
# - read OPD vs OPD+ on tool use from the training curves and the final table;
# - grade a function call the BFCL way, by hand and with `toolcalls.grade_call`.
#
# **Prerequisites.** Notebooks 02 and 04 (the OPD and OPD+ advantages, a training run and
# its collapse signals); JSON. Terms such as *loss mask*, *tool turn*, *BFCL* and *Wilson
# interval* are in the [glossary](../docs/glossary.md); the
# [cheat sheet](../docs/cheatsheet.md) gives each divergence's OPD behaviour.
#
# **Runtime:** printed by the first code cell.
#
# The paper's second domain is tool use. Here a student does not only write text: it writes
# a **tool call** (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), the
# environment runs the tool and inserts its **result** as a tool turn, and the student
# continues until it answers. Three lessons:
#
# 1. One rollout in the tiny tool world, token by token: which tokens the student chose
#    (they carry the loss) and which came from the tool (attended to, never trained on).
# 2. OPD vs OPD+ on tool use: training curves of the six arms.
# 3. Grading function calls the BFCL way, on real records of the Berkeley Function
#    Calling Leaderboard.
# 4. Two exercises (read a loss mask, grade a call by hand), what to try next, a quiz.

# %%
import opdplus  # noqa: F401
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import json
from pathlib import Path

import torch

from opdplus import divergences as D
from opdplus import tinytools as tt
from opdplus import tinytools_train as ttt
from opdplus import tool_miniature, toolcalls
from opdplus.classroom import runtime_note
from opdplus.estimators import pg_loss
from opdplus.exercises import check
from opdplus.plots_runs import fig_learning_curves, fig_token_heatmap
from opdplus.sampler import score
from opdplus.tooluse import rollout_with_tools, tool_turn_ids

torch.set_num_threads(1)  # steadier than 2 on a shared 2-core machine
ROOT = Path(opdplus.__file__).resolve().parent.parent
runtime_note("07_tool_use")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %% [markdown]
# ## 1. The world and one rollout
#
# Five tools are plain Python functions; their JSON schemas come from their type hints and
# docstrings (`transformers.utils.get_json_schema`). The chat template lists them in the
# system turn, inside `<tools>...</tools>`. A price task needs two calls in sequence: look
# the price up, then multiply it by the quantity.

# %%
tok = tt.load_tokenizer()
student, teacher = ttt.load_student(), ttt.load_teacher()
row = next(r for r in tt.load_split("test") if r["kind"] == "price")
print(tt.prompt_text(tok, row["question"]))
print(json.dumps(tt.tool_schemas()[2]["function"], indent=1))

# %% [markdown]
# The student answers greedily. `rollout_with_tools` stops a turn at `<|im_end|>`, parses
# the calls, runs them, appends the tool turn as tokens and lets the student go on.

# %%
box = ttt.toolbox()
r = rollout_with_tools(student, tok, ttt.encode_prompts(tok, [row["question"]]), box, G=1,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       max_new_tokens=ttt.MAX_NEW_TOKENS, max_turns=ttt.MAX_TURNS,
                       temperature=0.0, vocab_size=len(tok))
for c in r.call_log[0]:
    print(f"turn {c.turn}: {c.name}({c.arguments}) -> {c.result!r}  error: {c.error_kind}")
print("final turn:", r.final_texts[0], "| reference answer:", row["answer"])
assert int(r.calls_B[0]) >= 1, "the student called no tool"

# %% [markdown]
# Every completion position is one of two kinds. **Student** tokens have completion mask 1:
# they are the policy's choices, so they enter the loss, the teacher KL and the token count.
# **Tool** tokens (the result, and the template around it up to the next
# `<|im_start|>assistant`) have mask 0: both models attend to them, nobody is trained on
# them. The heatmap shows the mask and the two models' log-probabilities of each token
# (0 where the mask is 0: those are not scored).

# %%
live = r.attention_mask[0, r.prompt_len:].bool()
ids = r.completion_ids[0][live]
mask = r.completion_mask[0][live]
with torch.no_grad():
    lp = score(student, r, vocab_size=len(tok)).logp_BT[0][live]
    lq = score(teacher, r, vocab_size=len(tok)).logp_BT[0][live]
tokens = [t.replace("\n", "\\n") for t in tok.convert_ids_to_tokens(ids.tolist())]
fig_token_heatmap(tokens, {
    "chosen by the student (1) / inserted by the tool (0)": {
        "completion mask": mask.float().tolist()},
    "log-probability (nats)": {"student": torch.where(mask, lp, 0.0).tolist(),
                               "teacher": torch.where(mask, lq, 0.0).tolist()},
}, title="One tool-use rollout, token by token")

# %% [markdown]
# The holes are exactly the tokens the template writes for each tool result, and nothing
# else; and the loss cannot see them: changing the student's log-probs there leaves an
# OPD+ loss unchanged (forward KL here, where the advantage depends on every ratio).

# %%
results = [c.result for c in r.call_log[0]]
holes, cur = [], []
for t, m in zip(ids.tolist(), mask.tolist()):
    if not m:
        cur.append(t)
    elif cur:
        holes.append(cur)
        cur = []
holes += [cur] if cur else []
assert holes == [tool_turn_ids(tok, [x], tok.eos_token_id) for x in results]
fkl = D.get("forward_kl")
full_mask = r.completion_mask
s_logp = score(student, r, vocab_size=len(tok)).logp_BT.detach()
t_logp = score(teacher, r, vocab_size=len(tok)).logp_BT.detach()
loss, _ = pg_loss(s_logp.clone().requires_grad_(), t_logp, full_mask, fkl, "opd+")
noisy = s_logp + 5.0 * torch.randn(s_logp.shape, generator=torch.Generator().manual_seed(0)) \
    * (~full_mask)
loss2, _ = pg_loss(noisy.requires_grad_(), t_logp, full_mask, fkl, "opd+")
print(f"loss {loss.item():.6f}, with the tool positions perturbed {loss2.item():.6f}")
assert loss.item() == loss2.item()

# %% [markdown]
# ## 2. OPD vs OPD+ on tool use
#
# `make reproduce` trains the six arms (reverse KL, forward KL, JSD × OPD, OPD+) from the
# student above towards the teacher, with these multi-turn rollouts, and records the
# final-answer accuracy and the validity of every call. The smoke profile reads the shipped
# reference Histories (seed 0 of the default profile); `full` trains the forward-KL pair
# live.

# %%
REF = ROOT / "data" / "reference" / "tiny_tools_default"
summary = json.loads((REF / "summary.json").read_text())
if PROFILE == "full":
    from opdplus.trainer import train
    from opdplus.tooluse import tool_rollout_fn

    prof = tool_miniature.get_profile("default")
    prompts = ttt.encode_prompts(tok, [x["question"] for x in tt.load_split("train")])
    histories = {}
    for est in ("opd", "opd+"):
        s = ttt.load_student()
        histories[f"forward_kl/{est}"] = train(
            s, teacher, tok, prompts, tool_miniature.train_config(prof, "forward_kl", est, 0),
            rollout_fn=tool_rollout_fn(tok, box, max_turns=ttt.MAX_TURNS))
else:
    # files "<divergence>__<estimator>_s0.json" ("opd+" written "opdplus")
    histories = {p.stem[:-3].replace("__", "/").replace("plus", "+"): json.loads(p.read_text())
                 for p in sorted((REF / "histories").glob("*_s0.json"))}
fig_learning_curves(histories, metrics=["teacher_kl", "tool_call_valid_frac", "grad_norm",
                                        "completion_len"], cols=2,
                    title="Tool-use arms: teacher KL, call validity, grad norm, length")

# %% [markdown]
# The final table of the shipped default run (greedy final-answer accuracy on the test
# tasks with 95% Wilson intervals; call validity on the test tasks):

# %%
print(tool_miniature.format_table(summary))
arms = [x for x in summary if x["divergence"] != "-"]
assert {(x["divergence"], x["estimator"]) for x in arms} == set(tool_miniature.ARMS)
for x in arms:
    assert x["task"] == "tiny_tools" and x["ci_low"] <= x["accuracy"] <= x["ci_high"]
if PROFILE != "full":  # the shipped Histories are the ones the summary was made from
    assert len(histories) == len(tool_miniature.ARMS)
    for name, h in histories.items():
        div, est = name.split("/")
        rec = next(x for x in arms if (x["divergence"], x["estimator"], x["seed"]) ==
                   (div, est, 0))
        tail = [s["teacher_kl"] for s in h if s.get("teacher_kl") is not None][-5:]
        assert abs(sum(tail) / len(tail) - rec["final_teacher_kl"]) < 1e-9

# %% [markdown]
# ## 3. Grading function calls the BFCL way
#
# BFCL gives each question its function schemas and a *possible answer*: per argument, the
# list of allowed values (`""` in the list: the argument may be left out).
# `toolcalls.grade_call` (also `opdplus.tooluse.grade_call`) says whether an output parses
# to a call, whether the call is valid for the schema, and whether it matches.

# %%
records = [json.loads(x) for x in (ROOT / "data" / "bfcl" / "simple_python.jsonl")
           .read_text().splitlines()[:3]]


def answer_call(rec, override=None):
    """A call built from the first allowed value of each argument of the possible answer."""
    (name, allowed), = rec["ground_truth"][0].items()
    args = {k: v[0] for k, v in allowed.items() if v[0] != ""}
    args.update(override or {})
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


for rec in records:
    q = rec["question"][0][0]["content"]
    good = toolcalls.grade_call(answer_call(rec), rec["function"], rec["ground_truth"])
    arg = next(iter(rec["ground_truth"][0].values()))
    first = next(iter(arg))
    wrong = toolcalls.grade_call(answer_call(rec, {first: "wrong"}), rec["function"],
                                 rec["ground_truth"])
    broken = toolcalls.grade_call('<tool_call>\n{"name": oops}\n</tool_call>', rec["function"],
                                  rec["ground_truth"])
    print(f"{q[:70]}...\n  right: {good.correct} | wrong value: parsed {wrong.parsed}, "
          f"correct {wrong.correct} ({wrong.reason[:60]}) | broken JSON: parsed {broken.parsed}")
    assert good.parsed and good.valid and good.correct
    assert wrong.parsed and not wrong.correct
    assert not broken.parsed and not broken.correct

# %% [markdown]
# ## 4. Exercises
#
# ### Exercise 07.1: read the loss mask of a rollout
#
# For row `b` of a rollout `r` (an `opdplus.tooluse` rollout, like section 1's), return the
# number of completion positions the **tool** wrote: positions that both models attend to
# (attention mask 1) but that carry no loss (completion mask 0). Use only `r`'s masks
# (`r.attention_mask` covers prompt and completion, `r.completion_mask` the completion
# positions after `r.prompt_len`). The check compares your count with the token ids of
# every tool turn of section 1's rollout.

# %%
def my_tool_token_count(r, b=0):
    """Completion positions of row b that are attended to but not trained on."""
    ### BEGIN SOLUTION
    attended = r.attention_mask[b, r.prompt_len:].bool()
    return int((attended & ~r.completion_mask[b].bool()).sum())
    ### END SOLUTION


# %%
def test_07_1():
    expected = sum(len(tool_turn_ids(tok, [x], tok.eos_token_id)) for x in results)
    mine = my_tool_token_count(r)
    assert mine == expected, (f"you counted {mine} tool positions; the {len(results)} tool "
                              f"turn(s) of this rollout have {expected} tokens")
    assert int(r.completion_mask[0].sum()) + mine == int(live.sum()), \
        "student tokens + tool tokens should be all live completion positions"


check("07.1", test_07_1, hint="slice the attention mask from r.prompt_len on, so it lines up "
      "with r.completion_mask; a tool token is attended (1) and not in the loss (0).")

# %% [markdown]
# ### Exercise 07.2: grade a call by hand, the BFCL way
#
# BFCL's possible answer for one call is `{function_name: {argument: [allowed values]}}`.
# A call matches when its name is the function's; every argument it passes is one of the
# answer's arguments, with a value in that argument's list; and every argument it leaves
# out has `""` in its list ("may be omitted"). Write that rule (exact equality of values
# is enough here). The check compares your verdict with `toolcalls.match_call` on calls
# built from the three BFCL records of section 3: the answer itself, a wrong value, an
# unknown argument, an argument left out, and a wrong function name.

# %%
def my_matches(name, arguments, answer):
    """True when the call `name(**arguments)` matches BFCL's possible answer `answer`."""
    ### BEGIN SOLUTION
    ((expected, allowed_by_arg),) = answer.items()
    if name != expected:
        return False
    for arg, value in arguments.items():
        if arg not in allowed_by_arg:
            return False
        if not any(value == a for a in allowed_by_arg[arg] if a != ""):
            return False
    return all(arg in arguments or "" in allowed for arg, allowed in allowed_by_arg.items())
    ### END SOLUTION


# %%
def grading_cases(rec):
    """(description, name, arguments) calls around the record's possible answer."""
    (name, allowed), = rec["ground_truth"][0].items()
    right = {k: v[0] for k, v in allowed.items() if v[0] != ""}
    first = next(iter(allowed))
    cases = [("the answer", name, right), ("a wrong value", name, {**right, first: "wrong"}),
             ("an unknown argument", name, {**right, "colour": "blue"}),
             ("a wrong function name", name + "_v2", right)]
    for arg in allowed:  # leave each argument out in turn: allowed only where "" is listed
        cases.append((f"without {arg!r}", name, {k: v for k, v in right.items() if k != arg}))
    return cases


def test_07_2():
    for rec in records:
        schema = rec["function"][0]
        for what, name, args in grading_cases(rec):
            library = toolcalls.match_call(name, args, schema, rec["ground_truth"][0]) is None
            mine = my_matches(name, args, rec["ground_truth"][0])
            assert mine == library, (f"{rec['id']}, {what}: you say "
                                     f"{'match' if mine else 'no match'}, BFCL's rule says "
                                     f"{'match' if library else 'no match'}")


check("07.2", test_07_2, hint="three tests in order: the name; each passed argument is known "
      "and its value is in the list (skip the \"\" entry when comparing); each missing "
      "argument has \"\" in its list.")

# %% [markdown]
# ## What to try next
#
# - Sample the rollout of section 1 at temperature 1 with a few seeds: how often does the
#   student call a tool, and does the heatmap's pattern of holes change?
# - In section 1's loss check, perturb the **student's** positions instead of the tool's:
#   the loss must change. Which estimator's loss changes more, OPD's or OPD+'s?
# - Run the `full` profile (it trains the forward-KL pair live) and compare its curves
#   with the shipped reference.
# - Grade the SmolLM2 answers of `data/reference/bfcl_smollm2.json` with your
#   `my_matches`: why does it score 0?
#
# ## Quiz
#
# **Q1.** Why do the tool's tokens have completion mask 0, although both models attend to
# them?
#
# ### BEGIN SOLUTION
# The student did not choose them: the environment wrote them. The loss is a policy
# gradient over the student's own choices, so only its tokens carry log-probabilities to
# push. The tool's tokens are context, like the prompt.
# ### END SOLUTION
#
# **Q2.** In the table, forward-KL OPD's call validity falls far below the SFT student's,
# while OPD+'s does not. Which logged signals show it during training, before any grading?
#
# ### BEGIN SOLUTION
# The teacher KL rises instead of falling, and the gradient norm explodes (far above the
# other arms); call validity itself is also logged per step. These are the collapse
# signals of the tiny math world, on a different task.
# ### END SOLUTION
#
# **Q3.** In BFCL's possible answer, what does an empty string `""` in an argument's list
# of allowed values mean?
#
# ### BEGIN SOLUTION
# That the argument may be left out of the call (an optional argument whose default is
# acceptable). It is not a value the call may pass.
# ### END SOLUTION
