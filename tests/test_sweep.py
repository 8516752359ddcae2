"""Sweeps on Ray: tiny CartPole trials on one local 2-CPU cluster shared by this module; resume, retries after
kill -9, Ctrl-C; the paper's normalization on hand-made numbers; bad input answered in one line, exit 2."""
import _thread
import csv
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

import proximo
from proximo.cli import build_parser, main, train_plan
from proximo.sweep.spec import SweepSpec, parse_grid, parse_seeds
from proximo.sweep.table1 import SETTINGS, normalize, verdict

ray = pytest.importorskip("ray", reason="the sweep tests need the ray extra: pip install -e '.[ray]'")

TINY = ["--preset", "cartpole", "--eval-episodes", "2", "--progress-every", "5"]
WATCHDOG_S = 150  # no sweep in this file may take longer; past it the sweep is interrupted and the test fails


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs on 127.0.0.1, started through proximo's own connect(), for the module."""
    import psutil

    from proximo.sweep.cluster import connect

    before = {child.pid for child in psutil.Process().children(recursive=True)}
    connect(None, 2, 1)
    yield ray
    ray.shutdown()
    # ray.shutdown() ends the cluster it started; end any process of it that outlived it (ours only).
    stragglers = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    for child in stragglers:
        child.kill()
    psutil.wait_procs(stragglers, timeout=10)


class Watchdog:
    """Interrupt the main thread (as Ctrl-C would) if a sweep runs past its time, so no test hangs."""

    def __init__(self, seconds: float = WATCHDOG_S) -> None:
        self.timer = threading.Timer(seconds, _thread.interrupt_main)
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def sweep(sweep_dir, *extra):
    """Run `proximo sweep` in this process on the shared cluster; returns its exit status."""
    with Watchdog():
        return main(["sweep", "CartPole-v1", *TINY, "--sweep-dir", str(sweep_dir), *extra])


def read_rows(sweep_dir):
    with open(Path(sweep_dir) / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def trial_meta(run_dir):
    return json.loads((Path(run_dir) / "trial.json").read_text())


def test_four_trials_then_a_rerun_runs_nothing(cluster, tmp_path, capsys):
    grid = ["--total-steps", "1024", "--grid", "clip_range=0.1,0.2", "--seeds", "1-2"]
    assert sweep(tmp_path, *grid) == 0
    rows = read_rows(tmp_path)
    assert len(rows) == 4
    assert {(r["grid.clip_range"], r["seed"]) for r in rows} == {("0.1", "1"), ("0.1", "2"), ("0.2", "1"),
                                                                 ("0.2", "2")}
    assert all(r["status"] == "done" and r["attempts"] == "1" and r["global_step"] == "1024" for r in rows)
    for row in rows:
        run_dir = tmp_path / row["run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert float(row["eval_return_mean"]) == pytest.approx(summary["eval_return_mean"])
        assert float(row["train_return_last100"]) == pytest.approx(summary["train_return_last100_mean"])
        assert summary["torch_threads"] == 1  # each trial's CPU share
        # a normal run directory, trained by this checkout's proximo (the workers got its path)
        assert (run_dir / "config.json").is_file() and (run_dir / "policy").is_dir()
        assert str(Path(proximo.__file__).parent) in (run_dir / "trial.log").read_text()
    markdown = (tmp_path / "results.md").read_text()
    assert "| CartPole-v1 | clip_range=0.1 | 2/2 |" in markdown and "| CartPole-v1 | clip_range=0.2 | 2/2 |" in markdown
    stamps = {r["trial"]: (tmp_path / r["run_dir"] / "summary.json").stat().st_mtime_ns for r in rows}
    capsys.readouterr()

    assert sweep(tmp_path, *grid) == 0
    assert "nothing to run" in capsys.readouterr().err
    again = read_rows(tmp_path)
    assert again == rows
    assert {r["trial"]: (tmp_path / r["run_dir"] / "summary.json").stat().st_mtime_ns for r in again} == stamps

    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _checkpointed_unfinished(run_dir: Path):
    """The trial's worker pid once it has a checkpoint and has not finished, else None."""
    if (run_dir / "summary.json").exists() or not list((run_dir / "checkpoints").glob("step_*/state.json")):
        return None
    try:
        return trial_meta(run_dir)["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_trial_whose_worker_is_killed_is_retried_and_finishes(cluster, tmp_path):
    run_dir = tmp_path / "runs" / "CartPole-v1__base__s1"
    killed = []

    def kill_worker():
        try:
            pid = _wait_for(lambda: _checkpointed_unfinished(run_dir), 120, "the trial's first checkpoint")
        except AssertionError:
            return
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_worker, daemon=True)
    killer.start()
    code = sweep(tmp_path, "--total-steps", "10240", "--save-every", "512", "--seeds", "1")
    killer.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    assert code == 0
    (row,) = read_rows(tmp_path)
    assert row["status"] == "done" and row["global_step"] == "10240"
    meta = trial_meta(run_dir)
    assert meta["attempts"] == 2 and meta["pid"] != killed[0]
    assert meta["resumed_from"].startswith("step_")  # the retry continued from the checkpoint, not from scratch
    assert "resuming from step_" in (run_dir / "trial.log").read_text()


def test_an_interrupted_sweep_resumes_to_the_same_results(cluster, tmp_path):
    # 16,384 steps: the Ctrl-C must land while a trial still runs. The driver notices it when its ray.wait (up to
    # 1 s) returns, and at 6,144 steps a trial could finish within that second of its first checkpoint (the test
    # failed in 4 of 10 runs on a quiet machine that way).
    args = ["--total-steps", "16384", "--save-every", "512", "--seeds", "1-2"]
    assert sweep(tmp_path / "whole", *args) == 0
    whole = read_rows(tmp_path / "whole")

    stopped = tmp_path / "stopped"
    runs = [stopped / "runs" / f"CartPole-v1__base__s{seed}" for seed in (1, 2)]

    def interrupt():
        try:
            _wait_for(lambda: any(_checkpointed_unfinished(r) for r in runs), 120, "a checkpoint")
        except AssertionError:
            return
        _thread.interrupt_main()  # Ctrl-C in the sweep's driver

    threading.Thread(target=interrupt, daemon=True).start()
    assert sweep(stopped, *args) == 130
    first = read_rows(stopped)
    assert any(r["status"] == "interrupted" for r in first), first
    assert sweep(stopped, *args) == 0
    resumed = read_rows(stopped)
    assert [r["status"] for r in resumed] == ["done", "done"]
    assert any(int(r["attempts"]) >= 2 for r in resumed)
    for a, b in zip(whole, resumed):
        # proximo's resume is exact, so the interrupted sweep ends where the uninterrupted one did
        for key in ("global_step", "eval_return_mean", "eval_return_std", "train_return_last100"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-9), key


def test_normalization_random_is_zero_best_is_one_below_random_is_negative():
    raw = {"A": {"clip": [10.0, 12.0], "kl": [5.0, 5.0], "none": [-2.0, -2.0]},
           "B": {"clip": [-50.0, -50.0], "kl": [0.0, 0.0], "none": [-150.0, -150.0]}}
    result = normalize(raw, {"A": 2.0, "B": -100.0})
    # A: random 2, best mean 11 (clip) -> scale 9.  B: random -100, best 0 (kl) -> scale 100.
    assert result["per_env"]["A"] == pytest.approx({"clip": 1.0, "kl": 3 / 9, "none": -4 / 9})
    assert result["per_env"]["B"] == pytest.approx({"clip": 0.5, "kl": 1.0, "none": -0.5})
    assert result["score"] == pytest.approx({"clip": 0.75, "kl": (3 / 9 + 1) / 2, "none": (-4 / 9 - 0.5) / 2})
    assert result["per_seed"]["clip"] == pytest.approx([(8 / 9 + 0.5) / 2, (10 / 9 + 0.5) / 2])
    assert result["score"]["none"] < 0
    # an env where nothing beats the random policy cannot be scaled: left out and named
    flat = normalize({"A": raw["A"], "C": {"clip": [1.0], "kl": [0.5]}}, {"A": 2.0, "C": 3.0})
    assert flat["skipped"] == ["C"] and set(flat["per_env"]) == {"A"}


def test_verdict_reads_the_papers_orderings():
    names = [name for name, _ in SETTINGS]
    paper_like = dict(zip(names, [-0.39, 0.76, 0.82, 0.70, 0.68, 0.74, 0.71, 0.62, 0.71, 0.72, 0.69]))
    assert all(holds for _, holds in verdict(paper_like))
    flipped = {**paper_like, names[0]: 0.9}
    checks = dict(verdict(flipped))
    assert not checks["clipping with eps = 0.2 is the best of all 11 settings"]
    assert not checks["no clipping or penalty scores below the random policy (< 0)"]


def test_grid_seeds_and_sweep_file_parse(tmp_path):
    assert parse_grid("clip-range=0.1,0.3") == ("clip_range", [0.1, 0.3])
    assert parse_grid("net_arch=64x64,32") == ("net_arch", [[64, 64], [32]])
    assert parse_grid("target_kl=none,0.02") == ("target_kl", [None, 0.02])
    assert parse_grid("normalize_obs=true,false") == ("normalize_obs", [True, False])
    assert parse_seeds("1-3") == [1, 2, 3] and parse_seeds("1,4,7") == [1, 4, 7]
    path = tmp_path / "sweep.yaml"
    path.write_text("envs: [CartPole-v1, Acrobot-v1]\npreset: cartpole\nconfig: {total-steps: 1024}\n"
                    "grid: {objective: [clip, adaptive_kl], clip_range: [0.1, 0.2]}\nseeds: 1-2\n")
    spec = SweepSpec.from_file(path)
    trials = spec.trials()
    assert len(trials) == 2 * 4 * 2
    assert trials[0].config["total_steps"] == 1024 and trials[0].config["n_steps"] == 32
    assert len({t.name for t in trials}) == len(trials)


def test_train_preset_file_sits_over_the_preset_and_under_the_flags(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"env_id": "CartPole-v1", "config": {"learning_rate": 0.002, "n_epochs": 7}}))
    args = build_parser().parse_args(["train", "CartPole-v1", "--preset", "cartpole", "--preset-file", str(best),
                                      "--n-epochs", "5", "--run-dir", str(tmp_path / "run")])
    config = train_plan(args)["config"]
    assert config["learning_rate"] == 0.002 and config["n_epochs"] == 5 and config["n_steps"] == 32


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_line_error(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("proximo: error:"), err
    return err


@pytest.mark.parametrize("extra,fragment", [
    (["--grid", "clip_rnge=0.1,0.2"], "grid on unknown config field 'clip_rnge'; did you mean clip_range"),
    (["--grid", "clip_range=0.1,abc"], "grid clip_range: 'abc' is not a number"),
    (["--grid", "n_epochs=3,4.5"], "grid n_epochs: '4.5' is not an integer"),
    (["--grid", "normalize_obs=maybe"], "'maybe' is not true or false"),
    (["--grid", "clip_range="], "--grid clip_range has no values"),
    (["--grid", "clip_range"], "needs the form field=v1,v2"),
    (["--grid", "seed=1,2"], "give seeds with --seeds"),
    (["--grid", "clip_range=0.2,1.5"], "setting clip_range=1.5 (seed 1): clip_range must lie in (0, 1)"),
    (["--seeds", "3-1"], "counts down"),
    (["--address", "127.0.0.1:{port}"], "cannot reach a Ray cluster at --address 127.0.0.1:{port}"),
    (["--address", "nowhere"], "must be auto or HOST:PORT"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(capsys, tmp_path, extra, fragment):
    port = _free_port()
    extra = [token.format(port=port) for token in extra]
    started = time.monotonic()
    err = _one_line_error(capsys, ["sweep", "CartPole-v1", "--sweep-dir", str(tmp_path / "s"), *extra])
    assert fragment.format(port=port) in err
    assert time.monotonic() - started < 20  # an unreachable cluster is found out in seconds, not Ray's minute
    assert not (tmp_path / "s").exists()  # nothing written for a sweep that cannot start


def test_an_unknown_env_fails_before_any_trial(capsys, tmp_path):
    err = _one_line_error(capsys, ["sweep", "CartPole-v1", "NoSuchEnv-v9", "--sweep-dir", str(tmp_path / "s")])
    assert "unknown env id 'NoSuchEnv-v9'" in err and not (tmp_path / "s").exists()


def test_without_ray_the_error_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    err = _one_line_error(capsys, ["sweep", "CartPole-v1", "--sweep-dir", str(tmp_path / "s")])
    assert "ray, which is not installed" in err and "pip install -e '.[ray]'" in err


@pytest.mark.parametrize("argv,fragment", [
    (["tune", "CartPole-v1", "--space", "learning_rate=gaussian(1,2)"], "unknown kind 'gaussian'"),
    (["tune", "CartPole-v1", "--space", "n_epochs=loguniform(3,20)"], "n_epochs is not a real-valued field"),
    (["tune", "CartPole-v1", "--space", "learning_rate=loguniform(0,1)"], "needs a positive low bound"),
    (["tune", "CartPole-v1", "--space", "learning_rate=uniform(1e-3,1e-4)"], "must be below the high bound"),
    (["paper", "table1", "--envs", "ant"], "--envs 'ant' is not one of the paper's tasks"),
    (["train", "CartPole-v1", "--preset-file", "/nonexistent/best.json"], "preset file /nonexistent/best.json does not exist"),
])
def test_bad_tune_paper_and_preset_file_input(capsys, argv, fragment):
    assert fragment in _one_line_error(capsys, argv)


def test_unknown_fields_in_a_preset_file_are_named(capsys, tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"learning_rat": 0.1}}))
    err = _one_line_error(capsys, ["train", "CartPole-v1", "--preset-file", str(path)])
    assert "unknown config field(s) ['learning_rat']" in err


@pytest.mark.slow
def test_tune_writes_a_preset_file_that_train_loads(cluster, tmp_path):
    pytest.importorskip("optuna", reason="proximo tune needs optuna (the ray extra)")
    tune_dir = tmp_path / "tune"
    with Watchdog(300):
        code = main(["tune", "CartPole-v1", "--preset", "cartpole", "--total-steps", "2048", "--eval-episodes", "2",
                     "--space", "learning_rate=loguniform(1e-4,1e-2)", "--space", "n_epochs=int(3,10)",
                     "--trials", "3", "--tune-dir", str(tune_dir)])
    assert code == 0
    best = json.loads((tune_dir / "best.json").read_text())
    assert set(best["best"]["params"]) == {"learning_rate", "n_epochs"}
    assert 1e-4 <= best["config"]["learning_rate"] <= 1e-2 and 3 <= best["config"]["n_epochs"] <= 10
    assert len(list((tune_dir / "runs").iterdir())) == 3  # each trial a normal run directory
    args = build_parser().parse_args(["train", "CartPole-v1", "--preset-file", str(tune_dir / "best.json"),
                                      "--run-dir", str(tmp_path / "run")])
    config = train_plan(args)["config"]
    assert config["learning_rate"] == best["config"]["learning_rate"] and config["n_steps"] == 32


def test_table1_reports_what_the_doctor_says_of_each_settings_runs(tmp_path):
    # Two real runs under one sweep folder: lr 0.05 x 30 epochs without clipping trips a rule, the other is a
    # short healthy run; doctor_summary counts them per setting. Which rule the broken run trips depends on the
    # CPU's float rounding (kl_spike over several updates on one machine; on another the first update moves the
    # policy to a deterministic one and entropy_collapse fires), so the count is checked against the doctor.
    from proximo.config import make_config
    from proximo.doctor import examine
    from proximo.sweep.table1 import doctor_summary, markdown
    from proximo.train import Trainer

    runs = {"clip": make_config("cartpole", "CartPole-v1", total_steps=8_192, eval_episodes=1),
            "none": make_config(None, "CartPole-v1", num_envs=8, n_steps=32, batch_size=256, total_steps=8_192,
                                eval_episodes=1, objective="none", learning_rate=0.05, n_epochs=30)}
    for name, config in runs.items():
        Trainer("CartPole-v1", config, tmp_path / "runs" / name, verbose=False, tensorboard=False).train()
    rows = [{"status": "done", "setting": "objective=clip,clip_range=0.2", "run_dir": "runs/clip"},
            {"status": "done", "setting": "objective=none", "run_dir": "runs/none"}]
    summary = doctor_summary(rows, tmp_path)
    broken = sorted(examine(tmp_path / "runs" / "none").episodes_by_rule())
    assert broken, "lr 0.05 x 30 epochs without clipping should trip a health rule"
    assert summary["no clipping or penalty"]["rules"] == {rule: 1 for rule in broken}
    assert summary["no clipping or penalty"]["healthy"] == 0
    assert summary["clipping, eps = 0.2"] == {"runs": 1, "healthy": 1, "rules": {}}
    data = {"envs": [], "raw": {}, "seeds": [1], "steps": 8192, "command": "c", "machine": "m", "score": {},
            "per_seed": {}, "paper": dict(zip([n for n, _ in SETTINGS], [0.0] * 11)), "skipped": [], "verdict": [],
            "per_env": {}, "random": {}, "doctor": summary, "sweep_dir": str(tmp_path), "trials_done": 2, "trials": 2,
            "trial_time_s": 60.0, "populations": 1, "sps": 1000.0}
    text = markdown(data)
    line = next(row for row in text.splitlines() if row.startswith("| no clipping or penalty | 0/1 |"))
    assert f"{broken[0]} (1)" in line and "1 batched populations" in text


def test_plot_finds_the_trials_of_a_two_field_grid(tmp_path):
    """sweep.json keeps its keys sorted; the trial folders are named in the grid's own order (found by the docs'
    sweep example: `proximo plot` of `--grid objective=... --grid clip_range=...` drew nothing)."""
    from proximo.checkpoint import atomic_write_json
    from proximo.sweep.plots import sweep_groups

    spec = SweepSpec(envs=["CartPole-v1"], preset="cartpole", base={}, seeds=[1],
                     grid={"objective": ["clip", "none"], "clip_range": [0.1, 0.2]})
    atomic_write_json(tmp_path / "sweep.json", spec.to_dict())
    for trial in spec.trials():
        (tmp_path / "runs" / trial.name).mkdir(parents=True)
    groups = sweep_groups(tmp_path)["CartPole-v1"]
    assert all(path.is_dir() for paths in groups.values() for path in paths)
    assert list(groups)[0] == "objective=clip,clip_range=0.1"
