"""Regenerate data/bfcl/: a subset of BFCL v4 "simple_python" and "multiple", from the wheel.

    pip download --no-deps bfcl-eval==2026.3.23 -d /tmp/bfcl
    python scripts/vendor_bfcl.py --wheel /tmp/bfcl/bfcl_eval-2026.3.23-py3-none-any.whl
    python scripts/vendor_bfcl.py --wheel ... --check   # compare with the shipped files

Without ``--wheel`` the script runs the ``pip download`` above into a temporary folder.
The wheel is read with ``zipfile``; bfcl-eval is never installed or imported (its pinned
dependencies would break this environment). Its sha256 must equal ``WHEEL_SHA256``.

For each category, the questions (``bfcl_eval/data/BFCL_v4_<category>.json``) and the
ground truths (``bfcl_eval/data/possible_answer/BFCL_v4_<category>.json``), both JSON Lines,
are joined by ``id`` into one record ``{"id", "question", "function", "ground_truth"}`` with
the fields copied unchanged. The subset is deterministic and independent of file order:
the records whose ``sha256("opdplus-bfcl-v1:" + id)`` are the smallest, ``SIZES[category]``
of them, written in the order of the number in their id. Writing is byte-for-byte stable
(``json.dumps`` with the source's key order, UTF-8, ``\\n`` line ends), so ``--check``
after a rerun finds no difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "data" / "bfcl"
VERSION = "2026.3.23"
WHEEL_NAME = f"bfcl_eval-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = (
    "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"  # as PyPI serves it
)
SIZES = {"simple_python": 100, "multiple": 50}
SALT = "opdplus-bfcl-v1:"


def _jsonl(data: bytes, where: str) -> List[dict]:
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where} line {i} is not JSON: {exc.msg}") from exc
    return rows


def read_category(wheel: zipfile.ZipFile, category: str) -> List[dict]:
    """Every record of one category, questions joined with their possible answers by id."""
    q_path = f"bfcl_eval/data/BFCL_v4_{category}.json"
    a_path = f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json"
    questions = _jsonl(wheel.read(q_path), q_path)
    answers = {row["id"]: row for row in _jsonl(wheel.read(a_path), a_path)}
    records = []
    for q in questions:
        if q["id"] not in answers:
            raise ValueError(f"{q_path}: {q['id']} has no possible answer in {a_path}")
        records.append(
            {
                "id": q["id"],
                "question": q["question"],
                "function": q["function"],
                "ground_truth": answers[q["id"]]["ground_truth"],
            }
        )
    return records


def id_number(record_id: str) -> int:
    """The number at the end of a BFCL id (``simple_python_12`` -> 12)."""
    return int(record_id.rsplit("_", 1)[1])


def select(records: Sequence[dict], n: int, salt: str = SALT) -> List[dict]:
    """The ``n`` records with the smallest salted id hash, in id-number order."""
    if n > len(records):
        raise ValueError(f"asked for {n} records, the category has {len(records)}")
    ranked = sorted(records, key=lambda r: hashlib.sha256((salt + r["id"]).encode()).hexdigest())
    return sorted(ranked[:n], key=lambda r: id_number(r["id"]))


def render_jsonl(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(wheel_path: Path, sizes: Dict[str, int] = SIZES) -> Dict[str, bytes]:
    """File name -> bytes for every file this script writes into data/bfcl/."""
    files: Dict[str, bytes] = {}
    provenance = {
        "source": "bfcl-eval (Berkeley Function Calling Leaderboard), PyPI, Apache-2.0",
        "wheel": wheel_path.name,
        "wheel_sha256": sha256_file(wheel_path),
        "version": VERSION,
        "selection": (
            f"per category, the N records with the smallest sha256('{SALT}' + id), "
            "written in id-number order; question and possible answer joined by id, "
            "fields unchanged"
        ),
        "categories": {},
    }
    with zipfile.ZipFile(wheel_path) as wheel:
        for category, n in sizes.items():
            everything = read_category(wheel, category)
            chosen = select(everything, n)
            name = f"{category}.jsonl"
            files[name] = render_jsonl(chosen)
            provenance["categories"][category] = {
                "file": name,
                "source_files": [
                    f"bfcl_eval/data/BFCL_v4_{category}.json",
                    f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json",
                ],
                "records_in_source": len(everything),
                "records": len(chosen),
                "ids": [r["id"] for r in chosen],
                "sha256": hashlib.sha256(files[name]).hexdigest(),
            }
    files["provenance.json"] = (json.dumps(provenance, indent=1) + "\n").encode("utf-8")
    return files


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"bfcl-eval=={VERSION}"]
    subprocess.run(cmd + ["-d", str(dest)], check=True)
    return dest / WHEEL_NAME


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"path to {WHEEL_NAME} (else pip downloads)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp))
        digest = sha256_file(wheel)
        if digest != WHEEL_SHA256:
            raise SystemExit(
                f"{wheel}: sha256 {digest} differs from the pinned {WHEEL_SHA256}; "
                f"download bfcl-eval=={VERSION} again (pip download --no-deps)"
            )
        files = build(wheel)
    stale = [
        n
        for n, data in files.items()
        if not (args.out / n).is_file() or (args.out / n).read_bytes() != data
    ]
    if args.check:
        print("up to date" if not stale else f"differ: {', '.join(stale)}")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    print(f"wrote {', '.join(files)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
