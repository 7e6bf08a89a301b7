"""``runtime_note``: a notebook's runtime is read from the measured file, never typed."""

from __future__ import annotations

import json

from opdplus.classroom import load_times, runtime_note


def test_runtime_note_reads_the_measured_file(tmp_path, capsys):
    path = tmp_path / "times.json"
    path.write_text(json.dumps({"machine": "2-core test CPU", "measured": "2026-01-01",
                                "notebooks": {"01_x": {"smoke_s": 41.6, "measured": "2026-01-02"}}}))
    line = runtime_note("01_x", path)
    assert line == "01_x: about 42 s in the smoke profile on 2-core test CPU (measured 2026-01-02)."
    assert capsys.readouterr().out.strip() == line
    assert "not measured yet" in runtime_note("02_y", path)
    assert load_times(tmp_path / "missing.json") == {"notebooks": {}}
