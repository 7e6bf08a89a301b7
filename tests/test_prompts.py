"""Prompt loading through ``datasets``: local JSONL / JSON / CSV / Parquet, hub ids, columns, chats.

Every format must give the same records; the prompt column is named or found (``prompt``,
then ``question``, then ``messages``); a chat column is rendered with the chat template; a
malformed row names the file and the line (JSONL) or row; a hub id under
``HF_HUB_OFFLINE=1`` fails at once with an error that says why.
"""

import csv
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opdplus import tasks, tinyworld
from opdplus.prompts import PROMPT_COLUMNS, encode_prompts, load_prompts

ROWS = [
    {"question": "Ann has 3 apples. How many apples does Ann have?", "answer": "#### 3"},
    {"question": "Bob has 4 pens. He gets 2 more. How many pens?", "answer": "#### 6"},
    {"question": "Cy has 9 cards. He gives away 5. How many cards?", "answer": "#### 4"},
]


def write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_local_format_gives_the_same_records(tmp_path, fmt):
    rows, column = load_prompts(write(tmp_path / f"p.{fmt}", ROWS, fmt))
    assert column == "question"  # no 'prompt' column: the next candidate
    assert [r["prompt"] for r in rows] == [r["question"] for r in ROWS]
    assert [r["answer"] for r in rows] == [r["answer"] for r in ROWS]  # other fields kept


def test_the_shipped_split_loads_by_its_question_column():
    rows, column = load_prompts(tasks.default_data_dir() / "train.jsonl")
    assert column == "question"
    assert len(rows) == len(tasks.load_split("train")) and rows[0]["prompt"] == rows[0]["question"]


def test_column_order_and_explicit_column(tmp_path):
    both = [{"question": f"q{i}", "prompt": f"p{i}", "text": f"t{i}"} for i in range(2)]
    path = write(tmp_path / "b.jsonl", both, "jsonl")
    assert PROMPT_COLUMNS == ("prompt", "question", "messages")
    assert [r["prompt"] for r in load_prompts(path)[0]] == ["p0", "p1"]
    rows, column = load_prompts(path, column="text")
    assert column == "text" and [r["prompt"] for r in rows] == ["t0", "t1"]
    with pytest.raises(ValueError, match=r"no column 'body'; the columns are"):
        load_prompts(path, column="body")
    none = write(tmp_path / "n.jsonl", [{"body": "x"}], "jsonl")
    with pytest.raises(ValueError, match=r"no prompt column; looked for \['prompt', 'question'"):
        load_prompts(none)


def test_chat_column_renders_with_the_chat_template(tmp_path):
    tok = tinyworld.load_tokenizer()
    q = ROWS[0]["question"]
    chats = [
        {"messages": [{"role": "user", "content": q}]},
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "A: 3"}]},
    ]
    rows, column = load_prompts(write(tmp_path / "c.jsonl", chats, "jsonl"))
    assert column == "messages"
    assert rows[0]["prompt"] == rows[1]["prompt"] == [{"role": "user", "content": q}]
    assert rows[1]["completion"] == "A: 3"  # a trailing assistant turn is the completion
    ids = encode_prompts(tok, rows, max_prompt_tokens=10**6).prompt_ids
    # the same tokens as the plain question rendered through the template
    plain = encode_prompts(tok, [q], max_prompt_tokens=10**6, use_chat_template=True).prompt_ids
    assert ids[0] == ids[1] == plain[0]
    assert tok.decode(ids[0]) == tok.decode(tok.apply_chat_template(
        [{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True))


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"question": "a"}', '{"question": "b"'], "p.jsonl:2: not valid JSON"),
        (['{"question": "a"}', "[1, 2]"], "p.jsonl:2: expected a JSON object"),
        (['{"question": "a"}', "", '{"question": 7}'], "p.jsonl:3: expected a JSON object with a "
         "string 'question' field or a list of chat messages, got int 7"),
        (['{"question": "a"}', '{"question": "  "}'], "p.jsonl:2: the 'question' field is empty"),
        (['{"messages": [{"role": "user", "content": "hi"}]}', '{"messages": [{"role": "user"}]}'],
         "p.jsonl:2: the 'messages' chat is malformed: message 0 is not a"),
    ],
)
def test_malformed_jsonl_rows_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        load_prompts(path)
    assert message in str(e.value)


def test_malformed_rows_of_other_formats_name_file_and_row(tmp_path):
    rows = [{"prompt": "fine"}, {"prompt": ""}]
    for fmt in ("csv", "parquet", "json"):
        path = write(tmp_path / f"r.{fmt}", rows, fmt)
        with pytest.raises(ValueError, match=rf"r\.{fmt}, row 2: the 'prompt' field is empty"):
            load_prompts(path)


def test_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts file .*nope.jsonl does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"unknown format '\.txt'; use one of \.jsonl"):
        load_prompts(tmp_path / "p.txt")
    path = write(tmp_path / "p.jsonl", ROWS, "jsonl")
    with pytest.raises(ValueError, match="a config or split applies only to a hub dataset id"):
        load_prompts(path, split="test")


def test_hub_id_offline_fails_fast_and_says_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        load_prompts("opdplus-no-such-org/no-such-dataset", config="main", split="train")
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert "could not load hub dataset 'opdplus-no-such-org/no-such-dataset' (config 'main', " \
           "split 'train')" in msg
    assert "HF_HUB_OFFLINE is set" in msg and "pass a local file" in msg
    assert took < 30, f"an offline hub id should fail at once, took {took:.1f} s"
