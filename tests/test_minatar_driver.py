"""benchmarks/minatar_mlp.py's bookkeeping, without training: what trains as one process under each setting,
the command that starts or resumes it, and the refusal to mix settings in one folder."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "minatar_mlp.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("proximo_bench_minatar", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(root, setting):
    return argparse.Namespace(root=root, setting=setting, seeds=[1, 2, 3], steps=1000, save_every=500)


def test_units_commands_and_resume(bench, tmp_path):
    mlp, cnn = _args(tmp_path / "m", "mlp"), _args(tmp_path / "c", "cnn")
    assert bench.units(["Breakout"], mlp) == [("Breakout", None)]
    assert bench.units(["Breakout", "Asterix"], cnn)[:4] == [("Breakout", 1), ("Breakout", 2), ("Breakout", 3),
                                                             ("Asterix", 1)]
    start = bench.train_command(("Breakout", None), mlp)
    assert start[start.index("--preset") + 1] == "minatar-mlp" and "--seeds" in start and "--resume" not in start
    unit = ("Breakout", 2)
    run = bench.unit_run(unit, cnn)
    assert run == tmp_path / "c" / "Breakout" / "s2"
    start = bench.train_command(unit, cnn)
    assert start[start.index("--preset") + 1] == "minatar-cnn" and start[start.index("--seed") + 1] == "2"
    # a run stopped before its first checkpoint is kept aside and started again; one with a checkpoint resumes
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("global_step\n")
    assert "--resume" not in bench.train_command(unit, cnn) and not run.exists()
    assert len(list(run.parent.glob("s2.unfinished-*"))) == 1
    (run / "checkpoints" / "step_000000000512").mkdir(parents=True)
    assert bench.train_command(unit, cnn)[4:6] == ["--resume", str(run)]
    assert bench.steps_done(run, solo=True) == 512 and not bench.unit_finished(unit, cnn)
    (run / "summary.json").write_text(json.dumps({"global_step": 1000}))
    assert bench.unit_finished(unit, cnn) and not bench.unit_finished(("Breakout", 1), cnn)


def test_one_folder_holds_one_setting(bench, tmp_path, capsys):
    (tmp_path / "setting.json").write_text(json.dumps({"setting": "mlp"}))
    assert bench.main(["--root", str(tmp_path), "--setting", "cnn", "--report-only", "--no-report"]) == 2
    assert "holds the mlp setting's runs" in capsys.readouterr().err
