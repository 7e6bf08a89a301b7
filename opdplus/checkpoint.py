"""Atomic training checkpoints, and the ``History`` of a run.

Layout under ``OUT/checkpoint/``::

    LATEST                  the name of the newest complete checkpoint (one line)
    step-000010/
        model/              student, ``save_pretrained`` (safetensors) + tokenizer
        optimizer.pt        AdamW state
        scheduler.pt        LR scheduler state
        rng/rank-<r>.pt     python, numpy, torch (+ CUDA) RNG and sampler generator, per process
        trainer_state.json  step, skipped-step count, process count, config
        history.json        the History up to this step
        MANIFEST.json       size and sha256 of every file above (written last)

Atomicity: everything is written into ``.tmp-step-000010/`` and fsynced, the directory
is renamed to ``step-000010`` (a rename is atomic), and only then is ``LATEST`` replaced
(write a temp file, fsync, ``os.replace``). A crash at any point leaves ``LATEST``
naming a complete checkpoint; older ones are deleted only after ``LATEST`` moved.
Loading verifies the manifest, so a truncated or corrupted file is reported by name
instead of silently resuming from garbage.

Simplified: full (unsharded) state only. Under FSDP the model is gathered with
``accelerator.get_state_dict``; the optimizer goes through Accelerate's FSDP helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

FORMAT_VERSION = 1
LATEST = "LATEST"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt (the message names the file and the fix)."""


# ----------------------------------------------------------------------------- History


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no NaN / inf
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    if isinstance(x, torch.Tensor):
        return _json_safe(x.item() if x.numel() == 1 else x.tolist())
    return x


class History(list):
    """Per-step records (dicts) of a run; ``save``/``load`` as a JSON list.

    Every record has ``step`` and the training metrics (see ``opdplus.trainer``); steps
    with an evaluation also carry ``eval_*`` keys. Non-finite numbers are stored as null.
    """

    def column(self, key: str, default=None) -> list:
        """The values of ``key`` over all records (``default`` where missing)."""
        return [r.get(key, default) for r in self]

    def steps_with(self, key: str) -> list:
        """(step, value) pairs for the records that have ``key``."""
        return [(r["step"], r[key]) for r in self if r.get(key) is not None]

    def save(self, path: Union[str, Path]) -> None:
        write_json_atomic(path, [_json_safe(r) for r in self])

    @classmethod
    def load(cls, path: Union[str, Path]) -> "History":
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path} is not a History (a JSON list of per-step objects)")
        return cls(data)


# ----------------------------------------------------------------------------- atomic file helpers


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write JSON to ``path`` via a temp file, fsync and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- RNG state


def rng_state(sampler_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) RNG states and the sampler's generator state.

    Stored as plain containers and tensors so that ``torch.load(weights_only=True)`` reads it.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    return state


def set_rng_state(
    state: Dict[str, Any], sampler_generator: Optional[torch.Generator] = None
) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if (
        state.get("cuda")
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])


# ----------------------------------------------------------------------------- save


def checkpoint_root(out_dir: Union[str, Path]) -> Path:
    return Path(out_dir) / "checkpoint"


def _is_fsdp(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("FSDP")


def save_checkpoint(
    accelerator,
    out_dir: Union[str, Path],
    step: int,
    model,
    optimizer,
    scheduler,
    history: History,
    trainer_state: Dict[str, Any],
    sampler_generator: Optional[torch.Generator] = None,
    tokenizer=None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of the state after ``step`` completed steps (collective call)."""
    root = checkpoint_root(out_dir)
    name = f"step-{step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):  # left over from a crash
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    accelerator.wait_for_everyone()

    rank_file = tmp / "rng" / f"rank-{accelerator.process_index}.pt"
    torch.save(rng_state(sampler_generator), rank_file)
    _fsync_file(rank_file)
    full_state = accelerator.get_state_dict(model) if _is_fsdp(accelerator) else None
    if _is_fsdp(accelerator):
        from accelerate.utils import save_fsdp_optimizer

        save_fsdp_optimizer(
            accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(tmp / "optimizer")
        )
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp / "model", state_dict=full_state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        if not _is_fsdp(accelerator):
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json_atomic(
            tmp / "trainer_state.json", {**_json_safe(trainer_state), "format": FORMAT_VERSION}
        )
        history.save(tmp / "history.json")
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                _fsync_file(p)
                files[str(p.relative_to(tmp))] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        write_json_atomic(
            tmp / "MANIFEST.json", {"format": FORMAT_VERSION, "step": step, "files": files}
        )
        for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}):
            _fsync_dir(d)
        if final.exists():  # same step written again (e.g. a resumed run): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        latest_tmp = root / f".{LATEST}.tmp"
        with open(latest_tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, root / LATEST)
        _fsync_dir(root)
        older = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
        for p in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- load


def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint named by ``LATEST``, or None when there is no checkpoint at all."""
    root = checkpoint_root(out_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name.startswith("step-") or not path.is_dir():
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a checkpoint directory; the checkpoint folder "
            f"{root} is damaged (restore it, or start a fresh run in another --out)"
        )
    return path


def verify_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Check every file against ``MANIFEST.json``; return it, or raise ``CheckpointError``."""
    path = Path(path)
    mf = path / "MANIFEST.json"
    if not mf.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no MANIFEST.json: it is incomplete or not a checkpoint"
        )
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"{mf} is corrupt ({e}); restore the checkpoint or start a fresh run"
        ) from e
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint file {p} is missing; restore it or start a fresh run"
            )
        if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint file {p} is corrupt (size or sha256 differs from MANIFEST.json); "
                "restore it or start a fresh run"
            )
    return manifest


def _load_weights_into(model, model_dir: Path) -> None:
    """Load ``save_pretrained`` safetensors into an existing model (tied weights re-tied)."""
    from safetensors.torch import load_file

    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"no safetensors weights in {model_dir}")
    state: Dict[str, torch.Tensor] = {}
    for s in shards:
        state.update(load_file(str(s)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {model_dir} do not fit the student (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); resume with the same student architecture"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def read_trainer_state(path: Union[str, Path]) -> Dict[str, Any]:
    """Verify the checkpoint and return its ``trainer_state.json`` (step, config, ...)."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except Exception as e:
        raise CheckpointError(f"could not read {path / 'trainer_state.json'}: {e}") from e


def load_model_weights(path: Union[str, Path], model) -> None:
    """Load the checkpoint's student weights into ``model`` *before* Accelerate wraps it.

    (Before wrapping, every backend, FSDP included, holds the full unsharded weights.)
    """
    try:
        _load_weights_into(model, Path(path) / "model")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"could not load the student weights of {path}: {type(e).__name__}: {e}"
        ) from e


def load_training_state(
    path: Union[str, Path],
    *,
    accelerator,
    model,
    optimizer,
    scheduler,
    sampler_generator: Optional[torch.Generator] = None,
) -> Dict[str, Any]:
    """Restore optimizer, scheduler and RNG (after ``accelerator.prepare``); return the state.

    The ``History`` up to the checkpoint is under ``"history"``. Call ``read_trainer_state``
    (which verifies the manifest) and ``load_model_weights`` first.
    """
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        history = History.load(path / "history.json")
        if _is_fsdp(accelerator):
            from accelerate.utils import load_fsdp_optimizer

            load_fsdp_optimizer(
                accelerator.state.fsdp_plugin,
                accelerator,
                optimizer,
                model,
                str(path / "optimizer"),
            )
        else:
            optimizer.load_state_dict(
                torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
            )
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rank_file = path / "rng" / f"rank-{accelerator.process_index}.pt"
        if rank_file.is_file():
            set_rng_state(torch.load(rank_file, weights_only=True), sampler_generator)
    except Exception as e:  # a file that passed the manifest but does not load
        raise CheckpointError(f"could not load checkpoint {path}: {type(e).__name__}: {e}") from e
    state["history"] = history
    return state
