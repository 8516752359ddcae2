"""Health rules: each fires on a synthetic series showing its failure and stays silent on a healthy one;
the live monitor warns once per episode of trouble; real CartPole runs provoke (or avoid) the KL rule."""
from __future__ import annotations

import io
import json
import math
import random
import re

import pytest

from proximo.config import make_config
from proximo.diagnostics import (
    RULES, RULES_BY_NAME, DiagnosticsConfig, HealthMonitor, diagnose, median, warning_line,
)
from proximo.errors import ConfigError

N = 120


def healthy_rows(n: int = N, seed: int = 0) -> list[dict]:
    """Noisy statistics shaped like a healthy classic-control run (levels read off cartpole-preset runs)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        u = i + 1
        progress = i / n
        rows.append({
            "update": u, "global_step": 256 * u,
            "episode_return_mean": 20 + 400 * progress + rng.gauss(0, 5),
            "approx_kl": 0.008 * math.exp(rng.gauss(0, 0.5)),
            "clip_fraction": min(max(0.08 + rng.gauss(0, 0.03), 0.005), 0.25),
            "entropy": 0.69 - 0.4 * progress + rng.gauss(0, 0.01),
            "value_loss": 10 * math.exp(-3 * progress) * math.exp(rng.gauss(0, 0.6)),
            "explained_variance": min(0.99, 0.2 + 3 * progress) - abs(rng.gauss(0, 0.05)),
            "grad_norm": 4 * math.exp(rng.gauss(0, 0.4)),
            "advantage_std": 2 * math.exp(rng.gauss(0, 0.3)),
            "learning_rate": 1e-3,
            "clip_range": 0.2,
        })
    return rows


def with_series(rows: list[dict], key: str, values) -> list[dict]:
    """A copy of rows whose `key` follows values(i, old_value)."""
    return [dict(row, **{key: values(i, row.get(key))}) for i, row in enumerate(rows)]


def fired(rows: list[dict], config: DiagnosticsConfig | None = None, total: int | None = N) -> dict[str, list]:
    monitor = diagnose(rows, config, total)
    out: dict[str, list] = {}
    for episode in monitor.episodes:
        out.setdefault(episode.rule, []).append(episode)
    return out


def test_healthy_series_fires_nothing():
    for seed in range(5):
        assert fired(healthy_rows(seed=seed)) == {}, f"seed {seed}"


BROKEN = {
    # KL sits at 0.2 from update 60 on: 4x diag_kl_max
    "kl_spike": ("approx_kl", lambda i, v: 0.2 if i >= 60 else v, 60),
    # entropy dives to 2% of its start by update 15 (within the first quarter of 120 updates)
    "entropy_collapse": ("entropy", lambda i, v: v if i < 10 else 0.012, 10),
    # value loss x1000 from update 70 on
    "value_loss_blowup": ("value_loss", lambda i, v: v * 1000 if i >= 70 else v, 70),
    # critic never learns: EV hovers around 0 (judged over two windows of 20 after the warm-up of 10)
    "explained_variance_low": ("explained_variance", lambda i, v: 0.02 * math.sin(i), 10, 40),
    # learning rate so small that nothing is clipped
    "clip_fraction_low": ("clip_fraction", lambda i, v: 0.0 if i >= 40 else v, 40),
    # half the samples clipped from update 50 on
    "clip_fraction_high": ("clip_fraction", lambda i, v: 0.5 if i >= 50 else v, 50),
    # rewards vanish: advantages 1e-6
    "dead_advantages": ("advantage_std", lambda i, v: 1e-6 if i >= 30 else v, 30),
    # gradients grow 50x and stay there
    "grad_norm_explosion": ("grad_norm", lambda i, v: v * 50 if i >= 80 else v, 80),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_rule_fires_on_its_failure_and_names_it(rule):
    key, change, onset, *delay = BROKEN[rule]
    result = fired(with_series(healthy_rows(), key, change))
    assert rule in result, f"{rule} did not fire; fired: {sorted(result)}"
    episode = result[rule][0]
    # fires after the onset, within a window, not before (it judges only rows it has seen)
    assert onset < episode.start_update <= onset + (delay[0] if delay else 25), episode.start_update
    assert episode.evidence.updates and episode.evidence.updates[-1] == episode.start_update
    assert key in episode.evidence.detail
    assert RULES_BY_NAME[rule].metric == key


def test_each_rule_is_documented():
    for rule in RULES:
        assert rule.fix.endswith(".") and not re.search(r"\.\s+[A-Z]", rule.fix), f"{rule.name}: one sentence"
        assert rule.reason(), f"{rule.name} thresholds lack a reason comment"


def test_single_outlier_does_not_fire():
    rows = healthy_rows()
    rows[70] = dict(rows[70], value_loss=rows[70]["value_loss"] * 1e4, grad_norm=400.0, approx_kl=0.04,
                    clip_fraction=0.6)
    assert fired(rows) == {}


def test_value_loss_back_to_normal_after_a_solved_stretch_is_not_a_blowup():
    # a solved CartPole: returns constant, value loss 1e-4; then failed episodes bring it back to ~the run's start
    rows = with_series(healthy_rows(), "value_loss", lambda i, v: 1e-4 if 50 <= i < 75 else (8.0 if i >= 75 else v))
    rows = with_series(rows, "grad_norm", lambda i, v: 0.05 if 50 <= i < 75 else v)
    assert fired(rows) == {}
    # the same jump to 100x the run's normal scale is a blow-up
    worse = with_series(rows, "value_loss", lambda i, v: 2000.0 if i >= 75 else v)
    assert "value_loss_blowup" in fired(worse)


def test_kl_single_collapse_sized_jump_fires():
    rows = healthy_rows()
    rows[70] = dict(rows[70], approx_kl=3.0)  # a 3-nat step: 375x the run's median KL
    result = fired(rows)
    assert list(result) == ["kl_spike"] and result["kl_spike"][0].start_update == 71


def test_entropy_drop_late_in_run_is_not_collapse():
    rows = with_series(healthy_rows(), "entropy", lambda i, v: v if i < 90 else 0.01)
    assert "entropy_collapse" not in fired(rows)
    # without a known run length every update counts as early
    assert "entropy_collapse" in fired(rows, total=None)


def test_late_entropy_collapse_fires_when_the_policy_froze():
    # deterministic from update 61 on: KL exactly 0 while the learning rate is unchanged
    frozen = with_series(healthy_rows(), "entropy", lambda i, v: v if i < 60 else 5e-7)
    frozen = with_series(frozen, "approx_kl", lambda i, v: v if i < 60 else 0.0)
    result = fired(frozen)
    assert list(result) == ["entropy_collapse"] and "collapsed to a deterministic policy" in \
        result["entropy_collapse"][0].evidence.detail
    annealed = with_series(frozen, "learning_rate", lambda i, v: 1e-3 * max(0.0, 1 - i / 60))
    assert fired(annealed) == {}  # the schedule stopped the policy on purpose


def test_entropy_collapse_for_gaussian_entropies_below_zero():
    rows = with_series(healthy_rows(), "entropy", lambda i, v: 2.8 if i < 5 else -1.5)  # std shrinks ~e^-2
    assert "entropy_collapse" in fired(rows)


def test_slow_starting_critic_is_not_stuck():
    # EV ~0 until update 30, then the critic locks on (as on a healthy cartpole-preset run)
    rows = with_series(healthy_rows(), "explained_variance", lambda i, v: 0.01 * math.sin(i) if i < 30 else 0.95)
    assert fired(rows) == {}


def test_low_explained_variance_ignored_once_critic_fits_returns():
    # a solved task: returns constant, value loss 1e-5 of its start, EV is noise around 0
    rows = with_series(healthy_rows(), "explained_variance", lambda i, v: 0.05 * math.sin(i) if i > 40 else v)
    rows = with_series(rows, "value_loss", lambda i, v: 1e-5 if i > 40 else v)
    assert "explained_variance_low" not in fired(rows)


def test_clip_fraction_low_ignored_when_lr_annealed():
    rows = with_series(healthy_rows(), "clip_fraction", lambda i, v: 0.0 if i >= 90 else v)
    assert "clip_fraction_low" in fired(rows)
    # a schedule that reaches 0 at update 100: by the time most of the window clips nothing, lr < 10% of start
    annealed = with_series(rows, "learning_rate", lambda i, v: 1e-3 * max(0.0, 1 - i / 100))
    assert "clip_fraction_low" not in fired(annealed)


def test_clip_fraction_low_blamed_on_collapse_not_step_size():
    # a collapsed (deterministic) policy has ratios of exactly 1: entropy_collapse speaks, clip_fraction_low not
    rows = with_series(healthy_rows(), "clip_fraction", lambda i, v: 0.0 if i >= 20 else v)
    rows = with_series(rows, "entropy", lambda i, v: v if i < 10 else 1e-4)
    result = fired(rows)
    assert "entropy_collapse" in result and "clip_fraction_low" not in result


def test_infinite_value_loss_fires_at_once():
    rows = healthy_rows()
    rows[3] = dict(rows[3], value_loss=math.inf)
    result = fired(rows[:4])
    assert result["value_loss_blowup"][0].start_update == 4


def llm_rows(n: int = 60, hacking: bool = False) -> list[dict]:
    """Rows shaped like an RLHF run: reward, KL to the reference (per token, as proximo.llm logs it),
    response length in tokens. (More language-model rules: tests/test_llm_doctor.py.)"""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        rows.append({"update": i + 1, "reward_mean": 0.1 + 0.01 * i + rng.gauss(0, 0.01),
                     "kl_ref": (0.0125 * i if hacking else 0.001 * i) + abs(rng.gauss(0, 0.0025)),
                     "response_length": 40 + rng.gauss(0, 1),
                     "entropy": 2.0 - 0.005 * i, "clip_fraction": 0.05 + rng.gauss(0, 0.01),
                     "approx_kl": 0.01})
    return rows


def test_kl_ref_blowup_rule():
    assert fired(llm_rows(), total=60) == {}
    kl_run = fired(llm_rows(hacking=True), total=60)
    assert list(kl_run) == ["kl_ref_blowup"]
    evidence = kl_run["kl_ref_blowup"][0].evidence
    # 40-token responses: per-token KL ~0.7 at the end is ~28 nats per response, past the limit of 10
    assert evidence.statistic == "median KL per response" and evidence.value > 10
    assert "KL to the reference" in evidence.detail
    # a logged per-response KL is used as it is
    per_sequence = [dict(row, kl_ref_sequence=row["kl_ref"] * 40) for row in llm_rows()]
    assert fired(per_sequence, total=60) == {}
    per_sequence[-10:] = [dict(row, kl_ref_sequence=50.0) for row in per_sequence[-10:]]
    assert list(fired(per_sequence, total=60)) == ["kl_ref_blowup"]


def test_one_warning_per_episode_and_again_after_cooldown(tmp_path):
    rows = healthy_rows()
    # trouble 40-54, healthy 55-79 (longer than the cooldown of 10), trouble again from 80
    rows = with_series(rows, "approx_kl", lambda i, v: 0.3 if 40 <= i < 55 or i >= 80 else v)
    monitor = HealthMonitor(DiagnosticsConfig(), total_updates=N)
    stream = io.StringIO()
    for row in rows:
        monitor.observe_and_report(row, tmp_path, stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all("[kl_spike]" in line and "Fix:" in line for line in lines)
    records = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["rule"] for r in records] == ["kl_spike", "kl_spike"]
    assert records[0]["start_update"] < 60 < records[1]["start_update"]
    assert records[0]["evidence"]["values"] and records[0]["fix"]
    # a gap shorter than the cooldown stays one episode
    short_gap = with_series(healthy_rows(), "approx_kl", lambda i, v: 0.3 if 40 <= i < 55 or 60 <= i else v)
    assert len(diagnose(short_gap, None, N).episodes) == 1
    assert warning_line(monitor.episodes[0]).startswith("proximo: warning: update")


def test_echo_false_prints_nothing(capsys):
    monitor = HealthMonitor(total_updates=N)
    for row in with_series(healthy_rows(), "approx_kl", lambda i, v: 0.3):
        monitor.observe_and_report(row, None, echo=False)
    assert monitor.episodes and capsys.readouterr().err == ""


def test_thresholds_are_config_fields_and_validated():
    config = make_config("cartpole", diag_kl_max=0.5, diag_cooldown=3)
    thresholds = DiagnosticsConfig.from_object(config)
    assert thresholds.kl_max == 0.5 and thresholds.cooldown == 3
    assert DiagnosticsConfig.from_object(make_config()).kl_max == DiagnosticsConfig().kl_max
    rows = with_series(healthy_rows(), "approx_kl", lambda i, v: 0.2 if i >= 60 else v)
    assert "kl_spike" not in fired(rows, thresholds)  # 0.2 < the raised limit of 0.5
    with pytest.raises(ConfigError, match="diag_clip_low"):
        make_config(diag_clip_low=0.5)
    with pytest.raises(ConfigError, match="diag_kl_max"):
        make_config(diag_kl_max=-1.0)


def test_cli_exposes_threshold_flags():
    from proximo.cli import build_parser, config_overrides

    args = build_parser().parse_args(["train", "CartPole-v1", "--diag-kl-max", "0.1", "--diagnostics", "false"])
    assert config_overrides(args) == {"diag_kl_max": 0.1, "diagnostics": False}


def test_median_ignores_nan():
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0 and math.isnan(median([math.nan]))


# real training runs ------------------------------------------------------------------------------

def _train(tmp_path, name, **overrides):
    from proximo.train import Trainer

    config = make_config(**overrides)
    trainer = Trainer("CartPole-v1", config, tmp_path / name, verbose=True, tensorboard=False)
    trainer.train()
    return trainer


def test_cartpole_with_huge_steps_triggers_kl_rule(tmp_path, capsys):
    # lr 0.05 with 30 epochs: median KL per update ~0.1 (2x diag_kl_max) within the first 10 updates
    trainer = _train(tmp_path, "broken", num_envs=8, n_steps=32, batch_size=256, learning_rate=0.05, n_epochs=30,
                     total_steps=20_000, eval_episodes=2, seed=1)
    rules = {e.rule for e in trainer.monitor.episodes}
    assert "kl_spike" in rules
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("proximo: warning")]
    assert any("[kl_spike]" in line for line in warnings)
    assert len(warnings) == len(trainer.monitor.episodes)  # one line per episode, not per update
    records = [json.loads(line) for line in (tmp_path / "broken" / "diagnostics.jsonl").read_text().splitlines()]
    assert "kl_spike" in {r["rule"] for r in records}


def test_healthy_cartpole_preset_triggers_nothing(tmp_path, capsys):
    # a 30k-step cartpole-preset run (schedules annealed over 30k): every statistic stays inside the rules
    # (on seeds 1-3 the largest KL median was 0.012, 4x below diag_kl_max)
    trainer = _train(tmp_path, "healthy", preset="cartpole", total_steps=30_000, eval_episodes=2, seed=1)
    assert [e.rule for e in trainer.monitor.episodes] == []
    assert "proximo: warning" not in capsys.readouterr().err
    assert not (tmp_path / "healthy" / "diagnostics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_cartpole_preset_run_is_healthy(tmp_path, seed):
    trainer = _train(tmp_path, f"healthy{seed}", preset="cartpole", eval_episodes=5, seed=seed)
    assert [e.rule for e in trainer.monitor.episodes] == []


def test_resumed_monitor_replays_the_logged_rows_without_warning_again(tmp_path):
    rows = with_series(healthy_rows(), "approx_kl", lambda i, v: 0.3 if i >= 40 else v)
    first = HealthMonitor(total_updates=N)
    stream = io.StringIO()
    with open(tmp_path / "updates.jsonl", "w") as handle:
        for row in rows[:60]:
            handle.write(json.dumps(row) + "\n")
            first.observe_and_report(row, tmp_path, stream=stream)
        handle.write(json.dumps(rows[60]) + "\n")  # the trainer logs a row before the monitor sees it
    assert stream.getvalue().count("[kl_spike]") == 1
    resumed = HealthMonitor(total_updates=N)  # a new process after --resume
    resumed.observe_and_report(rows[60], tmp_path, stream=stream)
    assert len(resumed.history) == 61 and resumed.history.updates[:3] == [1, 2, 3]
    assert stream.getvalue().count("[kl_spike]") == 1  # the open episode continues, no second warning
    assert [e.start_update for e in resumed.episodes] == [e.start_update for e in first.episodes]


# the thresholds nested in PPOConfig, and run directories written before the nesting ------------------------

def _flat(config: dict) -> dict:
    """A config dict as runs before the nesting stored it: diag_<name> keys instead of "diag"."""
    flat = {key: value for key, value in config.items() if key != "diag"}
    return {**flat, **{f"diag_{name}": value for name, value in config["diag"].items()}}


def test_thresholds_nest_in_the_config_and_load_from_the_flat_form():
    from proximo.config import PPOConfig, field_types

    config = make_config("cartpole", diag_kl_max=0.2, diag_recent=7)
    assert isinstance(config.diag, DiagnosticsConfig) and (config.diag.kl_max, config.diag.recent) == (0.2, 7)
    data = json.loads(config.to_json())
    assert data["diag"]["kl_max"] == 0.2 and not any(key.startswith("diag_") for key in data)
    assert PPOConfig.from_dict(data) == config == PPOConfig.from_dict(_flat(data))  # old config.json files
    assert PPOConfig.from_dict({**data, "diag_kl_max": 0.3}).diag.kl_max == 0.3  # a flat override wins
    assert config.replace(diag_cooldown=2).diag == DiagnosticsConfig(kl_max=0.2, recent=7, cooldown=2)
    assert field_types()["diag_kl_max"] is float and field_types()["diag_warmup"] is int and "diag" not in field_types()
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['diag_kl_maximum'\]"):
        PPOConfig.from_dict({**data, "diag": {"kl_maximum": 1.0}})
    with pytest.raises(ConfigError, match="diag must be a mapping"):
        PPOConfig.from_dict({**data, "diag": [0.1]})
    with pytest.raises(ConfigError, match="diag_warmup must be of type int, got 2.5"):
        make_config(diag_warmup=2.5)


def test_thresholds_of_a_run_config_in_every_form():
    from proximo.llm.config import GRPOConfig

    nested = make_config(diag_ev_min=0.3).to_dict()
    assert DiagnosticsConfig.from_object(nested).ev_min == 0.3
    assert DiagnosticsConfig.from_object(_flat(nested)).ev_min == 0.3
    assert DiagnosticsConfig.from_object(make_config(diag_ev_min=0.3)).ev_min == 0.3
    assert DiagnosticsConfig.from_object(GRPOConfig()) == DiagnosticsConfig()  # LLM configs: the defaults


def test_a_config_pickles_and_copies_with_its_thresholds():
    import copy
    import pickle

    config = make_config(diag_kl_max=0.2)
    assert pickle.loads(pickle.dumps(config)) == config and copy.deepcopy(config).diag.kl_max == 0.2


def test_a_run_directory_written_before_the_nesting_resumes(tmp_path):
    from proximo.cli import main

    run = tmp_path / "old"
    assert main(["train", "CartPole-v1", "--run-dir", str(run), "--num-envs", "2", "--n-steps", "32",
                 "--batch-size", "32", "--n-epochs", "1", "--total-steps", "128", "--save-every", "64",
                 "--eval-episodes", "1", "--diag-kl-max", "0.07", "--quiet", "--no-tensorboard"]) == 0
    # rewrite every stored config the way earlier versions wrote them
    files = [run / "config.json", *run.glob("checkpoints/*/state.json"), run / "policy" / "policy.json"]
    for path in files:
        data = json.loads(path.read_text())
        if "config" in data:
            data["config"] = _flat(data["config"])
        else:
            data = _flat(data)
        path.write_text(json.dumps(data))
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert main(["train", "--resume", str(run), "--total-steps", "192", "--quiet", "--no-tensorboard"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["diag"]["kl_max"] == 0.07 and "diag_kl_max" not in saved
