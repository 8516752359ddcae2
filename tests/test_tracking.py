"""`--track wandb`: a W&B run (offline) holds what metrics.csv holds, the config and the doctor's findings."""
import csv
import json
import sys
import time
from pathlib import Path

import pytest

from proximo.cli import main
from proximo.metrics import MetricsWriter

TRAIN = ["train", "CartPole-v1", "--num-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "2",
         "--total-steps", "640", "--eval-episodes", "1", "--quiet", "--no-tensorboard"]
BOOKKEEPING = {"_step", "_runtime", "_timestamp"}  # W&B's own columns


def _wandb():
    return pytest.importorskip("wandb", reason="the tracking tests need wandb: pip install -e '.[wandb]'")


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true", "WANDB_PROJECT": "proximo-tests"}


def _records(path: Path):
    """The protobuf records of a .wandb file: W&B's transaction log is LevelDB's log format (32 KiB blocks,
    7-byte chunk headers: crc32, length, type full/first/middle/last) after a 7-byte ':W&B' file header."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _offline_run(wandb_dir: Path, wait_s: float = 60.0) -> dict:
    """history rows, config and summary of the one offline run under wandb_dir, read from its .wandb file.

    run.finish() can return before wandb-core has written the run's last records (seen on a loaded 2-core
    machine), so this waits for the exit record, which W&B writes last.
    """
    deadline = time.monotonic() + wait_s
    while True:
        files = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) <= 1, files
        run = _read_run(files[0]) if files else None
        if (run is not None and "exit" in run["kinds"]) or time.monotonic() > deadline:
            assert run is not None and "exit" in run["kinds"], f"no finished W&B run under {wandb_dir}"
            return run
        time.sleep(0.2)


def _read_run(path: Path) -> dict:
    run = {"history": [], "config": {}, "summary": {}, "run": None, "files": path.parent / "files", "kinds": []}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        run["kinds"].append(kind)
        if kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update})
        elif kind == "run":  # the run record carries the config given to wandb.init
            run["run"] = record.run
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return run


def test_train_with_track_wandb_logs_the_csv_metrics_and_config(tmp_path, monkeypatch):
    _wandb()
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir), "--track", "wandb", "--track-run-name", "cartpole-tracked"]) == 0
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value != ""}
    run = _offline_run(tmp_path / "wandb-dir")
    metric_rows = [row for row in run["history"] if "update" in row]
    assert len(metric_rows) == len(rows) == 5
    assert {key for row in metric_rows for key in row} - BOOKKEEPING == logged
    for csv_row, wandb_row in zip(rows, metric_rows):
        assert int(csv_row["global_step"]) == wandb_row["global_step"]
        assert float(csv_row["entropy"]) == pytest.approx(wandb_row["entropy"], rel=1e-12)
    config = {key: value.get("value", value) if isinstance(value, dict) else value
              for key, value in run["config"].items()}
    saved = json.loads((run_dir / "config.json").read_text())
    assert config["env_id"] == "CartPole-v1" and config["learning_rate"] == saved["learning_rate"]
    assert config["net_arch"] == [64, 64] and config["track"] == "wandb" and "resolved" in config
    assert run["run"].display_name == "cartpole-tracked" and run["run"].project == "proximo-tests"
    # the doctor's verdict at the end: a findings table (maybe empty) and whether the run was healthy
    assert isinstance(run["summary"]["doctor/healthy"], bool) and "doctor/finding_count" in run["summary"]
    assert any("doctor/findings/path" in row for row in run["history"])


def test_the_doctor_findings_reach_wandb_as_a_table(tmp_path, monkeypatch):
    wandb = _wandb()
    from proximo.tracking import WandbTracker

    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir, tensorboard=False, columns=["global_step", "update", "time_s", "approx_kl",
                                                                "entropy"],
                           tracker=WandbTracker(run_dir, {"seed": 1}, name="kl-trouble"))
    for update in range(1, 41):  # KL 0.3 from update 21 on: 6 x diag_kl_max, a spike at once
        writer.write({"global_step": 64 * update, "update": update, "time_s": 0.1 * update,
                      "approx_kl": 0.005 if update <= 20 else 0.3, "entropy": 0.6})
    writer.close()
    assert wandb.run is None  # finished
    run = _offline_run(tmp_path / "wandb-dir")
    assert run["summary"]["doctor/healthy"] is False and run["summary"]["doctor/rules"] == ["kl_spike"]
    table_row = next(row for row in run["history"] if "doctor/findings/path" in row)
    table = json.loads((run["files"] / table_row["doctor/findings/path"]).read_text())
    finding = dict(zip(table["columns"], table["data"][0]))
    assert len(table["data"]) == 1 and finding["rule"] == "kl_spike" and finding["start_update"] == 21
    assert finding["start_step"] == 64 * 21 and finding["fix"]


def test_track_wandb_without_wandb_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    assert main([*TRAIN, "--run-dir", str(tmp_path / "run"), "--track", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[wandb]'" in err, err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_an_unknown_tracker_is_one_line(tmp_path, capsys):
    assert main([*TRAIN, "--run-dir", str(tmp_path / "run"), "--track", "mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "track must be one of none, wandb" in err, err


def test_an_llm_run_tracks_through_the_same_writer(tmp_path, monkeypatch):
    _wandb()
    from proximo.llm import SFT

    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "sft"
    SFT("tiny", run_dir=run_dir, max_steps=3, batch_size=16, eval_every=0, digits=2, num_eval_prompts=16,
        tensorboard=False, track="wandb").train()
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    run = _offline_run(tmp_path / "wandb-dir")
    metric_rows = [row for row in run["history"] if "update" in row]
    assert len(metric_rows) == len(rows) >= 1
    logged = {key for row in rows for key, value in row.items() if value != ""}
    assert {key for row in metric_rows for key in row} - BOOKKEEPING == logged
    assert run["config"]["kind"] == "sft" and "doctor/healthy" in run["summary"]
