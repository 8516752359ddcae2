"""The one JSONL reader: torn last lines (a kill mid-write) left out, damaged lines named or skipped."""
from __future__ import annotations

import pytest

from proximo.doctor import load_run
from proximo.errors import ProximoError
from proximo.metrics import read_jsonl


def test_a_torn_last_line_is_left_out(tmp_path):
    path = tmp_path / "updates.jsonl"
    path.write_text('{"update": 1}\n{"update": 2}\n{"upda')
    assert read_jsonl(path) == [{"update": 1}, {"update": 2}]


def test_a_damaged_line_is_named_or_skipped(tmp_path):
    path = tmp_path / "updates.jsonl"
    path.write_text('{"update": 1}\nnot json\n[1, 2]\n{"update": 4}\n')
    with pytest.raises(ProximoError, match=r"updates.jsonl line 2 is not a JSON object; the file is corrupt"):
        read_jsonl(path)
    assert read_jsonl(path, corrupt="skip") == [{"update": 1}, {"update": 4}]


def test_doctor_reads_a_run_killed_mid_row_and_names_a_damaged_one(tmp_path):
    (tmp_path / "updates.jsonl").write_text('{"update": 1, "global_step": 8}\n{"update": 2, "glob')
    (tmp_path / "diagnostics.jsonl").write_text('{"rule": "kl_spike"}\ngarbage\n')
    record = load_run(tmp_path)
    assert [row["update"] for row in record.rows] == [1] and record.live_warnings == [{"rule": "kl_spike"}]
    (tmp_path / "updates.jsonl").write_text('{"update": 1}\n\x00\x00\n{"update": 3}\n')
    with pytest.raises(ProximoError, match="line 2 is not a JSON object"):
        load_run(tmp_path)


def test_a_run_directory_on_a_read_only_mount_still_lists_its_checkpoints(tmp_path, monkeypatch):
    """Reading a run checks nothing about writing to it (os.access is what a read-only mount answers)."""
    import os

    from proximo.saved import list_checkpoints, read_run_config

    folder = tmp_path / "run" / "checkpoints" / "step_000000000064"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    (tmp_path / "run" / "config.json").write_text('{"env_id": "CartPole-v1", "env_kwargs": {}}')
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert list_checkpoints(tmp_path / "run") == [folder]
    assert read_run_config(tmp_path / "run")[0] == "CartPole-v1"
