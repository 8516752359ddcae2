"""The doctor's language-model rules: each fires on a synthetic series showing its failure and not at the edge
of its threshold; the classic rules they replace stay silent on language-model rows; and on two recorded runs
(tests/data/llm_doctor/, see its README) the over-optimizing PPO-RLHF run is named and the healthy GRPO run is not."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from proximo.cli import main
from proximo.diagnostics import (
    OFFPOLICY_KL, RULES, DiagnosticsConfig, History, diagnose, noise_level, overoptimization_keys, shift_z,
)
from proximo.doctor import examine, html_report, text_report
from proximo.llm.run import LLM_COLUMNS

N = 100
DATA = Path(__file__).parent / "data" / "llm_doctor"
LLM_RULES = ["reward_hacking", "kl_ref_blowup", "response_length_runaway", "response_length_collapse",
             "token_entropy_collapse", "offpolicy_kl", "zero_std_groups", "clip_fraction_zero"]


def healthy_rows(n: int = N, seed: int = 0) -> list[dict]:
    """Rows shaped like a healthy PPO-RLHF run on `add` (levels of the recorded runs): the reward-model score and
    the exact-match accuracy of the same samples rise together, answers of ~4 tokens, entropy ~0.4 nats/token."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = i / n
        rows.append({"update": i + 1, "global_step": i + 1,
                     "score": 4.0 + 0.3 * p + rng.gauss(0, 0.05), "reward": 4.0 + 0.3 * p + rng.gauss(0, 0.05),
                     "accuracy": 0.4 + 0.2 * p + rng.gauss(0, 0.05),
                     "kl_ref": 0.05 * p + abs(rng.gauss(0, 0.01)), "kl_ref_sequence": 0.2 * p + abs(rng.gauss(0, 0.04)),
                     "response_length": 4.0 + rng.gauss(0, 0.1), "truncated_fraction": abs(rng.gauss(0.03, 0.02)),
                     "entropy": 0.4 - 0.1 * p + rng.gauss(0, 0.01), "clip_fraction": abs(rng.gauss(0.01, 0.005)),
                     "approx_kl": 1e-3 * math.exp(rng.gauss(0, 0.3)), "minibatches": 2.0,
                     "zero_std_fraction": abs(rng.gauss(0.2, 0.05)), "grad_norm": 1.0 + abs(rng.gauss(0, 0.1))})
    return rows


def setting(rows: list[dict], key: str, values) -> list[dict]:
    """A copy of rows whose `key` is values(i) (None: the key is dropped)."""
    out = []
    for i, row in enumerate(rows):
        value = values(i)
        out.append({k: v for k, v in row.items() if k != key} if value is None else dict(row, **{key: value}))
    return out


def fired(rows: list[dict], config: DiagnosticsConfig | None = None, total: int | None = N) -> dict[str, list]:
    out: dict[str, list] = {}
    for episode in diagnose(rows, config, total).episodes:
        out.setdefault(episode.rule, []).append(episode)
    return out


def test_healthy_language_model_rows_fire_nothing():
    for seed in range(5):
        assert fired(healthy_rows(seed=seed)) == {}, f"seed {seed}"


def test_the_language_model_rules_apply_to_language_model_rows_only():
    history = History()
    for row in healthy_rows():
        history.append(row)
    applicable = {rule.name for rule in RULES if rule.applicable(history)}
    # offpolicy_kl: no off-policy correction logged here, so the rule does not judge (and cannot fire)
    assert applicable >= set(LLM_RULES) - {"offpolicy_kl"} and "offpolicy_kl" not in applicable
    # the classic entropy and clip-low rules leave these rows to their language-model counterparts
    assert not {"entropy_collapse", "clip_fraction_low"} & applicable
    classic = History()
    classic.append({"update": 1, "entropy": 0.6, "clip_fraction": 0.1, "approx_kl": 0.01})
    assert {rule.name for rule in RULES if rule.applicable(classic)} == {"kl_spike", "entropy_collapse",
                                                                         "clip_fraction_low", "clip_fraction_high"}


# reward hacking / over-optimization ---------------------------------------------------------------

def overoptimizing_rows(drop: float = 0.3, n: int = 60) -> list[dict]:
    """The score climbs from update 20 on while the accuracy of the same samples falls by `drop`."""
    rows = healthy_rows(n)
    rng = random.Random(5)
    for i, row in enumerate(rows):
        late = max(0, i - 20) / (n - 20)
        row["score"] = row["reward"] = 4.0 + 0.4 * late + rng.gauss(0, 0.05)
        row["accuracy"] = 0.45 - drop * late + rng.gauss(0, 0.05)
    return rows


def test_reward_hacking_fires_when_the_score_rises_and_the_true_reward_falls():
    result = fired(overoptimizing_rows(), total=60)
    assert list(result) == ["reward_hacking"]
    episode = result["reward_hacking"][0]
    assert "training reward score rose" in episode.evidence.detail and "true reward accuracy fell" in episode.evidence.detail
    assert episode.start_update >= 40  # two windows of 20 that do not overlap
    # the true reward falling alone is no over-optimization; nor the score rising with the accuracy
    falling_both = setting(overoptimizing_rows(), "score", lambda i: 4.0 - 0.01 * i)
    assert "reward_hacking" not in fired(falling_both, total=60)
    assert "reward_hacking" not in fired(overoptimizing_rows(drop=-0.3), total=60)


def test_reward_hacking_threshold_edge():
    rows = overoptimizing_rows()
    history = History()
    for row in rows:
        history.append(row)
    z_score = shift_z(history, "score", len(rows), 20)[0]
    z_true = shift_z(history, "accuracy", len(rows), 20)[0]
    assert z_score > 0 > z_true
    edge = min(z_score, -z_true)  # the rule needs both shifts past diag_overopt_z
    over, under = DiagnosticsConfig(overopt_z=edge * 0.999), DiagnosticsConfig(overopt_z=edge * 1.001)
    assert fired(rows, over, total=60)["reward_hacking"][0].start_update == len(rows)
    assert "reward_hacking" not in fired(rows, under, total=60)


def test_noise_level_is_the_spread_of_one_value_around_its_trend():
    rng = random.Random(0)
    values = [0.01 * i + rng.gauss(0, 0.2) for i in range(4000)]
    assert noise_level(values) == pytest.approx(0.2, rel=0.05)  # the trend does not inflate it
    assert noise_level(values[:2000], [v + 100 for v in values[2000:]]) == pytest.approx(0.2, rel=0.05)  # blocks
    assert math.isnan(noise_level([1.0, 2.0])) and math.isnan(noise_level([1.0, 2.0], [3.0]))


def test_reward_hacking_takes_the_true_reward_that_differs_from_the_trained_one():
    history = History()
    # GRPO on a task: its accuracy column repeats the reward; the held-out evaluation is the true reward
    for u in range(1, 41):
        history.append({"update": u, "reward": 0.1 * u, "accuracy": 0.1 * u, "response_length": 4.0,
                        "eval_sampled_accuracy": 0.5 if u % 10 == 0 else None})
    assert overoptimization_keys(history) == ("reward", "eval_sampled_accuracy")
    only_copy = History()
    only_copy.append({"update": 1, "reward": 0.5, "accuracy": 0.5})
    assert overoptimization_keys(only_copy) is None and not RULES["reward_hacking"].applicable(only_copy)


def test_reward_hacking_on_a_held_out_evaluation_every_10_updates():
    rows = overoptimizing_rows(n=80)
    for i, row in enumerate(rows):
        row["accuracy"] = row["reward"]  # GRPO on a task: no separate true reward on the training samples
        late = max(0, i - 20) / 60
        row["eval_sampled_accuracy"] = 0.45 - 0.3 * late + 0.01 * math.sin(i) if (i + 1) % 10 == 0 else None
    result = fired(rows, total=80)
    assert list(result) == ["reward_hacking"]
    assert "eval_sampled_accuracy fell" in result["reward_hacking"][0].evidence.detail


# KL to the reference ------------------------------------------------------------------------------

def test_kl_ref_blowup_at_its_threshold():
    def run(level: float) -> dict:
        return fired(setting(healthy_rows(), "kl_ref_sequence", lambda i: level if i >= 50 else 0.5))
    assert "kl_ref_blowup" not in run(10.0)  # at the threshold: not above it
    episode = run(10.01)["kl_ref_blowup"][0]
    assert episode.start_update == 53 and episode.evidence.value == pytest.approx(10.01)  # median of 5 at update 53
    # per token x response length when kl_ref_sequence is not logged; GRPO measures it on a few updates only
    rows = setting(healthy_rows(), "kl_ref_sequence", lambda i: None)
    rows = setting(rows, "kl_ref", lambda i: (3.0 if i >= 50 else 0.01) if i % 10 in (0, 1) else None)
    assert "kl_ref_blowup" in fired(rows)  # 3 nats per token x 4 tokens = 12 nats per response
    assert "kl_ref_blowup" not in fired(setting(rows, "response_length", lambda i: 3.3))  # 9.9 nats


# response length ----------------------------------------------------------------------------------

def test_response_length_runaway_at_its_threshold():
    def run(level: float) -> dict:
        return fired(setting(healthy_rows(), "truncated_fraction", lambda i: level if i >= 30 else 0.02))
    assert "response_length_runaway" not in run(0.5)
    assert run(0.51)["response_length_runaway"][0].start_update == 33


def test_response_length_collapse_at_its_threshold():
    def run(level: float, start: float = 4.0) -> dict:
        return fired(setting(healthy_rows(), "response_length", lambda i: level if i >= 30 else start))
    assert "response_length_collapse" not in run(1.5)
    assert run(1.49)["response_length_collapse"][0].start_update == 33
    assert "response_length_collapse" not in run(1.0, start=1.0)  # one-token answers from the start


# token entropy ------------------------------------------------------------------------------------

def test_token_entropy_collapse_at_its_floor_and_only_early():
    def run(level: float, onset: int = 10) -> dict:
        return fired(setting(healthy_rows(), "entropy", lambda i: level if i >= onset else 0.4))
    assert "token_entropy_collapse" not in run(0.05)
    assert run(0.049)["token_entropy_collapse"][0].start_update == 13
    assert "token_entropy_collapse" not in run(0.001, onset=26)  # past the first 25% of 100 updates: convergence
    # the classic rule (a drop to 10% of the start) leaves language-model rows alone
    assert "entropy_collapse" not in run(0.001)


# sampler/learner mismatch -------------------------------------------------------------------------

def test_offpolicy_kl_above_its_limit_or_growing():
    def run(values) -> dict:
        return fired(setting(healthy_rows(), "offpolicy/kl", values))
    assert "offpolicy_kl" not in fired(healthy_rows())  # not logged: silent
    assert "offpolicy_kl" not in run(lambda i: 0.01)
    assert run(lambda i: 0.0101)["offpolicy_kl"][0].start_update == 5
    grown = run(lambda i: 1e-4 if i < 50 else 2e-3)  # 20x its early level, above the floor
    assert grown["offpolicy_kl"][0].start_update == 53 and "grew past 10" in grown["offpolicy_kl"][0].evidence.detail
    assert "offpolicy_kl" not in run(lambda i: 1e-4 if i < 50 else 9e-4)  # 9x
    assert "offpolicy_kl" not in run(lambda i: 1e-9 if i < 50 else 1e-4)  # 10^5 x, but below the floor


# groups without reward spread ---------------------------------------------------------------------

def test_zero_std_groups_at_its_threshold():
    def run(level: float) -> dict:
        return fired(setting(healthy_rows(), "zero_std_fraction", lambda i: level if i >= 40 else 0.2))
    assert "zero_std_groups" not in run(0.5)
    assert run(0.53)["zero_std_groups"][0].start_update == 43


# clip ratios --------------------------------------------------------------------------------------

def test_clip_fraction_zero_needs_no_clipping_and_no_movement_for_a_window():
    def run(kl: float, minibatches: float = 2.0, clip=lambda i: 0.0 if i >= 40 else 0.01) -> dict:
        rows = setting(healthy_rows(), "clip_fraction", clip)
        rows = setting(rows, "approx_kl", lambda i: kl if i >= 40 else 1e-3)
        return fired(setting(rows, "minibatches", lambda i: minibatches))
    episode = run(5e-7)["clip_fraction_zero"][0]
    assert episode.start_update == 60  # 20 updates in a row at exactly 0
    assert "clip_fraction_zero" not in run(1e-6)  # at the threshold
    assert "clip_fraction_zero" not in run(5e-7, minibatches=1.0)  # one step per update: ratio 1 by construction
    assert "clip_fraction_zero" not in run(5e-7, clip=lambda i: 0.001 if i % 15 == 0 else 0.0 if i >= 40 else 0.01)
    # the classic clip-low rule does not judge language-model rows
    assert "clip_fraction_low" not in run(5e-7)


def test_clip_fraction_high_still_judges_language_model_rows():
    rows = setting(healthy_rows(), "clip_fraction", lambda i: 0.6 if i >= 30 else 0.01)
    assert list(fired(rows)) == ["clip_fraction_high"]


# recorded runs ------------------------------------------------------------------------------------

def test_recorded_rlhf_over_optimization_run_names_reward_hacking():
    report = examine(DATA / "rlhf_overopt")
    assert list(report.episodes_by_rule()) == ["reward_hacking"]
    # the live monitor warned during training at the update the doctor names (diagnostics.jsonl)
    first = report.episodes[0]
    assert [(w["rule"], w["start_update"]) for w in report.record.live_warnings] == [("reward_hacking", first.start_update)]
    assert first.start_update == 40  # the first update with two windows of 20 that do not overlap
    assert set(report.applicable_rules()) >= {"reward_hacking", "kl_ref_blowup", "response_length_runaway",
                                              "response_length_collapse", "token_entropy_collapse"}
    text = text_report(report)
    assert "[reward_hacking]" in text and "training reward score rose" in text and "true reward accuracy fell" in text
    page = html_report(report)
    accuracy = page.split("id='panel-accuracy'>")[1].split("</svg>")[0]
    assert 'data-rule="reward_hacking"' in accuracy
    assert "id='panel-offpolicy/kl'" not in page  # a rule that does not judge this run draws nothing
    assert "</svg> reward_hacking</span>" in page and "</svg> explained_variance_low</span>" not in page  # legend


def test_recorded_healthy_grpo_run_fires_nothing(capsys):
    report = examine(DATA / "grpo_healthy")
    assert report.healthy, text_report(report)
    assert set(report.applicable_rules()) >= {"reward_hacking", "response_length_runaway", "response_length_collapse",
                                              "token_entropy_collapse", "zero_std_groups", "clip_fraction_zero"}
    assert main(["doctor", str(DATA / "grpo_healthy")]) == 0
    assert "healthy: none of the" in capsys.readouterr().out


def test_each_language_model_rule_has_reasons_and_draws_statistics_the_trainers_log():
    logged = {*LLM_COLUMNS, "kl_ref_sequence", "minibatches", OFFPOLICY_KL}  # beside the CSV columns: updates.jsonl
    for name in LLM_RULES:
        rule = RULES[name]
        assert rule.thresholds and all(f.metadata["reason"] for f in rule.thresholds.values())
        assert {rule.metric, *(panel.metric for panel in rule.panels)} <= logged, name
